"""The demo's orchestration and its sample-data lookup (no network, generated regions)."""

import urllib.error

import numpy as np
import pytest
from conftest import make_scene
from PIL import Image

from slidewatch.config.train import from_dict
from slidewatch.data import sampledata
from slidewatch.errors import DataError
from slidewatch.experiments import demo
from slidewatch.experiments.demo import format_table, run_demo


def fake_regions(root, size=64):
    rng = np.random.default_rng(0)
    for region in sampledata.REGIONS:
        scenes = {}
        for i in range(3):
            img = rng.integers(0, 120, (size, size * 2, 3), dtype=np.uint8)
            mask = np.zeros((size, size * 2), bool)
            if region != "nepal":
                mask[:, :size] = True
                img[:, :size] = (200, 160, 120)
            scenes[f"{region}{i}"] = (img, mask)
        make_scene(root / "regions", region, scenes)
    return root


def tiny(tiles, region, quick, extra=()):
    return from_dict({
        "data": {"paths": [str(tiles), *map(str, extra)], "holdout_regions": [region],
                 "val_fraction": 0.3},
        "model": {"name": "baseline_cnn", "weights": "none", "input_size": 32},
        "phase1": {"epochs": 0}, "phase2": {"epochs": 3, "lr": 0.003, "unfreeze_layers": 99},
        "batch_size": 8, "progress": False, "device": "cpu"})


def tiny_segment(data, region, quick):
    return from_dict({
        "task": "segment",
        "data": {"paths": [str(p) for p in data], "holdout_regions": [region],
                 "val_fraction": 0.3},
        "model": {"name": "unet_tiny", "weights": "none", "input_size": 32},
        "phase1": {"epochs": 0}, "phase2": {"epochs": 2, "lr": 0.01, "unfreeze_layers": 99},
        "batch_size": 8, "progress": False, "device": "cpu"})


def add_bijie_dataset(data, n=4):
    """A small ``datasets/bijie``: landslide images with masks, landslide-free ones, a test list."""
    rng = np.random.default_rng(1)
    root = data / "datasets" / "bijie"
    for sub in ("landslide", "non_landslide", "masks", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
        img[:20] = (200, 160, 120)
        mask = np.zeros((40, 40), np.uint8)
        mask[:20] = 255
        Image.fromarray(img).save(root / "landslide" / f"ls_{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"ls_{i}.png")
        Image.fromarray(rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)).save(
            root / "non_landslide" / f"nls_{i}.png")
    (root / "splits" / "test.txt").write_text("ls_0\nnls_0\nnls_1\n")
    return root


def test_leave_one_region_out_table(tmp_path):
    data = fake_regions(tmp_path / "data")
    add_bijie_dataset(data)
    rows = run_demo(str(data), tmp_path / "run", regions=("sichuan", "nepal", "bijie"),
                    config=tiny, seg_config=tiny_segment, tile=32)
    assert [r["region"] for r in rows] == ["sichuan", "nepal", "bijie"]
    assert rows[0]["tiles"] == 24 and rows[0]["landslide_tiles"] == 12
    assert rows[1]["landslide_tiles"] == 0 and rows[1]["tp"] == 0
    # bijie: its region tiles plus the dataset's test list (1 landslide, 2 landslide-free)
    assert rows[2]["tiles"] == 24 + 3 and rows[2]["landslide_tiles"] == 12 + 1
    seg = rows[0]["segment"]
    assert seg["tiles"] == rows[0]["tiles"]  # the same tiles for both tasks
    assert seg["pixel_iou"] is not None and 0 <= seg["pixel_iou"] <= 1
    table = format_table(rows)
    assert "sichuan" in table and "n/a" in table and "segmentation" in table
    shown = {line.split()[0]: line.split() for line in table.splitlines()[3:-1]}
    # each score in its column: classifier F1, segmentation F1 and pixel IoU, reference F1
    assert shown["sichuan"][4] == f"{rows[0]['f1']:.3f}"
    assert shown["sichuan"][8] == f"{seg['f1']:.3f}"
    assert shown["sichuan"][11] == f"{seg['pixel_iou']:.3f}"
    assert shown["sichuan"][-1] == f"{demo.REFERENCE_F1['sichuan']:.2f}"
    assert shown["nepal"][4] == "n/a" and shown["nepal"][-1] == "-"
    # a second run reuses the finished folds
    again = run_demo(str(data), tmp_path / "run", regions=("sichuan",), config=tiny,
                     seg_config=tiny_segment, tile=32)
    assert again[0]["f1"] == rows[0]["f1"]
    assert again[0]["segment"]["pixel_iou"] == seg["pixel_iou"]


def test_data_lookup_order_and_offline_message(tmp_path, monkeypatch):
    data = fake_regions(tmp_path / "data")
    monkeypatch.setenv(sampledata.ENV_VAR, str(data))
    assert sampledata.locate(None) == data
    with pytest.raises(DataError, match="--data"):
        sampledata.locate(str(tmp_path / "elsewhere"))
    monkeypatch.delenv(sampledata.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url, timeout=30.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(sampledata, "_get", offline)
    with pytest.raises(DataError, match="SLIDEWATCH_DATA"):
        sampledata.locate(None)


def test_download_checks_sha256_and_converts_masks(tmp_path, monkeypatch):
    import hashlib
    import io

    arr = np.zeros((4, 4, 3), np.uint8)
    arr[0, 0] = (200, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    good = buf.getvalue()
    files = [{"file": "regions/x/masks/a.png", "transform": "mask: max over channels > 127",
              "url": "https://example/a.png", "origin_sha256": hashlib.sha256(good).hexdigest()}]
    monkeypatch.setattr(sampledata, "manifest", lambda: {"regions": {"x": {"files": files}}})
    monkeypatch.setattr(sampledata, "_get", lambda url, timeout=30.0: good)
    sampledata.fetch_all(tmp_path / "c")
    mask = np.asarray(Image.open(tmp_path / "c/regions/x/masks/a.png"))
    assert mask.ndim == 2 and mask[0, 0] == 255 and mask.sum() == 255
    files[0]["origin_sha256"] = "0" * 64
    with pytest.raises(DataError, match="sha256"):
        sampledata.fetch_all(tmp_path / "d")


def test_manifest_ships_with_the_package():
    m = sampledata.manifest()
    assert set(m["regions"]) == set(sampledata.REGIONS)
    assert all(f["url"].startswith("https://") and len(f["origin_sha256"]) == 64
               for r in m["regions"].values() for f in r["files"])
