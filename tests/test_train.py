"""End-to-end training on a tiny generated dataset with a tiny timm model."""

import csv
import json

import numpy as np
import pytest
import torch
from _factories import interrupt_after_saves, make_class_dataset
from _factories import tiny_config as _tiny_config
from safetensors.torch import load_file

from slidewatch.errors import ConfigError, WeightsError
from slidewatch.inference.predict import predict_paths
from slidewatch.models.checkpoint import load_model
from slidewatch.training.loop import lr_at, train


def tiny_config(data, **over):
    return _tiny_config(data, phase2_epochs=2, **over)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_dataset(tmp_path_factory.mktemp("d") / "tiles", images=4, per_image=4)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "model"
    result = train(tiny_config(data), out)
    return out, result


def test_model_folder_is_complete_and_self_describing(trained):
    out, result = trained
    for name in ("model.safetensors", "slidewatch.json", "history.csv", "curves.png",
                 "config.yaml", "split.json"):
        assert (out / name).is_file(), name
    assert not (out / "resume.pt").exists()
    meta = json.loads((out / "slidewatch.json").read_text())
    assert meta["architecture"] == "test_efficientnet"
    assert meta["classes"] == ["landslide", "non_landslide"]
    assert meta["positive_class"] == "landslide"
    assert meta["input_size"] == 32 and meta["in_chans"] == 3 and len(meta["mean"]) == 3
    assert meta["threshold"] == 0.5 and "torch" in meta["versions"]
    assert meta["best_epoch"] == result.best_epoch
    assert meta["training"]["phase2"]["unfreeze_layers"] == 6
    assert set(load_file(str(out / "model.safetensors")))  # plain tensors, no pickle


def test_history_has_both_phases_and_all_metrics(trained):
    out, _ = trained
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["phase"] for r in rows] == ["1", "2", "2"]
    for key in ("train_loss", "train_accuracy", "train_precision", "train_recall", "train_f1",
                "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1"):
        assert key in rows[0]


def test_split_is_by_source_image(trained, data):
    out, _ = trained
    split = json.loads((out / "split.json").read_text())
    def images(part):
        return {p.split("__")[1] + p.split("__")[0] for p in split[part]}
    assert split["val"] and not images("train") & images("val")


def test_phase_one_leaves_backbone_untouched(data, tmp_path):
    """With only phase 1, every backbone weight equals its initial value."""
    cfg = tiny_config(data, **{"phase2.epochs": 0, "phase1.epochs": 2})
    torch.manual_seed(0)
    out = tmp_path / "p1"
    train(cfg, out)
    model, _ = load_model(out)
    from slidewatch.models import build_model
    torch.manual_seed(cfg.seed)
    fresh = build_model("test_efficientnet", num_classes=2, weights="none", drop_rate=0.3)
    changed = [k for k, v in model.state_dict().items()
               if not k.startswith("classifier") and not torch.equal(v, fresh.state_dict()[k])]
    assert changed == []


def test_training_learns_and_predict_uses_it(data, tmp_path):
    """The study's small CNN learns the brown-scar cue; predict reads the model back."""
    cfg = tiny_config(data, **{"model.name": "baseline_cnn", "phase1.epochs": 0,
                               "phase2.epochs": 6, "phase2.lr": 0.003,
                               "phase2.unfreeze_layers": 99})
    out = tmp_path / "cnn"
    result = train(cfg, out)
    assert result.best_metrics["val_accuracy"] >= 0.9
    preds = predict_paths(out, [data / "landslide", data / "non_landslide"], device="cpu")
    y = np.array(["non_landslide" not in p.path for p in preds])
    p = np.array([q.probability for q in preds])
    assert p[y].mean() > p[~y].mean() + 0.2


def test_cpu_training_is_deterministic(data, tmp_path):
    cfg = tiny_config(data, **{"phase2.epochs": 1})
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_an_interrupted_run(data, tmp_path, monkeypatch):
    cfg = tiny_config(data)
    full = train(cfg, tmp_path / "full")
    import slidewatch.training.loop as T
    real = interrupt_after_saves(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(T, "save_resume", real)
    assert (tmp_path / "cut" / "resume.pt").is_file()
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="already holds"):
        train(cfg, tmp_path / "cut")
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert len(resumed.history) == len(full.history)
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"])


def test_init_from_continues_a_fine_tuned_model(trained, data, tmp_path):
    out, _ = trained
    cfg = tiny_config(data, **{"model.init_from": str(out), "phase1.epochs": 0,
                               "phase2.unfreeze_layers": 2, "phase2.epochs": 1})
    res = train(cfg, tmp_path / "second")
    meta = json.loads((tmp_path / "second" / "slidewatch.json").read_text())
    assert meta["init_from"] == str(out) and meta["architecture"] == "test_efficientnet"
    assert res.history[0]["phase"] == 2


def test_init_from_refuses_another_standardisation_rule(trained, data, tmp_path):
    """The model was trained on raw bands; continuing it on per-image standardised inputs
    would change what it sees without a word: refused, naming the folder, nothing written."""
    out, _ = trained
    cfg = tiny_config(data, **{"model.init_from": str(out), "phase1.epochs": 0,
                               "data.standardize": "image"})
    with pytest.raises(ConfigError, match=f"--init-from {out}: that model was trained with "
                       "data.standardize none; set the same"):
        train(cfg, tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_weights_of_another_architecture_are_refused(trained, data, tmp_path):
    out, _ = trained
    cfg = tiny_config(data, **{"model.name": "test_resnet", "model.weights": str(out)})
    with pytest.raises(WeightsError):
        train(cfg, tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_lr_schedule_warmup_and_cosine():
    assert lr_at(0, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10, "cosine") == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, 0, "cosine") < 0.1
    assert lr_at(50, 100, 1.0, 0, "constant") == 1.0


def test_target_recall_sets_the_stored_threshold(data, tmp_path):
    cfg = tiny_config(data, **{"target_recall": 1.0, "phase2.epochs": 1})
    out = tmp_path / "tr"
    train(cfg, out)
    meta = json.loads((out / "slidewatch.json").read_text())
    split = json.loads((out / "split.json").read_text())
    preds = predict_paths(out, [data / p.split("/", 1)[1] for p in split["val"]], device="cpu")
    positives = [p for p in preds if "non_landslide" not in p.path]
    assert meta["threshold"] != 0.5
    assert all(p.probability >= meta["threshold"] for p in positives)  # recall 1.0 on val


def test_scene_folders_are_tiled_first_and_env_vars_expand(tmp_path, monkeypatch):
    from conftest import make_scene
    rng = np.random.default_rng(0)
    scenes = {}
    for i in range(4):
        img = rng.integers(0, 100, (32, 64, 3), dtype=np.uint8)
        mask = np.zeros((32, 64), bool)
        mask[:, :32] = True
        scenes[f"s{i}"] = (img, mask)
    make_scene(tmp_path / "data", "r1", scenes)
    monkeypatch.setenv("SW_TEST_DATA", str(tmp_path / "data"))
    cfg = tiny_config("${SW_TEST_DATA}/r1", **{"data.tile": 32, "data.stride": 32,
                                                 "phase2.epochs": 0})
    train(cfg, tmp_path / "m")
    lines = (tmp_path / "m" / "tiles" / "r1" / "tiles.csv").read_text().splitlines()
    assert len(lines) == 1 + 8
    monkeypatch.delenv("SW_TEST_DATA")
    with pytest.raises(ConfigError, match="SW_TEST_DATA"):
        train(cfg, tmp_path / "m2")


def test_steps_per_epoch_caps_each_epoch(data, tmp_path):
    seen = []

    def counting(iterable, desc="", total=None):
        seen.append(total)
        return iterable

    cfg = tiny_config(data, **{"steps_per_epoch": 1, "batch_size": 4, "phase2.epochs": 1})
    train(cfg, tmp_path / "s", progress=counting)
    assert seen == [1, 1]
