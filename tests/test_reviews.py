"""Review stores (GeoPackage written with sqlite3 per the spec: opened back with sqlite3 and,
when installed, with GDAL through pyogrio), compare-and-set versions, and
``slidewatch data from-reviews`` tiles that ``slidewatch train --init-from`` fine-tunes on."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading

import numpy as np
import pytest
from conftest import UTM45, write_image
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import box

from slidewatch.cli.main import main
from slidewatch.data import gpkg
from slidewatch.data import reviews as store
from slidewatch.errors import ConfigError, DataError

TRANSFORM = from_origin(500000, 3000000, 10, 10)


def utm_box(c0, r0, c1, r1):
    """A box given in pixels of TRANSFORM, in UTM metres."""
    return box(500000 + c0 * 10, 3000000 - r1 * 10, 500000 + c1 * 10, 3000000 - r0 * 10)


def scan_props(k):
    return {"id": k, "area_px": 100, "area_m2": 10000.0, "mean_prob": 0.7, "max_prob": 0.9}


def test_geopackage_round_trip_opens_with_sqlite3_and_gdal(tmp_path):
    path = store.create_store(tmp_path / "r.gpkg", CRS.from_string(UTM45),
                              [(utm_box(10, 10, 20, 20), scan_props(1)),
                               (utm_box(40, 50, 60, 70), scan_props(2))],
                              {"scene": "geo.tif", "job": "j1"})
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
    assert con.execute("PRAGMA user_version").fetchone()[0] == 10300
    contents = {r[0]: r[1:] for r in con.execute(
        "SELECT table_name, data_type, srs_id, min_x, min_y, max_x, max_y FROM gpkg_contents")}
    assert contents["reviews"][:2] == ("features", 32645)
    assert contents["reviews"][2:] == pytest.approx((500100, 3000000 - 700, 500600,
                                                     3000000 - 100))
    assert contents["review_log"][0] == contents["slidewatch_info"][0] == "attributes"
    assert con.execute("SELECT geometry_type_name, srs_id FROM gpkg_geometry_columns WHERE "
                       "table_name = 'reviews'").fetchone() == ("MULTIPOLYGON", 32645)
    srs = {r[0] for r in con.execute("SELECT srs_id FROM gpkg_spatial_ref_sys")}
    assert srs == {4326, -1, 0, 32645}
    blob = con.execute("SELECT geom FROM reviews WHERE fid = 1").fetchone()[0]
    assert blob[:2] == b"GP" and int.from_bytes(blob[4:8], "little") == 32645
    assert gpkg.decode(blob).equals(utm_box(10, 10, 20, 20))
    con.close()
    srs_read, rows, info = store.read_store(path)
    assert srs_read.crs == CRS.from_string(UTM45) and info["scene"] == "geo.tif"
    assert [(f.fid, f.props["status"], f.props["version"]) for f in rows] == [
        (1, "pending", 1), (2, "pending", 1)]
    pyogrio = pytest.importorskip("pyogrio")
    meta = pyogrio.read_info(path, layer="reviews")
    assert meta["features"] == 2 and meta["geometry_type"] == "MultiPolygon"
    assert "32645" in meta["crs"]
    assert {"status", "version", "reviewer", "mean_prob"} <= set(meta["fields"])
    _, _, geoms, fields = pyogrio.raw.read(path, layer="reviews")
    assert len(geoms) == 2
    assert sorted(pyogrio.list_layers(path)[:, 0].tolist()) == [
        "review_log", "reviews", "slidewatch_info"]


def test_versions_refuse_stale_edits_and_log_every_change(tmp_path):
    path = store.create_store(tmp_path / "r.gpkg", None, [(box(1, 1, 5, 5), scan_props(1))],
                              {"scene": "plain.tif"})
    assert store.read_store(path)[0].srs_id == -1  # pixel coordinates
    f = store.update(path, 1, version=1, status="accepted", reviewer="ana", note="yes")
    assert f.props["version"] == 2 and f.props["reviewer"] == "ana" and f.props["reviewed_at"]
    with pytest.raises(store.ReviewConflict, match="changed by ana .* you edited version 1"):
        store.update(path, 1, version=1, status="rejected", reviewer="ben")
    with pytest.raises(ConfigError, match="status"):
        store.update(path, 1, version=2, status="maybe", reviewer="ben")
    with pytest.raises(ConfigError, match="reviewer"):
        store.update(path, 1, version=2, status="rejected", reviewer=" ")
    with pytest.raises(store.ReviewConflict, match="no such detection"):
        store.update(path, 9, version=1, status="rejected", reviewer="ben")
    drawn = store.add(path, box(10, 10, 20, 20), reviewer="ben", note="missed")
    assert drawn.props["origin"] == "drawn" and drawn.props["status"] == "added"
    results = []

    def edit(name):
        try:
            store.update(path, 1, version=2, status="rejected", reviewer=name)
            results.append("ok")
        except store.ReviewConflict:
            results.append("conflict")

    threads = [threading.Thread(target=edit, args=(f"r{k}",)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 4 + ["ok"]
    con = sqlite3.connect(path)
    log = con.execute("SELECT fid, version, status FROM review_log ORDER BY id").fetchall()
    assert log == [(1, 2, "accepted"), (2, 1, "added"), (1, 3, "rejected")]
    with pytest.raises(DataError, match="not a GeoPackage"):
        (tmp_path / "x.gpkg").write_text("hello")
        store.read_store(tmp_path / "x.gpkg")


@pytest.fixture()
def reviewed(tmp_path):
    """A 256 x 256 UTM scene with three landslides, and a store where the scan found two of
    them (one accepted, one redrawn), a reviewer added the third, two false alarms were
    rejected (one next to a landslide) and one detection is still pending."""
    rng = np.random.default_rng(3)
    img = np.zeros((256, 256, 3), np.uint8)
    img[..., 0] = rng.integers(20, 60, (256, 256))
    img[..., 1] = rng.integers(90, 150, (256, 256))
    img[..., 2] = rng.integers(20, 60, (256, 256))
    for r0, c0 in ((20, 20), (150, 40), (60, 170)):
        img[r0:r0 + 24, c0:c0 + 24] = (185, 150, 110)
    scene = write_image(tmp_path / "scene.tif", img, crs=UTM45, transform=TRANSFORM)
    path = store.create_store(tmp_path / "scene_reviews.gpkg", CRS.from_string(UTM45), [
        (utm_box(20, 20, 44, 44), scan_props(1)),  # -> accepted
        (utm_box(140, 30, 180, 70), scan_props(2)),  # -> redrawn tighter
        (utm_box(200, 200, 216, 216), scan_props(3)),  # -> rejected (bare field)
        (utm_box(46, 46, 50, 50), scan_props(4)),  # -> rejected, touches landslide 1's tile
        (utm_box(100, 100, 110, 110), scan_props(5)),  # pending
    ], {"scene": "scene.tif"})
    store.update(path, 1, version=1, status="accepted", reviewer="ana")
    store.update(path, 2, version=1, status="redrawn", reviewer="ana",
                 geometry=utm_box(40, 150, 64, 174))
    store.update(path, 3, version=1, status="rejected", reviewer="ana", note="field")
    store.update(path, 4, version=1, status="rejected", reviewer="ana")
    store.add(path, utm_box(170, 60, 194, 84), reviewer="ben", note="missed")
    return scene, path


def test_from_reviews_writes_class_folders_masks_and_tiles_csv(capsys, tmp_path, reviewed):
    scene, path = reviewed
    out = tmp_path / "tiles"
    assert main(["data", "from-reviews", str(path), str(scene), "--out", str(out),
                 "--size", "32"]) == 0
    said = capsys.readouterr()
    assert "3 landslide tiles" in said.out and "1 landslide-free" in said.out
    assert "fid 4 (rejected): its tile touches a landslide" in said.out
    rows = list(csv.DictReader(open(out / "tiles.csv", encoding="utf-8")))
    assert [c for c in rows[0]][:7] == ["path", "label", "source_image", "row", "col",
                                         "landslide_fraction", "region"]
    by_label = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    assert len(by_label["landslide"]) == 3 and len(by_label["non_landslide"]) == 1
    assert {r["review_status"] for r in by_label["landslide"]} == {"accepted", "redrawn",
                                                                    "added"}
    assert by_label["non_landslide"][0]["review_note"] == "field"
    for r in by_label["landslide"]:
        tile = out / r["path"]
        assert tile.suffix == ".tif" and tile.is_file()
        mask = np.asarray(Image.open(out / "masks" / (tile.stem + ".png")))
        assert set(np.unique(mask)) <= {0, 255} and 0.3 < (mask > 0).mean() < 0.8
        assert float(r["landslide_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert r["source_image"] == "scene/scene" and r["region"] == "scene"
    import rasterio

    first = by_label["landslide"][0]
    with rasterio.open(out / first["path"]) as ds:
        assert ds.crs == CRS.from_string(UTM45) and ds.width == 32
        assert ds.transform.c == 500000 + int(first["col"]) * 10
    # pending, nothing reviewed, or the wrong scene: one-line errors, nothing written
    empty = store.create_store(tmp_path / "empty.gpkg", CRS.from_string(UTM45),
                               [(utm_box(1, 1, 9, 9), scan_props(1))], {})
    assert main(["data", "from-reviews", str(empty), str(scene), "--out",
                 str(tmp_path / "none")]) == 2
    assert "no accepted, redrawn, added or rejected" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_from_reviews_tiles_fine_tune_a_model(capsys, tmp_path, reviewed, tiny_model):
    scene, path = reviewed
    out = tmp_path / "tiles"
    assert main(["data", "from-reviews", str(path), str(scene), "--out", str(out),
                 "--size", "32"]) == 0
    model = tmp_path / "tuned"
    code = main(["train", "--init-from", str(tiny_model), "--data", str(out), "--out",
                 str(model), "--phase1-epochs", "0", "--phase2-epochs", "1", "--batch-size", "4",
                 "--split-by", "tile", "--val-fraction", "0.25", "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((model / "slidewatch.json").read_text())
    assert meta["classes"] == ["landslide", "non_landslide"]
    assert meta["weights_source"] == f"init_from:{tiny_model}"
