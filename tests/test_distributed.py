"""Training under torchrun: two CPU processes with the gloo backend.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node=2`` (the
port is picked by ``--standalone``) and reads what the run wrote. ``SLIDEWATCH_DDP_DUMP_DIR``
makes every rank write its final weights, so the tests can compare the ranks.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _factories import interrupt_after_saves, make_class_dataset
from safetensors.torch import load_file

from slidewatch.config.train import from_dict
from slidewatch.evaluation.metrics import threshold_for_recall
from slidewatch.inference.predict import predict_paths
from slidewatch.models.checkpoint import load_model
from slidewatch.training.distributed import DUMP_ENV
from slidewatch.training.loop import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

OUTPUTS = ("model.safetensors", "slidewatch.json", "history.csv", "curves.png", "config.yaml",
           "split.json")


def torchrun(args: list[str], cwd: Path, dump: Path | None = None, timeout: float = 100):
    """``torchrun --standalone --nproc_per_node=2 -m slidewatch train ARGS``; a hang fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(DUMP_ENV, None)
    if dump is not None:
        env[DUMP_ENV] = str(dump)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "slidewatch", "train", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout}s (hang?)\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def write_config(path: Path, data: Path, **over) -> Path:
    cfg = {
        "data": {"paths": [str(data)], "val_fraction": 0.25},
        "model": {"name": "test_efficientnet", "weights": "none", "input_size": 32},
        "augment": {"resize": 36, "crop": 32},
        "phase1": {"epochs": 1, "lr": 0.01},
        "phase2": {"epochs": 1, "lr": 0.005, "unfreeze_layers": 6},
        "batch_size": 4, "class_weights": "none", "seed": 0, "progress": False,
        "device": "cpu",
    }
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def history(path: Path) -> list[dict]:
    with open(path / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert set(a) == set(b)
    for k, value in a.items():
        if atol == 0.0:
            assert torch.equal(value, b[k]), k
        else:
            torch.testing.assert_close(value, b[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_dataset(tmp_path_factory.mktemp("d") / "tiles", images=3, per_image=2)


@pytest.fixture(scope="module")
def ddp_run(data, tmp_path_factory):
    """Two phases (the DDP wrapper is rebuilt for phase 2), a validation split, BatchNorm in
    training mode in phase 2 (random weights) and a threshold set for recall 1.0."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = write_config(root / "cfg.yaml", data, target_recall=1.0)
    proc = torchrun(["--config", str(cfg), "--out", str(root / "model")], root, root / "dump")
    return root, proc


def test_torchrun_writes_one_complete_model_folder(ddp_run):
    root, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "model"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no resume.pt, no temps
    meta = json.loads((out / "slidewatch.json").read_text())
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_batch_size": 4,
                                   "global_batch_size": 8}
    assert [r["phase"] for r in history(out)] == ["1", "2"]
    model, loaded = load_model(out)
    assert loaded.architecture == "test_efficientnet"
    assert all(not k.startswith("module.") for k in model.state_dict())
    assert proc.stderr.count("data: train") == 1  # only rank 0 logs


def test_both_ranks_end_with_the_saved_weights(ddp_run):
    root, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = weights(root / "dump" / "rank0.safetensors"), weights(root / "dump" /
                                                                         "rank1.safetensors")
    assert_same_weights(rank0, rank1)  # parameters and BatchNorm statistics, bit for bit
    assert_same_weights(rank0, weights(root / "model" / "model.safetensors"))


def test_validation_scores_are_those_of_the_whole_split(ddp_run, data):
    """Each rank scores half of the validation split; the stored scores and threshold are
    those of one process scoring all of it with the saved model."""
    root, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "model"
    val = json.loads((out / "split.json").read_text())["val"]
    preds = predict_paths(out, [data / p.split("/", 1)[1] for p in val], device="cpu")
    assert len(preds) == len(val) >= 4
    y = np.array(["non_landslide" not in p.path for p in preds])
    prob = np.array([p.probability for p in preds], dtype=float)
    meta = json.loads((out / "slidewatch.json").read_text())
    best = meta["best_metrics"]
    loss = -np.mean(np.log(np.where(y, prob, 1 - prob)))  # unweighted cross-entropy
    assert best["val_loss"] == pytest.approx(loss, rel=1e-4)
    assert best["val_accuracy"] == pytest.approx(np.mean((prob >= 0.5) == y))
    expected = float(np.clip(threshold_for_recall(y, prob, 1.0), 1e-4, 0.9999))
    assert meta["threshold"] == pytest.approx(expected, abs=1e-5)


def test_an_error_stops_every_rank(ddp_run):
    """A second run into the same folder fails on both ranks (no hang) and leaves it alone."""
    root, first = ddp_run
    assert first.returncode == 0, first.stderr[-3000:]
    before = (root / "model" / "model.safetensors").stat().st_mtime_ns
    proc = torchrun(["--config", str(root / "cfg.yaml"), "--out", str(root / "model")], root)
    assert proc.returncode != 0
    assert proc.stderr.count("already holds a model") == 2  # each rank names the problem
    assert (root / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(data, tmp_path):
    """Gradient averaging: full-batch steps (every step sees all 24 training images, so the
    shuffle order cannot matter), no augmentation, no dropout, no BatchNorm, plain SGD. Two
    ranks with 12 images each must give the weights of one process with all 24, through a
    phase change (the DDP wrapper is rebuilt when the conv layers are unfrozen)."""
    over = {"data.val_fraction": 0.0, "model.name": "baseline_cnn", "model.drop_rate": 0.0,
            "augment.enabled": False, "optim.optimizer": "sgd", "phase1.lr": 0.05,
            "phase2.epochs": 2, "phase2.lr": 0.05, "phase2.unfreeze_layers": 99,
            "batch_size": 24}
    cfg_path = write_config(tmp_path / "cfg.yaml", data, **over)
    single = train(from_dict(yaml.safe_load(cfg_path.read_text())), tmp_path / "one")
    assert len(single.history) == 3
    proc = torchrun(["--config", str(cfg_path), "--batch-size", "12", "--out",
                     str(tmp_path / "two")], tmp_path, tmp_path / "dump")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = weights(tmp_path / "one" / "model.safetensors")
    two = weights(tmp_path / "two" / "model.safetensors")
    assert_same_weights(one, two, atol=1e-5)
    assert_same_weights(two, weights(tmp_path / "dump" / "rank1.safetensors"))
    losses = [row["train_loss"] for row in single.history]
    assert losses[-1] < losses[0]  # it did train
    rows = history(tmp_path / "two")
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(losses, rel=1e-4)


def test_resume_under_torchrun_continues_a_run(data, tmp_path, monkeypatch):
    """An interrupted run continues under torchrun: every rank loads the same resume state
    (model, optimizer, best epoch, history), and the ranks end identical."""
    cfg_path = write_config(tmp_path / "cfg.yaml", data, **{"phase2.epochs": 2})
    cfg = from_dict(yaml.safe_load(cfg_path.read_text()))
    interrupt_after_saves(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    first_two = history(tmp_path / "cut")
    proc = torchrun(["--config", str(cfg_path), "--out", str(tmp_path / "cut"), "--resume"],
                    tmp_path, tmp_path / "dump")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = history(tmp_path / "cut")
    assert [r["phase"] for r in rows] == ["1", "2", "2"]
    assert rows[:2] == first_two  # carried over from the resume state, not retrained
    assert not (tmp_path / "cut" / "resume.pt").exists()
    assert_same_weights(weights(tmp_path / "dump" / "rank0.safetensors"),
                        weights(tmp_path / "dump" / "rank1.safetensors"))

