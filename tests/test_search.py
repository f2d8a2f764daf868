"""``slidewatch experiment --search N``: Optuna trials, search.csv, best.yaml, resume."""

import csv

import pytest
import yaml
from _factories import make_class_dataset

from slidewatch.cli.main import main
from slidewatch.config.train import from_dict
from slidewatch.errors import ConfigError
from slidewatch.experiments.search import parse_search


def spec_for(train_dir, out):
    return {
        "base": {
            "data": {"paths": [str(train_dir)], "val_fraction": 0.25},
            "model": {"name": "baseline_cnn", "weights": "none", "input_size": 32},
            "augment": {"resize": 36, "crop": 32},
            "phase1": {"epochs": 0, "lr": 0.01},
            "phase2": {"epochs": 1, "lr": 0.005},
            "batch_size": 16, "seed": 0, "progress": False, "device": "cpu",
        },
        "search": {"metric": "val_f1", "sampler_seed": 0,
                   "params": {"phase2.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                              "optim.optimizer": {"choices": ["adam", "sgd"]}}},
        "out": str(out),
    }


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    train_dir = make_class_dataset(root / "train", images=3, per_image=3)
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(spec_for(train_dir, root / "out")))
    assert main(["experiment", str(path), "--search", "3", "--quiet"]) == 0
    return path, root / "out"


def test_three_trials_tabulated_and_best_config_written(searched):
    _, out = searched
    rows = read_csv(out / "search.csv")
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows)
    assert {"number", "value", "phase2.lr", "optim.optimizer"} <= set(rows[0])
    for r in rows:
        assert 1e-4 <= float(r["phase2.lr"]) <= 1e-2 and r["optim.optimizer"] in ("adam", "sgd")
        assert (out / "trials" / r["number"] / "model" / "slidewatch.json").is_file()
    best = max(rows, key=lambda r: float(r["value"]))
    cfg = from_dict(yaml.safe_load((out / "best.yaml").read_text()))
    assert cfg.phase2.lr == pytest.approx(float(best["phase2.lr"]))
    assert cfg.optim.optimizer == best["optim.optimizer"]
    assert cfg.model.name == "baseline_cnn" and cfg.phase2.epochs == 1


def test_rerun_counts_completed_trials(searched, capsys):
    path, out = searched
    assert main(["experiment", str(path), "--search", "3", "--quiet"]) == 0
    assert len(read_csv(out / "search.csv")) == 3 and len(list((out / "trials").iterdir())) == 3
    assert main(["experiment", str(path), "--search", "4", "--quiet"]) == 0
    assert len(read_csv(out / "search.csv")) == 4 and len(list((out / "trials").iterdir())) == 4
    err = capsys.readouterr().err
    assert "trial 3 done: val_f1=" in err and "Traceback" not in err


def test_failed_trial_is_recorded_and_search_goes_on(tmp_path):
    train_dir = make_class_dataset(tmp_path / "train", images=3, per_image=3)
    spec = spec_for(train_dir, tmp_path / "out")
    spec["search"]["params"] = {"model.name": {"choices": ["no_such_model_xyz"]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["experiment", str(path), "--search", "1", "--quiet"]) == 2
    rows = read_csv(tmp_path / "out" / "search.csv")
    assert rows[0]["state"] == "FAIL" and "no_such_model_xyz" in rows[0]["error"]


@pytest.mark.parametrize("search, word", [
    ({"bogus": 1, "params": {"seed": {"choices": [0]}}}, "search.bogus"),
    ({"params": {"seed": {"lo": 0, "high": 3}}}, "search.params.seed.lo"),
    ({"params": {"seed": [0, 1]}}, "search.params.seed"),
    ({"params": {"phase2.bogus": {"low": 0, "high": 1}}}, "phase2.bogus"),
    ({"metric": "test_f1", "params": {"seed": {"choices": [0]}}}, "search.metric"),
])
def test_bad_search_section_is_one_line_exit_2(tmp_path, capsys, search, word):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": {}, "search": search}))
    assert main(["experiment", str(path), "--search", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and word in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_search_flag_needs_a_search_section(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text("base: {}\ngrid: {seed: [0]}\n")
    assert main(["experiment", str(path), "--search", "2", "--out", str(tmp_path / "o")]) == 2
    assert "search" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="search.params"):
        parse_search({"metric": "val_loss"})
