"""Thresholds that transfer (issue 12): temperature scaling fitted on validation data,
validation regions that training never sees, the threshold's recorded source, and the
reliability of probabilities in evaluate and the report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _factories import make_class_dataset, tiny_config
from sklearn.metrics import brier_score_loss

from slidewatch.cli.main import main
from slidewatch.evaluation.calibration import fit_temperature, reliability
from slidewatch.inference.predict import predict_paths
from slidewatch.training.loop import train


def test_fit_temperature_recovers_an_overconfident_models_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-z))  # labels drawn from calibrated logits
    t, fit = fit_temperature(3.0 * z, y)  # a model three times too confident
    assert abs(t - 3.0) < 0.2
    assert fit["nll_after"] < fit["nll_before"]
    two = np.stack([np.zeros_like(z), 3.0 * z], axis=1)  # the same as two softmax logits
    t2, _ = fit_temperature(two, y.astype(int))
    assert abs(t2 - t) < 1e-3


def test_fit_temperature_is_never_worse_than_none():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, 500)
    y = rng.random(500) < 1 / (1 + np.exp(-z))
    t, fit = fit_temperature(z, y)
    assert fit["nll_after"] <= fit["nll_before"]
    assert 0.5 < t < 2.0


def test_reliability_bins_ece_and_brier():
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0, 0, 0])
    p = np.array([0.95, 0.95, 0.95, 0.95, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15])
    rel = reliability(y, p, bins=10)
    # bin 9: mean 0.95, frequency 0.5; bin 1: mean 0.15, frequency 2/6
    expected = 0.4 * abs(0.5 - 0.95) + 0.6 * abs(2 / 6 - 0.15)
    assert rel["ece"] == pytest.approx(expected)
    assert rel["brier"] == pytest.approx(brier_score_loss(y, p))
    assert [b["n"] for b in rel["bins"]] == [0, 6, 0, 0, 0, 0, 0, 0, 0, 4]
    assert rel["bins"][9]["frequency"] == 0.5
    assert reliability([], [])["ece"] is None


@pytest.fixture(scope="module")
def three_regions(tmp_path_factory):
    return make_class_dataset(tmp_path_factory.mktemp("cal") / "tiles", images=2, per_image=3,
                              regions=("north", "south", "west"))


@pytest.fixture(scope="module")
def calibrated(three_regions, tmp_path_factory):
    out = tmp_path_factory.mktemp("calm") / "m"
    cfg = tiny_config(three_regions, **{"data.val_regions": ["west"], "calibration": "temperature",
                                   "target_recall": 0.9, "data.holdout_regions": ["south"]})
    train(cfg, out)
    return out


def test_validation_regions_are_whole_and_unseen(calibrated):
    split = json.loads((calibrated / "split.json").read_text())
    assert split["val"] and all("west__" in k for k in split["val"])
    assert not any("west__" in k for k in split["train"])
    assert split["test"] and all("south__" in k for k in split["test"])
    meta = json.loads((calibrated / "slidewatch.json").read_text())
    assert meta["data"]["val_regions"] == ["west"]
    assert meta["data"]["train_regions"] == ["north"]


def test_temperature_and_threshold_record_their_source(calibrated):
    meta = json.loads((calibrated / "slidewatch.json").read_text())
    cal = meta["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] == meta.get("temperature", 1.0)
    assert cal["nll_after"] <= cal["nll_before"]
    assert cal["val_regions"] == ["west"] and cal["unseen_regions"] is True
    src = meta["threshold_source"]
    assert "recall 0.9" in src["rule"] and src["unseen_regions"] is True
    assert src["threshold"] == meta["threshold"]


def test_the_temperature_is_applied_when_predicting(calibrated, three_regions, tmp_path):
    files = sorted((three_regions / "landslide").glob("south__*.png"))[:4]
    model = tmp_path / "m"
    shutil.copytree(calibrated, model)
    meta_path = model / "slidewatch.json"
    meta = json.loads(meta_path.read_text())
    meta["temperature"] = 2.5
    meta_path.write_text(json.dumps(meta))
    hot = np.array([p.probability for p in predict_paths(model, files, device="cpu")])
    del meta["temperature"]
    meta_path.write_text(json.dumps(meta))
    plain = np.array([p.probability for p in predict_paths(model, files, device="cpu")])

    def logit(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))

    assert np.allclose(logit(hot), logit(plain) / 2.5, atol=1e-3)


def test_bad_validation_regions_are_named(three_regions, tmp_path, capsys):
    code = main(["train", "--data", str(three_regions), "--out", str(tmp_path / "a"),
                 "--model", "baseline_cnn", "--weights", "none", "--input-size", "32",
                 "--val-region", "east", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "east" in err and "north, south, west" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    code = main(["train", "--data", str(three_regions), "--out", str(tmp_path / "b"),
                 "--model", "baseline_cnn", "--weights", "none", "--val-region", "west",
                 "--holdout-region", "west", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "west" in err and "validation or test" in err


def test_evaluate_and_report_show_the_reliability(calibrated, three_regions, tmp_path):
    ev = tmp_path / "ev"
    assert main(["evaluate", str(calibrated), "--data", str(three_regions), "--out", str(ev),
                 "--device", "cpu", "--quiet"]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["plots"]["reliability"] == "reliability.png"
    assert (ev / "reliability.png").stat().st_size > 1000
    cal = m["calibration"]
    assert 0 <= cal["ece"] <= 1 and cal["n"] == m["overall"]["n"]
    assert sum(b["n"] for b in cal["bins"]) == cal["n"]
    out = tmp_path / "r.html"
    assert main(["report", str(calibrated), "--eval", str(ev), "--out", str(out)]) == 0
    html = out.read_text()
    assert "expected calibration error" in html and 'alt="reliability"' in html


def test_a_segmentation_model_is_calibrated_on_validation_pixels(tmp_path):
    from conftest import write_image
    from test_segment_pipeline import SIZE, blob_image

    rng = np.random.default_rng(0)
    data = tmp_path / "cls"
    for i in range(8):
        image, mask = blob_image(rng)
        write_image(data / "landslide" / f"ls{i}.png", image)
        write_image(data / "masks" / f"ls{i}.png", mask.astype(np.uint8) * 255)
        write_image(data / "non_landslide" / f"bg{i}.png", blob_image(rng, landslide=False)[0])
    out = tmp_path / "m"
    assert main(["train", "--task", "segment", "--model", "unet_tiny", "--weights", "none",
                 "--data", str(data), "--out", str(out), "--input-size", str(SIZE),
                 "--phase1-epochs", "0", "--phase2-epochs", "2", "--phase2-lr", "0.02",
                 "--unfreeze-layers", "100", "--batch-size", "8", "--quiet",
                 "--calibration", "temperature", "--val-fraction", "0.25"]) == 0
    meta = json.loads((out / "slidewatch.json").read_text())
    cal = meta["calibration"]
    assert cal["fitted_on"] == "validation pixels" and cal["n"] >= SIZE * SIZE
    assert cal["temperature"] == meta.get("temperature", 1.0)
    assert cal["nll_after"] <= cal["nll_before"]
