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


def tiny(tiles, region, quick):
    return from_dict({
        "data": {"paths": [str(tiles)], "holdout_regions": [region], "val_fraction": 0.3},
        "model": {"name": "baseline_cnn", "weights": "none", "input_size": 32},
        "phase1": {"epochs": 0}, "phase2": {"epochs": 3, "lr": 0.003, "unfreeze_layers": 99},
        "batch_size": 8, "progress": False, "device": "cpu"})


def test_leave_one_region_out_table(tmp_path):
    data = fake_regions(tmp_path / "data")
    rows = run_demo(str(data), tmp_path / "run", regions=("sichuan", "nepal"), config=tiny,
                    tile=32)
    assert [r["region"] for r in rows] == ["sichuan", "nepal"]
    assert rows[0]["tiles"] == 24 and rows[0]["landslide_tiles"] == 12
    assert rows[1]["landslide_tiles"] == 0 and rows[1]["tp"] == 0
    table = format_table(rows)
    assert "sichuan" in table and "n/a" in table
    shown = {line.split()[0]: line.split() for line in table.splitlines()[2:-1]}
    # F1 and the reference F1 are the run's and the demo's own, each in its column
    assert shown["sichuan"][6] == f"{rows[0]['f1']:.3f}"
    assert shown["sichuan"][-1] == f"{demo.REFERENCE_F1['sichuan']:.2f}"
    assert shown["nepal"][6] == "n/a" and shown["nepal"][-1] == "-"
    # a second run reuses the finished folds
    again = run_demo(str(data), tmp_path / "run", regions=("sichuan",), config=tiny, tile=32)
    assert again[0]["f1"] == rows[0]["f1"]


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
