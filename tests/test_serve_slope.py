"""``slidewatch serve`` jobs with a DEM: each detection's mean and max slope (a generated
inclined plane, elevation = 0.5 x metres east, so every slope is atan(0.5) = 26.57 degrees), on
the scene's CRS with another grid and, through :func:`polygon_slopes`, on another CRS; DEM
paths checked like scenes; a DEM that does not cover the scene refused (422) or, with no data
under a detection, a failed job; old review stores without the slope columns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("rio_tiler")

import rasterio  # noqa: E402
from conftest import UTM45, write_image  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform_bounds  # noqa: E402
from shapely.geometry import box  # noqa: E402
from test_serve import add_slide, client_for, settings_for, vegetation  # noqa: E402

from slidewatch.data import gpkg  # noqa: E402
from slidewatch.data import reviews as store  # noqa: E402
from slidewatch.data.terrain import polygon_slopes  # noqa: E402

SCENE_TRANSFORM = from_origin(500000, 3000000, 10, 10)  # 256 x 320 px: 2560 m x 3200 m
PLANE = math.degrees(math.atan(0.5))  # 26.565


def write_plane(path: Path, crs: str, bounds, pixel: float, nodata=None) -> Path:
    """A float32 DEM on a ``pixel`` m grid over ``bounds`` whose elevation is 0.5 m per m east
    (of the grid's own x axis)."""
    left, bottom, right, top = bounds
    w, h = math.ceil((right - left) / pixel), math.ceil((top - bottom) / pixel)
    x = left + (np.arange(w) + 0.5) * pixel
    z = np.broadcast_to(0.5 * (x - left), (h, w)).astype(np.float32)
    if nodata is not None:
        z = np.full((h, w), nodata, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32",
                       crs=crs, transform=from_origin(left, top, pixel, pixel),
                       nodata=nodata) as ds:
        ds.write(z, 1)
    return path


@pytest.fixture(scope="module")
def slope_root(tmp_path_factory) -> Path:
    """geo.tif (two landslides, UTM 45N, 10 m), DEMs: an inclined plane on a 20 m grid that
    covers it with a margin, one that covers its north half only, one that covers it but is all
    nodata, a text file named .tif; a link out of the root."""
    root = tmp_path_factory.mktemp("slope_data")
    rng = np.random.default_rng(5)
    img = add_slide(add_slide(vegetation(rng, 320, 256), rng, 224, 96, 64), rng, 40, 30, 40)
    write_image(root / "geo.tif", img, crs=UTM45, transform=SCENE_TRANSFORM)
    scene = (500000, 3000000 - 3200, 500000 + 2560, 3000000)
    write_plane(root / "dem" / "plane.tif", UTM45,
                (scene[0] - 300, scene[1] - 300, scene[2] + 300, scene[3] + 300), 20)
    write_plane(root / "dem" / "north.tif", UTM45,
                (scene[0] - 300, scene[1] + 1600, scene[2] + 300, scene[3] + 300), 20)
    write_plane(root / "dem" / "holes.tif", UTM45,
                (scene[0] - 300, scene[1] - 300, scene[2] + 300, scene[3] + 300), 20,
                nodata=-9999.0)
    (root / "dem" / "notes.tif").write_text("not a raster")
    outside = tmp_path_factory.mktemp("slope_outside") / "dem.tif"
    write_plane(outside, UTM45, scene, 20)
    (root / "dem" / "link.tif").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def client(slope_root, tiny_model, tmp_path_factory):
    return client_for(settings_for(slope_root, tiny_model, tmp_path_factory.mktemp("slope_w")))


def run(client, scene: str, model: str, dem: str | None) -> dict:
    r = client.post("/api/jobs", json={"scene": scene, "model": model, "dem": dem})
    assert r.status_code == 201, r.text
    assert r.json()["dem"] == dem and "dem_path" not in r.json()
    return client.app.state.jobs.run_next()


def test_a_job_with_a_dem_gives_each_detection_its_slope(client, tiny_model, slope_root):
    job = run(client, "geo.tif", tiny_model.name, "dem/plane.tif")
    assert job["status"] == "done", job
    on_disk = client.app.state.jobs.job_dir(job["id"]) / "job.json"
    assert '"dem": "dem/plane.tif"' in on_disk.read_text()
    fc = client.get(f"/api/jobs/{job['id']}/detections").json()
    assert fc["features"]
    for f in fc["features"]:
        p = f["properties"]
        assert p["slope_mean_deg"] == pytest.approx(PLANE, abs=0.5), p
        assert p["slope_mean_deg"] - 1e-6 <= p["slope_max_deg"] <= PLANE + 1.0, p
    # a drawn polygon and a redrawn detection get theirs too (lon/lat on the page)
    ring = [[87.0015, 27.1190], [87.0030, 27.1190], [87.0030, 27.1200], [87.0015, 27.1200],
            [87.0015, 27.1190]]
    added = client.post(f"/api/jobs/{job['id']}/detections", json={
        "geometry": {"type": "Polygon", "coordinates": [ring]}, "reviewer": "ana"})
    assert added.status_code == 201, added.text
    assert added.json()["properties"]["slope_mean_deg"] == pytest.approx(PLANE, abs=0.5)
    first = fc["features"][0]
    redrawn = client.put(f"/api/jobs/{job['id']}/detections/{first['id']}", json={
        "version": 1, "geometry": {"type": "Polygon", "coordinates": [ring]},
        "reviewer": "ana"})
    assert redrawn.status_code == 200, redrawn.text
    assert redrawn.json()["properties"]["slope_max_deg"] == pytest.approx(PLANE, abs=1.0)
    gj = client.get(f"/api/jobs/{job['id']}/reviews.geojson").json()
    assert all(f["properties"]["slope_mean_deg"] is not None for f in gj["features"])


def test_a_job_without_a_dem_has_null_slopes(client, tiny_model):
    job = run(client, "geo.tif", tiny_model.name, None)
    assert job["status"] == "done" and job["dem"] is None
    feats = client.get(f"/api/jobs/{job['id']}/detections").json()["features"]
    assert feats
    assert all(f["properties"]["slope_mean_deg"] is None for f in feats)
    assert all(f["properties"]["slope_max_deg"] is None for f in feats)


@pytest.mark.parametrize("dem,status,words", [
    ("../plane.tif", 400, "'..'"), ("dem/../../x.tif", 400, "'..'"),
    ("/etc/passwd", 400, "absolute"), ("dem/link.tif", 403, "outside the data root"),
    ("dem/missing.tif", 404, "no such file"), ("upload:" + "0" * 32, 404, "no such upload"),
    ("dem/north.tif", 422, "does not cover"), ("dem/notes.tif", 422, "dem/notes.tif")])
def test_dem_paths_are_checked_like_scenes(client, tiny_model, slope_root, dem, status, words):
    before = len(client.get("/api/jobs").json()["jobs"])
    r = client.post("/api/jobs", json={"scene": "geo.tif", "model": tiny_model.name,
                                       "dem": dem})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err and (status == 400 or "dem" in err.lower())
    assert str(slope_root) not in r.text and "\n" not in err
    assert len(client.get("/api/jobs").json()["jobs"]) == before  # nothing queued


def test_a_dem_without_data_under_the_detections_fails_the_job(client, tiny_model,
                                                                slope_root):
    job = run(client, "geo.tif", tiny_model.name, "dem/holes.tif")
    assert job["status"] == "failed", job
    err = job["error"]
    assert err.startswith("slope: DEM dem/holes.tif: does not cover geo.tif"), err
    assert "\n" not in err and str(slope_root) not in err


def test_polygon_slopes_on_a_dem_in_another_crs(slope_root, tmp_path):
    """The DEM on UTM 44N (the scene: 45N): reprojected; a plane in 44N is a plane in 45N up
    to the two projections' scale difference (~0.5 %)."""
    scene = slope_root / "geo.tif"
    b = transform_bounds(UTM45, "EPSG:32644", 500000, 3000000 - 3200, 502560, 3000000)
    dem = write_plane(tmp_path / "utm44.tif", "EPSG:32644",
                      (b[0] - 300, b[1] - 300, b[2] + 300, b[3] + 300), 15)
    polys = [box(30, 40, 70, 80), box(96, 224, 160, 288), box(250, 0, 256, 5),
             box(400, 400, 500, 500)]  # the last outside the scene
    out = polygon_slopes(dem, scene, polys)
    for mean_max in out[:3]:
        assert mean_max[0] == pytest.approx(PLANE, abs=0.5) and mean_max[1] >= mean_max[0]
    assert out[3] is None


def test_old_stores_without_slope_columns_read_as_null(tmp_path):
    """A review store made before the slope columns: they read as null, and reviews and drawn
    polygons still save (their slopes left out)."""
    old = tuple(c for c in store.COLUMNS if c[0] not in store.SLOPE_COLUMNS)
    path = tmp_path / "old.gpkg"
    conn = gpkg.connect(path, must_exist=False)
    try:
        srs = gpkg.srs_for(None)
        gpkg.create(conn, store.TABLE, old, srs, "MULTIPOLYGON", "old store")
        gpkg.create_attributes(conn, store.LOG_TABLE, store.LOG_COLUMNS, "log")
        with gpkg.transaction(conn):
            conn.execute(f"INSERT INTO {store.TABLE} (geom, detection_id, origin, status, "
                         f"version, mean_prob) VALUES (?, 1, 'scan', 'pending', 1, 0.8)",
                         (gpkg.encode(store.multi(box(1, 1, 5, 5)), srs.srs_id),))
    finally:
        conn.close()
    _, rows, _ = store.read_store(path)
    assert rows[0].props["slope_mean_deg"] is None and rows[0].props["slope_max_deg"] is None
    slope = {"slope_mean_deg": 10.0, "slope_max_deg": 12.0, "area_px": 4.0}
    f = store.update(path, 1, version=1, status="redrawn", reviewer="ana",
                     geometry=box(1, 1, 3, 3), stats=slope)
    assert f.props["slope_mean_deg"] is None and f.props["area_px"] == 4.0
    added = store.add(path, box(10, 10, 12, 12), reviewer="ana", stats=slope)
    assert added.props["slope_max_deg"] is None and added.props["area_px"] == 4.0
    # a new store keeps them
    new = store.create_store(tmp_path / "new.gpkg", None, [(box(1, 1, 5, 5), {"id": 1, **slope})],
                             {"scene": "x"})
    assert store.read_store(new)[1][0].props["slope_mean_deg"] == 10.0
