"""``slidewatch experiment``: a tiny grid trained, evaluated, tabulated, plotted and resumed."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from _factories import make_class_dataset
from conftest import make_scene
from PIL import Image

from slidewatch.cli.main import main
from slidewatch.errors import ConfigError
from slidewatch.experiments.grid import (
    METRIC_COLUMNS,
    expand,
    load_experiment,
    parse_experiment,
    run_experiment,
    run_name,
)


def base_config(train_dir):
    return {
        "data": {"paths": [str(train_dir)], "val_fraction": 0.25},
        "model": {"name": "test_efficientnet", "weights": "none", "input_size": 32},
        "augment": {"resize": 36, "crop": 32},
        "phase1": {"epochs": 0, "lr": 0.01},
        "phase2": {"epochs": 1, "lr": 0.005},
        "batch_size": 16, "seed": 0, "progress": False, "device": "cpu",
    }


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    train_dir = make_class_dataset(root / "train", images=3, per_image=3)
    test_dir = make_class_dataset(root / "test", images=2, per_image=3, regions=("east", "west"),
                                  seed=1)
    return root, train_dir, test_dir


@pytest.fixture(scope="module")
def study(dirs):
    root, train_dir, test_dir = dirs
    spec = {"base": base_config(train_dir),
            "grid": {"phase2.unfreeze_layers": [0, 3], "seed": [0, 1]},
            "test": {"data": [str(test_dir)], "regions": ["east"]},
            "out": str(root / "study")}
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    messages = []
    rows = run_experiment(path, log=messages.append)
    return path, root / "study", rows, messages


def test_grid_runs_tabulated_with_metrics_of_each_run(study):
    path, out, rows, _ = study
    names = ["unfreeze_layers-0__seed-0", "unfreeze_layers-0__seed-1",
             "unfreeze_layers-3__seed-0", "unfreeze_layers-3__seed-1"]
    assert [r["run"] for r in rows] == names and all(r["status"] == "ok" for r in rows)
    for name in names:
        assert (out / "runs" / name / "model" / "slidewatch.json").is_file()
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    assert set(METRIC_COLUMNS) <= set(table[0]) and "phase2.unfreeze_layers" in table[0]
    for line in table:
        run_dir = out / "runs" / line["run"]
        east = json.loads((run_dir / "eval" / "metrics.json").read_text())["regions"]["east"]
        for key in ("accuracy", "precision", "recall", "specificity", "f1"):
            if east[key] is None:  # undefined (zero denominator): empty cell, n/a in .md
                assert line[f"test_{key}"] == ""
            else:
                assert float(line[f"test_{key}"]) == pytest.approx(east[key], abs=1e-5)
        assert float(line["test_f1_ci_low"]) == pytest.approx(east["ci95"]["f1"][0], abs=1e-5)
        best = json.loads((run_dir / "model" / "slidewatch.json").read_text())["best_metrics"]
        assert float(line["val_accuracy"]) == pytest.approx(best["val_accuracy"], abs=1e-5)
        assert float(line["train_accuracy"]) == pytest.approx(best["train_accuracy"], abs=1e-5)
        assert float(line["seconds"]) > 0
    md = (out / "results.md").read_text()
    assert md.count("\n") == 6 and "test_f1" in md


def test_plot_of_metrics_against_unfrozen_layers(study):
    _, out, _, _ = study
    with Image.open(out / "metrics_vs_unfrozen.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_rerun_skips_finished_runs(study):
    path, out, _, _ = study
    models = sorted((out / "runs").glob("*/model/model.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in models]
    messages = []
    rows = run_experiment(path, log=messages.append)
    assert [r["status"] for r in rows] == ["skipped"] * 4
    assert sum(m.startswith("skip ") for m in messages) == 4
    assert [p.stat().st_mtime_ns for p in models] == stamps
    assert all(r["seconds"] and r["test_f1"] is not None for r in rows)


def test_failed_run_is_recorded_and_others_complete(dirs):
    root, train_dir, test_dir = dirs
    spec = {"base": base_config(train_dir),
            "grid": {"model.name": ["no_such_model_xyz", "baseline_cnn"]},
            "test": [str(test_dir)]}
    rows = run_experiment(parse_experiment(spec), root / "fail")
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "no_such_model_xyz" in rows[0]["error"] and rows[1]["test_f1"] is not None
    with open(root / "fail" / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert table[0]["status"] == "failed" and table[0]["error"] and table[1]["test_f1"]
    assert not (root / "fail" / "metrics_vs_unfrozen.png").exists()


def test_scene_folders_as_test_data_are_tiled_once(tmp_path, dirs):
    _, train_dir, _ = dirs
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    scene = make_scene(tmp_path, "hill", {"s1": (image, mask)})
    spec = {"base": base_config(train_dir), "grid": {"seed": [0]},
            "test": {"data": [str(scene)], "regions": ["hill"], "tile": 32, "stride": 32}}
    rows = run_experiment(parse_experiment(spec), tmp_path / "out")
    assert rows[0]["status"] == "ok" and rows[0]["test_f1"] is not None
    assert (tmp_path / "out" / "test-tiles" / "hill" / "tiles.csv").is_file()


def test_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("base: {}\ngrid: {seed: [0]}\nbogus: 1\n")
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bogus" in err and "\n" not in err
    with pytest.raises(ConfigError, match="phase2.bogus"):
        parse_experiment({"base": {}, "grid": {"phase2.bogus": [1]}})
    with pytest.raises(ConfigError, match="grid.seed"):
        parse_experiment({"grid": {"seed": 3}})
    with pytest.raises(ConfigError, match="out"):
        run_experiment(parse_experiment({"grid": {"seed": [0]}}))


def test_run_names_are_safe_and_order_stable():
    assert run_name({"data.paths": [["/x/A", "/y/B"]][0], "model.name": "a b"}) == \
        "paths-A+B__name-a_b"
    exp = parse_experiment({"grid": {"model.name": ["x", "y"], "seed": [0, 1]}})
    assert [r.values for r in expand(exp)] == [
        {"model.name": "x", "seed": 0}, {"model.name": "x", "seed": 1},
        {"model.name": "y", "seed": 0}, {"model.name": "y", "seed": 1}]


def test_shipped_study_configs_parse(monkeypatch):
    monkeypatch.setenv("SLIDEWATCH_DATA", "/nonexistent")
    for name in ("study-unfreeze.yaml", "study-unfreeze-cpu.yaml"):
        exp = load_experiment(Path(__file__).parents[1] / "configs" / name)
        runs = expand(exp)
        assert [r.config.phase2.unfreeze_layers for r in runs] == [0, 5, 10, 15, 20, 40]
        assert exp.test_regions == ["bijie"]


def test_shipped_architecture_configs_parse(monkeypatch):
    monkeypatch.setenv("SLIDEWATCH_DATA", "/nonexistent")
    configs = Path(__file__).parents[1] / "configs"
    study = ["baseline_cnn", "efficientnet_b3", "resnet50", "mobilenetv2_100", "densenet121",
             "nasnetalarge"]
    strict = expand(load_experiment(configs / "study-architectures.yaml"))
    assert [r.config.model.name for r in strict] == study
    assert all(r.config.model.weights_fallback is None for r in strict)
    cpu = expand(load_experiment(configs / "study-architectures-cpu.yaml"))
    assert [r.config.model.name for r in cpu] == study + ["efficientnet_lite0"]
    assert all(r.config.model.input_size == 128 for r in cpu)  # mapping axis keeps base keys
    assert cpu[0].config.model.weights == "none"
    assert all(r.config.model.weights_fallback == "none" for r in cpu[1:])


def test_weights_fallback_runs_from_random_weights_and_says_so(dirs, monkeypatch):
    from huggingface_hub import constants as hf_constants

    root, train_dir, test_dir = dirs
    cache = root / "empty-hf-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    spec = {"base": base_config(train_dir),
            "grid": {"model": [{"name": "test_resnet", "weights": "imagenet",
                                "weights_fallback": "none"},
                               {"name": "test_resnet", "weights": "imagenet"}]},
            "test": [str(test_dir)]}
    messages = []
    rows = run_experiment(parse_experiment(spec), root / "fallback", log=messages.append)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[0]["weights"].startswith("none (imagenet unavailable")
    assert any("starts from random weights" in m for m in messages)
    assert "no offline ImageNet weights for test_resnet" in rows[1]["error"]
    meta = json.loads((root / "fallback" / "runs" / rows[0]["run"] / "model" /
                       "slidewatch.json").read_text())
    assert meta["input_size"] == 32 and meta["weights_source"] == rows[0]["weights"]
    table = (root / "fallback" / "results.md").read_text()
    assert "| weights |" in table.splitlines()[0].replace("weights |", "weights |")


def test_training_scenes_are_tiled_once_for_all_runs(tmp_path, dirs):
    _, _, test_dir = dirs
    rng = np.random.default_rng(3)
    images = {}
    for k in range(4):
        image = rng.integers(0, 90, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), bool)
        mask[32:, 32:] = True
        image[mask] = 230
        images[f"s{k}"] = (image, mask)
    scene = make_scene(tmp_path, "valley", images)
    base = base_config(scene)
    base["data"].update(tile=32, stride=32, val_fraction=0.25)
    spec = {"base": base, "grid": {"seed": [0, 1]}, "test": [str(test_dir)]}
    messages = []
    rows = run_experiment(parse_experiment(spec), tmp_path / "out", log=messages.append)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert sum("tiled training scenes" in m for m in messages) == 1
    shared = tmp_path / "out" / "train-tiles" / "valley-t32-s32-m0.05"
    assert (shared / "tiles.csv").is_file()
    for row in rows:
        meta = json.loads((tmp_path / "out" / "runs" / row["run"] / "model" /
                           "slidewatch.json").read_text())
        assert meta["training"]["data"]["paths"] == [str(shared)]
        assert not (tmp_path / "out" / "runs" / row["run"] / "model" / "tiles").exists()
