"""Tabular inputs: reading and checking the CSV, joining rows to images, encoding with
training statistics only, and the metadata round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _factories import make_class_dataset

from slidewatch.data.folders import Sample, scan_class_folders
from slidewatch.data.tabular import (
    TabularEncoder,
    TabularSpec,
    join_samples,
    merge_rows,
    read_table,
    tabular_dataset,
)
from slidewatch.errors import ConfigError, DataError

SPEC = TabularSpec(numeric=("slope", "rain"), categorical=("trigger",))


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rows(*items):
    return [None if it is None else dict(zip(("slope", "rain", "trigger"), it)) for it in items]


def test_encoder_standardises_imputes_and_indexes():
    train = rows((10.0, 1.0, "rain"), (30.0, None, "rain"), (20.0, 3.0, "quake"))
    enc = TabularEncoder(SPEC).fit(train)
    assert enc.mean == {"slope": 20.0, "rain": 2.0}
    assert enc.std["slope"] == pytest.approx(np.std([10, 30, 20]))
    assert enc.vocab["trigger"] == ["<unknown>", "quake", "rain"]
    assert enc.fill["trigger"] == "rain"  # most common training value
    assert enc.indicators == ["rain"]  # only columns with empty training cells
    assert enc.feature_names == ["slope", "rain", "rain_missing", "trigger"]
    assert enc.cardinalities == [3]
    num, cat = enc.transform(rows((20.0, None, None), (30.0, 3.0, "quake")))
    assert num.dtype == np.float32 and cat.dtype == np.int64
    np.testing.assert_allclose(num[0], [0.0, 0.0, 1.0])  # imputed mean -> 0, indicator 1
    np.testing.assert_allclose(num[1, :2], [10 / enc.std["slope"], 1.0], rtol=1e-6)
    assert num[1, 2] == 0.0
    assert cat[:, 0].tolist() == [2, 1]  # empty trigger -> most common ("rain")


def test_statistics_come_from_training_rows_only():
    rng = np.random.default_rng(0)
    train = [{"slope": float(v), "rain": 1.0, "trigger": "rain"} for v in rng.normal(20, 5, 50)]
    val = [{"slope": float(v), "rain": 1.0, "trigger": "quake"} for v in rng.normal(80, 5, 50)]
    spec = TabularSpec(numeric=("slope",), categorical=("trigger",), unknown="unknown")
    enc = TabularEncoder(spec).fit(train)
    train_mean = float(np.mean([r["slope"] for r in train]))
    assert enc.mean["slope"] == pytest.approx(train_mean)
    num, cat = enc.transform(val)
    assert enc.mean["slope"] == pytest.approx(train_mean)  # transform never refits
    assert num[:, 0].mean() > 5  # validation values stay far from the training mean
    assert (cat == 0).all()  # a category seen only in validation is "unknown"
    assert "quake" not in enc.vocab["trigger"]


def test_json_round_trip_encodes_identically():
    train = rows((10.0, 1.0, "rain"), (30.0, None, "rain"), (20.0, 3.0, "quake"))
    enc = TabularEncoder(SPEC).fit(train)
    stored = json.loads(json.dumps(enc.to_json()))
    again = TabularEncoder.from_json(stored)
    test = rows((12.0, None, "quake"), (40.0, 2.0, "rain"))
    for a, b in zip(enc.transform(test), again.transform(test)):
        np.testing.assert_array_equal(a, b)
    assert again.spec == enc.spec
    with pytest.raises(DataError, match="not a slidewatch tabular encoder"):
        TabularEncoder.from_json({"format": "other"})


def test_read_and_join_by_path_and_tile_id(tmp_path):
    root = make_class_dataset(tmp_path / "tiles", images=1, per_image=2, regions=("north",))
    samples = scan_class_folders(root)
    rel = [s.path.relative_to(s.root).as_posix() for s in samples]
    lines = ["path,slope,rain,trigger"] + [f"./{p},{i},{i * 2},rain" for i, p in enumerate(rel)]
    table = read_table(write_csv(tmp_path / "t.csv", lines), SPEC)
    joined = join_samples(samples, table)
    assert [r["slope"] for r in joined] == [float(i) for i in range(len(samples))]
    spec = TabularSpec(numeric=("slope",), key="tile_id", key_column="id")
    slides = [s for s in samples if s.label == 0]
    lines = ["id,slope"] + [f"{s.path.stem},{i}" for i, s in enumerate(slides)][::-1]
    table = read_table(write_csv(tmp_path / "u.csv", lines), spec)
    assert [r["slope"] for r in join_samples(slides, table)] == [0.0, 1.0]
    with pytest.raises(DataError, match="same tile id 'north__img0__r0_c0'.*join by path"):
        join_samples(samples, table)  # both class folders hold a tile with that stem


def test_image_without_row_is_an_error_or_imputed(tmp_path):
    samples = [Sample(tmp_path / "landslide" / f"t{i}.png", 0, f"g{i}", "r", root=tmp_path)
               for i in range(3)]
    lines = ["path,slope,rain,trigger", "landslide/t0.png,1,2,rain", "landslide/t2.png,3,4,rain"]
    csv_path = write_csv(tmp_path / "t.csv", lines)
    with pytest.raises(DataError, match=r"t1\.png: no row in .*t\.csv.*--tabular-missing impute"):
        join_samples(samples, read_table(csv_path, SPEC))
    spec = TabularSpec(numeric=("slope", "rain"), categorical=("trigger",), missing="impute")
    joined = join_samples(samples, read_table(csv_path, spec))
    assert joined[1] is None
    enc = TabularEncoder(spec).fit(joined)
    num, cat = enc.transform(joined)
    assert enc.indicators == ["slope", "rain", "trigger"]
    np.testing.assert_allclose(num[1], [0, 0, 1, 1, 1])
    assert cat[1, 0] == enc.vocab["trigger"].index("rain")


@pytest.mark.parametrize("lines, message", [
    (["path,slope,rain,trigger", "a.png,steep,2,rain"],
     r"t\.csv: line 2, column 'slope': 'steep' is not a number"),
    (["path,slope,rain,trigger", "a.png,1,2,rain", "b.png,1,2,rain", "a.png,3,4,rain"],
     r"t\.csv: line 4: duplicate key 'a.png' \(first on line 2\)"),
    (["path,slope,trigger", "a.png,1,rain"], r"t\.csv: missing column\(s\) rain"),
    (["path,slope,rain,trigger", "a.png,inf,2,rain"], r"'inf' is not a finite number"),
    (["path,slope,rain,trigger"], r"t\.csv: no data rows"),
])
def test_bad_csv_is_one_clear_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message) as info:
        read_table(write_csv(tmp_path / "t.csv", lines), SPEC)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_spec(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: tabular file not found"):
        read_table(tmp_path / "nope.csv", SPEC)
    with pytest.raises(ConfigError, match="--tabular-missing"):
        TabularSpec(numeric=("a",), missing="drop")
    with pytest.raises(ConfigError, match="at least one"):
        TabularSpec()
    with pytest.raises(ConfigError, match="distinct"):
        TabularSpec(numeric=("a",), categorical=("a",))
    with pytest.raises(ConfigError, match="--tabular-key"):
        TabularSpec(numeric=("a",), key="name")


def test_unknown_category_and_text_at_transform_time():
    enc = TabularEncoder(SPEC).fit(rows((1.0, 1.0, "rain"), (2.0, 2.0, "quake")))
    with pytest.raises(DataError, match=r"x\.png, column 'trigger': category 'snow' never seen"):
        enc.transform(rows((1.0, 1.0, "snow")), names=["x.png"])
    with pytest.raises(DataError, match=r"y\.png, column 'rain': 'lots' is not a number"):
        enc.transform(rows((1.0, "lots", "rain")), names=["y.png"])
    with pytest.raises(DataError, match="not fitted"):
        TabularEncoder(SPEC).transform(rows((1.0, 1.0, "rain")))
    with pytest.raises(DataError, match="'rain': no values in the training rows"):
        TabularEncoder(SPEC).fit(rows((1.0, None, "rain")))


def test_merge_rows_and_dataset_wrapper():
    merged = merge_rows([{"a": 1}, None, None], [{"b": 2}, {"b": 3}, None])
    assert merged == [{"a": 1, "b": 2}, {"b": 3}, None]
    base = [{"image": i, "label": 0, "index": i} for i in range(3)]
    num = np.arange(6, dtype=np.float32).reshape(3, 2)
    ds = tabular_dataset(base, num, np.zeros((3, 1), np.int64), size_labels=[1, -1, 0])
    item = ds[2]
    assert item["numeric"].tolist() == [4.0, 5.0] and item["size_label"] == 0
    with pytest.raises(ValueError, match="3 images but 2 numeric rows"):
        tabular_dataset(base, num[:2], np.zeros((3, 1), np.int64))
