"""Age as a second task (issue 15): classes of the days between the inventory event and the
image, from a column (``--age-from``), through train, evaluate (confusion matrix, majority
baselines), predict and report; bad columns and flags refused with one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from _factories import MULTIMODAL_BASE, write_rows
from PIL import Image
from sklearn.metrics import f1_score

from slidewatch.cli.main import main
from slidewatch.data.ages import AgeColumn, scheme_from_json
from slidewatch.data.sizes import IGNORE_INDEX
from slidewatch.errors import ConfigError, DataError, WeightsError
from slidewatch.meta import SizeSpec

AGE_TRAIN = [*MULTIMODAL_BASE, "--input-size", "32", "--phase2-epochs", "12",
             "--phase2-lr", "0.003", "--schedule", "constant", "--batch-size", "16",
             "--val-fraction", "0.25", "--no-augment", "--tabular-key", "tile_id",
             "--early-stopping-metric", "val_loss"]
COLOURS = {0: (200, 150, 90), 1: (150, 140, 80), 2: (80, 140, 60)}  # bare soil -> regrowth


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def age_class(days: str) -> str:
    if days == "" or float(days) < 0:
        return ""
    return "fresh" if float(days) < 90 else "recent" if float(days) < 365 else "old"


def make_age_dataset(root, n: int, seed: int, prefix: str) -> list[dict]:
    """Class folders: a landslide shows a scar whose colour goes from bare soil to green as it
    ages (the days in ``days_from_event``); a few landslides have no date or an image from
    before the event; landslide-free tiles carry days too (they must be ignored)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = rng.integers(20, 70, (32, 32, 3)).astype(np.uint8)
        landslide = i % 4 != 0
        days = f"{rng.uniform(0, 900):.1f}"
        if landslide:
            if i % 13 == 0:
                days = ""
            elif i % 17 == 0:
                days = f"{-rng.uniform(1, 30):.1f}"
            k = 0 if days == "" or float(days) < 90 else 1 if float(days) < 365 else 2
            r, c = rng.integers(0, 16, 2)
            img[r:r + 16, c:c + 16] = COLOURS[k] + rng.integers(-10, 10, 3)
        label = "landslide" if landslide else "non_landslide"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"{prefix}{i:04d}.png")
        rows.append({"tile_id": f"{prefix}{i:04d}", "days_from_event": days, "label": label})
    return rows


# ----------------------------------------------------------------------------- the classes


def test_days_are_binned_by_the_edges_and_unknowns_are_ignored():
    ages = AgeColumn()
    assert ages.names == ("fresh", "recent", "old") and ages.edges == (90.0, 365.0)
    values = ["0", "89.9", "90", "364.99", "365", "4000", "-3", "", "unknown", None, " 12 "]
    assert ages.labels([{"days_from_event": v} for v in values]).tolist() == \
        [0, 0, 1, 1, 2, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 0]
    assert ages.labels([None]).tolist() == [IGNORE_INDEX]  # a tile without a row
    two = AgeColumn("age_days", (30,), ("new", "older"))
    assert two.labels([{"age_days": "29"}, {"age_days": "30"}]).tolist() == [0, 1]
    with pytest.raises(DataError, match=r"t1\.png, column 'days_from_event': 'last spring' "
                                        r"is not a number of days"):
        ages.labels([{"days_from_event": "last spring"}], names=["t1.png"])


@pytest.mark.parametrize("edges, names, message", [
    ((365, 90), ("a", "b", "c"), "--age-edges: edges must increase strictly"),
    ((0, 90), ("a", "b", "c"), "--age-edges: edges must be finite numbers of days > 0"),
    ((90,), ("a", "b", "c"), "--age-names: 1 edge(s) make 2 classes, got 3 names"),
    ((90,), ("a", "a"), "--age-names: names must be distinct"),
])
def test_bad_age_classes_are_config_errors(edges, names, message):
    with pytest.raises(ConfigError) as exc:
        AgeColumn("d", edges, names)
    assert str(exc.value).startswith(message)


def test_the_stored_scheme_round_trips_and_is_checked():
    ages = AgeColumn("days_from_event", (60, 180, 720), ("a", "b", "c", "d"))
    spec = SizeSpec.from_json({**ages.to_json(), "train_counts": [1, 2, 3, 4]})
    assert spec.task == "age" and spec.names == ("a", "b", "c", "d")
    assert scheme_from_json(spec.scheme) == ages
    with pytest.raises(WeightsError, match="edges"):
        SizeSpec.from_json({**ages.to_json(), "edges": [180, 60, 720]})
    assert SizeSpec.from_json({"source": "column", "column": "landslide_size",
                               "names": ["small", "large"]}).task == "size"


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def age_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ages")
    rows = make_age_dataset(root / "train", 160, seed=1, prefix="a")
    rows += make_age_dataset(root / "test", 96, seed=2, prefix="b")
    table = write_rows(root / "tiles.csv", rows)
    code = main(["train", "--data", str(root / "train"), "--out", str(root / "m"),
                 "--tabular", str(table), "--age-from", "days_from_event", *AGE_TRAIN])
    assert code == 0
    return root, rows, table


def test_age_model_trains_evaluates_predicts_and_reports(age_model, capsys):
    root, rows, table = age_model
    meta = json.loads((root / "m" / "slidewatch.json").read_text())
    assert meta["sizes"]["source"] == "age" and meta["sizes"]["column"] == "days_from_event"
    assert meta["sizes"]["names"] == ["fresh", "recent", "old"]
    assert meta["sizes"]["edges"] == [90.0, 365.0] and meta["sizes"]["unit"] == "days"
    assert "tabular" not in meta  # the column is a label, never an input
    split = json.loads((root / "m" / "split.json").read_text())
    by_id = {r["tile_id"]: r for r in rows}
    train = [by_id[k.rsplit("/", 1)[1][:-4]] for k in split["train"]]
    assert meta["sizes"]["train_counts"] == [
        sum(r["label"] == "landslide" and age_class(r["days_from_event"]) == c for r in train)
        for c in ("fresh", "recent", "old")]

    code, out, err = run(capsys, "evaluate", root / "m", "--data", root / "test", "--out",
                         root / "ev", "--tabular", table, "--quiet")
    assert code == 0 and "age: macro-F1" in out, err
    metrics = json.loads((root / "ev" / "metrics.json").read_text())
    age = metrics["age"]
    assert "size" not in metrics and age["task"] == "age" and age["unit"] == "days"
    preds = read_csv(root / "ev" / "predictions.csv")
    truth = {r["path"].rsplit("/", 1)[1][:-4]: r["true_age"] for r in preds}
    expected = {r["tile_id"]: age_class(r["days_from_event"]) if r["label"] == "landslide"
                else "" for r in rows if r["tile_id"].startswith("b")}
    assert truth == expected
    labelled = [r for r in preds if r["true_age"]]
    assert age["n"] == len(labelled) > 40 and np.sum(age["confusion"]) == age["n"]
    names = age["names"]
    y = [names.index(r["true_age"]) for r in labelled]
    p = [names.index(r["predicted_age"]) for r in labelled]
    assert age["macro_f1"] == pytest.approx(f1_score(y, p, average="macro",
                                                     labels=sorted(set(y) | set(p))))
    assert np.asarray(age["confusion"]).tolist() == [
        [sum(a == i and b == j for a, b in zip(y, p)) for j in range(3)] for i in range(3)]
    # the scar's colour tells its age: far above always answering the majority class
    assert age["baseline"]["macro_f1"] < 0.35 and age["macro_f1"] > 0.8
    assert age["baseline_evaluated_majority"]["macro_f1"] < 0.35
    assert (root / "ev" / "age_confusion_matrix.png").is_file()
    assert metrics["plots"]["age_confusion_matrix"] == "age_confusion_matrix.png"

    code, _, err = run(capsys, "predict", root / "m", root / "test" / "landslide", "--out",
                       root / "p.csv", "--tabular", table, "--quiet")
    got = read_csv(root / "p.csv")
    assert code == 0 and {"age", "age_probability"} <= set(got[0]) and "size" not in got[0], err
    assert all(r["age"] in names for r in got)

    code, _, err = run(capsys, "report", root / "m", "--eval", root / "ev", "--out",
                       root / "r.html")
    html = (root / "r.html").read_text()
    assert code == 0 and "Age classes" in html and 'alt="age confusion"' in html, err
    assert "Size classes" not in html


@pytest.mark.parametrize("case", ["no column", "text", "both tasks", "no tabular",
                                  "edges without column", "bad edges", "no label"])
def test_bad_age_inputs_are_one_line_errors(tmp_path, capsys, case):
    rows = make_age_dataset(tmp_path / "d", 24, seed=3, prefix="c")
    flags = ["--age-from", "days_from_event"]
    if case == "text":
        rows[5]["days_from_event"] = "two weeks"
    if case == "no label":
        for r in rows:
            r["days_from_event"] = "-5"
    columns = ["tile_id", "label"] if case == "no column" else None
    table = write_rows(tmp_path / "t.csv", rows, columns)
    tab = [] if case == "no tabular" else ["--tabular", table]
    if case == "both tasks":
        flags += ["--size-from", "column"]
    if case == "edges without column":
        flags = ["--age-edges", "30,90"]
    if case == "bad edges":
        flags += ["--age-edges", "365,90"]
    code, _, err = run(capsys, "train", "--data", tmp_path / "d", "--out", tmp_path / "m",
                       *tab, *flags, *AGE_TRAIN)
    needles = {"no column": ("t.csv", "no age column 'days_from_event'", "--age-from"),
               "text": ("c0005.png", "column 'days_from_event'", "'two weeks'"),
               "both tasks": ("--age-from", "one second task"),
               "no tabular": ("needs the tabular file",),
               "edges without column": ("--age-from COLUMN",),
               "bad edges": ("--age-edges", "increase strictly"),
               "no label": ("t.csv", "no training landslide image has an age label")}[case]
    one_line_error(code, err, *needles)
    assert not (tmp_path / "m").exists()
