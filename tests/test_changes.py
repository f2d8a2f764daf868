"""`slidewatch changes` and `slidewatch date`: scans of one area at several dates on one grid,
detections labelled new / persisting / gone, the date each detection appeared, the
co-registration warning, and the bad inputs. The model is a tiny U-Net whose weights are set by
hand so that its map is known: landslide where band 1 is bright (> 0.625 at unit scale)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from conftest import UTM45, write_image
from rasterio.transform import from_origin
from shapely.geometry import box, shape

from slidewatch.cli.main import main
from slidewatch.stac.changes import classify_changes, phase_shift

TRANSFORM = from_origin(500000, 3000000, 10, 10)
H, W = 96, 160
BLOCKS = {"A": (10, 30, 10, 40), "G": (60, 80, 120, 150), "N": (50, 80, 40, 70)}


@pytest.fixture(scope="module")
def bright_model(tmp_path_factory):
    """A unet_tiny folder: logit = relu(40 x - 20) - 5 of band 1 (x at unit scale)."""
    from slidewatch.meta import ModelMeta, SegmentationSpec
    from slidewatch.models.checkpoint import save_model
    from slidewatch.models.segmentation import Segmenter, TinyUNet

    net = TinyUNet(3)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
                module.weight.fill_(1.0 if isinstance(module, torch.nn.BatchNorm2d) else 0.0)
                module.bias.zero_()
        net.encoder[0][0].weight[0, 0, 1, 1] = 40.0
        net.encoder[0][0].bias[0] = -20.0
        net.decoder[1][0].weight[0, 16, 1, 1] = 1.0  # e1 channel 0 through the skip
        net.segmentation_head.weight[0, 0, 0, 0] = 1.0
        net.segmentation_head.bias[0] = -5.0
    meta = ModelMeta(architecture="unet_tiny", classes=["landslide", "non_landslide"],
                     in_chans=3, input_size=32, mean=[0.0] * 3, std=[1.0] * 3, task="segment",
                     segmentation=SegmentationSpec(4))
    out = tmp_path_factory.mktemp("bright") / "model"
    save_model(out, Segmenter(net, "unet_tiny").eval(), meta)
    return out


def scene(path, blocks, *, seed=0, transform=TRANSFORM, crs=UTM45, shift=(0, 0), date=None):
    """Dark textured ground (the same texture for every seed-0 scene) with bright blocks."""
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 70, (H, W, 3)).astype(np.uint8)
    for name in blocks:
        r0, r1, c0, c1 = BLOCKS[name]
        img[r0:r1, c0:c1] = 220
    img = np.roll(img, shift, axis=(0, 1))
    write_image(path, img, crs=crs, transform=transform)
    if date:
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(SLIDEWATCH_DATETIME=date)
    return path


def block_box(name, transform=TRANSFORM):
    r0, r1, c0, c1 = BLOCKS[name]
    x0, y0 = transform * (c0, r0)
    x1, y1 = transform * (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def read_gpkg(path, table):
    """(shapely geometry, properties) of a GeoPackage layer, read with sqlite3 (and checked with
    GDAL through pyogrio when it is installed)."""
    import sqlite3

    from slidewatch.data import gpkg

    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        assert conn.execute("PRAGMA application_id").fetchone()[0] == gpkg.APPLICATION_ID
        rows = [dict(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY fid')]
        srs = conn.execute("SELECT srs_id FROM gpkg_geometry_columns").fetchone()[0]
    assert srs == 32645
    try:
        import pyogrio
    except ImportError:
        pyogrio = None
    if pyogrio is not None:
        info = pyogrio.read_info(path, layer=table)
        assert info["features"] == len(rows) and info["crs"] == "EPSG:32645"
    return [(gpkg.decode(r.pop("geom")), r) for r in rows]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def features(path):
    return json.loads(path.read_text())["features"]


# ---------------------------------------------------------------- the labels, on maps


def test_new_persisting_gone_on_probability_maps():
    before = np.full((40, 50), 0.1, np.float32)
    after = before.copy()
    before[2:8, 2:8] = 0.9  # persisting (grows)
    after[3:12, 3:12] = 0.8
    before[20:25, 30:40] = 0.7  # gone
    after[30:35, 5:10] = 0.95  # new
    before[30:35, 40:45] = 0.9  # gone, but only because AFTER has no data there:
    after[30:35, 40:45] = np.nan  # no pixel valid in both -> no detection at all
    got = classify_changes(before, after, 0.5)
    kinds = sorted((c.change, c.area_px) for c in got)
    assert kinds == [("gone", 50), ("new", 25), ("persisting", 81)]
    new = next(c for c in got if c.change == "new")
    assert new.before_mean == pytest.approx(0.1) and new.after_max == pytest.approx(0.95)
    assert new.geometry.bounds == (5, 30, 10, 35)  # pixel coordinates (col, row)
    gone = next(c for c in got if c.change == "gone")
    assert gone.before_mean == pytest.approx(0.7) and gone.after_mean == pytest.approx(0.1)


def test_phase_correlation_finds_a_known_shift():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(128, 128)).cumsum(0).cumsum(1)  # smooth texture
    s = phase_shift(base, np.roll(base, (3, -2), axis=(0, 1)))
    assert (round(s.dy), round(s.dx)) == (3, -2) and s.clear and s.pixels > 3
    s0 = phase_shift(base, base)
    assert abs(s0.dy) < 0.1 and abs(s0.dx) < 0.1
    assert phase_shift(np.zeros((64, 64)), base[:64, :64]) is None  # flat: no estimate


# ---------------------------------------------------------------- end to end


def test_changes_scans_both_scenes_and_labels_the_detections(capsys, tmp_path, bright_model):
    before = scene(tmp_path / "before.tif", "AG", date="2023-05-01T04:50:00Z")
    after = scene(tmp_path / "after.tif", "AN", date="2023-07-20T04:50:00Z")
    out = tmp_path / "changes"
    code, stdout, err = run(capsys, "changes", before, after, "--model", bright_model, "--out",
                            out, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "1 new, 1 persisting, 1 gone (threshold 0.5)" in stdout
    assert "warning" not in err
    feats = features(out / "changes.geojson")
    by = {f["properties"]["change"]: f for f in feats}
    assert [f["properties"]["change"] for f in feats] == ["new", "persisting", "gone"]
    for kind, block in (("new", "N"), ("persisting", "A"), ("gone", "G")):
        geom = shape(by[kind]["geometry"])
        truth = block_box(block)
        assert geom.symmetric_difference(truth).area < 0.05 * truth.area, kind
    p = by["new"]["properties"]
    assert p["before_max_prob"] < 0.05 and p["after_mean_prob"] > 0.99
    assert p["area_px"] == 30 * 30 and p["area_m2"] == pytest.approx(900 * 100)
    p = by["gone"]["properties"]
    assert p["before_mean_prob"] > 0.99 and p["after_max_prob"] < 0.05
    assert json.loads((out / "changes.geojson").read_text())["crs"]["properties"]["name"] \
        == "urn:ogc:def:crs:EPSG::32645"
    wgs = features(out / "changes_wgs84.geojson")
    lon, lat = np.array(wgs[0]["geometry"]["coordinates"][0]).mean(0)
    assert 86.9 < lon < 87.1 and 27.0 < lat < 27.2
    doc = json.loads((out / "changes.json").read_text())
    assert doc["counts"] == {"new": 1, "persisting": 1, "gone": 1}
    assert doc["before"]["time"] == "2023-05-01T04:50:00Z" and doc["before"]["scanned"]
    assert doc["shift"]["source"] == "scenes" and doc["shift"]["shift_px"] < 0.5
    assert (out / "before" / "before_probability.tif").is_file()
    layer = read_gpkg(out / "changes.gpkg", "changes")
    assert [(p["change"], p["area_px"]) for _, p in layer] == [
        (f["properties"]["change"], f["properties"]["area_px"]) for f in feats]
    assert layer[0][0].equals(shape(feats[0]["geometry"]))
    # the finished scans are inputs too: the same answer without the model
    again = tmp_path / "again"
    code, stdout2, err = run(capsys, "changes", out / "before", out / "after", "--out", again)
    assert code == 0, err
    assert features(again / "changes.geojson") == feats
    doc2 = json.loads((again / "changes.json").read_text())
    assert doc2["before"]["scene"] == str(before.resolve()) and not doc2["before"]["scanned"]


def test_before_on_another_grid_is_warped_onto_after(capsys, tmp_path, bright_model):
    # BEFORE: the same ground at 20 m pixels (every other pixel), half a kilometre wider
    rng = np.random.default_rng(0)
    img = rng.integers(20, 70, (H, W, 3)).astype(np.uint8)
    for name in "AG":
        r0, r1, c0, c1 = BLOCKS[name]
        img[r0:r1, c0:c1] = 220
    coarse = np.zeros((H // 2, W // 2 + 25, 3), np.uint8) + 40
    coarse[:, :W // 2] = img[::2, ::2]
    before = write_image(tmp_path / "before.tif", coarse, crs=UTM45,
                         transform=from_origin(500000, 3000000, 20, 20))
    after = scene(tmp_path / "after.tif", "AN")
    out = tmp_path / "c"
    code, stdout, err = run(capsys, "changes", before, after, "--model", bright_model, "--out",
                            out, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "1 new, 1 persisting, 1 gone" in stdout
    doc = json.loads((out / "changes.json").read_text())
    assert doc["grid"]["resolution"] == 10 and doc["grid"]["width"] == W


def test_a_shifted_after_image_is_a_warning(capsys, tmp_path, bright_model):
    before = scene(tmp_path / "before.tif", "A")
    after = scene(tmp_path / "after.tif", "A", shift=(3, 4))  # not co-registered
    code, stdout, err = run(capsys, "changes", before, after, "--model", bright_model, "--out",
                            tmp_path / "c", "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert "warning:" in err and "shifted by 5.0 px, 50 m (rows +3.0, columns +4.0)" in err
    doc = json.loads((tmp_path / "c" / "changes.json").read_text())
    assert doc["shift"]["shift_m"] == pytest.approx(50, abs=1) and doc["shift"]["clear"]


# ---------------------------------------------------------------- bad input


def test_scenes_that_do_not_overlap_are_one_line_before_any_scan(capsys, tmp_path,
                                                                 bright_model):
    before = scene(tmp_path / "before.tif", "A")
    after = scene(tmp_path / "after.tif", "A", transform=from_origin(600000, 3000000, 10, 10))
    code, _, err = run(capsys, "changes", before, after, "--model", bright_model, "--out",
                       tmp_path / "c")
    assert code == 2 and err.count("\n") == 1
    assert f"{before}: BEFORE does not overlap AFTER ({after})" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("case,needle", [
    ("no model", "--model: needed to scan"),
    ("missing", "no such file or folder"),
    ("empty folder", "no *_probability.tif in the folder (BEFORE)"),
    ("threshold", "--threshold: must be between 0 and 1"),
    ("no crs", "has no CRS and AFTER has one"),
])
def test_bad_inputs_are_one_line(capsys, tmp_path, bright_model, case, needle):
    before = scene(tmp_path / "before.tif", "A")
    after = scene(tmp_path / "after.tif", "A")
    args = ["--model", bright_model, "--device", "cpu"]
    if case == "no model":
        args = []
    elif case == "missing":
        before = tmp_path / "nope.tif"
    elif case == "empty folder":
        before = tmp_path / "empty"
        before.mkdir()
    elif case == "threshold":
        args += ["--threshold", "1.5"]
    elif case == "no crs":
        before = write_image(tmp_path / "plain.tif", np.zeros((H, W, 3), np.uint8))
    code, _, err = run(capsys, "changes", before, after, "--out", tmp_path / "c", *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err
    assert not (tmp_path / "c").exists()  # found before anything is scanned or written


# ---------------------------------------------------------------- dating a time series


def cloud_over(path, name):
    """Blank a block of a scene as nodata (0), as a cloud mask would."""
    with rasterio.open(path, "r+") as ds:
        img = ds.read()
        r0, r1, c0, c1 = BLOCKS[name]
        img[:, r0 - 2:r1 + 2, c0 - 2:c1 + 2] = 0
        ds.write(img)
        ds.nodata = 0
    return path


def test_date_says_when_each_detection_appeared(capsys, tmp_path, bright_model):
    s1 = scene(tmp_path / "s1.tif", "A", date="2023-05-01T04:50:00Z")
    s2 = cloud_over(scene(tmp_path / "s2.tif", "A", date="2023-06-15T04:50:00Z"), "N")
    s3 = scene(tmp_path / "s3.tif", "AN", date="2023-07-20T04:50:00Z")
    s4 = scene(tmp_path / "s4.tif", "ANG", date="2023-08-01T04:50:00Z")
    out = tmp_path / "dates"
    code, stdout, err = run(capsys, "date", s3, s1, s4, s2, "--model", bright_model, "--out",
                            out, "--device", "cpu", "--no-progress")  # any order
    assert code == 0, err
    assert "warning" not in err
    feats = features(out / "dates.geojson")
    assert len(feats) == 3
    got = {}
    for f in feats:
        geom = shape(f["geometry"])
        name = next(b for b in "ANG" if geom.intersection(block_box(b)).area
                    > 0.9 * block_box(b).area)
        got[name] = f["properties"]
    assert got["A"]["appeared"] == "present on 2023-05-01, the first image"
    assert got["A"]["last_absent"] is None and got["A"]["first_present"] == "2023-05-01"
    # the cloud on 2023-06-15 hides N: that date is stepped over
    assert got["N"]["appeared"] == "appeared between 2023-05-01 and 2023-07-20"
    ev = got["N"]["evidence"]
    assert [e["date"][:10] for e in ev] == ["2023-05-01", "2023-06-15", "2023-07-20",
                                            "2023-08-01"]
    assert [e["present"] for e in ev] == [False, None, True, True]
    assert ev[1]["valid_share"] == 0 and ev[1]["mean_prob"] is None
    assert ev[0]["mean_prob"] < 0.05 and ev[2]["mean_prob"] > 0.99
    assert [e["scene"] for e in ev] == ["s1.tif", "s2.tif", "s3.tif", "s4.tif"]
    assert got["G"]["last_absent"] == "2023-07-20" and got["G"]["first_present"] == "2023-08-01"
    assert "appeared between 2023-05-01 and 2023-07-20" in stdout
    assert "3 detection(s) in the latest image, 4 dates 2023-05-01..2023-08-01" in stdout
    rows = (out / "dating.csv").read_text().splitlines()
    assert rows[0].startswith("id,date,time,scene,mean_prob") and len(rows) == 1 + 3 * 4
    doc = json.loads((out / "dating.json").read_text())
    assert [i["time_source"] for i in doc["inputs"]] == ["SLIDEWATCH_DATETIME"] * 4
    layer = read_gpkg(out / "dates.gpkg", "dates")
    assert sorted(p["appeared"] for _, p in layer) == sorted(f["properties"]["appeared"]
                                                            for f in feats)
    assert json.loads(layer[0][1]["evidence"]) == feats[0]["properties"]["evidence"]
    assert sorted(p.name for p in (out / "scans").iterdir()) == [
        "01_20230501_s1", "02_20230615_s2", "03_20230720_s3", "04_20230801_s4"]


def test_date_takes_dates_from_the_option_and_scan_folders(capsys, tmp_path, bright_model):
    s1 = scene(tmp_path / "a.tif", "A")  # no date tags
    s2 = scene(tmp_path / "b.tif", "AN")
    out = tmp_path / "d"
    code, stdout, err = run(capsys, "date", s1, s2, "--dates", "2022-01-10,2022-02-20",
                            "--model", bright_model, "--out", out, "--device", "cpu",
                            "--no-progress")
    assert code == 0, err
    assert "appeared between 2022-01-10 and 2022-02-20" in stdout
    scans = sorted((out / "scans").iterdir())
    code, stdout2, err = run(capsys, "date", *scans, "--dates", "2022-01-10,2022-02-20", "--out",
                             tmp_path / "again")
    assert code == 0, err
    assert stdout2.splitlines()[:2] == stdout.splitlines()[:2]


@pytest.mark.parametrize("case,needle", [
    ("no date", "no acquisition date in its tags (SLIDEWATCH_DATETIME"),
    ("count", "--dates: 1 date(s) for 2 scene(s)"),
    ("unreadable", "--dates: cannot read 'June'"),
    ("one scene", "give two or more scenes"),
])
def test_date_bad_inputs_are_one_line(capsys, tmp_path, bright_model, case, needle):
    s1 = scene(tmp_path / "a.tif", "A", date="2023-05-01")
    s2 = scene(tmp_path / "b.tif", "A")
    args = [s1, s2]
    if case == "count":
        args += ["--dates", "2023-01-01"]
    elif case == "unreadable":
        args += ["--dates", "2023-01-01,June"]
    elif case == "one scene":
        args = [s1]
    code, _, err = run(capsys, "date", *args, "--model", bright_model, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    if case == "no date":
        assert str(s2) in err and "give --dates" in err
    assert not (tmp_path / "o").exists()


def test_date_refuses_a_scene_that_does_not_overlap_the_latest(capsys, tmp_path, bright_model):
    s1 = scene(tmp_path / "a.tif", "A", date="2023-05-01",
               transform=from_origin(400000, 3000000, 10, 10))
    s2 = scene(tmp_path / "b.tif", "A", date="2023-06-01")
    code, _, err = run(capsys, "date", s1, s2, "--model", bright_model, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert f"{s1}: a.tif does not overlap b.tif" in err
    assert not (tmp_path / "o").exists()
