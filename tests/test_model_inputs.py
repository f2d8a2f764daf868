"""One builder of model inputs: the same pixels reach the model as the same tensor through
train, evaluate, predict, explain, the demo and scan, and nodata follows one rule everywhere.

Every path is run through its real entry point; the tensor each one hands to the model is
recorded where the one forward pass (and the CAM code) normalises it. Images are at the model's
input size, so the expected tensor is known independently: pixels / 255, bands first.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import UTM45, write_image
from rasterio.transform import from_origin

from slidewatch.cli.main import main
from slidewatch.data.dataset import unit_pixels
from slidewatch.experiments import demo

SIZE = 32


@pytest.fixture()
def recorder(monkeypatch):
    """Every unit-scale batch (N x C x H x W) that reaches normalisation, in call order."""
    import slidewatch.explain.cams as cams
    import slidewatch.inference.forward as forward

    seen: list[torch.Tensor] = []
    real = forward.normalize

    def spy(x, mean, std):
        seen.append(x.detach().cpu().float().reshape(-1, *x.shape[-3:]).clone())
        return real(x, mean, std)

    monkeypatch.setattr(forward, "normalize", spy)
    monkeypatch.setattr(cams, "normalize", spy)
    return seen


def rows_of(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    return [row for b in batches for row in b]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One RGB picture saved as PNG tiles of a class-folder dataset (with tiles.csv and a
    region), as a 32 x 32 GeoTIFF scene, and a baseline CNN trained on the tiles."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    rows = []
    for label in ("landslide", "non_landslide"):
        for k in range(6):
            rel = f"{label}/north__img{k}__r0_c0.png"
            write_image(root / "tiles" / rel, pixels)
            rows.append({"path": rel, "label": label, "source_image": f"north/img{k}",
                         "row": 0, "col": 0, "landslide_fraction": 0.0, "region": "north"})
    with open(root / "tiles" / "tiles.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_image(root / "scene.tif", pixels, crs=UTM45, transform=from_origin(500000, 3e6, 1, 1))
    model = root / "model"
    assert main(["train", "--data", str(root / "tiles"), "--out", str(model), "--model",
                 "baseline_cnn", "--weights", "none", "--input-size", str(SIZE),
                 "--phase1-epochs", "0", "--phase2-epochs", "1", "--unfreeze-layers", "99",
                 "--batch-size", "4", "--split-by", "tile", "--no-augment", "--quiet",
                 "--device", "cpu"]) == 0
    expected = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return {"root": root, "model": model, "expected": expected}


def test_every_path_gives_the_model_the_same_tensor(world, recorder, tmp_path):
    root, model, expected = world["root"], world["model"], world["expected"]
    tile = root / "tiles" / "landslide" / "north__img0__r0_c0.png"
    runs = {
        "train": ["train", "--data", str(root / "tiles"), "--out", str(tmp_path / "m2"),
                  "--model", "baseline_cnn", "--weights", "none", "--input-size", str(SIZE),
                  "--phase1-epochs", "0", "--phase2-epochs", "1", "--unfreeze-layers", "99",
                  "--batch-size", "4", "--split-by", "tile", "--no-augment", "--quiet",
                  "--device", "cpu"],
        "evaluate": ["evaluate", str(model), "--data", str(root / "tiles"), "--out",
                     str(tmp_path / "ev"), "--quiet", "--device", "cpu"],
        "predict": ["predict", str(model), str(tile), "--out", str(tmp_path / "p.csv"),
                    "--quiet", "--device", "cpu"],
        "explain": ["explain", str(model), str(tile), "--out", str(tmp_path / "ex"),
                    "--quiet"],
        "scan": ["scan", str(model), str(root / "scene.tif"), "--out", str(tmp_path / "scan"),
                 "--tile", str(SIZE), "--stride", str(SIZE), "--no-progress",
                 "--device", "cpu"],
    }
    for name, argv in runs.items():
        recorder.clear()
        assert main(argv) == 0, name
        rows = rows_of(recorder)
        assert rows, f"{name}: no batch reached the model"
        for row in rows:
            assert torch.equal(row, expected), f"{name}: a different tensor reached the model"
    recorder.clear()
    block = demo.evaluate_region(model, root / "tiles", "north")
    assert block["tiles"] == 12
    rows = rows_of(recorder)
    assert len(rows) == 12 and all(torch.equal(r, expected) for r in rows), "demo"
    from slidewatch.data.folders import scan_class_folders

    one = next(s.group for s in scan_class_folders(root / "tiles") if s.region == "north")
    left = demo.evaluate_region(model, root / "tiles", "north", exclude=frozenset({one}))
    kept = [s for s in scan_class_folders(root / "tiles")
            if s.region == "north" and s.group != one]
    assert left["tiles"] == len(kept) < 12  # that image's tiles are left out


def test_nodata_is_one_rule_for_files_and_scan_windows(world, recorder, tmp_path):
    """A declared nodata value and NaN both become 0 in every band, in predict (a file) and in
    scan (a window of the same file); valid pixels are scaled as everywhere else."""
    model = world["model"]
    rng = np.random.default_rng(9)
    data = rng.uniform(0.05, 0.95, (SIZE, SIZE, 3)).astype(np.float32)
    data[3, 4, 1] = np.nan  # one band not finite: the whole pixel is nodata
    data[10:12, 20:23, :] = -9999.0  # declared nodata
    path = tmp_path / "float.tif"
    write_image(path, data, crs=UTM45, transform=from_origin(500000, 3e6, 1, 1))
    import rasterio

    with rasterio.open(path, "r+") as ds:
        ds.nodata = -9999.0
    expected = torch.from_numpy(np.moveaxis(data, -1, 0).copy())
    expected[:, 3, 4] = 0.0
    expected[:, 10:12, 20:23] = 0.0
    seen = {}
    for name, argv in {
        "predict": ["predict", str(model), str(path), "--out", str(tmp_path / "p.csv"),
                    "--quiet", "--device", "cpu"],
        "scan": ["scan", str(model), str(path), "--out", str(tmp_path / "scan"), "--tile",
                 str(SIZE), "--stride", str(SIZE), "--no-progress", "--device", "cpu"],
    }.items():
        recorder.clear()
        assert main(argv) == 0, name
        (seen[name],) = rows_of(recorder)
        assert torch.isfinite(seen[name]).all(), name
    assert torch.equal(seen["predict"], expected)
    assert torch.equal(seen["scan"], expected)
    with open(tmp_path / "p.csv") as fh:
        assert np.isfinite(float(next(csv.DictReader(fh))["probability"]))


def test_unit_pixels_rule():
    raw = np.array([[[0, 255], [51, 102]]], np.uint8).repeat(3, 0)  # C x H x W
    raw[1, 1, 1] = 7
    valid = np.array([[True, False], [True, True]])
    out = unit_pixels(raw, None, valid, channel_axis=0)
    assert out.dtype == np.float32
    assert out[:, 0, 1].tolist() == [0.0, 0.0, 0.0]  # masked
    assert out[1, 1, 1] == pytest.approx(7 / 255) and out[0, 1, 0] == pytest.approx(0.2)
    flt = np.ones((2, 2, 2), np.float32)
    flt[0, 0, 1] = np.inf
    out = unit_pixels(flt, None)
    assert out[0, 0].tolist() == [0.0, 0.0] and out[1, 1].tolist() == [1.0, 1.0]
    assert flt[0, 0, 1] == np.inf  # the caller's (cached) array is never changed
    scaled = unit_pixels(np.full((1, 1, 2), 5000, np.uint16), 10000.0)
    assert scaled.tolist() == [[[0.5, 0.5]]]


def test_training_statistics_stay_finite_with_nan_pixels(tmp_path):
    """NaN pixels are nodata (0) before the band statistics, so the model's mean/std and
    its predictions are finite."""
    rng = np.random.default_rng(2)
    for label in ("landslide", "non_landslide"):
        for k in range(4):
            img = rng.uniform(0, 1, (16, 16, 3)).astype(np.float32)
            img[k, k, :] = np.nan
            write_image(tmp_path / "d" / label / f"{label}{k}.tif", img)
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m"),
                 "--model", "baseline_cnn", "--weights", "none", "--input-size", "16",
                 "--phase1-epochs", "0", "--phase2-epochs", "1", "--unfreeze-layers", "99",
                 "--batch-size", "4", "--split-by", "tile", "--quiet", "--device", "cpu"]) == 0
    meta = json.loads((tmp_path / "m" / "slidewatch.json").read_text())
    assert all(np.isfinite(meta["mean"])) and all(np.isfinite(meta["std"]))
