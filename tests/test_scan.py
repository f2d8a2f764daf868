"""`slidewatch scan`: the output grid, blending, nodata, polygons where the landslide is (also
across strips), resume after an interruption, pixel-space inputs and clean errors."""

import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import UTM45, truncate, write_image
from PIL import Image
from rasterio.transform import from_origin
from shapely.geometry import box, shape

from slidewatch.cli.main import main
from slidewatch.data import raster
from slidewatch.data.raster import Grid, starts
from slidewatch.errors import ConfigError
from slidewatch.meta import ModelMeta
from slidewatch.scan.mosaic import NODATA, OUT_BLOCK, blend_weights
from slidewatch.scan.outputs import polygonize
from slidewatch.scan.run import ScanSettings, scan, scan_with_model
from slidewatch.scan.score import ChunkPlan

TRANSFORM = from_origin(500000, 3000000, 10, 10)


class FixedLogits(torch.nn.Module):
    """The same logits for every window: tests the blending, not a model."""

    def __init__(self, logits=(1.0, 0.0)):
        super().__init__()
        self.register_buffer("logits", torch.tensor([logits]))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


FIXED_P = float(torch.softmax(torch.tensor([1.0, 0.0]), 0)[0])  # 0.731


def fixed_meta(in_chans=3):
    return ModelMeta("fixed", ["landslide", "non_landslide"], in_chans, 32, [0.0] * in_chans,
                     [1.0] * in_chans)


def fixed_scan(scenes, out, blend="mean", threshold=0.5, **kw):
    settings = ScanSettings(tile=32, stride=20, batch=16, blend=blend, threshold=threshold)
    return scan_with_model(FixedLogits(), fixed_meta(), scenes, out, settings, model_id="fixed",
                           **kw)


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


def read(path):
    with raster.open_raster(path) as ds:
        return ds.read(1), ds.profile


def features(path):
    return json.loads(Path(path).read_text())["features"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def slide_scene(tmp_path_factory):
    """320x256 px, a 64 px landslide at rows 224-288 (across the first 256-row strip), cols
    96-160."""
    rng = np.random.default_rng(5)
    img = add_slide(vegetation(rng, 320, 256), rng, 224, 96, 64)
    path = tmp_path_factory.mktemp("scenes") / "slide.tif"
    return write_image(path, img, crs=UTM45, transform=TRANSFORM)


# ---------------------------------------------------------------- grid and weights


@pytest.mark.parametrize("size,tile,stride", [(100, 32, 16), (103, 32, 20), (32, 32, 7),
                                              (77, 10, 10)])
def test_window_starts_cover_the_far_edge(size, tile, stride):
    s = starts(size, tile, stride)
    assert s[0] == 0 and s[-1] == size - tile
    assert all(0 < b - a <= stride for a, b in itertools.pairwise(s))


@pytest.mark.parametrize("height,width,batch", [(100, 70, 4), (100, 70, 32), (300, 203, 7)])
def test_chunks_hold_whole_batches_and_give_back_rows_in_order_from_any_start(height, width,
                                                                               batch):
    """A backend call scores a chunk of whole batches; a resume at any row scores the same
    chunks and gets each row's probabilities back in order."""
    grid = Grid(height, width, 32, 20)
    plan = ChunkPlan(grid, batch)
    n = len(grid.cols)
    assert plan.size % batch == 0 and n <= plan.size < n + batch
    flat = [w for c in range(plan.count) for w in plan.windows(c)]
    assert flat == [w for i in range(len(grid.rows)) for w in grid.windows(i)]
    for first in (0, 1, len(grid.rows) - 1):
        c0 = plan.first_chunk(first)
        scores = (np.arange(c * plan.size, c * plan.size + len(plan.windows(c)), dtype=np.float32)
                  for c in range(c0, plan.count))
        rows = list(plan.rows(scores, first))
        assert [i for i, _ in rows] == list(range(first, len(grid.rows)))
        for i, probs in rows:
            np.testing.assert_array_equal(probs, np.arange(i * n, (i + 1) * n))


@pytest.mark.parametrize("blend", ["mean", "hann"])
def test_weight_sums_are_positive_everywhere_incl_edges(blend):
    grid = Grid(height=83, width=70, tile=32, stride=20)
    w = blend_weights(32, blend)
    total = np.zeros((83, 70))
    for i in range(len(grid.rows)):
        for win in grid.windows(i):
            total[win.row_off:win.row_off + 32, win.col_off:win.col_off + 32] += w
    assert total.min() > 0
    assert w.min() > 0 and (blend == "mean" or w[16, 16] > 50 * w[0, 0])


@pytest.mark.parametrize("blend", ["mean", "hann"])
def test_constant_model_gives_its_probability_everywhere_on_the_scene_grid(tmp_path, blend):
    rng = np.random.default_rng(0)
    scene = write_image(tmp_path / "s.tif", rng.integers(0, 255, (300, 203, 3), dtype=np.uint8),
                        crs=UTM45, transform=TRANSFORM)
    summary = fixed_scan([scene], tmp_path / "out", blend=blend)
    prob, prof = read(tmp_path / "out" / "s_probability.tif")
    assert (prof["width"], prof["height"]) == (203, 300)
    assert prof["crs"] == rasterio.crs.CRS.from_string(UTM45) and prof["transform"] == TRANSFORM
    assert prof["dtype"] == "float32" and prof["nodata"] == NODATA
    np.testing.assert_allclose(prob, FIXED_P, rtol=1e-6)  # seams, corners, right/bottom edges
    grid = Grid(300, 203, 32, 20)
    assert summary.windows == grid.n_windows and summary.windows_per_s > 0
    # everything above the threshold: one polygon, the whole scene (crosses the 256-row strip)
    (feat,) = features(tmp_path / "out" / "s_detections.geojson")
    assert shape(feat["geometry"]).equals(box(500000, 3000000 - 3000, 500000 + 2030, 3000000))
    assert feat["properties"]["area_px"] == 300 * 203
    assert feat["properties"]["area_m2"] == pytest.approx(300 * 203 * 100)


@pytest.mark.parametrize("how", ["nodata", "alpha"])
def test_nodata_pixels_stay_nodata_and_empty_windows_are_skipped(tmp_path, how):
    rng = np.random.default_rng(1)
    img = rng.integers(1, 255, (120, 100, 3), dtype=np.uint8)
    valid = np.ones((120, 100), bool)
    valid[:70, :60] = False  # holds whole windows: skipped
    valid[100:105, 90:95] = False  # a few pixels inside scanned windows
    path = tmp_path / "s.tif"
    if how == "nodata":
        img[~valid] = 0
        write_image(path, img, crs=UTM45, transform=TRANSFORM)
        with rasterio.open(path, "r+") as ds:
            ds.nodata = 0
    else:
        alpha = (valid * 255).astype(np.uint8)[..., None]
        write_image(path, np.concatenate([img, alpha], axis=2), crs=UTM45, transform=TRANSFORM,
                    alpha=True)
    summary = fixed_scan([path], tmp_path / "out")
    prob, _ = read(tmp_path / "out" / "s_probability.tif")
    assert (prob[~valid] == NODATA).all()
    np.testing.assert_allclose(prob[valid], FIXED_P, rtol=1e-6)
    assert summary.skipped_windows > 0
    assert summary.windows + summary.skipped_windows == Grid(120, 100, 32, 20).n_windows


# ---------------------------------------------------------------- polygons


def test_polygonize_joins_areas_across_strips(tmp_path):
    """A U shape whose arms meet only below a strip boundary, and random blobs: strips of
    7 rows give the same areas and geometries as one strip over the whole raster."""
    rng = np.random.default_rng(3)
    prob = (rng.random((60, 50)) > 0.6).astype(np.float32) * 0.9
    prob[:, 20:] = 0.0
    prob[5:30, 25:28] = prob[5:30, 40:43] = prob[27:30, 25:43] = 0.8  # U: joined at rows 27-29
    prob[40:45, 30:45] = NODATA
    path = tmp_path / "p.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=60, count=1, dtype="float32",
                       nodata=NODATA, crs=UTM45, transform=TRANSFORM) as ds:
        ds.write(prob[None])
    whole = list(polygonize(path, 0.5, chunk_rows=60))
    strips = list(polygonize(path, 0.5, chunk_rows=7))
    assert len(strips) == len(whole) > 5
    def key(r):
        return r.geometry.bounds, r.area_px

    for a, b in zip(sorted(whole, key=key), sorted(strips, key=key)):
        assert a.geometry.equals(b.geometry) and a.area_px == b.area_px
        assert a.sum_prob == pytest.approx(b.sum_prob) and a.max_prob == b.max_prob
    u = [r for r in strips if r.geometry.bounds == (25, 5, 43, 30)]
    assert len(u) == 1 and u[0].area_px == 25 * 3 * 2 + 3 * 12
    assert u[0].max_prob == pytest.approx(0.8)
    assert sum(r.area_px for r in strips) == int((prob >= 0.5).sum())


def test_polygon_lands_on_the_landslide_with_lonlat_copy(capsys, tmp_path, model_dir,
                                                         slide_scene):
    out = tmp_path / "out"
    code, err = run(capsys, "scan", model_dir, slide_scene, "--out", out, "--no-progress")
    assert code == 0, err
    assert "windows/s" in err and "megapixels/s" in err
    feats = features(out / "slide_detections.geojson")
    assert len(feats) == 1  # the landslide crosses the row-256 strip boundary: one polygon
    patch = box(500000 + 960, 3000000 - 2880, 500000 + 1600, 3000000 - 2240)
    geom = shape(feats[0]["geometry"])
    assert geom.intersection(patch).area > 0.8 * patch.area
    assert geom.area < 4 * patch.area
    props = feats[0]["properties"]
    assert props["id"] == 1 and props["max_prob"] >= props["mean_prob"] >= 0.5
    assert props["area_m2"] == pytest.approx(props["area_px"] * 100)
    wgs = json.loads((out / "slide_detections_wgs84.geojson").read_text())
    lon, lat = np.array(wgs["features"][0]["geometry"]["coordinates"][0]).mean(0)
    assert 86.9 < lon < 87.1 and 27.0 < lat < 27.2  # UTM 45N, 3000 km north: ~87E 27.1N
    ql = Image.open(out / "slide_quicklook.png")
    assert ql.size == (256, 320) and ql.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == [
        "slide_detections.geojson", "slide_detections_wgs84.geojson", "slide_probability.tif",
        "slide_quicklook.png"]


# ---------------------------------------------------------------- resume


class StopAfter:
    """A progress factory that interrupts the scan after ``n`` window rows."""

    def __init__(self, n):
        self.n = n

    def __call__(self, iterable, desc="", total=None):
        for k, item in enumerate(iterable):
            if k == self.n:
                raise KeyboardInterrupt
            yield item


def test_resume_after_interruption_gives_identical_output(tmp_path, model_dir):
    rng = np.random.default_rng(9)
    img = add_slide(add_slide(vegetation(rng, 600, 160), rng, 240, 20, 48), rng, 500, 90, 40)
    scene = write_image(tmp_path / "big.tif", img, crs=UTM45, transform=TRANSFORM)
    kw = {"tile": 32, "stride": 16, "device": "cpu"}
    full = scan(model_dir, [scene], tmp_path / "full", **kw)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        scan(model_dir, [scene], out, progress=StopAfter(20), **kw)  # 1 of 3 strips written
    assert {p.name for p in out.iterdir()} == {".big_probability.partial.tif",
                                               ".big_scan-state.json"}
    state = json.loads((out / ".big_scan-state.json").read_text())
    assert state["rows_written"] == OUT_BLOCK
    again = scan(model_dir, [scene], out, **kw)
    assert again.scenes[0].status == "resumed"
    assert 0 < again.windows < full.windows
    np.testing.assert_array_equal(read(out / "big_probability.tif")[0],
                                  read(tmp_path / "full" / "big_probability.tif")[0])
    for name in ("big_detections.geojson", "big_detections_wgs84.geojson"):
        assert features(out / name) == features(tmp_path / "full" / name)
    assert len(features(out / "big_detections.geojson")) >= 2
    assert not (out / ".big_scan-state.json").exists()
    assert scan(model_dir, [scene], out, **kw).scenes[0].status == "complete"


def test_other_settings_restart_or_need_overwrite(tmp_path):
    scene = write_image(tmp_path / "s.tif", np.full((64, 64, 3), 9, np.uint8), crs=UTM45,
                        transform=TRANSFORM)
    with pytest.raises(KeyboardInterrupt):
        fixed_scan([scene], tmp_path / "out", progress=StopAfter(1))
    assert fixed_scan([scene], tmp_path / "out", blend="hann").scenes[0].status == "scanned"
    with pytest.raises(ConfigError, match="s_probability.tif: exists from a scan with other"):
        fixed_scan([scene], tmp_path / "out", threshold=0.8)
    redo = fixed_scan([scene], tmp_path / "out", threshold=0.8, overwrite=True)
    assert redo.scenes[0].status == "scanned" and redo.scenes[0].detections_count == 0


# ---------------------------------------------------------------- pixel space and errors


def test_png_scene_works_in_pixel_coordinates(tmp_path):
    scene = write_image(tmp_path / "photo.png", np.full((90, 70, 3), 50, np.uint8))
    summary = fixed_scan([scene], tmp_path / "out")
    assert summary.warnings == [] and summary.scenes[0].detections_wgs84 is None
    prob, prof = read(tmp_path / "out" / "photo_probability.tif")
    assert prof["crs"] is None and prob.shape == (90, 70)
    (feat,) = features(tmp_path / "out" / "photo_detections.geojson")
    assert shape(feat["geometry"]).bounds == (0, 0, 70, 90)
    assert feat["properties"]["area_m2"] is None
    assert not (tmp_path / "out" / "photo_detections_wgs84.geojson").exists()


def test_geotiff_without_crs_warns_and_uses_pixels(capsys, tmp_path, model_dir):
    rng = np.random.default_rng(2)
    scene = write_image(tmp_path / "nocrs.tif", vegetation(rng, 64, 64))
    code, err = run(capsys, "scan", model_dir, scene, "--out", tmp_path / "out", "--no-progress",
                    "--threshold", "0.01")
    assert code == 0, err
    assert f"warning: {scene}: GeoTIFF has no CRS" in err
    (feat,) = features(tmp_path / "out" / "nocrs_detections.geojson")
    assert shape(feat["geometry"]).bounds == (0, 0, 64, 64)


def _bad_inputs(tmp: Path):
    rng = np.random.default_rng(4)
    good = vegetation(rng, 96, 96)
    trunc = truncate(write_image(tmp / "trunc.tif", good, crs=UTM45, transform=TRANSFORM), 0.5)
    two = write_image(tmp / "two.tif", good[..., :2].copy(), crs=UTM45, transform=TRANSFORM)
    small = write_image(tmp / "small.tif", good[:20, :20].copy(), crs=UTM45, transform=TRANSFORM)
    text = tmp / "notes.txt"
    text.write_text("not an image")
    fake = tmp / "fake.tif"
    fake.write_text("not a tiff either")
    return {"truncated": (trunc, "truncated"), "bands": (two, "has 2 bands; the model takes 3"),
            "small": (small, "smaller than the 32-pixel window"),
            "missing": (tmp / "gone.tif", "file not found"),
            "text": (text, "unsupported file type"), "fake": (fake, "not a raster")}


@pytest.mark.parametrize("case", ["truncated", "bands", "small", "missing", "text", "fake"])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, model_dir, case):
    scene, needle = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, err = run(capsys, "scan", model_dir, scene, "--out", out, "--no-progress")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {scene}: ") and needle in lines[0]
    assert not out.exists() or not any(out.iterdir())
