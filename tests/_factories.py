"""Tiny generated datasets for the tests (no files from outside the test's tmp_path)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def slide_image(rng: np.random.Generator, positive: bool, size: int = 32) -> np.ndarray:
    """Green vegetation texture; a landslide adds a bright brown scar."""
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = rng.integers(20, 60, (size, size))
    img[..., 1] = rng.integers(90, 150, (size, size))
    img[..., 2] = rng.integers(20, 60, (size, size))
    if positive:
        h = size // 2
        r, c = rng.integers(0, size - h, 2)
        img[r:r + h, c:c + h] = (185, 150, 110) + rng.integers(-15, 15, (h, h, 3))
    return img


def make_class_dataset(root: Path, *, images: int = 6, per_image: int = 4, size: int = 32,
                       regions: tuple[str, ...] = ("north", "south"), seed: int = 0) -> Path:
    """Class folders + tiles.csv: ``images`` source images per region, each giving
    ``per_image`` tiles of each class."""
    rng = np.random.default_rng(seed)
    rows = []
    for region in regions:
        for i in range(images):
            for label in ("landslide", "non_landslide"):
                for k in range(per_image):
                    rel = Path(label) / f"{region}__img{i}__r0_c{k}.png"
                    (root / label).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(slide_image(rng, label == "landslide", size)).save(root / rel)
                    rows.append({"path": rel.as_posix(), "label": label,
                                 "source_image": f"{region}/img{i}", "row": 0, "col": k * size,
                                 "landslide_fraction": 0.25 if label == "landslide" else 0.0,
                                 "region": region})
    with open(root / "tiles.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def train_tiny_cnn(tiles: Path, out: Path) -> Path:
    """Train the study's small CNN for one epoch at 32 px through the command line."""
    from slidewatch.cli.main import main

    code = main(["train", "--data", str(tiles), "--out", str(out), "--model", "baseline_cnn",
                 "--weights", "none", "--input-size", "32", "--phase1-epochs", "0",
                 "--phase2-epochs", "1", "--unfreeze-layers", "99", "--batch-size", "8",
                 "--quiet", "--device", "cpu"])
    assert code == 0
    return out


# The multi-modal task's command-line flags (tests/test_multimodal.py and its session fixture).
MULTIMODAL_BASE = ["--model", "baseline_cnn", "--weights", "none", "--phase1-epochs", "0",
                   "--unfreeze-layers", "99", "--quiet", "--device", "cpu"]
MULTIMODAL_TRAIN = [*MULTIMODAL_BASE, "--input-size", "32", "--phase2-epochs", "15",
                    "--phase2-lr", "0.003", "--schedule", "constant",
                    "--batch-size", "16", "--val-fraction", "0.25", "--no-augment",
                    "--mlp-hidden", "16", "--emb-dim", "3"]
MULTIMODAL_TABULAR = ["--numeric", "slope,elevation", "--categorical", "trigger",
                      "--tabular-key", "tile_id"]


def tiny_config(data, phase2_epochs: int = 1, **over):
    """A TrainConfig for the class folders at ``data``: the tiny test EfficientNet at 32 px,
    one frozen epoch, ``phase2_epochs`` fine-tuning epochs, on the CPU. ``over``: dotted keys
    (``"data.split_by"="region"``) set after."""
    from slidewatch.config.train import from_dict

    cfg = {"data": {"paths": [str(data)], "val_fraction": 0.25},
           "model": {"name": "test_efficientnet", "weights": "none", "input_size": 32},
           "augment": {"resize": 36, "crop": 32},
           "phase1": {"epochs": 1, "lr": 0.01},
           "phase2": {"epochs": phase2_epochs, "lr": 0.005, "unfreeze_layers": 6},
           "batch_size": 16, "seed": 0, "progress": False, "device": "cpu"}
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(cfg)


def make_fusion_dataset(root: Path, *, n: int = 240, size: int = 32, seed: int = 7,
                        prefix: str = "g", steep: float = 20.0) -> list[dict]:
    """Class folders where a tile is a landslide only if its image shows a bright patch AND
    its slope (a tabular value) is above ``steep`` degrees: each cue alone is half the
    evidence. Returns one row per tile (``tile_id``, ``slope``, ``elevation`` with 10% empty
    cells, ``trigger``; elevation and trigger are noise) for a tabular CSV."""
    rng = np.random.default_rng(seed)
    bright, slope = rng.random(n) < 0.5, rng.uniform(0, 40, n)
    rows = []
    for i in range(n):
        img = rng.integers(50, 130, (size, size, 3)).astype(np.uint8)
        if bright[i]:
            r, c = rng.integers(0, size - size // 4, 2)
            img[r:r + size // 4, c:c + size // 4] = rng.integers(215, 255)
        label = "landslide" if bright[i] and slope[i] > steep else "non_landslide"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"{prefix}{i:04d}.png")
        rows.append({"tile_id": f"{prefix}{i:04d}", "slope": f"{slope[i]:.3f}",
                     "elevation": "" if rng.random() < 0.1 else f"{rng.normal(1500, 300):.1f}",
                     "trigger": str(rng.choice(["rain", "quake", "snowmelt"])),
                     "label": label})
    return rows


def train_multimodal_trio(root: Path) -> dict:
    """Training and test folders, one CSV keyed by tile id, and three models trained on it:
    fused (image + tabular), image only and tabular only, each evaluated on the test folder."""
    import torch

    from slidewatch.cli.main import main

    rows = make_fusion_dataset(root / "train", n=256, seed=7, prefix="a")
    rows += make_fusion_dataset(root / "test", n=128, seed=8, prefix="b")
    table = write_rows(root / "rows.csv", rows, ["tile_id", "slope", "elevation", "trigger"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on 2 shared cores
    try:
        for mode in ("fused", "image", "tabular"):
            assert main(["train", "--data", str(root / "train"), "--out", str(root / mode),
                         "--tabular", str(table), *MULTIMODAL_TABULAR, "--fusion-mode", mode,
                         *MULTIMODAL_TRAIN]) == 0
            assert main(["evaluate", str(root / mode), "--data", str(root / "test"),
                         "--out", str(root / f"{mode}-eval"), "--tabular", str(table),
                         "--quiet", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    f1 = {m: json.loads((root / f"{m}-eval" / "metrics.json").read_text())["overall"]["f1"]
          for m in ("fused", "image", "tabular")}
    return {"root": root, "rows": rows, "table": table, "f1": f1, "model": root / "fused"}


def write_rows(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A CSV of ``rows`` (all their keys, or ``columns``)."""
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def interrupt_after_saves(monkeypatch, saves: int = 2):
    """Make training stop (KeyboardInterrupt) right after its ``saves``-th resume checkpoint,
    as a user's Ctrl-C would; returns the real ``save_resume`` to put back."""
    import slidewatch.training.loop as train_module

    real = train_module.save_resume
    calls = {"n": 0}

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_resume", save_then_stop)
    return real
