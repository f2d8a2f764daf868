"""``slidewatch serve``: the API through FastAPI's TestClient (health, token, host and origin
rules, path traversal, uploads, jobs with cancel and restart/resume, tiles of georeferenced and
plain scenes, COG outputs, reviews with version conflicts, no tracebacks), and the page in
headless Chromium against a live uvicorn on loopback (skipped without Chromium)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("rio_tiler")

from conftest import UTM45, truncate, write_image  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from slidewatch.errors import ConfigError  # noqa: E402
from slidewatch.serve.app import create_app  # noqa: E402
from slidewatch.serve.jobs import JobManager  # noqa: E402
from slidewatch.serve.settings import ServeSettings, check_settings  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123"
TRANSFORM = from_origin(500000, 3000000, 10, 10)
BASE = "http://127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def vegetation(rng, h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = rng.integers(20, 60, (h, w))
    img[..., 1] = rng.integers(90, 150, (h, w))
    img[..., 2] = rng.integers(20, 60, (h, w))
    return img


def add_slide(img, rng, r0, c0, size):
    scar = np.array((185, 150, 110)) + rng.integers(-15, 15, (size, size, 3))
    img[r0:r0 + size, c0:c0 + size] = np.clip(scar, 0, 255)
    return img


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A georeferenced scene with two landslides (320 x 256, UTM 45N), a plain (no CRS) one, a
    scene in a subfolder, and a file outside the root with a symbolic link to it."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    img = add_slide(add_slide(vegetation(rng, 320, 256), rng, 224, 96, 64), rng, 40, 30, 40)
    write_image(root / "geo.tif", img, crs=UTM45, transform=TRANSFORM)
    write_image(root / "plain.tif", add_slide(vegetation(rng, 96, 128), rng, 20, 40, 40))
    write_image(root / "sub" / "small.tif", vegetation(rng, 64, 64), crs=UTM45,
                transform=TRANSFORM)
    outside = tmp_path_factory.mktemp("outside") / "secret.tif"
    write_image(outside, vegetation(rng, 64, 64), crs=UTM45, transform=TRANSFORM)
    (root / "link.tif").symlink_to(outside)
    return root


def settings_for(data_root, model, workdir, **kw) -> ServeSettings:
    return check_settings(ServeSettings(data_root=data_root, workdir=workdir,
                                        models=(model,), device="cpu", **kw))


def client_for(settings, **kw) -> TestClient:
    return TestClient(create_app(settings, start_worker=False), base_url=BASE, **kw)


@pytest.fixture(scope="module")
def served(data_root, tiny_model, tmp_path_factory):
    """An app (no worker thread) with one finished scan of geo.tif and one of plain.tif."""
    work = tmp_path_factory.mktemp("work")
    settings = settings_for(data_root, tiny_model, work)
    client = client_for(settings)
    jobs: JobManager = client.app.state.jobs
    ids = {}
    for scene in ("geo.tif", "plain.tif"):
        r = client.post("/api/jobs", json={"scene": scene, "model": tiny_model.name})
        assert r.status_code == 201, r.text
        ids[scene] = r.json()["id"]
        assert jobs.run_next()["status"] == "done"
    return {"client": client, "settings": settings, "jobs": jobs, "ids": ids,
            "model": tiny_model.name}


# ---------------------------------------------------------------- health, token, guards


def test_health_docs_and_page_need_no_network(served):
    c = served["client"]
    assert c.get("/api/health").json()["status"] == "ok"
    page = c.get("/")
    assert page.status_code == 200 and "/static/vendor/leaflet/leaflet.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    assert "default-src 'self'" in page.headers["content-security-policy"]
    docs = c.get("/docs")
    assert docs.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert "https://" not in docs.text
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/api/health", "/api/jobs", "/api/uploads"} <= set(paths)
    for asset in ("vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css",
                  "vendor/leaflet/LICENSE", "vendor/swagger-ui/swagger-ui-bundle.js", "app.js"):
        assert c.get(f"/static/{asset}").status_code == 200, asset


def test_page_and_vendored_libraries_are_package_data():
    """Every file under serve/static is matched by pyproject's package-data globs (so a wheel
    carries it), and each vendored library keeps its licence."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    pkg = root / "src" / "slidewatch"
    with open(root / "pyproject.toml", "rb") as fh:
        globs = tomllib.load(fh)["tool"]["setuptools"]["package-data"]["slidewatch"]
    matched = {p for g in globs for p in pkg.glob(g) if p.is_file()}
    static = {p for p in (pkg / "serve" / "static").rglob("*") if p.is_file()}
    assert static and static <= matched, sorted(map(str, static - matched))
    assert (pkg / "serve" / "static" / "vendor" / "leaflet" / "LICENSE").is_file()


def test_non_loopback_needs_a_token(data_root, tmp_path):
    with pytest.raises(ConfigError, match="needs a token"):
        check_settings(ServeSettings(data_root=data_root, workdir=tmp_path, host="0.0.0.0"))
    with pytest.raises(ConfigError, match="at least 16"):
        check_settings(ServeSettings(data_root=data_root, workdir=tmp_path, host="0.0.0.0",
                                     token="short"))
    ok = check_settings(ServeSettings(data_root=data_root, workdir=tmp_path, host="0.0.0.0",
                                      token=TOKEN))
    assert ok.open_to_network
    assert not check_settings(ServeSettings(data_root=data_root, workdir=tmp_path)).token


def test_token_is_needed_everywhere_but_health(served, data_root, tiny_model, tmp_path):
    c = client_for(settings_for(data_root, tiny_model, tmp_path, token=TOKEN, host="0.0.0.0"))
    assert c.get("/api/health").status_code == 200
    for path in ("/", "/docs", "/openapi.json", "/api/scenes", "/api/jobs",
                 "/static/app.js", "/api/scenes/tiles/14/12151/6909.png?scene=geo.tif"):
        r = c.get(path)
        assert r.status_code == 401, path
        assert "token" in r.json()["error"]
    assert c.get("/api/scenes", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}
                 ).status_code == 401
    ok = c.get("/api/scenes", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and "geo.tif" in [s["name"] for s in ok.json()["scenes"]]
    tile = c.get(f"/api/scenes/tiles/14/12151/6909.png?scene=geo.tif&token={TOKEN}")
    assert tile.status_code == 200 and tile.content.startswith(PNG_MAGIC)
    page = c.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and f"leaflet.js?token={TOKEN}" in page.text


def test_host_and_origin_guards_and_closed_cors(served):
    c = served["client"]
    r = c.get("/api/scenes", headers={"Host": "attacker.example"})
    assert r.status_code == 400 and "loopback" in r.json()["error"]
    r = c.post("/api/jobs", json={"scene": "geo.tif", "model": served["model"]},
               headers={"Origin": "http://attacker.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]
    pre = c.options("/api/jobs", headers={"Origin": "http://attacker.example",
                                           "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    get = c.get("/api/jobs", headers={"Origin": "http://attacker.example"})
    assert "access-control-allow-origin" not in get.headers


# ---------------------------------------------------------------- paths and errors


@pytest.mark.parametrize("scene,status", [
    ("../outside.tif", 400), ("/etc/passwd", 400), ("sub/../../x.tif", 400),
    ("link.tif", 403), (".hidden.tif", 400), ("missing.tif", 404), ("notes.txt", 400),
    ("upload:../../etc", 400), ("upload:" + "0" * 32, 404), ("C:/x.tif", 400)])
def test_paths_outside_the_data_root_are_refused(served, scene, status):
    c = served["client"]
    r = c.post("/api/jobs", json={"scene": scene, "model": served["model"]})
    assert r.status_code == status, r.text
    assert r.json()["error"]
    t = c.get("/api/scenes/tiles/0/0/0.png", params={"scene": scene})
    assert t.status_code == status
    assert str(served["settings"].data_root) not in r.text + t.text


def test_listing_leaves_out_links_that_leave_the_root(served):
    names = [s["name"] for s in served["client"].get("/api/scenes").json()["scenes"]]
    assert names == ["geo.tif", "plain.tif", "sub/small.tif"]


def test_unknown_model_and_errors_are_json_without_traceback(served, monkeypatch, data_root,
                                                            tiny_model, tmp_path):
    c = served["client"]
    r = c.post("/api/jobs", json={"scene": "geo.tif", "model": "nope"})
    assert r.status_code == 404 and "no such model" in r.json()["error"]
    r = c.post("/api/jobs", json={"scene": "geo.tif"})
    assert r.status_code == 422 and "model" in r.json()["error"]
    assert c.get("/api/jobs/nope").status_code == 404
    assert c.get("/no/such/route").json()["error"].startswith("no such route")
    from slidewatch.serve import tiles

    def boom():
        raise RuntimeError("secret internals /srv/x")

    monkeypatch.setattr(tiles, "legend", boom)
    raw = client_for(settings_for(data_root, tiny_model, tmp_path),
                     raise_server_exceptions=False)
    r = raw.get("/api/legend")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; the server's log has the details"}
    assert "Traceback" not in r.text and "secret" not in r.text


# ---------------------------------------------------------------- uploads


def test_uploads_limits_types_and_corrupt_files(data_root, tiny_model, tmp_path):
    c = client_for(settings_for(data_root, tiny_model, tmp_path / "w", max_upload_mb=0.25))
    rng = np.random.default_rng(0)
    good = write_image(tmp_path / "up.tif", vegetation(rng, 64, 64), crs=UTM45,
                       transform=TRANSFORM)
    r = c.post("/api/uploads", files={"file": ("my scene.tif", good.read_bytes(), "image/tiff")})
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["name"] == "my_scene.tif" and rec["width"] == 64 and rec["crs"] == "EPSG:32645"
    listed = c.get("/api/scenes").json()["uploads"]
    assert [u["name"] for u in listed] == [rec["scene"]]
    raw = c.post("/api/uploads?name=raw.tif", content=good.read_bytes(),
                 headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 201 and raw.json()["name"] == "raw.tif"
    # too large: the declared length, and a body that grows past the limit while streaming
    big = write_image(tmp_path / "big.tif", rng.integers(0, 255, (400, 400, 3), np.uint8))
    r = c.post("/api/uploads", files={"file": ("big.tif", big.read_bytes(), "image/tiff")})
    assert r.status_code == 413 and "limit of 0.25 MB" in r.json()["error"]

    def chunks():
        data = big.read_bytes()
        for k in range(0, len(data), 65536):
            yield data[k:k + 65536]

    r = c.post("/api/uploads?name=big.tif", content=chunks())
    assert r.status_code == 413
    r = c.post("/api/uploads", files={"file": ("notes.tif", b"just some text", "image/tiff")})
    assert r.status_code == 415 and "not a GeoTIFF" in r.json()["error"]
    trunc = truncate(write_image(tmp_path / "t.tif", rng.integers(0, 255, (128, 128, 3),
                                                                   np.uint8)), 0.5)
    r = c.post("/api/uploads", files={"file": ("t.tif", trunc.read_bytes(), "image/tiff")})
    assert r.status_code == 422 and "corrupt" in r.json()["error"]
    assert str(tmp_path) not in r.text
    r = c.post("/api/uploads", files={"file": ("e.tif", b"", "image/tiff")})
    assert r.status_code == 422 and "empty" in r.json()["error"]
    # refused uploads leave nothing behind
    assert len(list((tmp_path / "w" / "uploads").iterdir())) == 2


# ---------------------------------------------------------------- jobs


def test_finished_jobs_outputs_are_cogs_and_listed(served):
    from rio_cogeo.cogeo import cog_validate

    c, jobs = served["client"], served["jobs"]
    listed = c.get("/api/jobs").json()["jobs"]
    assert {j["id"] for j in listed} >= set(served["ids"].values())
    job = c.get(f"/api/jobs/{served['ids']['geo.tif']}").json()
    assert job["status"] == "done" and job["detections"] >= 1 and job["georeferenced"]
    assert "scene_path" not in job and "model_dir" not in job
    prob = jobs.out_dir(job["id"]) / "geo_probability.tif"
    valid, errors, _ = cog_validate(str(prob))
    assert valid, errors
    r = c.get(f"/api/jobs/{job['id']}/probability.tif")
    assert r.status_code == 200 and r.content[:4] == b"II*\x00"


def test_cli_scan_writes_a_cog(tmp_path, data_root, tiny_model):
    from rio_cogeo.cogeo import cog_validate

    from slidewatch.cli.main import main

    assert main(["scan", str(tiny_model), str(data_root / "geo.tif"), "--out",
                 str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    valid, errors, warnings = cog_validate(str(tmp_path / "geo_probability.tif"))
    assert valid and not errors, errors
    import rasterio

    with rasterio.open(tmp_path / "geo_probability.tif") as ds:
        assert ds.overviews(1) and ds.block_shapes[0] == (256, 256)
        assert ds.tags()["SLIDEWATCH_DETECTIONS"] and ds.nodata == -1.0


class Kill(BaseException):
    """The server process dying mid-scan: nothing below catches it."""


def test_cancel_queued_and_running_jobs(data_root, tiny_model, tmp_path):
    from slidewatch.scan.run import scan

    settings = settings_for(data_root, tiny_model, tmp_path)
    holder = {}

    def cancelling_scan(*args, progress, **kw):
        def wrapped(it, desc="", total=None):
            for k, item in enumerate(progress(it, desc, total)):
                if k == 2:
                    holder["jobs"].cancel(holder["id"])
                yield item
        return scan(*args, progress=wrapped, **kw)

    jobs = JobManager(settings, scan=cancelling_scan)
    holder["jobs"] = jobs
    first = jobs.submit("geo.tif", data_root / "geo.tif", "m", tiny_model)
    second = jobs.submit("sub/small.tif", data_root / "sub" / "small.tif", "m", tiny_model)
    assert jobs.cancel(second["id"])["status"] == "cancelled"
    holder["id"] = first["id"]
    assert jobs.run_next()["status"] == "cancelled"
    assert not jobs.out_dir(first["id"]).exists()  # partial outputs removed
    assert jobs.run_next() is None  # nothing left to run
    again = JobManager(settings)
    assert {j["status"] for j in again.list()} == {"cancelled"}


def test_a_killed_server_resumes_the_scan_on_restart(data_root, tiny_model, tmp_path, served):
    from slidewatch.scan.run import scan

    settings = settings_for(data_root, tiny_model, tmp_path)

    def dying_scan(*args, progress, **kw):
        def wrapped(it, desc="", total=None):
            for k, item in enumerate(progress(it, desc, total)):
                if k == 16:  # after the first 256-row block is on disk
                    raise Kill
                yield item
        return scan(*args, progress=wrapped, **kw)

    jobs = JobManager(settings, scan=dying_scan)
    job = jobs.submit("geo.tif", data_root / "geo.tif", served["model"], tiny_model)
    waiting = jobs.submit("plain.tif", data_root / "plain.tif", served["model"], tiny_model)
    with pytest.raises(Kill):
        jobs.run_next()
    on_disk = json.loads((jobs.job_dir(job["id"]) / "job.json").read_text())
    assert on_disk["status"] == "running"
    assert (jobs.out_dir(job["id"]) / ".geo_scan-state.json").is_file()
    # a new server on the same work folder: the interrupted job first, resumed
    c = client_for(settings)
    restarted = c.get(f"/api/jobs/{job['id']}").json()
    assert restarted["status"] == "queued" and restarted["interrupted"]
    done = c.app.state.jobs.run_next()
    assert done["id"] == job["id"] and done["status"] == "done"
    assert done["scan_status"] == "resumed"
    assert c.app.state.jobs.run_next()["id"] == waiting["id"]
    import rasterio

    ref = served["jobs"].out_dir(served["ids"]["geo.tif"]) / "geo_probability.tif"
    with rasterio.open(ref) as a, rasterio.open(
            c.app.state.jobs.out_dir(job["id"]) / "geo_probability.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    # finished results are still listed after another restart
    listed = {j["id"]: j["status"] for j in client_for(settings).get("/api/jobs").json()["jobs"]}
    assert listed == {job["id"]: "done", waiting["id"]: "done"}


def test_worker_thread_runs_jobs_in_order_one_at_a_time(data_root, tiny_model, tmp_path):
    settings = settings_for(data_root, tiny_model, tmp_path)
    with TestClient(create_app(settings), base_url=BASE) as c:  # lifespan starts the worker
        ids = [c.post("/api/jobs", json={"scene": s, "model": tiny_model.name}).json()["id"]
               for s in ("sub/small.tif", "plain.tif")]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = {j["id"]: j for j in c.get("/api/jobs").json()["jobs"]}
            assert sum(j["status"] == "running" for j in jobs.values()) <= 1
            if all(jobs[i]["status"] == "done" for i in ids):
                break
            time.sleep(0.1)
        assert all(jobs[i]["status"] == "done" for i in ids), jobs
        assert jobs[ids[0]]["finished"] <= jobs[ids[1]]["started"]


# ---------------------------------------------------------------- tiles


def test_tiles_of_georeferenced_and_plain_scenes(served):
    import io

    from PIL import Image

    c = served["client"]
    view = c.get("/api/scenes/view", params={"scene": "geo.tif"}).json()
    assert view["georeferenced"] and 86.9 < view["bounds"][0] < 87.1
    r = c.get("/api/scenes/tiles/14/12151/6909.png", params={"scene": "geo.tif"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (256, 256) and np.asarray(img)[..., -1].max() == 255
    outside = c.get("/api/scenes/tiles/14/0/0.png", params={"scene": "geo.tif"})
    assert outside.status_code == 200 and np.asarray(
        Image.open(io.BytesIO(outside.content)))[..., -1].max() == 0
    plain = c.get("/api/scenes/view", params={"scene": "plain.tif"}).json()
    assert not plain["georeferenced"] and (plain["width"], plain["height"]) == (128, 96)
    r = c.get(f"/api/scenes/tiles/{plain['maxzoom']}/0/0.png", params={"scene": "plain.tif"})
    assert r.status_code == 200 and r.content.startswith(PNG_MAGIC)
    assert c.get("/api/scenes/tiles/40/0/0.png", params={"scene": "plain.tif"}).status_code == 422
    for scene in ("geo.tif", "plain.tif"):
        jid = served["ids"][scene]
        v = c.get(f"/api/jobs/{jid}/view").json()
        z, x, y = (14, 12151, 6909) if v["georeferenced"] else (v["maxzoom"], 0, 0)
        for layer in ("scene", "probability"):
            t = c.get(f"/api/jobs/{jid}/tiles/{layer}/{z}/{x}/{y}.png")
            assert t.status_code == 200 and t.content.startswith(PNG_MAGIC), (scene, layer)
    legend = c.get("/api/legend").json()["stops"]
    assert legend[0]["alpha"] == 0 and legend[-1]["alpha"] == 1
    assert legend[0]["value"] == 0 and legend[-1]["value"] == 1


def test_tiles_of_a_lonlat_scene(tmp_path, tiny_model):
    """Any CRS: a scene in EPSG:4326 is reprojected to Web Mercator tiles as well."""
    import io

    from PIL import Image

    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    write_image(root / "ll.tif", vegetation(rng, 100, 120), crs="EPSG:4326",
                transform=from_origin(87.0, 27.12, 1e-4, 1e-4))
    c = client_for(settings_for(root, tiny_model, tmp_path / "w"))
    view = c.get("/api/scenes/view", params={"scene": "ll.tif"}).json()
    assert view["georeferenced"]
    assert view["bounds"] == pytest.approx([87.0, 27.11, 87.012, 27.12], abs=1e-9)
    import math

    x = int((87.006 + 180) / 360 * 2**16)
    lat = math.radians(27.115)
    y = int((1 - math.asinh(math.tan(lat)) / math.pi) / 2 * 2**16)
    r = c.get(f"/api/scenes/tiles/16/{x}/{y}.png", params={"scene": "ll.tif"})
    assert r.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(r.content)))[..., -1].max() == 255


# ---------------------------------------------------------------- reviews


def test_review_flow_conflict_chip_and_exports(served):
    c = served["client"]
    jid = served["ids"]["geo.tif"]
    fc = c.get(f"/api/jobs/{jid}/detections").json()
    assert fc["coordinates"] == "lonlat" and fc["features"]
    f = fc["features"][0]
    p = f["properties"]
    assert p["status"] == "pending" and p["version"] == 1 and p["origin"] == "scan"
    assert 86.9 < f["geometry"]["coordinates"][0][0][0][0] < 87.1  # WGS84 lon
    chip = c.get(f"/api/jobs/{jid}/detections/{f['id']}/chip.png")
    assert chip.status_code == 200 and chip.content.startswith(PNG_MAGIC)
    cam = c.get(f"/api/jobs/{jid}/detections/{f['id']}/gradcam.png")
    assert cam.status_code == 200 and cam.content.startswith(PNG_MAGIC)
    url = f"/api/jobs/{jid}/detections/{f['id']}"
    ok = c.put(url, json={"version": 1, "status": "accepted", "reviewer": "ana",
                          "note": "clear scar"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["properties"]["version"] == 2
    stale = c.put(url, json={"version": 1, "status": "rejected", "reviewer": "ben"})
    assert stale.status_code == 409
    err = stale.json()
    assert "changed by ana" in err["error"] and "reload" in err["error"]
    assert err["current"]["status"] == "accepted" and err["current"]["version"] == 2
    # redraw: a smaller square inside the scene, in lon/lat
    ring = [[87.0015, 27.1190], [87.0030, 27.1190], [87.0030, 27.1200], [87.0015, 27.1200],
            [87.0015, 27.1190]]
    redrawn = c.put(url, json={"version": 2, "geometry": {"type": "Polygon",
                                                          "coordinates": [ring]},
                               "reviewer": "ana"})
    assert redrawn.status_code == 200, redrawn.text
    rp = redrawn.json()["properties"]
    assert rp["status"] == "redrawn" and rp["version"] == 3 and rp["area_m2"] > 0
    added = c.post(f"/api/jobs/{jid}/detections", json={
        "geometry": {"type": "Polygon", "coordinates": [ring]}, "reviewer": "ben",
        "note": "missed one"})
    assert added.status_code == 201, added.text
    assert added.json()["properties"]["origin"] == "drawn"
    bad = c.post(f"/api/jobs/{jid}/detections", json={
        "geometry": {"type": "Point", "coordinates": [87, 27]}, "reviewer": "ben"})
    assert bad.status_code == 400 and "Polygon" in bad.json()["error"]
    gj = c.get(f"/api/jobs/{jid}/reviews.geojson")
    assert gj.status_code == 200 and "attachment" in gj.headers["content-disposition"]
    statuses = sorted(x["properties"]["status"] for x in gj.json()["features"])
    assert "redrawn" in statuses and "added" in statuses
    gpkg = c.get(f"/api/jobs/{jid}/reviews.gpkg")
    assert gpkg.status_code == 200 and gpkg.content[:16] == b"SQLite format 3\x00"


def test_concurrent_reviews_of_one_detection_keep_one_and_refuse_the_other(served):
    c = served["client"]
    jid = served["ids"]["plain.tif"]
    fc = c.get(f"/api/jobs/{jid}/detections").json()
    assert fc["coordinates"] == "pixels"
    fid = fc["features"][0]["id"]
    version = fc["features"][0]["properties"]["version"]
    codes, barrier = [], threading.Barrier(4)

    def review(name):
        barrier.wait()
        r = c.put(f"/api/jobs/{jid}/detections/{fid}",
                  json={"version": version, "status": "accepted", "reviewer": name})
        codes.append(r.status_code)

    threads = [threading.Thread(target=review, args=(f"r{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409, 409, 409]
    now = c.get(f"/api/jobs/{jid}/detections").json()["features"][0]["properties"]
    assert now["version"] == version + 1


# ---------------------------------------------------------------- the page in a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_in_headless_chromium_talks_to_loopback_only(served):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); browser test skipped")
    sync_api = pytest.importorskip("playwright.sync_api")
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(served["client"].app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    origin = f"http://127.0.0.1:{port}"
    requests, errors = [], []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.on("request", lambda req: requests.append(req.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            jid = served["ids"]["geo.tif"]
            page.goto(f"{origin}/?job={jid}", wait_until="load")
            page.wait_for_selector("#detections tbody tr", timeout=90000)
            page.wait_for_selector("#map canvas", timeout=90000)
            page.wait_for_selector("#map img.leaflet-tile-loaded", timeout=90000)
            rows = page.locator("#detections tbody tr").count()
            assert rows >= 1
            page.click("#detections th[data-key=mean_prob]")  # sorted descending first
            cells = page.locator("#detections tbody tr td:nth-child(3)").all_inner_texts()
            assert cells == sorted(cells, key=float, reverse=True)
            page.click("#detections th[data-key=mean_prob]")
            cells = page.locator("#detections tbody tr td:nth-child(3)").all_inner_texts()
            assert cells == sorted(cells, key=float)
            page.locator("#detections tbody tr:has(td.status-pending)").first.click()
            page.wait_for_selector("#selected:not([hidden])", timeout=60000)
            # polled from here: wait_for_function compiles its predicate in the page, which
            # the page's Content-Security-Policy (no 'unsafe-eval') forbids
            deadline = time.monotonic() + 60
            while not page.evaluate("document.getElementById('chip').naturalWidth > 0"):
                assert time.monotonic() < deadline, "the detection's chip never loaded"
                page.wait_for_timeout(200)
            page.fill("#reviewer", "browser")
            page.click("button.review[data-status=rejected]")
            page.wait_for_selector("#detections tbody tr.selected td.status-rejected",
                                   timeout=60000)
            assert page.inner_text("#review-msg").startswith("saved")
            assert page.locator("#legend-bar").evaluate(
                "e => getComputedStyle(e).backgroundImage").startswith("linear-gradient")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert not errors, errors
    leaving = [u for u in requests if not (u.startswith(origin + "/") or u.startswith("data:"))]
    assert not leaving, leaving
    assert any("/tiles/probability/" in u for u in requests)
