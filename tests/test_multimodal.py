"""Multi-modal models end to end through ``slidewatch.cli.main``: a tabular CSV joined to the
images (train, evaluate, predict, explain, report), statistics from the training split only,
terrain from a DEM as channels or features, size classes from masks, and bad inputs refused
with one line and exit 2, leaving nothing behind."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from _factories import (
    MULTIMODAL_BASE,
    MULTIMODAL_TABULAR,
    MULTIMODAL_TRAIN,
    make_fusion_dataset,
    write_rows,
)
from conftest import UTM45, make_scene, write_image
from rasterio.transform import from_origin
from sklearn.metrics import f1_score

from slidewatch.cli.main import main
from slidewatch.config.train import TrainConfig, dump_yaml, from_dict
from slidewatch.errors import ConfigError

BASE, TRAIN, TABULAR = MULTIMODAL_BASE, MULTIMODAL_TRAIN, MULTIMODAL_TABULAR


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, needle: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def task(multimodal_task):
    return multimodal_task


def test_fused_model_learns_what_neither_branch_learns_alone(task):
    f1 = task["f1"]
    # each branch alone sees half the evidence: the best it can do is F1 = 2/3
    assert f1["image"] < 0.75 and f1["tabular"] < 0.75, f1
    assert f1["fused"] > 0.9, f1
    assert f1["fused"] - max(f1["image"], f1["tabular"]) > 0.2, f1


def test_stored_statistics_are_those_of_the_training_split(task):
    model = task["model"]
    meta = json.loads((model / "slidewatch.json").read_text())
    split = json.loads((model / "split.json").read_text())
    by_id = {r["tile_id"]: r for r in task["rows"]}
    def slopes(part):
        return [float(by_id[k.rsplit("/", 1)[1][:-4]]["slope"]) for k in split[part]]

    stored = meta["tabular"]["numeric"]["slope"]
    assert split["val"] and meta["tabular"]["n_train"] == len(split["train"])
    assert stored["mean"] == pytest.approx(np.mean(slopes("train")), rel=1e-12)
    assert stored["std"] == pytest.approx(np.std(slopes("train")), rel=1e-12)
    assert stored["mean"] != pytest.approx(np.mean(slopes("train") + slopes("val")), rel=1e-6)
    assert meta["tabular"]["feature_names"] == ["slope", "elevation", "elevation_missing",
                                                "trigger"]
    assert meta["fusion"]["mode"] == "fused" and meta["architecture"] == "baseline_cnn"
    assert meta["training"]["tabular"]["key"] == "tile_id"


def test_predict_explain_and_report_take_the_same_inputs(task, tmp_path, capsys):
    root, model, table = task["root"], task["model"], task["table"]
    code, _, err = run(capsys, "predict", model, root / "test", "--out", tmp_path / "p.csv",
                       "--tabular", table, "--quiet")
    assert code == 0, err
    predicted = {r["path"]: float(r["probability"]) for r in read_csv(tmp_path / "p.csv")}
    evaluated = read_csv(root / "fused-eval" / "predictions.csv")
    assert len(predicted) == len(evaluated) == 128
    for r in evaluated:
        assert predicted[r["path"]] == pytest.approx(float(r["probability"]), abs=1e-5)
    by_id = {r["tile_id"]: r for r in task["rows"]}
    steep = sorted(p for p in (root / "test" / "landslide").iterdir()
                   if float(by_id[p.stem]["slope"]) > 30)[:2]
    code, _, err = run(capsys, "explain", model, *steep, "--out", tmp_path / "ex",
                       "--tabular", table, "--quiet")
    assert code == 0, err
    doc = json.loads((tmp_path / "ex" / "attributions.json").read_text())
    assert len(doc["images"]) == 2 and (tmp_path / "ex" / f"{steep[0].stem}_overlay.png").is_file()
    for entry in doc["images"]:
        attr = {f["name"]: f["attribution"] for f in entry["features"]}
        assert max(attr, key=lambda k: abs(attr[k])) == "slope" and attr["slope"] > 0
        assert sum(attr.values()) == pytest.approx(
            entry["probability"] - entry["baseline_probability"], abs=0.03)
    lines = read_csv(tmp_path / "ex" / "attributions.csv")
    assert {r["feature"] for r in lines} == {"slope", "elevation", "elevation_missing", "trigger"}
    code, _, err = run(capsys, "report", model, "--eval", root / "fused-eval", "--explain",
                       tmp_path / "ex", "--out", tmp_path / "r.html", "--per-gallery", "3")
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert html.count("tabular attribution") >= 1 and "Inputs beside the image" in html
    assert not re.search(r'(src|href)="(?!data:)', html)  # still self-contained


@pytest.mark.parametrize("case", ["no_row", "text", "unknown", "no_table"])
def test_bad_tabular_inputs_are_one_line_errors(task, tmp_path, capsys, case):
    rows = [dict(r) for r in task["rows"] if r["tile_id"].startswith("b")]
    needle = {"no_row": "no row in", "text": "is not a number", "unknown": "never seen in",
              "no_table": "--tabular: the model takes tabular inputs"}[case]
    if case == "no_row":
        rows = rows[1:]
    elif case == "text":
        rows[3]["slope"] = "steep"
    elif case == "unknown":
        rows[5]["trigger"] = "volcano"
    table = write_rows(tmp_path / "rows.csv", rows, ["tile_id", "slope", "elevation", "trigger"])
    flags = [] if case == "no_table" else ["--tabular", table]
    data = task["root"] / "test"
    code, _, err = run(capsys, "evaluate", task["model"], "--data", data, "--out",
                       tmp_path / "ev", *flags, "--quiet")
    one_line_error(code, err, needle)
    code, _, err = run(capsys, "predict", task["model"], data, "--out", tmp_path / "p.csv",
                       *flags, "--quiet")
    one_line_error(code, err, needle)
    assert not (tmp_path / "ev").exists() and not (tmp_path / "p.csv").exists()
    allow = {"no_row": ["--tabular-missing", "impute"],
             "unknown": ["--tabular-unknown", "unknown"]}.get(case)
    if allow:  # imputation / the reserved unknown category when asked for
        code, _, err = run(capsys, "predict", task["model"], data, "--out", tmp_path / "p.csv",
                           *flags, *allow, "--quiet")
        assert code == 0 and len(read_csv(tmp_path / "p.csv")) == 128, err


def test_training_refuses_bad_tabular_rows_and_writes_nothing(task, tmp_path, capsys):
    rows = [dict(r) for r in task["rows"] if r["tile_id"].startswith("a")]
    rows[10]["elevation"] = "high"
    table = write_rows(tmp_path / "bad.csv", rows, ["tile_id", "slope", "elevation", "trigger"])
    args = ["train", "--data", task["root"] / "train", "--tabular", table, *TABULAR, *TRAIN]
    code, _, err = run(capsys, *args, "--out", tmp_path / "m")
    one_line_error(code, err, "line 12, column 'elevation': 'high' is not a number")
    write_rows(table, rows[:5] + rows[6:10] + rows[11:], ["tile_id", "slope", "trigger"])
    code, _, err = run(capsys, *args, "--out", tmp_path / "m")
    one_line_error(code, err, "missing column(s) elevation")
    rows[10]["elevation"] = ""
    write_rows(table, rows[1:], ["tile_id", "slope", "elevation", "trigger"])
    code, _, err = run(capsys, *args, "--out", tmp_path / "m")
    one_line_error(code, err, f"no row in {table}")
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- terrain


def geo_tiles(root, n: int = 12):
    """GeoTIFF tiles (UTM, 10 m pixels) side by side in a 320 m strip; landslides are bright."""
    rng = np.random.default_rng(0)
    for i in range(n):
        label = "landslide" if i % 2 == 0 else "non_landslide"
        img = rng.integers(40, 120 if label == "non_landslide" else 250, (16, 16, 3))
        write_image(root / label / f"t{i:02d}.tif", img.astype(np.uint8), crs=UTM45,
                    transform=from_origin(500_000 + 160 * i, 3_100_000, 10.0, 10.0))
    return root


def dem(path, x0: float = 499_900.0):
    """A 30 m DEM rising to the east (slope ~11 degrees) over the tiles' strip."""
    x = (np.arange(80) + 0.5) * 30
    z = np.tile(1000 + 0.2 * x, (20, 1)).astype(np.float32)
    return write_image(path, z, crs=UTM45, transform=from_origin(x0, 3_100_100, 30.0, 30.0))


@pytest.mark.parametrize("use", ["channels", "features"])
def test_terrain_as_channels_or_features(tmp_path, capsys, use):
    data, good = geo_tiles(tmp_path / "d"), dem(tmp_path / "dem.tif")
    args = ["train", "--data", data, "--aux", good, "--aux-as", use, *BASE,
            "--phase2-epochs", "1", "--batch-size", "4", "--input-size", "16"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "m")
    assert code == 0, err
    meta = json.loads((tmp_path / "m" / "slidewatch.json").read_text())
    assert meta["aux"]["use"] == use
    if use == "channels":  # 3 image bands + elevation, slope, aspect; stats of training data
        assert meta["in_chans"] == 6 and "fusion" not in meta
        assert 1000 < meta["mean"][3] < 1700 and meta["mean"][4] == pytest.approx(11.3, abs=0.1)
        assert meta["mean"][5] == pytest.approx(270, abs=0.5)  # faces west (downhill)
    else:
        assert meta["in_chans"] == 3 and meta["fusion"]["mode"] == "fused"
        assert meta["tabular"]["numeric"]["slope_mean"]["mean"] == pytest.approx(11.3, abs=0.1)
    code, _, err = run(capsys, "predict", tmp_path / "m", data, "--out", tmp_path / "p.csv",
                       "--quiet")
    one_line_error(code, err, "--aux: the model takes terrain")
    code, _, err = run(capsys, "predict", tmp_path / "m", data, "--out", tmp_path / "p.csv",
                       "--aux", good, "--quiet")
    assert code == 0 and len(read_csv(tmp_path / "p.csv")) == 12, err
    code, _, err = run(capsys, "explain", tmp_path / "m", data / "landslide", "--out",
                       tmp_path / "ex", "--aux", good, "--quiet")
    assert code == 0 and (tmp_path / "ex" / "t00_overlay.png").is_file(), err
    assert (tmp_path / "ex" / "attributions.json").is_file() == (use == "features")
    far = dem(tmp_path / "far.tif", x0=520_000.0)
    code, _, err = run(capsys, "predict", tmp_path / "m", data, "--out", tmp_path / "q.csv",
                       "--aux", far, "--quiet")
    one_line_error(code, err, "far.tif: does not cover")
    code, _, err = run(capsys, *args[:4], far, *args[5:], "--out", tmp_path / "m2")
    one_line_error(code, err, "far.tif: does not cover")
    assert not (tmp_path / "q.csv").exists() and not (tmp_path / "m2").exists()


# ----------------------------------------------------------------------------- sizes


def size_scenes(root, name: str, sides: list[int], seed: int):
    """A scene of 32 px tiles in a row; tile ``i`` holds a landslide square of side
    ``sides[i]`` (0 = none), so its area fraction is ``sides[i]**2 / 1024``."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 90, (32, 32 * len(sides), 3)).astype(np.uint8)
    mask = np.zeros(image.shape[:2], bool)
    for i, side in enumerate(sides):
        mask[2:2 + side, 32 * i + 2:32 * i + 2 + side] = True
    image[mask] = (200, 170, 120)
    return make_scene(root, name, {f"{name}{k}": (image, mask) for k in range(1)})


def size_class(side: int) -> str:
    fraction = side * side / 1024
    return "" if side == 0 else ["small", "medium", "large"][int(fraction >= 0.1) +
                                                             int(fraction >= 0.3)]


def test_size_classes_from_masks_and_the_size_report(tmp_path, capsys):
    sides = [0, 9, 14, 24, 0, 11, 20, 28, 0, 8, 15, 26] * 2  # .08 .19 .56 / .12 .39 .77 / ...
    scenes = [size_scenes(tmp_path, f"s{k}", sides, k) for k in range(3)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  paths: {[str(s) for s in scenes]}\n  tile: 32\n  stride: 32\n"
                   "  val_fraction: 0.34\nsizes:\n  source: mask\n  unit: fraction\n"
                   "  edges: [0.1, 0.3]\n  names: [small, medium, large]\n  weight: 0.5\n")
    code, _, err = run(capsys, "train", "--config", cfg, "--out", tmp_path / "m", *BASE,
                       "--input-size", "32", "--phase2-epochs", "2", "--batch-size", "8")
    assert code == 0, err
    meta = json.loads((tmp_path / "m" / "slidewatch.json").read_text())
    split = json.loads((tmp_path / "m" / "split.json").read_text())
    n_train_scenes = len({k.split("/")[0] for k in split["train"]})
    expected = [n_train_scenes * sum(size_class(s) == c for s in sides)
                for c in ("small", "medium", "large")]
    assert meta["sizes"]["train_counts"] == expected
    assert meta["sizes"]["names"] == ["small", "medium", "large"] and meta["fusion"]["mode"] == \
        "image" and meta["fusion"]["size_classes"] == 3
    history = read_csv(tmp_path / "m" / "history.csv")
    assert {"train_loss_size", "val_size_macro_f1"} <= set(history[0])
    test = size_scenes(tmp_path / "held", "h", sides, 9)
    assert main(["data", "tiles", str(test), "--out", str(tmp_path / "ht"), "--tile", "32",
                 "--stride", "32",
                 "--quiet"]) == 0
    code, out, err = run(capsys, "evaluate", tmp_path / "m", "--data", tmp_path / "ht",
                         "--out", tmp_path / "ev", "--quiet")
    assert code == 0 and "size: macro-F1" in out, err
    size = json.loads((tmp_path / "ev" / "metrics.json").read_text())["size"]
    rows = read_csv(tmp_path / "ev" / "predictions.csv")
    truth = {r["path"].rsplit("_c", 1)[1][:-4]: r["true_size"] for r in rows}
    assert truth == {str(32 * i): size_class(s) for i, s in enumerate(sides)}
    labelled = [r for r in rows if r["true_size"]]
    assert size["n"] == len(labelled) == 18 and np.sum(size["confusion"]) == 18
    names = size["names"]
    y = [names.index(r["true_size"]) for r in labelled]
    p = [names.index(r["predicted_size"]) for r in labelled]
    assert size["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=sorted(
        set(y) | set(p))))
    assert size["baseline"]["class"] == "large" and 0 < size["baseline"]["macro_f1"] < 0.3
    assert (tmp_path / "ev" / "size_confusion_matrix.png").is_file()
    code, _, err = run(capsys, "report", tmp_path / "m", "--eval", tmp_path / "ev", "--out",
                       tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert code == 0 and "Size classes" in html and 'alt="size confusion"' in html, err


@pytest.mark.parametrize("inputs", ["tabular", "labels only"])
def test_size_classes_from_a_nasa_style_column(tmp_path, capsys, inputs):
    """The column feeds the size head; the CSV may also carry tabular inputs, or nothing else
    (an inventory's tiles.csv used for its size labels only)."""
    flags = TABULAR if inputs == "tabular" else ["--tabular-key", "tile_id",
                                                 "--size-class-weights", "balanced"]
    rows = make_fusion_dataset(tmp_path / "d", n=64, seed=3, prefix="c")
    values = ["Small", "medium", "Large", "very_large", "unknown", ""]
    for i, r in enumerate(rows):  # landslide-free tiles have no size, whatever the column says
        r["landslide_size"] = values[i % len(values)]
    table = write_rows(tmp_path / "t.csv", rows)
    code, _, err = run(capsys, "train", "--data", tmp_path / "d", "--out", tmp_path / "m",
                       "--tabular", table, *flags, "--size-from", "column", "--size-weight",
                       "2", *BASE, "--input-size", "32", "--phase2-epochs", "1",
                       "--batch-size", "16")
    assert code == 0, err
    meta = json.loads((tmp_path / "m" / "slidewatch.json").read_text())
    split = json.loads((tmp_path / "m" / "split.json").read_text())
    by_id = {r["tile_id"]: r for r in rows}
    train = [by_id[k.rsplit("/", 1)[1][:-4]] for k in split["train"]]
    names = ["small", "medium", "large", "very_large", "catastrophic"]
    expected = [sum(r["label"] == "landslide" and r["landslide_size"].lower() == n
                    for r in train) for n in names]
    assert meta["sizes"]["source"] == "column" and meta["sizes"]["names"] == names
    assert meta["sizes"]["train_counts"] == expected and meta["sizes"]["weight"] == 2.0
    assert ("tabular" in meta) == (inputs == "tabular")
    if inputs == "tabular":
        assert meta["sizes"]["class_weights"] is None
    else:  # n / (k * n_class) over the labelled training tiles; 0 for an absent class
        n, k = sum(expected), sum(c > 0 for c in expected)
        assert meta["sizes"]["class_weights"] == pytest.approx(
            [n / (k * c) if c else 0.0 for c in expected])
    assert meta["fusion"]["mode"] == ("fused" if inputs == "tabular" else "image")
    code, _, err = run(capsys, "evaluate", tmp_path / "m", "--data", tmp_path / "d", "--out",
                       tmp_path / "ev", "--tabular", table, "--quiet")
    size = json.loads((tmp_path / "ev" / "metrics.json").read_text())["size"]
    known = [r for r in rows if r["label"] == "landslide" and r["landslide_size"] not in
             ("unknown", "")]
    assert code == 0 and size["n"] == len(known) > 0, err


# ----------------------------------------------------------------------------- config


def test_plain_configs_are_unchanged_and_new_keys_are_strict():
    assert "tabular" not in dump_yaml(TrainConfig()) and "fusion" not in dump_yaml(TrainConfig())
    with pytest.raises(ConfigError, match="unknown config key 'tabular.colums'"):
        from_dict({"tabular": {"colums": ["a"]}})
    for data, key in [({"sizes": {"source": "column"}}, "sizes.source"),
                      ({"fusion": {"mode": "tabular"}}, "fusion.mode"),
                      ({"aux": {"use": "channels"}}, "aux.use"),
                      ({"tabular": {"numeric": ["slope"]}}, "tabular.numeric"),
                      ({"tabular": {"path": "t.csv"}}, "tabular.path"),
                      ({"sizes": {"source": "mask", "edges": [0.5, 0.2], "unit": "fraction"}},
                       "sizes.edges"),
                      ({"sizes": {"weight": -1.0, "source": "mask"}}, "sizes.weight")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
            from_dict(data)
