"""Landslide4Sense-style 14-band inputs (Sentinel-2 B1-B12, slope, DEM as float HDF5 patches):
per-band normalisation statistics come from the training split only and travel with the model."""

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from slidewatch.cli.main import main

BANDS = 14


def write_l4s_dataset(root: Path, size: int = 16) -> dict[str, np.ndarray]:
    """Class folders of ``.h5`` patches (key ``img``, H x W x 14 float64) from 6 source images;
    band b of image i is around ``b + 10 * i`` (slope and DEM on their own scales), so every
    image moves the per-band means and a split-dependent statistic is visible. Returns the
    array of each file (path relative to ``root``)."""
    rng = np.random.default_rng(3)
    arrays, rows = {}, []
    for i in range(6):
        for label in ("landslide", "non_landslide"):
            for k in range(3):
                arr = rng.normal(np.arange(BANDS) + 10.0 * i, 0.2, (size, size, BANDS))
                arr[..., 12] = rng.uniform(0, 45, (size, size))  # slope, degrees
                arr[..., 13] = 1500 + 100 * i + rng.normal(0, 20, (size, size))  # DEM, m
                if label == "landslide":
                    arr[4:12, 4:12, 1:4] += 3.0  # bright bare soil in B2-B4
                rel = f"{label}/img{i}__r0_c{k}.h5"
                (root / label).mkdir(parents=True, exist_ok=True)
                with h5py.File(root / rel, "w") as fh:
                    fh.create_dataset("img", data=arr)
                arrays[rel] = arr
                rows.append({"path": rel, "label": label, "source_image": f"img{i}"})
    with open(root / "tiles.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return arrays


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("l4s")
    arrays = write_l4s_dataset(root / "tiles")
    out = root / "model"
    code = main(["train", "--data", str(root / "tiles"), "--out", str(out), "--model",
                 "test_efficientnet", "--weights", "none", "--input-size", "16",
                 "--phase1-epochs", "0", "--phase2-epochs", "1", "--unfreeze-layers", "99",
                 "--batch-size", "8", "--quiet", "--device", "cpu"])
    assert code == 0
    return root, out, arrays


def test_band_statistics_are_those_of_the_training_split(trained):
    root, out, arrays = trained
    meta = json.loads((out / "slidewatch.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert meta["in_chans"] == BANDS and len(meta["mean"]) == len(meta["std"]) == BANDS

    def pixels(part):
        keys = [p.split("/", 1)[1] for p in split[part]]  # "tiles/<class>/<file>"
        return np.concatenate([arrays[k].reshape(-1, BANDS) for k in keys])

    train, val = pixels("train"), pixels("val")
    assert len(val) and len(train) + len(val) <= sum(a.shape[0] * a.shape[1]
                                                     for a in arrays.values())
    np.testing.assert_allclose(meta["mean"], train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(meta["std"], train.std(0), rtol=1e-4)
    both = np.concatenate([train, val])
    assert not np.allclose(meta["mean"], both.mean(0), rtol=1e-3)  # val images move the means
    assert meta["mean"][13] > 1000 and meta["std"][12] > 5  # DEM and slope on their own scales


def test_fourteen_band_model_predicts_and_refuses_three_bands(trained, tmp_path, capsys):
    root, out, _ = trained
    code = main(["predict", str(out), str(root / "tiles" / "landslide"), "--out",
                 str(tmp_path / "p.csv"), "--quiet"])
    assert code == 0
    with open(tmp_path / "p.csv") as f:
        assert len(list(csv.DictReader(f))) == 18
    rgb = tmp_path / "rgb.h5"
    with h5py.File(rgb, "w") as fh:
        fh.create_dataset("img", data=np.zeros((16, 16, 3)))
    capsys.readouterr()
    code = main(["predict", str(out), str(rgb), "--out", str(tmp_path / "q.csv"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "rgb.h5" in err and "14" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q.csv").exists()
