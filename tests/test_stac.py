"""`slidewatch imagery search|fetch` against a STAC API on loopback (tests/_stac_server.py):
items over a box or around inventory points, dates and cloud limits, the windows of COG assets
read through HTTP range requests onto one grid per area (pixel values known from the generated
assets, also from an item in another CRS), tags, items.json, signers and headers, and the bad
inputs (unreachable catalogue, no item and which filter removed them, missing bands)."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import rasterio
from _stac_server import StacServer, closed_port_url, cog_bytes
from rasterio.transform import from_origin
from rasterio.warp import transform, transform_bounds

from slidewatch.cli.main import main
from slidewatch.errors import ConfigError
from slidewatch.stac import catalog as stac_catalog
from slidewatch.stac.catalog import parse_dates
from slidewatch.stac.fetch import ITEMS_JSON, bbox_area, fetch_imagery
from slidewatch.stac.grid import grid_for_bbox, utm_crs
from slidewatch.stac.tags import acquisition_time

pystac_client = pytest.importorskip("pystac_client")

UTM = "EPSG:32645"
ORIGIN = (500000.0, 3000000.0)  # UTM 45N, about 87.0 E 27.1 N
SIZE = 512
RES = 10.0
BANDS = {"B04": ("red", 0), "B03": ("green", 3000), "B02": ("blue", 6000)}
S2, OTHER = "sentinel-2-test", "landsat-test"
# item id -> (collection, datetime, cloud cover, CRS of its assets, value offset)
ITEMS = {
    "S2_20230501": (S2, "2023-05-01T04:50:00Z", 10.0, UTM, 0),
    "S2_20230615": (S2, "2023-06-15T04:50:00Z", 80.0, UTM, 10000),
    "S2_20230720": (S2, "2023-07-20T04:50:00Z", 5.0, "EPSG:4326", 20000),
    "LS_20230601": (OTHER, "2023-06-01T04:40:00Z", 1.0, UTM, 30000),
}
FAR_ITEM = "S2_FAR_20230510"  # an S2 item in Europe: never over the area
# the test area: a 500 m square in the middle of the assets
AREA_UTM = (501000.0, 2997000.0, 501500.0, 2997500.0)


def ramp(rows, cols):
    """The field every asset samples: 1000 + col + 2 row on the UTM asset lattice."""
    return 1000.0 + cols + 2.0 * rows


def footprint(crs, transform, width, height):
    w, s, e, n = transform_bounds(crs, "EPSG:4326", transform.c, transform.f + transform.e *
                                  height, transform.c + transform.a * width, transform.f,
                                  densify_pts=21)
    return [w, s, e, n], {"type": "Polygon",
                          "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def make_assets(rng) -> tuple[dict, dict]:
    """``(files {name: bytes}, arrays {name: (array, crs, transform)})`` of every item's
    bands: UTM items sample the ramp on the UTM lattice plus noise; the EPSG:4326 item samples
    the same ramp (no noise) at its own pixel centres."""
    files, arrays = {}, {}
    utm_t = from_origin(*ORIGIN, RES, RES)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    for item, (_, _, _, crs, offset) in ITEMS.items():
        for band, (_, band_offset) in BANDS.items():
            if crs == UTM:
                arr = ramp(rows, cols) + rng.integers(0, 40, (SIZE, SIZE)) + offset + band_offset
                t = utm_t
            else:
                w, s, e, n = transform_bounds(UTM, crs, ORIGIN[0], ORIGIN[1] - SIZE * RES,
                                              ORIGIN[0] + SIZE * RES, ORIGIN[1])
                d = 0.0001
                t = from_origin(w, n, d, d)
                h, wd = int((n - s) / d), int((e - w) / d)
                r, c = np.mgrid[0:h, 0:wd].astype(float)
                lon, lat = t.c + (c + 0.5) * d, t.f - (r + 0.5) * d
                x, y = transform(crs, UTM, lon.ravel().tolist(), lat.ravel().tolist())
                x, y = np.array(x).reshape(h, wd), np.array(y).reshape(h, wd)
                ucol = (x - ORIGIN[0]) / RES - 0.5
                urow = (ORIGIN[1] - y) / RES - 0.5
                arr = ramp(urow, ucol) + offset + band_offset
            arr = np.rint(arr).astype(np.uint16)
            name = f"{item}_{band}.tif"
            files[name] = cog_bytes(arr, crs, t)
            arrays[name] = (arr, crs, t)
    return files, arrays


def build_catalogue(base: str, arrays: dict) -> tuple[list, list]:
    collections = [{"type": "Collection", "id": cid, "stac_version": "1.0.0",
                    "description": f"{cid} for the tests", "license": "proprietary",
                    "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                               "temporal": {"interval": [["2023-01-01T00:00:00Z", None]]}},
                    "links": [{"rel": "self", "href": f"{base}/collections/{cid}"},
                              {"rel": "root", "href": f"{base}/"}]}
                   for cid in (S2, OTHER)]
    items = []
    for item, (cid, when, cloud, crs, _) in ITEMS.items():
        arr, crs, t = arrays[f"{item}_B04.tif"]
        bbox, geom = footprint(crs, t, arr.shape[1], arr.shape[0])
        items.append(stac_item(base, item, cid, when, cloud, bbox, geom, crs))
    far = [10.0, 45.0, 10.05, 45.05]
    items.append(stac_item(base, FAR_ITEM, S2, "2023-05-10T10:00:00Z", 0.0, far,
                           footprint("EPSG:4326", from_origin(10, 45.05, 0.0005, 0.0005), 100,
                                     100)[1], "EPSG:32632"))
    return collections, items


def stac_item(base, item, cid, when, cloud, bbox, geom, crs) -> dict:
    assets = {band: {"href": f"{base}/assets/{item}_{band}.tif",
                     "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                     "roles": ["data"], "eo:bands": [{"name": band, "common_name": common}]}
              for band, (common, _) in BANDS.items()}
    assets["thumbnail"] = {"href": f"{base}/assets/{item}.png", "type": "image/png",
                           "roles": ["thumbnail"]}
    return {"type": "Feature", "stac_version": "1.0.0",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
            "id": item, "collection": cid, "geometry": geom, "bbox": bbox,
            "properties": {"datetime": when, "eo:cloud_cover": cloud,
                           "proj:epsg": int(crs.split(":")[1])},
            "links": [{"rel": "self", "href": f"{base}/collections/{cid}/items/{item}"},
                      {"rel": "collection", "href": f"{base}/collections/{cid}"},
                      {"rel": "root", "href": f"{base}/"}],
            "assets": assets}


@pytest.fixture(scope="module")
def assets():
    return make_assets(np.random.default_rng(3))


@pytest.fixture
def api(assets):
    """A fresh loopback STAC API (its request log starts empty) over the generated assets."""
    files, arrays = assets
    with StacServer(lambda base: build_catalogue(base, arrays)) as server:
        server.files.update(files)
        yield server


@pytest.fixture(scope="module")
def area_bbox():
    return tuple(transform_bounds(UTM, "EPSG:4326", *AREA_UTM, densify_pts=21))


def bbox_text(bbox):
    return ",".join(f"{v:.7f}" for v in bbox)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def read_tif(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds.tags(), ds.descriptions, ds


def expected_window(arrays, item, band, grid_transform, height, width):
    """The UTM asset's pixels under a grid on the asset lattice."""
    arr = arrays[f"{item}_{band}.tif"][0]
    col0 = round((grid_transform.c - ORIGIN[0]) / RES)
    row0 = round((ORIGIN[1] - grid_transform.f) / RES)
    return arr[row0:row0 + height, col0:col0 + width]


# ---------------------------------------------------------------- fetch onto one grid


def test_fetch_writes_the_windows_on_one_grid_with_tags_and_items_json(capsys, tmp_path, api,
                                                                       assets, area_bbox):
    _, arrays = assets
    out = tmp_path / "imagery"
    code, stdout, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                            "--bbox", bbox_text(area_bbox), "--dates", "2023-04-01/2023-08-31",
                            "--bands", "B04,green,B02", "--out", out, "--no-progress")
    assert code == 0, err
    files = sorted(p.name for p in out.iterdir())
    assert files == ["20230501_S2_20230501.tif", "20230615_S2_20230615.tif",
                     "20230720_S2_20230720.tif", ITEMS_JSON]
    grids = []
    for name, item in (("20230501_S2_20230501.tif", "S2_20230501"),
                       ("20230615_S2_20230615.tif", "S2_20230615")):
        data, profile, tags, desc, _ = read_tif(out / name)
        grids.append((profile["crs"], profile["transform"], data.shape))
        t = profile["transform"]
        assert profile["crs"].to_epsg() == 32645 and t.a == 10 and t.e == -10
        assert t.c % 10 == 0 and t.f % 10 == 0  # on the lattice of the assets
        assert t.c <= AREA_UTM[0] and t.f >= AREA_UTM[3]
        assert t.c + 10 * data.shape[2] >= AREA_UTM[2] and t.f - 10 * data.shape[1] <= AREA_UTM[1]
        assert data.shape[1] < 60 and data.shape[2] < 60  # the area, not the whole asset
        for k, band in enumerate(BANDS):  # exact pixels of the asset window, band order kept
            np.testing.assert_array_equal(data[k], expected_window(arrays, item, band, t,
                                                                   data.shape[1],
                                                                   data.shape[2]))
        assert desc == ("B04", "green", "B02")
        assert tags["SLIDEWATCH_ITEM"] == item and tags["SLIDEWATCH_COLLECTION"] == S2
        assert tags["SLIDEWATCH_STAC"] == api.url
        assert tags["SLIDEWATCH_BANDS"] == "B04,green,B02"
        assert float(tags["SLIDEWATCH_COVERAGE"]) == 1.0
        assert profile["dtype"] == "uint16" and profile["nodata"] == 0
    # the item in EPSG:4326 lands on the same grid, warped: values follow the same ramp
    data, profile, tags, _, _ = read_tif(out / "20230720_S2_20230720.tif")
    assert (profile["crs"], profile["transform"], data.shape) == grids[0] == grids[1]
    t = profile["transform"]
    rows, cols = np.mgrid[0:data.shape[1], 0:data.shape[2]]
    want = ramp(rows + (ORIGIN[1] - t.f) / RES, cols + (t.c - ORIGIN[0]) / RES) + 20000
    assert np.abs(data[0].astype(float) - want).max() <= 2.0
    assert np.abs(data[1].astype(float) - want - 3000).max() <= 2.0
    assert tags["SLIDEWATCH_DATETIME"] == "2023-07-20T04:50:00Z"
    assert tags["SLIDEWATCH_CLOUD_COVER"] == "5"
    assert tags["TIFFTAG_DATETIME"] == "2023:07:20 04:50:00"
    doc = json.loads((out / ITEMS_JSON).read_text())
    assert doc["stac"] == api.url and doc["collection"] == S2 and doc["fetched"] is True
    (area,) = doc["areas"]
    assert [i["id"] for i in area["items"]] == ["S2_20230501", "S2_20230615", "S2_20230720"]
    assert [i["cloud_cover"] for i in area["items"]] == [10.0, 80.0, 5.0]
    assert area["items"][0]["file"] == "20230501_S2_20230501.tif"
    assert area["grid"]["crs"] == "EPSG:32645" and area["grid"]["resolution"] == 10.0
    assert area["items"][0]["assets"]["B04"] == f"{api.url}/assets/S2_20230501_B04.tif"
    assert "3 image(s)" in err or "3 images" in err


def test_only_the_windows_are_read_through_range_requests(tmp_path, api, area_bbox):
    fetch_imagery(api.url, S2, [bbox_area(area_bbox)], parse_dates("2023-05-01"), tmp_path / "o",
                  bands=["B04"])
    size = len(api.files["S2_20230501_B04.tif"])
    gets = [r for r in api.log if r[1] == "/assets/S2_20230501_B04.tif" and r[0] == "GET"]
    assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets)
    assert 0 < api.sent["S2_20230501_B04.tif"] < size / 2
    assert "S2_20230501_B03.tif" not in api.sent  # bands not asked for are not read


def test_a_coarser_resolution_reads_decimated_and_averages(tmp_path, api, assets, area_bbox):
    _, arrays = assets
    s = fetch_imagery(api.url, S2, [bbox_area(area_bbox)], parse_dates("2023-05-01"),
                      tmp_path / "o", bands=["red"], resolution=20, resampling="nearest")
    (found,) = s.areas[0].written
    data, profile, _, desc, _ = read_tif(tmp_path / "o" / found.file)
    t = profile["transform"]
    assert t.a == 20 and t.c % 20 == 0 and t.f % 20 == 0 and desc == ("red",)
    full = expected_window(arrays, "S2_20230501", "B04", t, 2 * data.shape[1],
                           2 * data.shape[2]).astype(float)
    mean = full.reshape(data.shape[1], 2, data.shape[2], 2).mean(axis=(1, 3))
    assert np.abs(data[0] - mean).max() <= 0.5  # the asset's overview: 2x2 averages
    gets = [r for r in api.log if r[1] == "/assets/S2_20230501_B04.tif" and r[0] == "GET"]
    assert len(gets) <= 3  # header and the overview's tiles


def test_around_inventory_points_one_folder_per_point_and_the_cloud_limit(capsys, tmp_path,
                                                                           api):
    (lon1, lon2, lon3), (lat1, lat2, lat3) = transform(
        UTM, "EPSG:4326", [501000.0, 503000.0, 0.0], [2997000.0, 2996000.0, 0.0])
    lon3, lat3 = 20.0, 50.0  # far from every item
    inv = tmp_path / "inventory.csv"
    inv.write_text("id,date,latitude,longitude\n"
                   f"ev-1,2023-05-20,{lat1},{lon1}\nev 2,2023-06-20,{lat2},{lon2}\n"
                   f"ev-3,2023-06-20,{lat3},{lon3}\n")
    out = tmp_path / "around"
    code, stdout, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                            "--around", inv, "--radius", 200, "--dates", "2023-04-01/2023-08-31",
                            "--max-cloud", 20, "--bands", "B04", "--out", out, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ev-1", "ev_2", ITEMS_JSON]
    for folder in ("ev-1", "ev_2"):  # the 80 % cloudy item is left out
        files = sorted(p.name for p in (out / folder).iterdir())
        assert files == ["20230501_S2_20230501.tif", "20230720_S2_20230720.tif"]
        shapes = {read_tif(out / folder / f)[0].shape for f in files}
        assert shapes == {(1, 41, 41)}  # 2 x 20 px + the point's pixel
    assert "warning: area ev-3" in err and "at any date" in err
    doc = json.loads((out / ITEMS_JSON).read_text())
    names = [a["name"] for a in doc["areas"]]
    assert names == ["ev-1", "ev_2", "ev-3"] and doc["areas"][2]["items"] == []
    assert doc["areas"][0]["inventory"]["id"] == "ev-1" and doc["max_cloud"] == 20


def test_search_lists_items_pages_and_writes_items_json(capsys, tmp_path, api, area_bbox):
    out = tmp_path / "s"
    code, stdout, err = run(capsys, "imagery", "search", "--stac", api.url, "--collection", S2,
                            "--bbox", bbox_text(area_bbox), "--dates", "2023-01-01/..",
                            "--out", out, "--no-progress")
    assert code == 0, err
    lines = stdout.splitlines()
    assert [ln.split()[2] for ln in lines] == ["S2_20230501", "S2_20230615", "S2_20230720"]
    assert "cloud 80%" in lines[1]
    doc = json.loads((out / ITEMS_JSON).read_text())
    assert doc["fetched"] is False and len(doc["areas"][0]["items"]) == 3
    assert not [p for p in out.iterdir() if p.suffix == ".tif"]  # nothing fetched
    assert not [r for r in api.log if r[1].startswith("/assets/")]
    searches = [r for r in api.log if r[1] == "/search"]
    assert len(searches) == 2  # page size 2: the next link was followed


def test_a_signer_signs_the_asset_addresses(capsys, tmp_path, assets, area_bbox, monkeypatch):
    files, arrays = assets
    (tmp_path / "mysigner.py").write_text(
        "def sign(obj):\n"
        "    for asset in getattr(obj, 'assets', {}).values():\n"
        "        asset.href = asset.href + '?token=s3cret'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mysigner", raising=False)
    with StacServer(lambda base: build_catalogue(base, arrays), token="s3cret") as server:
        server.files.update(files)
        args = ["imagery", "fetch", "--stac", server.url, "--collection", S2, "--bbox",
                bbox_text(area_bbox), "--dates", "2023-05-01", "--bands", "B04",
                "--no-progress"]
        code, _, err = run(capsys, *args, "--out", tmp_path / "unsigned")
        assert code == 2 and "403" in err and "S2_20230501_B04.tif" in err
        assert not (tmp_path / "unsigned").exists()
        code, _, err = run(capsys, *args, "--out", tmp_path / "signed", "--signer",
                           "mysigner:sign")
        assert code == 0, err
    doc = json.loads((tmp_path / "signed" / ITEMS_JSON).read_text())
    href = doc["areas"][0]["items"][0]["assets"]["B04"]
    assert href.endswith("S2_20230501_B04.tif")  # the token stays out of items.json


def test_headers_go_to_the_catalogue_and_the_assets(capsys, tmp_path, assets, area_bbox):
    files, arrays = assets
    with StacServer(lambda base: build_catalogue(base, arrays),
                    header=("X-Api-Key", "k1")) as server:
        server.files.update(files)
        args = ["imagery", "fetch", "--stac", server.url, "--collection", S2, "--bbox",
                bbox_text(area_bbox), "--dates", "2023-05-01", "--bands", "B04",
                "--no-progress"]
        code, _, err = run(capsys, *args, "--out", tmp_path / "a")
        assert code == 2 and "401" in err and server.url in err
        code, _, err = run(capsys, *args, "--out", tmp_path / "b", "--header", "X-Api-Key: k1")
        assert code == 0, err
        assert server.sent["S2_20230501_B04.tif"] > 0


def test_signer_names_and_the_planetary_computer_extra(monkeypatch):
    assert stac_catalog.load_signer(None) is None
    assert stac_catalog.load_signer("json:dumps") is json.dumps
    with pytest.raises(ConfigError, match="not a signer name"):
        stac_catalog.load_signer("nosuchsigner")
    with pytest.raises(ConfigError, match="has no 'nothere'"):
        stac_catalog.load_signer("json:nothere")
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # not installed
    with pytest.raises(ConfigError, match=r"slidewatch\[planetary\]"):
        stac_catalog.load_signer("planetary-computer")


# ---------------------------------------------------------------- grids


def test_grids_snap_to_the_resolution_and_geographic_items_use_utm():
    g = grid_for_bbox((87.0, 27.0, 87.01, 27.01), utm_crs(87.005, 27.005), 10.0)
    assert g.crs.to_epsg() == 32645 and g.transform.c % 10 == 0 and g.transform.f % 10 == 0
    w, s, e, n = g.bounds
    x, y = transform("EPSG:4326", g.crs, [87.0, 87.01], [27.0, 27.01])
    assert w <= min(x) and e >= max(x) and s <= min(y) and n >= max(y)
    assert utm_crs(-70.5, -33.4).to_epsg() == 32719


# ---------------------------------------------------------------- bad input


def test_unreachable_catalogue_is_one_line_within_seconds(capsys, tmp_path):
    url = closed_port_url()
    t0 = time.monotonic()
    code, _, err = run(capsys, "imagery", "search", "--stac", url, "--collection", S2,
                       "--bbox", "87,27,87.1,27.1", "--dates", "2023-01-01/2023-02-01")
    assert time.monotonic() - t0 < 5
    assert code == 2 and err.count("\n") == 1 and url in err and "connection refused" in err


def test_a_catalogue_that_never_answers_times_out(capsys):
    with StacServer(None, silent=True) as server:
        t0 = time.monotonic()
        code, _, err = run(capsys, "imagery", "search", "--stac", server.url, "--collection", S2,
                           "--bbox", "87,27,87.1,27.1", "--dates", "2023-01-01/2023-02-01",
                           "--timeout", "1")
        assert time.monotonic() - t0 < 5
    assert code == 2 and err.count("\n") == 1 and server.url in err and "no answer" in err


@pytest.mark.parametrize("collection,bbox,dates,cloud,needle", [
    ("nope", None, "2023-01-01/2023-12-31", None,
     "no collection 'nope' (it has: landsat-test, sentinel-2-test)"),
    (S2, "-60,-10,-59.9,-9.9", "2023-01-01/2023-12-31", None, "at any date"),
    (S2, None, "2022-01-01/2022-12-31", None, "within 2022-01-01/2022-12-31 (--dates)"),
    (S2, None, "2023-06-01/2023-06-30", 50,
     "1 item(s) of sentinel-2-test over bbox 87.0"),
])
def test_no_item_says_which_filter_removed_them(capsys, tmp_path, api, area_bbox, collection,
                                                bbox, dates, cloud, needle):
    args = ["imagery", "fetch", "--stac", api.url, "--collection", collection, "--bbox",
            bbox or bbox_text(area_bbox), "--dates", dates, "--out", tmp_path / "o"]
    if cloud is not None:
        args += ["--max-cloud", cloud]
    code, _, err = run(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err and api.url in err
    if cloud is not None:
        assert "none with eo:cloud_cover <= 50% (--max-cloud)" in err and "80% on" in err
    assert not (tmp_path / "o").exists()


def test_missing_bands_are_named_before_anything_is_read(capsys, tmp_path, api, area_bbox):
    code, _, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-05-01", "--bands",
                       "B04,B08,nir", "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert "item S2_20230501 of sentinel-2-test: no band B08, nir" in err
    assert "assets: B04, B03, B02, thumbnail" in err and "band names: b02, b03" in err
    assert not [r for r in api.log if r[1].startswith("/assets/")]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needle", [
    (["--bbox", "87,27,87.1,27.1", "--around", "x.csv"], "--bbox, --around: give one"),
    (["--dates", "2023-13-01/2023-12-31"], "--dates: cannot read '2023-13-01'"),
    (["--dates", "2023-06-01/2023-05-01"], "--dates: the end 2023-05-01 is before"),
    (["--dates", "last summer"], "--dates: cannot read 'last summer'"),
    (["--bbox", "87,27,86,28"], "--bbox: '87,27,86,28' is not a box"),
    (["--bbox", "87,27"], "--bbox: give W,S,E,N"),
    (["--max-cloud", "150"], "--max-cloud: must be a percentage"),
    (["--header", "no colon"], "--header: give NAME: VALUE"),
    (["--stac", "ftp://x"], "--stac: 'ftp://x' is neither an http(s) URL of a STAC API nor"),
])
def test_bad_options_are_one_line(capsys, tmp_path, args, needle):
    base = {"--stac": "http://127.0.0.1:9/", "--collection": S2, "--bbox": "87,27,87.1,27.1",
            "--dates": "2023-01-01/2023-02-01"}
    for k in list(base):
        if k in args or (k == "--bbox" and "--around" in args and "--bbox" in args):
            del base[k]
    flat = [str(x) for kv in base.items() for x in kv] + [str(a) for a in args]
    code, _, err = run(capsys, "imagery", "fetch", *flat, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_acquisition_time_from_tags(tmp_path):
    from conftest import write_image

    p = write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    assert acquisition_time(p) == (None, None)
    with rasterio.open(p, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2021:03:04 05:06:07")
    t, tag = acquisition_time(p)
    assert (t.isoformat(), tag) == ("2021-03-04T05:06:07+00:00", "TIFFTAG_DATETIME")


def test_cli_defaults_match_the_library():
    from slidewatch.cli import imagery as cli_imagery
    from slidewatch.stac import catalog, fetch

    assert cli_imagery.DEFAULTS == {"radius": fetch.DEFAULT_RADIUS,
                                    "timeout": catalog.DEFAULT_TIMEOUT,
                                    "max_items": catalog.DEFAULT_MAX_ITEMS,
                                    "resampling": fetch.DEFAULT_RESAMPLING}
    assert cli_imagery.RESAMPLING == fetch.RESAMPLING


def test_a_signer_that_fails_is_one_line(capsys, tmp_path, api, area_bbox, monkeypatch):
    (tmp_path / "badsigner.py").write_text(
        "def sign(item):\n    raise RuntimeError('token service down')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "badsigner", raising=False)
    code, _, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-05-01", "--signer",
                       "badsigner:sign", "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert "--signer badsigner:sign: signing item S2_20230501 failed (token service down)" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- chips from the catalogue


def test_from_inventory_with_stac_cuts_chips_from_the_least_cloudy_image(capsys, tmp_path, api,
                                                                          assets):
    import csv

    _, arrays = assets
    (lon1, lon2), (lat1, lat2) = transform(UTM, "EPSG:4326", [501005.0, 503005.0],
                                           [2996995.0, 2995995.0])
    inv = tmp_path / "inventory.csv"
    inv.write_text("id,date,latitude,longitude\n"
                   f"ev-1,2023-04-25,{lat1},{lon1}\n"
                   f"ev-2,06/01/2023 12:00:00 AM,{lat2},{lon2}\n"
                   f"ev-3,sometime,{lat2},{lon1}\n")
    out, kept = tmp_path / "chips", tmp_path / "scenes"
    code, stdout, err = run(capsys, "data", "from-inventory", inv, "--stac", api.url,
                            "--collection", S2, "--days-after", 60, "--days-before", 40,
                            "--bands", "B04,B03,B02", "--size", 16, "--min-distance", 100,
                            "--out", out, "--scenes", kept)
    assert code == 0, err
    assert "3 event(s): 2 image(s) after, 1 before; skipped: unreadable date 1, no item " \
           "before 1" in stdout
    rows = list(csv.DictReader((out / "tiles.csv").open(newline="")))
    pos = [r for r in rows if r["label"] == "landslide"]
    got = sorted((r["inventory_id"], r["image_role"], r["stac_item"], r["days_from_event"])
                 for r in pos)
    # ev-1: 2023-05-01 (10 %) is the one item within 60 days; ev-2: 2023-07-20 (5 %) beats
    # 2023-06-15 (80 %); before ev-2: 2023-05-01; before ev-1 nothing within 40 days
    assert got == [("ev-1", "after", "S2_20230501", "6.201"),
                   ("ev-2", "after", "S2_20230720", "49.201"),
                   ("ev-2", "before", "S2_20230501", "-30.799")]
    assert {r["region"] for r in rows} == {"ev-1", "ev-2"}
    assert all(r["source_image"].startswith(r["region"] + "/") for r in rows)
    assert {r["acquired"] for r in pos} == {"2023-05-01T04:50:00Z", "2023-07-20T04:50:00Z"}
    assert len(rows) == 6  # 3 landslide chips, 3 landslide-free ones (ratio 1)
    chip = next(r for r in pos if r["inventory_id"] == "ev-1")
    with rasterio.open(out / chip["path"]) as ds:
        data, t = ds.read(), ds.transform
    assert data.shape == (3, 16, 16)
    np.testing.assert_array_equal(data[0], expected_window(arrays, "S2_20230501", "B04", t, 16,
                                                           16))
    assert len(list(kept.glob("*.tif"))) == 3
    doc = json.loads((out / "stac_items.json").read_text())
    assert [i["item"] for i in doc["images"]] == ["S2_20230501", "S2_20230720", "S2_20230501"]


def test_from_inventory_with_stac_bad_input(capsys, tmp_path, api):
    inv = tmp_path / "inventory.csv"
    inv.write_text("id,date,latitude,longitude\nev-1,,27.1,87.0\n")
    base = ["data", "from-inventory", inv, "--out", tmp_path / "o"]
    code, _, err = run(capsys, *base, "--stac", api.url, "--collection", S2)
    assert code == 2 and "no event with a readable date (column 'date'" in err
    code, _, err = run(capsys, *base, "--stac", api.url)
    assert code == 2 and "--collection: needed with --stac" in err
    code, _, err = run(capsys, *base)
    assert code == 2 and "SCENES: give one or more GeoTIFF scenes, or --stac" in err
    code, _, err = run(capsys, *base, "--stac", api.url, "--collection", S2, "--days-after", 0)
    assert code == 2 and "--days-after: must be > 0" in err
    assert not (tmp_path / "o").exists()


def test_event_dates_in_inventory_formats():
    from slidewatch.stac.chips import parse_event_date

    want = "2023-05-20T00:00:00+00:00"
    for text in ("2023-05-20", "05/20/2023", "5/20/2023 12:00:00 AM", "2023-05-20 00:00:00",
                 "2023:05:20 00:00:00"):
        assert parse_event_date(text).isoformat() == want, text
    assert parse_event_date("3/2/07").isoformat() == "2007-03-02T00:00:00+00:00"
    assert parse_event_date("") is None and parse_event_date("last spring") is None


def test_a_missing_asset_and_a_url_that_is_no_catalogue_are_one_line(capsys, tmp_path, api,
                                                                     area_bbox):
    del api.files["S2_20230501_B03.tif"]
    code, _, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-05-01", "--bands",
                       "B04,B03", "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert f"{api.url}/assets/S2_20230501_B03.tif: cannot read it" in err and "404" in err
    assert not (tmp_path / "o").exists()
    url = f"{api.url}/not/a/catalogue"
    code, _, err = run(capsys, "imagery", "search", "--stac", url, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-05-01")
    assert code == 2 and err.count("\n") == 1
    assert f"{url}: opening the catalogue failed (HTTP 404" in err


# ---------------------------------------------------------------- static catalogues


def write_static_catalogue(root, files: dict, arrays: dict):
    """The same collections and items as the API's, as a self-contained static catalogue
    written with pystac (catalog.json, collection.json, item JSON), assets as local COGs."""
    import pystac

    root.mkdir(parents=True, exist_ok=True)
    (root / "assets").mkdir()
    for name, data in files.items():
        (root / "assets" / name).write_bytes(data)
    base = "http://placeholder"
    collections, items = build_catalogue(base, arrays)
    cat = pystac.Catalog("test-static", "a static catalogue for the tests")
    for c in collections:
        coll = pystac.Collection.from_dict({**c, "links": []})
        for raw in items:
            if raw["collection"] == c["id"]:
                raw = {**raw, "links": []}
                for asset in raw["assets"].values():
                    asset["href"] = str(root / "assets" / asset["href"].rsplit("/", 1)[1])
                coll.add_item(pystac.Item.from_dict(raw))
        cat.add_child(coll)
    cat.normalize_hrefs(str(root))
    cat.make_all_asset_hrefs_relative()
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@pytest.fixture(scope="module")
def static_catalogue(tmp_path_factory, assets):
    files, arrays = assets
    return write_static_catalogue(tmp_path_factory.mktemp("static") / "cat", files, arrays)


def test_a_static_catalogue_is_searched_and_fetched_like_an_api(capsys, tmp_path, api,
                                                                static_catalogue, area_bbox):
    args = ["--collection", S2, "--bbox", bbox_text(area_bbox), "--dates",
            "2023-04-01/2023-06-30", "--bands", "B04,green", "--no-progress"]
    code, _, err = run(capsys, "imagery", "fetch", "--stac", api.url, *args, "--out",
                       tmp_path / "from-api")
    assert code == 0, err
    for given in (static_catalogue, static_catalogue.parent):  # the file or its folder
        out = tmp_path / f"static-{given.name}"
        code, _, err = run(capsys, "imagery", "fetch", "--stac", given, *args, "--out", out)
        assert code == 0, err
        names = sorted(p.name for p in out.glob("*.tif"))
        assert names == ["20230501_S2_20230501.tif", "20230615_S2_20230615.tif"]
        for name in names:  # the same pixels, grid and tags (but the catalogue's address)
            a, pa, ta, _, _ = read_tif(tmp_path / "from-api" / name)
            b, pb, tb, _, _ = read_tif(out / name)
            np.testing.assert_array_equal(a, b)
            assert (pa["crs"], pa["transform"]) == (pb["crs"], pb["transform"])
            assert tb["SLIDEWATCH_ITEM"] == ta["SLIDEWATCH_ITEM"]
            assert tb["SLIDEWATCH_STAC"] == str(given)
    # the filters are applied by slidewatch, with the same messages as for an API
    code, _, err = run(capsys, "imagery", "search", "--stac", static_catalogue, "--collection",
                       S2, "--bbox", bbox_text(area_bbox), "--dates", "2022-01-01/2022-12-31",
                       "--out", tmp_path / "none")
    assert code == 2 and "no item of sentinel-2-test over bbox" in err and "(--dates)" in err
    code, _, err = run(capsys, "imagery", "search", "--stac", static_catalogue, "--collection",
                       "nope", "--bbox", bbox_text(area_bbox), "--dates", "2023-01-01/..",
                       "--out", tmp_path / "none")
    assert code == 2 and "no collection 'nope' (it has: landsat-test, sentinel-2-test)" in err


def test_a_static_catalogue_over_http_and_a_bad_one(capsys, tmp_path, static_catalogue,
                                                    area_bbox):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(static_catalogue.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/catalog.json"
        code, stdout, err = run(capsys, "imagery", "search", "--stac", url, "--collection", S2,
                                "--bbox", bbox_text(area_bbox), "--dates", "2023-01-01/..",
                                "--max-cloud", "50", "--out", tmp_path / "s", "--no-progress")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert [ln.split()[2] for ln in stdout.splitlines()] == ["S2_20230501", "S2_20230720"]
    bad = tmp_path / "catalog.json"
    bad.write_text('{"type": "Feature", "not": "stac"')
    code, _, err = run(capsys, "imagery", "search", "--stac", bad, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-01-01/..")
    assert code == 2 and err.count("\n") == 1 and f"{bad}: reading the static catalogue" in err


# ---------------------------------------------------------------- cloud masks (--cloud-mask)

SCL_RES = 20.0  # Sentinel-2's SCL is at 20 m, the bands here at 10 m


def scl_array(fill: int) -> np.ndarray:
    """An SCL raster over the assets' footprint at 20 m: class ``fill`` (4: vegetation) with,
    inside the test area, a block of cloud (9), of cloud shadow (3), of cirrus (10), of
    SCL's nodata (0, not a cloud: the pixel stays valid) and of water (6)."""
    scl = np.full((SIZE // 2, SIZE // 2), fill, np.uint8)
    # the area is asset rows 250..300, cols 100..150 at 10 m = rows 125..150, cols 50..75 at 20 m
    scl[125:131, 50:58] = 9
    scl[140:146, 52:60] = 3
    scl[128:134, 66:70] = 10
    scl[144:150, 68:75] = 0
    scl[133:137, 60:64] = 6
    return scl


@pytest.fixture
def scl_api(assets):
    """The test API where the two UTM S2 items also carry an ``SCL`` asset (the first with the
    blocks of :func:`scl_array`, the second all cloud); the EPSG:4326 item has none."""
    files, arrays = assets
    scl = {"S2_20230501": scl_array(4), "S2_20230615": np.full((SIZE // 2, SIZE // 2), 9,
                                                               np.uint8)}

    def build(base):
        collections, items = build_catalogue(base, arrays)
        for item in items:
            if item["id"] in scl:
                item["assets"]["SCL"] = {"href": f"{base}/assets/{item['id']}_SCL.tif",
                                         "type": "image/tiff; application=geotiff",
                                         "roles": ["data"]}
        return collections, items

    with StacServer(build) as server:
        server.files.update(files)
        t = from_origin(*ORIGIN, SCL_RES, SCL_RES)
        for item, arr in scl.items():
            server.files[f"{item}_SCL.tif"] = cog_bytes(arr, UTM, t, nodata=0)
        yield server, scl


def test_cloud_mask_makes_the_scl_cloud_pixels_nodata(capsys, tmp_path, scl_api, assets,
                                                      area_bbox):
    api, scl = scl_api
    _, arrays = assets
    out = tmp_path / "o"
    code, _, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-05-01", "--out", out,
                       "--bands", "B04,B03,B02", "--cloud-mask", "scl", "--no-progress")
    assert code == 0, err
    with rasterio.open(out / "20230501_S2_20230501.tif") as ds:
        data, valid, t = ds.read(), ds.read_masks(1) > 0, ds.transform
    rows, cols = np.mgrid[0:data.shape[1], 0:data.shape[2]]
    # the SCL pixel under each output pixel's centre
    x, y = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
    srow = ((ORIGIN[1] - y) // SCL_RES).astype(int)
    scol = ((x - ORIGIN[0]) // SCL_RES).astype(int)
    classes = scl["S2_20230501"][srow, scol]
    cloudy = np.isin(classes, [3, 8, 9, 10])
    assert 0 < cloudy.sum() < cloudy.size and (classes == 0).any() and (classes == 6).any()
    np.testing.assert_array_equal(valid, ~cloudy)  # SCL nodata and water stay valid
    assert (data[:, cloudy] == 0).all()  # the file's nodata
    for k, band in enumerate(BANDS):  # the other pixels are the asset's, unchanged
        want = expected_window(arrays, "S2_20230501", band, t, data.shape[1], data.shape[2])
        np.testing.assert_array_equal(data[k][~cloudy], want[~cloudy])
    doc = json.loads((out / ITEMS_JSON).read_text())
    assert doc["cloud_mask"] == "SCL:3,8,9,10"
    (item,) = doc["areas"][0]["items"]
    assert item["masked"] == pytest.approx(cloudy.mean(), abs=1e-6)
    assert item["coverage"] == pytest.approx(1 - cloudy.mean(), abs=1e-6)


def test_an_item_that_is_all_cloud_is_left_out_and_said(capsys, tmp_path, scl_api, area_bbox):
    api, _ = scl_api
    out = tmp_path / "o"
    code, _, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-04-01/2023-06-30",
                       "--out", out, "--cloud-mask", "SCL:9", "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["20230501_S2_20230501.tif", ITEMS_JSON]
    assert "item S2_20230615: every valid pixel over area bbox is cloud; left out" in err
    items = json.loads((out / ITEMS_JSON).read_text())["areas"][0]["items"]
    assert items[1]["file"] is None and items[1]["masked"] == 1.0
    assert items[1]["note"] == "every valid pixel is cloud (--cloud-mask SCL:9)"
    assert 0 < items[0]["masked"] < 0.2  # only the class-9 block of the first item


def test_an_item_without_the_mask_asset_is_named_before_anything_is_read(capsys, tmp_path,
                                                                         scl_api, area_bbox):
    api, _ = scl_api
    code, _, err = run(capsys, "imagery", "fetch", "--stac", api.url, "--collection", S2,
                       "--bbox", bbox_text(area_bbox), "--dates", "2023-04-01/2023-08-31",
                       "--out", tmp_path / "o", "--cloud-mask", "scl")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "item S2_20230720: no asset SCL for --cloud-mask (assets: B02, B03, B04" in err
    assert not [r for r in api.log if r[1].startswith("/assets/")]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spec,needle", [
    ("clouds", "--cloud-mask clouds: give scl"),
    ("SCL:", "--cloud-mask SCL:: give scl"),
    ("SCL:8,high", "--cloud-mask SCL:8,high: class values must be integers"),
])
def test_a_bad_cloud_mask_is_one_line(capsys, tmp_path, spec, needle):
    code, _, err = run(capsys, "imagery", "fetch", "--stac", "http://127.0.0.1:9/",
                       "--collection", S2, "--bbox", "87,27,87.1,27.1", "--dates", "2023-05-01",
                       "--out", tmp_path / "o", "--cloud-mask", spec)
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_a_class_mask_read_coarser_keeps_class_values(tmp_path):
    """Onto a grid 4x coarser, a class mask is decimated by the mode (no averaged class such as
    6.5 between 4 and 9); bands are averaged."""
    from rasterio.crs import CRS

    from slidewatch.stac.fetch import read_onto_grid
    from slidewatch.stac.grid import TargetGrid

    rng = np.random.default_rng(0)
    classes = np.where(rng.random((64, 64)) < 0.3, 9, 4).astype(np.uint8)
    path = tmp_path / "scl.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs=UTM, transform=from_origin(*ORIGIN, 10, 10)) as ds:
        ds.write(classes, 1)
    grid = TargetGrid(CRS.from_string(UTM), from_origin(*ORIGIN, 40, 40), 16, 16)
    with rasterio.open(path) as ds:
        mode, valid = read_onto_grid(ds, [1], grid, categorical=True)
        mean, _ = read_onto_grid(ds, [1], grid)
    assert valid.all() and set(np.unique(mode)) <= {4.0, 9.0}
    assert not set(np.unique(mean)) <= {4.0, 9.0}  # the bands' path averages
    # the mode of each 4x4 block
    blocks = classes.reshape(16, 4, 16, 4).transpose(0, 2, 1, 3).reshape(16, 16, 16)
    nines = (blocks == 9).sum(-1)
    decided = nines != 8  # ties are GDAL's choice
    np.testing.assert_array_equal(mode[0][decided], np.where(nines > 8, 9, 4)[decided])
