"""The hard-negative pass (issue 12): the landslide-free training pool is scored, the N
highest-scoring items are oversampled for extra epochs, and the model records what it did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _factories import make_class_dataset, tiny_config

from slidewatch.cli.main import main
from slidewatch.config.train import from_dict
from slidewatch.training import hard_negatives
from slidewatch.training.loop import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_dataset(tmp_path_factory.mktemp("hn") / "tiles", images=3, per_image=3)


def test_the_pass_oversamples_the_highest_scoring_negatives(data, tmp_path, monkeypatch):
    seen = {}
    real = hard_negatives._classifier_pool

    def spy(s):
        pool, prob = real(s)
        seen.update(pool=pool, prob=prob, samples=list(s.train_samples))
        return pool, prob

    monkeypatch.setattr(hard_negatives, "_classifier_pool", spy)
    real_mine = hard_negatives.mine

    def spy_mine(s, log):
        record = real_mine(s, log)
        seen["weights"] = s.train_loader.sampler.weights.numpy()
        return record

    monkeypatch.setattr(hard_negatives, "mine", spy_mine)
    out = tmp_path / "m"
    train(tiny_config(data, hard_negatives=3, hard_negative_epochs=2,
                  hard_negative_keep="always"), out)
    # the pool is exactly the landslide-free training tiles
    negatives = [j for j, x in enumerate(seen["samples"]) if x.label == 1]
    assert seen["pool"] == negatives and len(seen["prob"]) == len(negatives)
    top3 = [seen["pool"][i] for i in np.argsort(-seen["prob"], kind="stable")[:3]]
    w = seen["weights"]
    assert w.sum() == pytest.approx(1.0)
    assert set(np.argsort(-w, kind="stable")[:3]) == set(top3)
    assert w[top3].sum() == pytest.approx(0.25 + 0.75 * 3 / len(w))
    meta = json.loads((out / "slidewatch.json").read_text())
    rec = meta["hard_negatives"]
    assert rec["n"] == 3 and rec["share"] == 0.25 and rec["epochs"] == 2
    assert rec["score_max"] == pytest.approx(float(seen["prob"].max()), abs=1e-4)
    assert rec["kept"] is True  # hard_negative_keep: always
    assert meta["best_epoch"] == 4
    history = (out / "history.csv").read_text().splitlines()
    phases = [line.split(",")[1] for line in history[1:]]
    assert phases == ["1", "2", "3", "3"]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    from conftest import make_scene, write_image
    from test_segment_pipeline import SIZE, blob_image

    root = tmp_path_factory.mktemp("hnseg")
    rng = np.random.default_rng(0)
    data = root / "cls"
    for i in range(6):
        image, mask = blob_image(rng)
        write_image(data / "landslide" / f"ls{i}.png", image)
        write_image(data / "masks" / f"ls{i}.png", mask.astype(np.uint8) * 255)
        write_image(data / "non_landslide" / f"bg{i}.png", blob_image(rng, landslide=False)[0])
    make_scene(root, "scene", {f"s{i}": blob_image(rng, size=96) for i in range(3)})
    out = root / "m"
    assert main(["train", "--task", "segment", "--model", "unet_tiny", "--weights", "none",
                 "--data", str(data), "--data", str(root / "scene"), "--out", str(out),
                 "--input-size", str(SIZE), "--phase1-epochs", "0", "--phase2-epochs", "1",
                 "--phase2-lr", "0.02", "--unfreeze-layers", "100", "--batch-size", "8",
                 "--quiet", "--hard-negatives", "5", "--val-fraction", "0.25"]) == 0
    return root, out


def test_a_segmentation_pass_mines_images_and_scene_windows(seg_run):
    _, out = seg_run
    rec = json.loads((out / "slidewatch.json").read_text())["hard_negatives"]
    assert rec["n"] == 5 and 0 <= rec["score_min"] <= rec["score_max"] <= 1
    # candidates come from both sources: landslide-free images and scene windows ("@row,col")
    assert all(("non_landslide" in e) or ("@" in e) for e in rec["examples"])


def test_scene_windows_with_landslide_pixels_are_no_candidates(seg_run):
    from types import SimpleNamespace

    from slidewatch.config.train import load_yaml
    from slidewatch.data.masks import scene_samples
    from slidewatch.models.checkpoint import load_model

    root, out = seg_run
    model, meta = load_model(out, "cpu")
    cfg = from_dict(load_yaml(out / "config.yaml"))
    s = SimpleNamespace(cfg=cfg, model=model, meta=meta, device=torch.device("cpu"),
                        train_samples=scene_samples(root / "scene"))
    parts, scores = hard_negatives._segment_pool(s)
    assert len(parts) == 1  # scene windows only (no class folders among these samples)
    windows = parts[0]
    for i, score in enumerate(scores[0]):
        has_slide = bool(windows[i]["mask"].sum() > 0)
        assert (score == -1.0) == has_slide
        assert has_slide or 0.0 <= score <= 1.0
    assert (scores[0] == -1).any() and (scores[0] >= 0).any()


def test_the_pass_is_refused_for_fused_models_and_bad_values(data, tmp_path, capsys):
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--model",
                 "baseline_cnn", "--weights", "none", "--hard-negatives", "-2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "--hard-negatives" in err and ">= 0" in err
    with pytest.raises(Exception, match="image-only"):
        hard_negatives.check(tiny_config(data, hard_negatives=2), multimodal=True,
                             distributed=False)
