"""The demo: leave-one-region-out training of EfficientNet-Lite0 on the sample regions.

For each region: train on the other three (validation split by source image), then measure
tile precision, recall, specificity and F1 on the held-out region, which the model never saw.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from slidewatch.config.train import TrainConfig, from_dict, to_dict
from slidewatch.data.folders import scan_class_folders
from slidewatch.data.inputs import image_dataset
from slidewatch.data.sampledata import REGIONS, locate
from slidewatch.data.tiling import tile_scenes
from slidewatch.evaluation.evaluate import score_block
from slidewatch.inference.forward import predict_probs
from slidewatch.models.checkpoint import load_model
from slidewatch.runtime import no_progress, resolve_device
from slidewatch.training.loop import train

# Reference F1 published with the sample data: frozen Lite0 features + logistic regression.
REFERENCE_F1 = {"sichuan": 0.73, "bijie": 0.37}


def demo_config(tiles: Path, holdout: str, quick: bool = False) -> TrainConfig:
    """The demo's training recipe, sized for 2 CPU cores.

    Training tiles overlap (stride = half a tile, four times the examples; the split stays by
    source image); epochs are capped at 24 batches so that every fold fits the time budget.
    Phase 1 is a linear probe on frozen ImageNet features; phase 2 gently fine-tunes the top
    20 weighted layers (Keras counting).
    """
    cfg = {
        "data": {"paths": [str(tiles)], "holdout_regions": [holdout], "split_by": "image",
                 "val_fraction": 0.2},
        "model": {"name": "efficientnet_lite0", "weights": "imagenet", "input_size": 224,
                  "drop_rate": 0.3},
        "augment": {"resize": 256, "crop": 224, "translate": 0.05, "brightness": 0.2,
                    "contrast": 0.2, "saturation": 0.3, "rotate90": True},
        "phase1": {"epochs": 2, "lr": 2e-3},
        "phase2": {"epochs": 2, "lr": 2e-4, "unfreeze_layers": 20},
        "optim": {"optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine"},
        "batch_size": 32, "steps_per_epoch": 24, "class_weights": "balanced",
        "early_stopping_metric": "val_f1", "patience": 3, "seed": 0, "progress": True,
    }
    if quick:
        cfg["phase1"]["epochs"], cfg["phase2"]["epochs"], cfg["steps_per_epoch"] = 1, 1, 2
    return from_dict(cfg)


def ensure_tiles(data_root: Path, out: Path, log: Callable, tile: int = 224,
                 stride: int | None = None, name: str = "tiles") -> Path:
    """Tiles of the four regions (5% rule), made once. The default (stride = tile) is the
    reference tiling that the held-out scores use."""
    tiles = out / name
    if (tiles / "tiles.csv").is_file():
        return tiles
    scenes = [data_root / "regions" / r for r in REGIONS]
    summary = tile_scenes(scenes, tiles, tile=tile, stride=stride or tile)
    log(f"tiled the sample regions (tile {tile}, stride {stride or tile}) -> {tiles}\n"
        f"{summary.table()}")
    return tiles


def evaluate_region(model_dir: Path, tiles: Path, region: str) -> dict:
    """Tile-level scores of a model on one region's tiles."""
    model, meta = load_model(model_dir, resolve_device("auto"))
    samples = [s for s in scan_class_folders(tiles) if s.region == region]
    ds = image_dataset(meta, samples)
    prob = predict_probs(model, meta, DataLoader(ds, batch_size=64), resolve_device("auto"))
    y = np.array([s.label == meta.positive_index for s in samples])
    block = score_block(y, prob, meta.threshold, [meta.classes[s.label] for s in samples])
    return {**block, **block["confusion"], "region": region, "tiles": len(samples),
            "landslide_tiles": int(y.sum())}


def _finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """A fold trained earlier with exactly this recipe."""
    meta = run_dir / "slidewatch.json"
    if not meta.is_file():
        return False
    return json.loads(meta.read_text()).get("training") == to_dict(cfg)


def run_demo(data_dir: str | None, out: Path, *, quick: bool = False,
             log: Callable[[str], None] = lambda m: None, progress: Callable = no_progress,
             regions: tuple[str, ...] = REGIONS,
             config: Callable[[Path, str, bool], TrainConfig] | None = None,
             tile: int = 224) -> list[dict]:
    """Leave-one-region-out over ``regions``; returns one score row per held-out region.

    ``config(tiles, region, quick)`` gives each fold's recipe (default :func:`demo_config`).
    """
    config = config or demo_config
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = locate(data_dir, log=log)
    out.mkdir(parents=True, exist_ok=True)
    tiles = ensure_tiles(root, out, log, tile)
    train_tiles = ensure_tiles(root, out, log, tile, stride=tile // 2, name="train-tiles")
    rows = []
    for region in regions:
        t0 = time.perf_counter()
        run_dir = out / f"holdout-{region}"
        cfg = config(train_tiles, region, quick)
        if not _finished(run_dir, cfg):
            shutil.rmtree(run_dir, ignore_errors=True)
            log(f"== training without {region} ==")
            train(cfg, run_dir, progress=progress, log=log)
        else:
            log(f"== reusing {run_dir} (same recipe) ==")
        row = evaluate_region(run_dir, tiles, region)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        log(f"held-out {region}: F1 {_fmt(_shown_f1(row))}, recall {_fmt(row['recall'])} "
            f"({row['seconds']:.0f}s)")
    return rows


def _shown_f1(row: dict) -> float | None:
    """F1 of a held-out region; None (n/a) for a region without landslide tiles."""
    return row["f1"] if row["landslide_tiles"] else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(rows: list[dict]) -> str:
    head = (f"{'held-out region':16} {'tiles':>5} {'slides':>6} {'precision':>9} {'recall':>6} "
            f"{'specificity':>11} {'F1':>5} {'F1 95% CI':>11} {'ROC-AUC':>7} {'ref F1':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ref = REFERENCE_F1.get(r["region"])
        has_pos = r["landslide_tiles"] > 0
        prec = f"{r['precision']:.3f}" if r["tp"] + r["fp"] else "n/a"
        rec = f"{r['recall']:.3f}" if has_pos else "n/a"
        f1 = _fmt(_shown_f1(r))
        ci = r["ci95"]["f1"]
        ci_s = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci and has_pos else "n/a"
        auc = f"{r['roc_auc']:.3f}" if r["roc_auc"] is not None else "n/a"
        spec = f"{r['specificity']:.3f}" if r["tn"] + r["fp"] else "n/a"
        lines.append(f"{r['region']:16} {r['tiles']:>5} {r['landslide_tiles']:>6} {prec:>9} "
                     f"{rec:>6} {spec:>11} {f1:>5} {ci_s:>11} {auc:>7} "
                     f"{(f'{ref:.2f}' if ref else '-'):>6}")
    lines.append("Tile scores on each region held out of training (threshold from the model). "
                 "ref F1: frozen EfficientNet-Lite0 features + logistic regression "
                 "(published with the sample data).")
    return "\n".join(lines)
