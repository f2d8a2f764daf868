"""Chips from a landslide inventory: pixels under the points, CRS and transforms, distances and
overlap of landslide-free chips, skipped rows, tiles.csv, and one-line errors for bad input."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import rasterio
from conftest import UTM45, truncate, write_image
from rasterio.transform import Affine
from rasterio.warp import transform as warp

from slidewatch.cli.inventory import DEFAULTS
from slidewatch.cli.main import main
from slidewatch.data import inventory as lib
from slidewatch.data.folders import load_datasets
from slidewatch.data.inventory import InventoryColumns, chips_from_inventory
from slidewatch.errors import ConfigError, DataError

# the NASA Global Landslide Catalog's header, as in the real file
NASA_HEADER = (
    "id,date,time,country,nearest_places,hazard_type,landslide_type,trigger,storm_name,"
    "fatalities,injuries,source_name,source_link,location_description,location_accuracy,"
    "landslide_size,photos_link,cat_src,cat_id,countryname,near,distance,adminname1,adminname2,"
    "population,countrycode,continentcode,key,version,tstamp,changeset_id,latitude,longitude,"
    "geolocation"
).split(",")
UTM_T = Affine(10, 0, 330000, 0, -10, 3070000)  # 10 m pixels near Kathmandu
GEO_T = Affine(0.0001, 0, 86.0, 0, -0.0001, 27.5)  # about 10 m pixels, EPSG:4326
MERC_T = Affine(10, 0, 9_600_000, 0, -10, 3_200_000)  # EPSG:3857, about 27.6 N 86.2 E
SIZE = 32


def lonlat(crs, transform, row, col):
    """WGS84 lon/lat of a pixel's centre (rasterio as the reference)."""
    x, y = transform @ (col + 0.5, row + 0.5)
    (lon,), (lat,) = warp(crs, "EPSG:4326", [x], [y])
    return lon, lat


def scene(path, crs, transform, markers=(), shape=(300, 300), nodata=None, zero_cols=0):
    """A 3-band uint8 GeoTIFF, grey texture, 255 at each marker pixel."""
    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(20, 200, (*shape, 3), dtype=np.uint8)
    for r, c in markers:
        arr[r, c] = 255
    arr[:, :zero_cols] = 0
    write_image(path, arr, crs=crs, transform=transform)
    if nodata is not None:
        with rasterio.open(path, "r+") as ds:
            ds.nodata = nodata
    return path


def inventory_csv(path, points, extra_rows=(), encoding="utf-8"):
    """NASA-like CSV: points are dicts of column -> value; extra_rows are raw text lines."""
    lines = [",".join(NASA_HEADER)]
    for p in points:
        row = {"hazard_type": "landslide", "country": "Nepal", **p}
        lines.append(",".join(_quote(str(row.get(c, ""))) for c in NASA_HEADER))
    lines += list(extra_rows)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _quote(v):
    return f'"{v}"' if "," in v else v


def point(pid, lon, lat, size="Medium", trigger="Rain", date="7/1/2015"):
    return {"id": pid, "date": date, "landslide_size": size, "trigger": trigger,
            "latitude": repr(lat), "longitude": repr(lon)}


def rows_of(out):
    with open(out / "tiles.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read(path):
    with rasterio.open(path) as ds:
        return np.moveaxis(ds.read(), 0, -1), ds.crs, ds.transform


@pytest.fixture
def utm(tmp_path):
    """A UTM scene with markers at three inner points, one near the top edge; the inventory has
    those points plus one 200 m north of the scene."""
    inner = {"p1": (150, 150), "p2": (60, 200), "p3": (250, 80)}
    pts = [point(pid, *lonlat(UTM45, UTM_T, r, c)) for pid, (r, c) in inner.items()]
    pts.append(point("edge", *lonlat(UTM45, UTM_T, 5, 100)))
    pts.append(point("outside", *lonlat(UTM45, UTM_T, -20, 150)))
    tif = scene(tmp_path / "kathmandu.tif", UTM45, UTM_T, markers=inner.values())
    return tif, inventory_csv(tmp_path / "glc.csv", pts), inner


def test_chips_centred_on_points_keep_crs_and_transform(tmp_path, utm):
    tif, inv, inner = utm
    out = tmp_path / "out"
    s = chips_from_inventory(inv, [tif], out, size=SIZE, negatives=4)
    assert (s.rows_read, s.valid_points, s.points_inside) == (5, 5, 4)
    assert (s.total("positives"), s.total("skipped_edge"), s.total("negatives")) == (3, 1, 4)
    rows = {r["inventory_id"]: r for r in rows_of(out) if r["label"] == "landslide"}
    assert sorted(rows) == ["p1", "p2", "p3"]
    for pid, (r, c) in inner.items():
        row = rows[pid]
        assert (int(row["row"]), int(row["col"])) == (r - SIZE // 2, c - SIZE // 2)
        assert row["path"] == f"landslide/kathmandu__kathmandu__r{r - 16}_c{c - 16}.tif"
        chip, crs, transform = read(out / row["path"])
        assert chip.shape == (SIZE, SIZE, 3) and (chip[16, 16] == 255).all()
        assert (chip == 255).all(axis=2).sum() == 1  # only its own marker
        assert crs.to_epsg() == 32645
        assert transform.almost_equals(UTM_T @ Affine.translation(c - 16, r - 16))
        lon, lat = lonlat(UTM45, UTM_T, r - 0.5, c - 0.5)  # the chip's centre: a pixel corner
        assert abs(float(row["center_lon"]) - lon) < 1e-6
        assert abs(float(row["center_lat"]) - lat) < 1e-6
        assert (row["inventory_date"], row["inventory_size"], row["inventory_trigger"]) == (
            "7/1/2015", "Medium", "Rain")
        assert row["source_image"] == "kathmandu/kathmandu" and row["region"] == "kathmandu"
    negatives = [r for r in rows_of(out) if r["label"] == "non_landslide"]
    assert all(r["inventory_id"] == r["inventory_size"] == "" for r in negatives)
    assert all(r["center_lon"] and r["center_lat"] for r in negatives)
    samples = load_datasets([out])
    assert sorted(x.label for x in samples) == [0, 0, 0, 1, 1, 1, 1]
    assert {x.group for x in samples} == {"kathmandu/kathmandu"}


def _rect_distance_m(r0, c0, size, pts_xy):
    """Metres (UTM) from each point to the chip's footprint."""
    x0, y1 = UTM_T @ (c0, r0)
    x1, y0 = UTM_T @ (c0 + size, r0 + size)
    dx = np.maximum(np.maximum(x0 - pts_xy[:, 0], pts_xy[:, 0] - x1), 0)
    dy = np.maximum(np.maximum(y0 - pts_xy[:, 1], pts_xy[:, 1] - y1), 0)
    return np.hypot(dx, dy)


def _ground_m(crs, transform, r0, c0, lon_lat):
    """Great-circle metres from a point to the nearest of 128 points on a chip's outline."""
    edge = np.linspace(0, SIZE, 33)
    cols = np.concatenate([edge, edge, np.zeros(33), np.full(33, SIZE)]) + c0
    rows = np.concatenate([np.zeros(33), np.full(33, SIZE), edge, edge]) + r0
    xs, ys = transform @ (cols, rows)
    lon, lat = map(np.radians, warp(crs, "EPSG:4326", xs.tolist(), ys.tolist()))
    plon, plat = np.radians(lon_lat[0]), np.radians(lon_lat[1])
    a = np.sin((lat - plat) / 2) ** 2 + np.cos(lat) * np.cos(plat) * np.sin((lon - plon) / 2) ** 2
    return float((2 * 6_371_008.8 * np.arcsin(np.sqrt(a))).min())


def _overlap(a, b, size):
    return abs(a[0] - b[0]) < size and abs(a[1] - b[1]) < size


def test_negatives_keep_the_distance_never_overlap_and_follow_the_seed(tmp_path, utm):
    tif, inv, inner = utm
    every = [*inner.values(), (5, 100), (-20, 150)]
    xy = np.array([UTM_T @ (c + 0.5, r + 0.5) for r, c in every])
    s = chips_from_inventory(inv, [tif], tmp_path / "a", size=SIZE, negatives=1000,
                             min_distance=300, seed=7)
    rows = rows_of(tmp_path / "a")
    neg = [(int(r["row"]), int(r["col"])) for r in rows if r["label"] == "non_landslide"]
    pos = [(int(r["row"]), int(r["col"])) for r in rows if r["label"] == "landslide"]
    assert s.total("negatives") == len(neg) > 10 and s.total("negatives_wanted") == 1000
    for rc in neg:
        assert _rect_distance_m(*rc, SIZE, xy).min() >= 300 * 0.999
    for i, a in enumerate(neg):
        assert not any(_overlap(a, b, SIZE) for b in neg[i + 1:] + pos)
    # the top rows are too close to the point outside the scene: no chip there
    assert min(r for r, _ in neg) * 10 + 200 >= 300 * 0.999
    # no distance asked: still no chip holds a point or overlaps a landslide chip
    chips_from_inventory(inv, [tif], tmp_path / "e", size=SIZE, negatives=1000, min_distance=0)
    rows = rows_of(tmp_path / "e")
    neg = [(int(r["row"]), int(r["col"])) for r in rows if r["label"] == "non_landslide"]
    assert len(neg) > 50 and all(_rect_distance_m(*rc, SIZE, xy).min() > 0 for rc in neg)
    assert not any(_overlap(a, b, SIZE) for a in neg for b in pos)
    chips_from_inventory(inv, [tif], tmp_path / "b", size=SIZE, negatives=5, seed=3)
    chips_from_inventory(inv, [tif], tmp_path / "c", size=SIZE, negatives=5, seed=3)
    chips_from_inventory(inv, [tif], tmp_path / "d", size=SIZE, negatives=5, seed=4)
    b, c, d = (rows_of(tmp_path / x) for x in "bcd")
    assert b == c and b != d
    for r in b:
        first, again = (tmp_path / x / r["path"] for x in "bc")
        assert first.read_bytes() == again.read_bytes()


def test_ratio_default_and_nodata_chips_skipped(tmp_path):
    marks = [(100, 40), (150, 200), (200, 220)]
    pts = [point(f"n{i}", *lonlat(UTM45, UTM_T, r, c)) for i, (r, c) in enumerate(marks)]
    tif = scene(tmp_path / "s.tif", UTM45, UTM_T, marks, nodata=0, zero_cols=120)
    inv = inventory_csv(tmp_path / "i.csv", pts)
    s = chips_from_inventory(inv, [tif], tmp_path / "o", size=SIZE, min_distance=100)
    assert (s.total("positives"), s.total("skipped_nodata")) == (2, 1)
    assert s.total("negatives_wanted") == s.total("negatives") == 2  # ratio 1.0 by default
    for r in rows_of(tmp_path / "o"):
        chip, _, _ = read(tmp_path / "o" / r["path"])
        assert (chip == 0).all(axis=2).mean() <= 0.5


def test_several_scenes_in_different_crss_and_a_region_name(tmp_path):
    specs = {"utm": (UTM45, UTM_T, (120, 130)), "geo": ("EPSG:4326", GEO_T, (90, 110)),
             "merc": ("EPSG:3857", MERC_T, (100, 70))}
    tifs, pts = [], []
    for name, (crs, t, rc) in specs.items():
        tifs.append(scene(tmp_path / f"{name}.tif", crs, t, [rc], shape=(200, 220)))
        pts.append(point(name, *lonlat(crs, t, *rc)))
    inv = inventory_csv(tmp_path / "i.csv", pts)
    s = chips_from_inventory(inv, tifs, tmp_path / "o", size=SIZE, negatives=2,
                             region="himalaya")
    assert [(x.positives, x.negatives) for x in s.scenes] == [(1, 2)] * 3
    for row in rows_of(tmp_path / "o"):
        assert row["region"] == "himalaya"
        if row["label"] == "landslide":
            name = row["inventory_id"]
            crs, t, (r, c) = specs[name]
            chip, chip_crs, chip_t = read(tmp_path / "o" / row["path"])
            assert (chip[16, 16] == 255).all() and chip_crs == rasterio.crs.CRS.from_user_input(crs)
            assert chip_t.almost_equals(t @ Affine.translation(c - 16, r - 16))
            assert row["source_image"] == f"himalaya/{name}"
        else:  # 500 m on the ground, also in Web Mercator whose metres are not the ground's
            crs, t, (r, c) = specs[row["source_image"].split("/")[1]]
            r0, c0 = int(row["row"]), int(row["col"])
            assert _ground_m(crs, t, r0, c0, lonlat(crs, t, r, c)) >= 500 * 0.995
    groups = {x.group for x in load_datasets([tmp_path / "o"])}
    assert groups == {"himalaya/utm", "himalaya/geo", "himalaya/merc"}


def test_bad_rows_skipped_by_reason_and_cp1252_text(tmp_path, utm):
    tif, _, inner = utm
    lon, lat = lonlat(UTM45, UTM_T, *inner["p1"])
    good = point("3,833", lon, lat, size="medium", trigger="Downpour")
    good["adminname2"] = "Kosi Zone é"  # the real catalog is cp1252, not UTF-8
    bad = [{"id": i, "latitude": lat_text, "longitude": lon_text} for i, (lat_text, lon_text)
           in enumerate([("abc", "86.0"), ("NaN", "86.0"), ("95.0", "86.0"), ("27.0", "-200"),
                         ("", "86.0"), ("27.0", "inf")])]
    inv = inventory_csv(tmp_path / "i.csv", [good, *bad], ["", "15,short row"],
                        encoding="cp1252")
    s = chips_from_inventory(inv, [tif], tmp_path / "o", size=SIZE, negatives=0)
    assert s.encoding == "cp1252" and (s.rows_read, s.valid_points) == (8, 1)
    assert s.skipped_rows == {"coordinate out of range": 2, "missing coordinate": 2,
                              "non-numeric coordinate": 3}
    (row,) = rows_of(tmp_path / "o")
    assert (row["inventory_id"], row["inventory_size"], row["inventory_trigger"],
            row["inventory_row"]) == ("3,833", "medium", "Downpour", "1")


def test_other_column_names(tmp_path, utm):
    tif, _, inner = utm
    lon, lat = lonlat(UTM45, UTM_T, *inner["p2"])
    inv = tmp_path / "mine.csv"
    inv.write_text(f"event_id,Y,X,kind\nA7,{lat},{lon},debris flow\n")
    cols = InventoryColumns(lat="Y", lon="X", id="event_id", trigger="kind")
    s = chips_from_inventory(inv, [tif], tmp_path / "o", size=SIZE, columns=cols, negatives=0)
    assert s.missing_columns == ["date", "landslide_size"]
    (row,) = rows_of(tmp_path / "o")
    assert (row["inventory_id"], row["inventory_trigger"], row["inventory_date"]) == (
        "A7", "debris flow", "")
    with pytest.raises(DataError, match=r"mine\.csv: no column 'when' .*--date-column"):
        chips_from_inventory(inv, [tif], tmp_path / "p", columns=InventoryColumns(
            lat="Y", lon="X", date="when"))


def test_cli_writes_a_dataset_that_data_info_reads(tmp_path, utm, capsys):
    tif, inv, _ = utm
    out = tmp_path / "out"
    code = main(["data", "from-inventory", str(inv), str(tif), "--out", str(out), "--size", "32",
                 "--negatives", "3", "--classes", "slide,other"])
    printed = capsys.readouterr().out
    assert code == 0 and "5 rows read" in printed and "4 point(s) inside" in printed
    assert main(["data", "info", str(out), "--classes", "slide,other"]) == 0
    assert "slide 3, other 3" in capsys.readouterr().out


def test_cli_defaults_match_the_library():
    cols = InventoryColumns()
    assert (DEFAULTS["size"], DEFAULTS["min_distance"], DEFAULTS["negative_ratio"],
            DEFAULTS["max_nodata"]) == (lib.DEFAULT_SIZE, lib.DEFAULT_MIN_DISTANCE,
                                        lib.DEFAULT_NEGATIVE_RATIO, lib.DEFAULT_MAX_NODATA)
    assert (DEFAULTS["lat"], DEFAULTS["lon"], DEFAULTS["id"], DEFAULTS["date"],
            DEFAULTS["size_column"], DEFAULTS["trigger"]) == (
        cols.lat, cols.lon, cols.id, cols.date, cols.size, cols.trigger)


@pytest.mark.parametrize("kwargs, option", [
    ({"size": 0}, "--size"), ({"size": 2.5}, "--size"), ({"min_distance": -1.0}, "--min-distance"),
    ({"negatives": -1}, "--negatives"), ({"negative_ratio": -0.5}, "--negative-ratio"),
    ({"max_nodata": 1.5}, "--max-nodata"), ({"seed": -1}, "--seed"),
    ({"classes": ("landslide",)}, "--classes"), ({"region": "a/b"}, "--region"),
])
def test_bad_options_name_the_option(tmp_path, utm, kwargs, option):
    tif, inv, _ = utm
    with pytest.raises(ConfigError, match=f"^{option}: "):
        chips_from_inventory(inv, [tif], tmp_path / "o", **{"size": SIZE, **kwargs})
    assert not (tmp_path / "o").exists()


def test_output_folder_must_not_hold_the_inputs_and_overwrite(tmp_path, utm):
    tif, inv, _ = utm
    with pytest.raises(ConfigError, match="must not hold the input"):
        chips_from_inventory(inv, [tif], tmp_path, size=SIZE, overwrite=True)
    chips_from_inventory(inv, [tif], tmp_path / "o", size=SIZE, negatives=0)
    with pytest.raises(ConfigError, match="exists and is not empty; pass --overwrite"):
        chips_from_inventory(inv, [tif], tmp_path / "o", size=SIZE)
    s = chips_from_inventory(inv, [tif], tmp_path / "o", size=SIZE, negatives=2, overwrite=True)
    assert s.total("negatives") == 2 and len(rows_of(tmp_path / "o")) == 5


def _bad_inputs(tmp_path, utm):
    """name -> (inventory, scene, extra args, text the error names)."""
    tif, inv, _ = utm
    no_coords = tmp_path / "nocoords.csv"
    no_coords.write_text("id,date,lat_deg,lon_deg\n1,1/1/2015,27.7,85.3\n")
    plain = scene(tmp_path / "plain.tif", None, None)
    png = tmp_path / "scene.png"
    write_image(png, np.zeros((64, 64, 3), np.uint8))
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    cut = truncate(scene(tmp_path / "cut.tif", UTM45, UTM_T, shape=(300, 300)), 0.3)
    far = inventory_csv(tmp_path / "far.csv", [point("x", -46.6, -23.2)])
    return {
        "missing inventory": (tmp_path / "none.csv", tif, [], "none.csv: inventory file not found"),
        "no coordinate columns": (no_coords, tif, [], "nocoords.csv: no column 'latitude'"),
        "scene without CRS": (inv, plain, [], "plain.tif: not georeferenced (no CRS)"),
        "PNG scene": (inv, png, [], "scene.png: not georeferenced"),
        "corrupt scene": (inv, junk, [], "junk.tif: "),
        "truncated scene": (inv, cut, [], "cut.tif: "),
        "points miss every scene": (far, tif, [], "far.csv: none of its 1 valid points"),
        "size larger than scene": (inv, tif, ["--size", "400"],
                                   "--size 400: larger than the scene"),
        "two negative options": (inv, tif, ["--negatives", "3", "--negative-ratio", "2"],
                                 "--negatives, --negative-ratio"),
    }


CASES = ["missing inventory", "no coordinate columns", "scene without CRS", "PNG scene",
         "corrupt scene", "truncated scene", "points miss every scene", "size larger than scene",
         "two negative options"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, utm, capsys, case):
    inv, tif, extra, needle = _bad_inputs(tmp_path, utm)[case]
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["data", "from-inventory", str(inv), str(tif), "--out", str(out), "--size", "32",
                 *extra])  # a second --size wins
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_miss_message_gives_the_scene_bounds(tmp_path, utm):
    tif, _, _ = utm
    far = inventory_csv(tmp_path / "far.csv", [point("x", -46.6, -23.2)])
    with pytest.raises(DataError) as info:
        chips_from_inventory(far, [tif], tmp_path / "o", size=SIZE)
    msg = str(info.value)
    found = re.search(r"kathmandu\.tif lon (\S+)\.\.(\S+) lat (\S+)\.\.(\S+)\)$", msg)
    west, east, south, north = map(float, found.groups())
    corners = [lonlat(UTM45, UTM_T, r - 0.5, c - 0.5) for r in (0, 300) for c in (0, 300)]
    lons, lats = [x for x, _ in corners], [y for _, y in corners]
    assert abs(west - min(lons)) < 1e-4 and abs(east - max(lons)) < 1e-4
    assert abs(south - min(lats)) < 1e-4 and abs(north - max(lats)) < 1e-4
