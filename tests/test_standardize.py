"""Per-image radiometric standardisation (``standardize: image``): the statistics of a whole
image over its valid pixels, the rule stored in the model and applied the same way in
training, prediction, evaluation and scan (whole-scene statistics, never a window's), and the
contract of the metadata and config field."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _factories import slide_image
from conftest import UTM45, make_scene, write_image
from test_scan import TRANSFORM, FixedLogits, StopAfter, add_slide, vegetation
from test_segment_pipeline import blob_image

import slidewatch.scan.score as scan_score
from slidewatch.cli.main import main
from slidewatch.cli.train import build_config
from slidewatch.config.train import TrainConfig, from_dict, to_dict
from slidewatch.data import raster
from slidewatch.data.dataset import TileDataset, declared_valid, unit_and_valid
from slidewatch.data.folders import Sample
from slidewatch.data.masks import SceneCrops, scene_samples
from slidewatch.data.readers import read_image
from slidewatch.data.standardize import (
    MIN_STD,
    Standardizer,
    image_statistics,
    raster_statistics,
    standardize,
)
from slidewatch.errors import ConfigError, WeightsError
from slidewatch.inference.predict import predict_paths
from slidewatch.meta import META_FILE, ModelMeta, TerrainSpec, read_meta, write_meta
from slidewatch.scan.plan import fingerprint
from slidewatch.scan.run import ScanSettings, scan, scan_with_model

GAIN, OFFSET = 0.6, 0.1  # another sensor: x * 0.6 + 0.1 in unit scale


def meta_of(standardize="image", in_chans=3, **kw) -> ModelMeta:
    return ModelMeta("fixed", ["landslide", "non_landslide"], in_chans, 32, [0.0] * in_chans,
                     [1.0] * in_chans, standardize=standardize, **kw)


def other_sensor(path: Path, out: Path) -> Path:
    """The image of ``path`` (uint8) as float32 unit-scale values with a gain and offset,
    georeferenced like the scenes of the scan tests."""
    unit = read_image(path).astype(np.float32) / 255
    return write_image(out, unit * GAIN + OFFSET, crs=UTM45, transform=TRANSFORM)


def train(data: Path, out: Path, *extra: str) -> Path:
    code = main(["train", "--data", str(data), "--out", str(out), "--model", "baseline_cnn",
                 "--weights", "none", "--input-size", "32", "--phase1-epochs", "0",
                 "--phase2-epochs", "1", "--unfreeze-layers", "99", "--batch-size", "8",
                 "--quiet", "--device", "cpu", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def std_model(tiny_tiles, tmp_path_factory) -> Path:
    """The tiny CNN of ``tiny_model`` trained with ``--standardize image``."""
    return train(tiny_tiles, tmp_path_factory.mktemp("std") / "model", "--standardize", "image")


# ----------------------------------------------------------------------- (a) the statistics


def test_statistics_of_a_whole_image_over_its_valid_pixels(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    h, w = 60, 50
    want_mean, want_std = np.array([0.2, 0.5, 0.7]), np.array([0.05, 0.1, 0.02])
    unit = rng.normal(want_mean, want_std, (h, w, 3))
    raw = np.clip(np.round(unit * 65535), 1, 65535).astype(np.uint16)
    raw[:7, :] = 0  # nodata (declared below): must not count
    raw[30, 10:20, 1] = 0  # one band nodata: the whole pixel is invalid
    path = tmp_path / "img.tif"
    write_image(path, raw)
    with raster.open_raster(path, "r+") as ds:
        ds.nodata = 0
    ok = (raw != 0).all(axis=2)
    x = raw[ok].astype(np.float64) / 65535
    expected_mean, expected_std = x.mean(0), x.std(0)
    assert np.allclose(expected_mean, want_mean, atol=0.01)  # the image is what it says

    arr, valid = read_image(path), declared_valid(path)
    assert valid is not None and (valid == ok).all()
    stats = image_statistics(*unit_and_valid(arr, None, valid))
    assert stats.pixels == int(ok.sum())
    assert np.allclose(stats.mean, expected_mean, atol=1e-9)
    assert np.allclose(stats.std, expected_std, atol=1e-9)

    monkeypatch.setattr("slidewatch.data.standardize.STATS_READ_BYTES", 3 * 50 * 2 * 4)
    with raster.open_raster(path) as ds:  # strip by strip (4 rows at a time): the same numbers
        strips = raster_statistics(ds, [1, 2, 3])
    assert strips.pixels == stats.pixels
    assert np.allclose(strips.mean, stats.mean, atol=1e-12)
    assert np.allclose(strips.std, stats.std, atol=1e-12)

    # the rule: the valid pixels of the standardised image have mean 0 and std 1 (target 0/1)
    unit_img, ok_img = unit_and_valid(arr, None, valid)
    z = standardize(unit_img, ok_img, stats, [0.0] * 3, [1.0] * 3)
    assert np.allclose(z[ok_img].mean(0), 0, atol=1e-5)
    assert np.allclose(z[ok_img].std(0), 1, atol=1e-4)
    assert (z[~ok_img] == 0).all()  # nodata stays 0
    # ... and with a model's statistics the forward pass's normalisation gives the same
    y = standardize(unit_img, ok_img, stats, [0.4, 0.5, 0.6], [0.2, 0.3, 0.1])
    normalised = (y - np.array([0.4, 0.5, 0.6])) / np.array([0.2, 0.3, 0.1])
    assert np.allclose(normalised[ok_img], z[ok_img], atol=1e-4)


def test_nan_pixels_constant_bands_and_empty_images():
    unit = np.full((4, 5, 2), 0.3, np.float32)
    unit[0, 0] = np.nan
    u, ok = unit_and_valid(unit)
    assert not ok[0, 0] and ok.sum() == 19
    stats = image_statistics(u, ok)
    assert np.allclose(stats.mean, 0.3) and stats.std == (MIN_STD, MIN_STD)
    none = image_statistics(u, np.zeros((4, 5), bool))
    assert none.mean == (0.0, 0.0) and none.std == (1.0, 1.0) and none.pixels == 0


def test_tile_dataset_standardises_each_file_by_its_own_statistics(tmp_path):
    rng = np.random.default_rng(0)
    dark = write_image(tmp_path / "dark.png", (slide_image(rng, True) * 0.3).astype(np.uint8))
    bright = write_image(tmp_path / "bright.png", slide_image(rng, False))
    meta = meta_of()
    ds = TileDataset([Sample(dark, 0, "a", "r"), Sample(bright, 1, "b", "r")],
                     standardize=Standardizer(meta))
    for i in range(2):
        x = ds[i]["image"].numpy()
        assert np.allclose(x.mean(axis=(1, 2)), 0, atol=1e-5)
        assert np.allclose(x.std(axis=(1, 2)), 1, atol=1e-3)


# -------------------------------------------------------------- (b) invariance to the sensor


def test_predict_is_invariant_to_a_gain_and_offset(std_model, tiny_model, tmp_path):
    rng = np.random.default_rng(5)
    images = [write_image(tmp_path / f"img{k}.png", slide_image(rng, k % 2 == 0))
              for k in range(4)]
    others = [other_sensor(p, tmp_path / f"other{k}.tif") for k, p in enumerate(images)]
    p1 = np.array([p.probability for p in predict_paths(std_model, images, device="cpu")])
    p2 = np.array([p.probability for p in predict_paths(std_model, others, device="cpu")])
    assert np.abs(p1 - p2).max() < 1e-4
    assert read_meta(std_model).standardize == "image"
    # without the rule the other sensor's pixels give other probabilities (so this can fail)
    q1 = np.array([p.probability for p in predict_paths(tiny_model, images, device="cpu")])
    q2 = np.array([p.probability for p in predict_paths(tiny_model, others, device="cpu")])
    assert np.abs(q1 - q2).max() > 1e-3


def test_scan_is_invariant_to_a_gain_and_offset(std_model, tiny_model, tmp_path):
    rng = np.random.default_rng(9)
    img = add_slide(vegetation(rng, 64, 96), rng, 16, 40, 28)
    scene = write_image(tmp_path / "scene.tif", img, crs=UTM45, transform=TRANSFORM)
    other = other_sensor(scene, tmp_path / "other.tif")

    def maps(model, name):
        out = []
        for s in (scene, other):
            scan(model, [s], tmp_path / name, tile=32, stride=16, device="cpu")
            with raster.open_raster(tmp_path / name / f"{s.stem}_probability.tif") as ds:
                out.append(ds.read(1))
        return out

    a, b = maps(std_model, "std")
    assert (a >= 0).all() and np.abs(a - b).max() < 1e-3
    a, b = maps(tiny_model, "plain")
    assert np.abs(a - b).max() > 1e-3  # without the rule the scan sees another scene


# ----------------------------------------------- (c) the whole scene's statistics, not a window's


def halves_scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    img = vegetation(rng, 64, 128)
    img[:, 64:] = np.clip(img[:, 64:].astype(int) + 90, 0, 255).astype(np.uint8)  # bright half
    return write_image(tmp_path / "halves.tif", img, crs=UTM45, transform=TRANSFORM)


def test_scan_windows_use_the_whole_scenes_statistics(tmp_path, monkeypatch):
    scene = halves_scene(tmp_path)
    seen = []
    real = scan_score.batch_tensor

    def spy(meta, raw, valid, pin=False, stats=None):
        t = real(meta, raw, valid, pin, stats)
        seen.append((raw, stats, t))
        return t

    monkeypatch.setattr(scan_score, "batch_tensor", spy)
    settings = ScanSettings(tile=32, stride=32, batch=4)
    scan_with_model(FixedLogits(), meta_of(), [scene], tmp_path / "out", settings,
                    model_id="fixed")
    with raster.open_raster(scene) as ds:
        whole = raster_statistics(ds, [1, 2, 3])
    assert seen and all(stats == whole for _, stats, _ in seen)  # computed once, whole scene
    raw = np.concatenate([r for r, _, _ in seen]).astype(np.float64) / 255
    x = torch.cat([t for _, _, t in seen]).numpy()
    expected = (raw - np.array(whole.mean)[:, None, None]) / np.array(whole.std)[:, None, None]
    assert np.allclose(x, expected, atol=1e-5)
    means = x.mean(axis=(1, 2, 3))  # per window: the dark half below 0, the bright one above
    assert means.min() < -0.5 and means.max() > 0.5


def test_a_scene_crop_takes_the_scenes_statistics_not_its_own(tmp_path):
    rng = np.random.default_rng(4)
    image, mask = blob_image(rng, size=64)
    image[:, 32:] = np.clip(image[:, 32:].astype(int) + 120, 0, 255).astype(np.uint8)
    scene = make_scene(tmp_path, "scene", {"s0": (image, mask)})
    samples = scene_samples(scene)
    crops = SceneCrops(samples, 16, crops_per_image=16, positive_share=0.0,
                       standardize=Standardizer(meta_of()))
    full, _, _ = crops.scene(0)
    assert abs(float(full.mean())) < 1e-5  # the whole scene is standardised ...
    torch.manual_seed(0)
    means = [float(crops[i]["image"].mean()) for i in range(16)]
    assert min(means) < -0.5 and max(means) > 0.5  # ... so a crop is not each zero-mean


def test_the_rule_is_in_the_scan_fingerprint(tmp_path):
    scene = halves_scene(tmp_path)
    info = raster.inspect_scene(scene, 3)
    s = ScanSettings(tile=32, stride=16)
    plain = fingerprint(info, s, "m", torch.device("cpu"))
    assert "standardize" not in plain  # scans without a rule resume across versions
    assert fingerprint(info, s, "m", torch.device("cpu"), "image")["standardize"] == "image"
    # a scan interrupted with one rule starts again with the other (same model id)
    settings = ScanSettings(tile=32, stride=16, batch=4)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        scan_with_model(FixedLogits(), meta_of("none"), [scene], out, settings,
                        model_id="fixed", progress=StopAfter(1))
    result = scan_with_model(FixedLogits(), meta_of(), [scene], out, settings, model_id="fixed")
    assert result.scenes[0].status == "scanned"


# ------------------------------------------------------------- (d) metadata and configuration


def test_meta_round_trip_and_bad_values(tmp_path):
    d = meta_of().to_json()
    assert d["standardize"] == "image"
    assert "standardize" not in meta_of("none").to_json()  # old folders stay byte-identical
    folder = tmp_path / "m"
    folder.mkdir()
    write_meta(folder, meta_of())
    assert read_meta(folder).standardize == "image"

    data = json.loads((folder / META_FILE).read_text())
    data["standardize"] = "tile"
    (folder / META_FILE).write_text(json.dumps(data))
    with pytest.raises(WeightsError) as exc:
        read_meta(folder)
    message = str(exc.value)
    assert "\n" not in message and "field standardize must be none or image, got 'tile'" in \
        message and str(folder / META_FILE) in message

    terrain = meta_of(in_chans=6)
    terrain.inputs = type(terrain.inputs)(terrain=TerrainSpec("channels",
                                                              names=("e", "s", "a")))
    with pytest.raises(WeightsError, match="field standardize image applies to image-only"):
        write_meta(folder, terrain)


def test_config_flag_and_refusals(tmp_path):
    cfg = build_config(None, {"standardize": "image", "data": [str(tmp_path)]})
    assert cfg.data.standardize == "image"
    assert to_dict(cfg)["data"]["standardize"] == "image"
    assert "standardize" not in to_dict(TrainConfig())["data"]  # plain runs as before
    with pytest.raises(ConfigError, match="data.standardize: must be one of none, image"):
        from_dict({"data": {"standardize": "tile"}})
    with pytest.raises(ConfigError, match="data.standardize: image applies to image-only"):
        from_dict({"data": {"standardize": "image"}, "aux": {"dem": "dem.tif"}})
    with pytest.raises(ConfigError, match="data.standardize"):
        from_dict({"data": {"standardize": "image"}, "sizes": {"source": "mask"}})


# ------------------------------------------------------------------- (e) a segmentation model


def test_segmentation_model_with_the_rule_trains_and_evaluates(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "cls"
    for i in range(6):
        image, mask = blob_image(rng)
        write_image(data / "landslide" / f"ls{i}.png", image)
        write_image(data / "masks" / f"ls{i}.png", mask.astype(np.uint8) * 255)
        write_image(data / "non_landslide" / f"bg{i}.png", blob_image(rng, landslide=False)[0])
    scene = make_scene(tmp_path, "scene", {f"s{i}": blob_image(rng, size=48) for i in range(2)})
    out = tmp_path / "seg"
    assert main(["train", "--task", "segment", "--model", "unet_tiny", "--weights", "none",
                 "--data", str(data), "--data", str(scene), "--out", str(out),
                 "--input-size", "32", "--phase1-epochs", "0", "--phase2-epochs", "1",
                 "--unfreeze-layers", "100", "--batch-size", "8", "--quiet",
                 "--device", "cpu", "--standardize", "image"]) == 0
    meta = read_meta(out)
    assert meta.task == "segment" and meta.standardize == "image"
    assert meta.mean == [0.0] * 3 and meta.std == [1.0] * 3  # a standardised image's own
    assert json.loads((out / META_FILE).read_text())["standardize"] == "image"
    ev = tmp_path / "ev"
    assert main(["evaluate", str(out), "--data", str(data), "--data", str(scene),
                 "--out", str(ev), "--quiet", "--device", "cpu"]) == 0
    assert (ev / "metrics.json").is_file()
    # a copy of the folder without the rule gives other maps: the rule is applied
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    d = json.loads((plain / META_FILE).read_text())
    del d["standardize"]
    (plain / META_FILE).write_text(json.dumps(d))
    files = sorted((data / "landslide").glob("*.png"))[:2]
    a = [p.probability for p in predict_paths(out, files, device="cpu")]
    b = [p.probability for p in predict_paths(plain, files, device="cpu")]
    assert a != b


# ------------------------------------- (f) tiles cut from a scene: the scene's statistics


def tiled_scene(tmp_path: Path, images: int = 1, seed: int = 2) -> tuple[Path, Path]:
    """A scene folder of georeferenced uint8 images (64 x 128, the right half 90 brighter,
    so a tile's statistics are not its scene's; a landslide in the top-left tile) and its
    tiles (32 px, stride 32) cut by ``slidewatch data tiles``."""
    rng = np.random.default_rng(seed)
    scene = tmp_path / "hill"
    for k in range(images):
        img = vegetation(rng, 64, 128)
        img[:, 64:] = np.clip(img[:, 64:].astype(int) + 90, 0, 255).astype(np.uint8)
        r, c = 32 * (k % 2), 32 * (k % 4)
        add_slide(img, rng, r, c, 32)
        mask = np.zeros((64, 128), np.uint8)
        mask[r:r + 32, c:c + 32] = 255
        write_image(scene / "images" / f"s{k}.tif", img, crs=UTM45, transform=TRANSFORM)
        write_image(scene / "masks" / f"s{k}.png", mask)
    tiles = tmp_path / "tiles"
    assert main(["data", "tiles", str(scene), "--out", str(tiles), "--tile", "32",
                 "--stride", "32", "--quiet"]) == 0
    return scene, tiles


def csv_rows(tiles: Path) -> list[dict]:
    with open(tiles / "tiles.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_tiling_records_the_whole_scene_images_statistics(tmp_path):
    from slidewatch.data.imagestats import SCENE_COLUMNS, parse_scene_stats
    from slidewatch.data.standardize import array_statistics

    rng = np.random.default_rng(8)
    raw = np.clip(rng.normal(20000, 3000, (48, 80, 3)), 1, 65535).astype(np.uint16)
    raw[:, 40:] //= 3  # a darker half
    raw[:5, :] = 0  # nodata (declared below): not in the statistics
    raw[20, 3:9, 2] = 0  # one band nodata: the whole pixel is left out
    scene = tmp_path / "s"
    image = write_image(scene / "images" / "a.tif", raw, crs=UTM45, transform=TRANSFORM)
    with raster.open_raster(image, "r+") as ds:
        ds.nodata = 0
    mask = np.zeros((48, 80), np.uint8)
    mask[8:24, 0:16] = 255
    write_image(scene / "masks" / "a.png", mask)
    assert main(["data", "tiles", str(scene), "--out", str(tmp_path / "t"), "--tile", "16",
                 "--stride", "16", "--quiet"]) == 0
    rows = csv_rows(tmp_path / "t")
    assert rows and all(set(SCENE_COLUMNS) <= set(r) for r in rows)
    assert len({(r["scene_mean"], r["scene_std"]) for r in rows}) == 1  # one scene image
    ok = (raw != 0).all(axis=2)
    x = raw[ok].astype(np.float64) / 65535  # numpy: valid pixels, unit scale
    mean = np.array([float(v) for v in rows[0]["scene_mean"].split()])
    std = np.array([float(v) for v in rows[0]["scene_std"].split()])
    assert np.allclose(mean, x.mean(0), rtol=0, atol=1e-7)
    assert np.allclose(std, x.std(0), rtol=0, atol=1e-7)
    # the very numbers of the statistics function (repr floats read back exactly) ...
    stats = array_statistics(read_image(image), declared_valid(image))
    parsed = parse_scene_stats(rows[0]["scene_mean"], rows[0]["scene_std"])
    assert parsed.mean == stats.mean and parsed.std == stats.std
    assert stats == image_statistics(*unit_and_valid(read_image(image), None,
                                                     declared_valid(image)))
    with raster.open_raster(image) as ds:  # ... and those the scan takes of the scene
        whole = raster_statistics(ds, [1, 2, 3])
    assert np.allclose(parsed.mean, whole.mean, rtol=0, atol=1e-7)
    assert np.allclose(parsed.std, whole.std, rtol=0, atol=1e-7)


def test_a_tile_is_standardised_with_its_scenes_statistics_not_its_own(tmp_path):
    from slidewatch.data.folders import scan_class_folders

    scene, tiles = tiled_scene(tmp_path)
    img = read_image(scene / "images" / "s0.tif")
    x = img.reshape(-1, 3).astype(np.float64) / 255
    samples = scan_class_folders(tiles)
    assert len(samples) == 8 and all(s.scene_stats is not None for s in samples)
    assert np.allclose(samples[0].scene_stats.mean, x.mean(0), rtol=0, atol=1e-7)
    assert np.allclose(samples[0].scene_stats.std, x.std(0), rtol=0, atol=1e-7)
    meta = meta_of()
    meta.mean, meta.std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.1]
    ds = TileDataset(samples, standardize=Standardizer(meta))
    bright = [i for i, s in enumerate(samples) if s.col >= 64]
    dark = [i for i, s in enumerate(samples) if s.col < 64 and s.label == 1]  # no scar
    for i in range(len(samples)):
        s = samples[i]
        tile = img[s.row:s.row + 32, s.col:s.col + 32]
        unit, ok = unit_and_valid(read_image(s.path), None, declared_valid(s.path))
        assert (read_image(s.path) == tile).all()
        got = ds.unit_image(i)
        # exactly the tile's pixels standardised with the scene's statistics
        assert np.array_equal(got, standardize(unit, ok, s.scene_stats, meta.mean, meta.std))
        z = (tile.astype(np.float64) / 255 - x.mean(0)) / x.std(0)
        assert np.allclose((got - np.array(meta.mean)) / np.array(meta.std), z, atol=1e-4)
    z = [((ds.unit_image(i) - np.array(meta.mean)) / np.array(meta.std)).mean() for i in
         range(len(samples))]
    # not the tile's own statistics: the bright half stays above the scene mean, the dark below
    assert min(z[i] for i in bright) > 0.5 and max(z[i] for i in dark) < -0.5
    # an explicit scale rescales the statistics with the pixels: the same standardised tile
    scaled = TileDataset(samples, scale=1000.0, standardize=Standardizer(meta))
    assert np.allclose(scaled.unit_image(bright[0]), ds.unit_image(bright[0]), atol=1e-4)


def test_a_tiles_csv_without_scene_statistics_still_loads(tmp_path):
    from slidewatch.data.folders import scan_class_folders
    from slidewatch.errors import DataError

    _, tiles = tiled_scene(tmp_path)
    rows = csv_rows(tiles)
    old = ("path", "label", "source_image", "row", "col", "landslide_fraction", "region")
    with open(tiles / "tiles.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    samples = scan_class_folders(tiles)
    assert len(samples) == 8 and all(s.scene_stats is None for s in samples)
    assert {s.group for s in samples} == {"hill/s0"} and samples[0].row is not None
    ds = TileDataset(samples, standardize=Standardizer(meta_of()))
    for i in range(len(samples)):  # as before: each tile by its own statistics
        x = ds[i]["image"].numpy()
        assert np.allclose(x.mean(axis=(1, 2)), 0, atol=1e-5)
    # a damaged cell is one line naming the file and line
    rows[1]["scene_std"] = "0.1 nan 0.2"
    with open(tiles / "tiles.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=r"tiles.csv: line 3: scene_std '0.1 nan 0.2' must be "
                                        "one finite number per band"):
        scan_class_folders(tiles)


def test_training_evaluation_predict_and_scan_agree_on_tiles_of_a_scene(tmp_path):
    from rasterio.windows import Window

    from slidewatch.data.folders import load_datasets
    from slidewatch.data.inputs import image_dataset, window_tensor
    from slidewatch.models.checkpoint import load_model
    from slidewatch.scan.score import score_windows

    scene, tiles = tiled_scene(tmp_path, images=4)
    model_dir = train(tiles, tmp_path / "model", "--standardize", "image")
    model, meta = load_model(model_dir)
    assert meta.standardize == "image"
    samples = load_datasets([tiles])
    ds = image_dataset(meta, samples)  # what evaluate and predict build from tiles.csv
    own = image_dataset(meta, [Sample(s.path, s.label, s.group, s.region) for s in samples])
    by_scene: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_scene.setdefault(s.group.split("/")[1], []).append(i)
    differ = 0.0
    scan_prob = {}
    for stem, idx in by_scene.items():
        path = scene / "images" / f"{stem}.tif"
        windows = [Window(samples[i].col, samples[i].row, 32, 32) for i in idx]
        with raster.open_raster(path) as src:
            stats = scan_score.scene_statistics(meta, src, [1, 2, 3])  # the scan's
            raw = np.stack([src.read(window=w) for w in windows])
        x = window_tensor(meta, raw, None, stats)  # the scan's model input
        for k, i in enumerate(idx):  # the tile's model input equals the scan window's
            assert torch.allclose(ds[i]["image"], x[k], atol=1e-5)
            differ = max(differ, float((own[i]["image"] - x[k]).abs().max()))
        probs = score_windows(model, meta, path, windows, [1, 2, 3], 8, torch.device("cpu"))
        scan_prob.update({str(samples[i].path): float(p) for i, p in zip(idx, probs)})
        # `slidewatch scan` of the scene image: its map holds those windows' probabilities
        scan(model_dir, [path], tmp_path / "scan", tile=32, stride=32, device="cpu")
        with raster.open_raster(tmp_path / "scan" / f"{stem}_probability.tif") as out:
            mapped = out.read(1)
        for i, p in zip(idx, probs):
            r, c = samples[i].row, samples[i].col
            assert np.abs(mapped[r:r + 32, c:c + 32] - p).max() < 1e-4
    assert differ > 0.5  # a tile's own statistics would give another input
    # evaluate (predictions.csv) and predict on the tiles folder give the scan's probabilities
    ev = tmp_path / "ev"
    assert main(["evaluate", str(model_dir), "--data", str(tiles), "--out", str(ev), "--quiet",
                 "--device", "cpu"]) == 0
    with open(ev / "predictions.csv", newline="", encoding="utf-8") as fh:
        evaluated = {r["path"]: float(r["probability"]) for r in csv.DictReader(fh)}
    assert evaluated.keys() == scan_prob.keys()
    assert max(abs(evaluated[k] - scan_prob[k]) for k in evaluated) < 1e-4
    predicted = {p.path: p.probability for p in predict_paths(model_dir, [tiles], device="cpu")}
    assert max(abs(predicted[k] - scan_prob[k]) for k in scan_prob) < 1e-4
    spread = max(scan_prob.values()) - min(scan_prob.values())
    assert spread > 0  # the model's outputs are not all one number
