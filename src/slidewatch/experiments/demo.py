"""The demo: leave-one-region-out on the sample regions, both tasks.

For each region: train on the other three (validation split by source image) an
EfficientNet-Lite0 tile classifier and a U-Net over EfficientNet-Lite0 that maps landslide
pixels, then score both on the held-out region, which neither model saw: tile precision,
recall, specificity, F1 and ROC-AUC for both (the same tiles: the reference tiling, 224 px,
stride 224, 5% rule), pixel IoU and F1 for the segmentation model.

The full Bijie dataset (``datasets/bijie`` beside ``regions/`` in the sample data, when present)
counts as region bijie: it trains the folds that hold out another region, and is held out with
``regions/bijie``; its test list (``splits/test.txt``) is scored with the bijie tiles.
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
from slidewatch.data.folders import Sample, scan_class_folders
from slidewatch.data.inputs import image_dataset
from slidewatch.data.masks import MaskedSample, class_folder_samples, scene_samples
from slidewatch.data.sampledata import REGIONS, locate
from slidewatch.data.tiling import tile_scenes
from slidewatch.evaluation import metrics
from slidewatch.evaluation.evaluate import score_block
from slidewatch.inference.ensemble import load_models
from slidewatch.inference.forward import predict_outputs
from slidewatch.runtime import no_progress, resolve_device
from slidewatch.training.loop import train

TASKS = ("classify", "segment")
# Reference F1 published with the sample data: frozen Lite0 features + logistic regression.
REFERENCE_F1 = {"sichuan": 0.73, "bijie": 0.37}
BIJIE_DATASET = ("datasets", "bijie")
# The reference tiling (tile, stride, landslide share of a landslide tile): the tiles the
# demo's classifier trains on and both tasks are scored on (:func:`ensure_tiles`).
REFERENCE_TILING = (224, 224, 0.05)


def demo_config(tiles: Path, holdout: str, quick: bool = False,
                extra: tuple[Path, ...] = ()) -> TrainConfig:
    """The demo's classifier recipe, sized for 2 CPU cores.

    The reference tiles of the training regions and ``extra`` class-folder datasets (the Bijie
    set), split by source image; images read when drawn (no cache); epochs capped at 24
    batches of 32 so that every fold fits the time budget. Phase 1 (one epoch) is a linear
    probe on frozen ImageNet features; phase 2 (two) gently fine-tunes the top 20 weighted
    layers (Keras counting).
    """
    cfg = {
        "data": {"paths": [str(tiles), *map(str, extra)], "holdout_regions": [holdout],
                 "split_by": "image", "val_fraction": 0.1, "cache": False},
        "model": {"name": "efficientnet_lite0", "weights": "imagenet", "input_size": 224,
                  "drop_rate": 0.3},
        "augment": {"resize": 256, "crop": 224, "translate": 0.05, "brightness": 0.2,
                    "contrast": 0.2, "saturation": 0.3, "rotate90": True},
        "phase1": {"epochs": 1, "lr": 2e-3},
        "phase2": {"epochs": 2, "lr": 2e-4, "unfreeze_layers": 20},
        "optim": {"optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine"},
        "batch_size": 32, "steps_per_epoch": 24, "class_weights": "balanced",
        "early_stopping_metric": "val_f1", "patience": 3, "seed": 0, "progress": True,
    }
    if quick:
        cfg["phase1"]["epochs"], cfg["phase2"]["epochs"], cfg["steps_per_epoch"] = 1, 1, 2
    return from_dict(cfg)


def segment_config(data: list[Path], holdout: str, quick: bool = False) -> TrainConfig:
    """The demo's segmentation recipe: U-Net over EfficientNet-Lite0 (packaged ImageNet
    weights), 224 px crops of the scenes (half centred on landslides) and the Bijie images;
    BCE + Dice; one epoch on the frozen encoder, two with its top 3 stages unfrozen; epochs of
    16 batches of 8."""
    cfg = {
        "task": "segment",
        "data": {"paths": [str(p) for p in data], "holdout_regions": [holdout],
                 "split_by": "image", "val_fraction": 0.1},
        "model": {"name": "unet/efficientnet_lite0", "weights": "imagenet", "input_size": 224},
        "augment": {"translate": 0.05, "brightness": 0.2, "contrast": 0.2, "saturation": 0.3,
                    "rotate90": True},
        "segment": {"loss": "bce_dice", "crops_per_image": 4, "positive_share": 0.5},
        "phase1": {"epochs": 1, "lr": 3e-3},
        "phase2": {"epochs": 2, "lr": 5e-4, "unfreeze_blocks": 3},
        "optim": {"optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine"},
        "batch_size": 8, "steps_per_epoch": 16, "early_stopping_metric": "val_iou",
        "patience": 3, "seed": 0, "progress": True,
    }
    if quick:
        cfg["phase1"]["epochs"], cfg["phase2"]["epochs"], cfg["steps_per_epoch"] = 1, 1, 2
    return from_dict(cfg)


def ensure_tiles(data_root: Path, out: Path, log: Callable, tile: int = REFERENCE_TILING[0],
                 stride: int | None = None, name: str = "tiles") -> Path:
    """Tiles of the four regions (5% rule), made once. The default (stride = tile) is the
    reference tiling (:data:`REFERENCE_TILING`)."""
    tiles = out / name
    if (tiles / "tiles.csv").is_file():
        return tiles
    scenes = [data_root / "regions" / r for r in REGIONS]
    summary = tile_scenes(scenes, tiles, tile=tile, stride=stride or tile,
                          min_landslide=REFERENCE_TILING[2])
    log(f"tiled the sample regions (tile {tile}, stride {stride or tile}) -> {tiles}\n"
        f"{summary.table()}")
    return tiles


def bijie_dataset(root: Path) -> Path | None:
    """The full Bijie dataset beside the regions, if the sample data has it."""
    path = root.joinpath(*BIJIE_DATASET)
    return path if (path / "landslide").is_dir() and (path / "masks").is_dir() else None


def test_stems(dataset: Path) -> set[str] | None:
    """The stems of the dataset's test list (``splits/test.txt``), or None (all images)."""
    path = dataset / "splits" / "test.txt"
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def held_out_images(root: Path, region: str, classes: list[str]) -> list[MaskedSample]:
    """What a held-out region adds to its tiles: the Bijie dataset's test images for bijie."""
    dataset = bijie_dataset(root)
    if region != "bijie" or dataset is None:
        return []
    stems = test_stems(dataset)
    return [s for s in class_folder_samples(dataset, classes, region="bijie")
            if stems is None or s.image.stem in stems]


def _load(model_dirs) -> tuple:
    """One model folder, or several as an ensemble (their probabilities averaged)."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    return load_models(dirs, resolve_device("auto"))


def region_tiles(tiles: Path, region: str, extra: list[MaskedSample] = (),
                 exclude: frozenset[str] = frozenset()) -> list[Sample]:
    """The tiles a classifier is scored on for one region: its reference tiles in ``tiles``
    (less the source images in ``exclude``) and the ``extra`` images (class-folder images:
    landslide when they have a mask)."""
    samples = [s for s in scan_class_folders(tiles)
               if s.region == region and s.group not in exclude]
    samples += [Sample(path=s.image, label=0 if s.mask is not None else 1, group=s.group,
                       region=region) for s in extra]
    return samples


def evaluate_region(model_dir, tiles: Path, region: str,
                    extra: list[MaskedSample] = (), tta: bool = False,
                    exclude: frozenset[str] = frozenset()) -> dict:
    """Tile-level scores of a classifier (a model folder, or a list of them: an ensemble) on
    one region's tiles (and ``extra`` images); ``tta``: test-time augmentation; ``exclude``:
    source images (groups, e.g. ``bijie/10009``) whose tiles are left out."""
    model, meta = _load(model_dir)
    samples = region_tiles(tiles, region, extra, exclude)
    ds = image_dataset(meta, samples)
    prob = predict_outputs(model, meta, DataLoader(ds, batch_size=64), resolve_device("auto"),
                           tta=tta)["probability"]
    y = np.array([s.label == meta.positive_index for s in samples])
    return _tile_row(y, prob, meta.threshold, meta, region)


def _tile_row(y: np.ndarray, prob: np.ndarray, threshold: float, meta, region: str) -> dict:
    """Tile scores of one region; with both classes also the operating points of the ROC
    curve: recall at a false-positive rate of 0.1 and the false-positive rate at recall 0.9;
    ``flagged``: the share of tiles at or above the threshold."""
    names = [meta.positive_class if v else meta.negative_label for v in y]
    block = score_block(y, prob, threshold, names)
    both = bool(y.any() and not y.all())
    return {**block, **block["confusion"], "region": region, "tiles": int(len(y)),
            "landslide_tiles": int(y.sum()),
            "flagged": float(np.mean(prob >= threshold)) if len(y) else None,
            "recall_at_fpr_0.1": metrics.recall_at_fpr(y, prob, 0.1) if both else None,
            "fpr_at_recall_0.9": metrics.fpr_at_recall(y, prob, 0.9) if both else None}


def evaluate_segmenter(model_dir, root: Path, region: str,
                       extra: list[MaskedSample] = (), tta: bool = False,
                       exclude: frozenset[str] = frozenset()) -> dict:
    """A segmentation model on one held-out region: tile scores on the windows of the
    reference tiling (the classifier's tiles) and the ``extra`` images, pixel IoU and F1 over
    the region's scenes and those images; ``exclude``: scenes (groups) left out."""
    from slidewatch.evaluation.segment import pixel_block, score_images, scored_tiles

    model, meta = _load(model_dir)
    samples = [s for s in scene_samples(root / "regions" / region)
               if s.group not in exclude] + list(extra)
    items, tiles = score_images(model, meta, samples, batch_size=16,
                                device=resolve_device("auto"), progress=no_progress, tta=tta)
    _, y, prob = scored_tiles(tiles)
    row = _tile_row(y, prob, meta.tile_threshold(), meta, region)
    px = pixel_block(items, meta.threshold, objects=False)
    row.update({"pixel_iou": px["iou"], "pixel_f1": px["f1"],
                "pixel_precision": px["precision"], "pixel_recall": px["recall"]})
    return row


def _finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """A fold trained earlier with exactly this recipe."""
    meta = run_dir / "slidewatch.json"
    if not meta.is_file():
        return False
    return json.loads(meta.read_text()).get("training") == to_dict(cfg)


def _fold(run_dir: Path, cfg: TrainConfig, log: Callable, progress: Callable,
          what: str) -> None:
    if _finished(run_dir, cfg):
        log(f"== reusing {run_dir} (same recipe) ==")
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"== {what} ==")
    train(cfg, run_dir, progress=progress, log=log)


def run_demo(data_dir: str | None, out: Path, *, quick: bool = False,
             log: Callable[[str], None] = lambda m: None, progress: Callable = no_progress,
             regions: tuple[str, ...] = REGIONS,
             config: Callable[..., TrainConfig] | None = None,
             seg_config: Callable[..., TrainConfig] | None = None,
             tasks: tuple[str, ...] = TASKS, tile: int = 224) -> list[dict]:
    """Leave-one-region-out over ``regions``; one row per held-out region with the
    classifier's scores and, under ``"segment"``, the segmentation model's.

    ``config(tiles, region, quick, extra)`` and ``seg_config(data, region, quick)`` give each
    fold's recipes (default :func:`demo_config`, :func:`segment_config`).
    """
    config = config or demo_config
    seg_config = seg_config or segment_config
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = locate(data_dir, log=log)
    out.mkdir(parents=True, exist_ok=True)
    tiles = ensure_tiles(root, out, log, tile)
    bijie = bijie_dataset(root)
    extra = (bijie,) if bijie is not None else ()
    rows = []
    for region in regions:
        t0 = time.perf_counter()
        held = held_out_images(root, region, ["landslide", "non_landslide"])
        row: dict = {}
        if "classify" in tasks:
            run_dir = out / f"holdout-{region}"
            _fold(run_dir, config(tiles, region, quick, extra), log, progress,
                  f"classifier without {region}")
            row = evaluate_region(run_dir, tiles, region, held)
            log(f"held-out {region}, classifier: F1 {_fmt(_shown_f1(row))}, ROC-AUC "
                f"{_fmt(row['roc_auc'])}, specificity {_fmt(row['specificity'])}")
        if "segment" in tasks:
            seg_dir = out / f"segment-holdout-{region}"
            data = [root / "regions" / r for r in REGIONS] + list(extra)
            _fold(seg_dir, seg_config(data, region, quick), log, progress,
                  f"segmentation without {region}")
            seg = evaluate_segmenter(seg_dir, root, region, held)
            row = {**(row or {k: seg[k] for k in ("region", "tiles", "landslide_tiles")}),
                   "segment": seg}
            log(f"held-out {region}, segmentation: tile F1 {_fmt(_shown_f1(seg))}, pixel IoU "
                f"{_fmt(seg['pixel_iou'])}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
    return rows


def _shown_f1(row: dict) -> float | None:
    """F1 of a held-out region; None (n/a) for a region without landslide tiles."""
    return row["f1"] if row.get("landslide_tiles") else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_table(rows: list[dict]) -> str:
    """Per held-out region: tiles, then F1, ROC-AUC and specificity of the classifier and of
    the segmentation model (with its pixel IoU and F1), and the reference F1."""
    head = (f"{'held-out region':16} {'tiles':>5} {'slides':>6} | {'F1':>5} {'ROC-AUC':>7} "
            f"{'spec.':>5} | {'F1':>5} {'ROC-AUC':>7} {'spec.':>5} {'px IoU':>6} "
            f"{'px F1':>5} | {'ref F1':>6}")
    top = (f"{'':30} | {'classifier':^19} | {'segmentation':^33} |")
    lines = [top, head, "-" * len(head)]

    def scores(r: dict | None) -> list[str]:
        if r is None or "f1" not in r:
            return ["-", "-", "-"]
        spec = _fmt(r["specificity"]) if r.get("tn", 0) + r.get("fp", 0) else "n/a"
        return [_fmt(_shown_f1(r)), _fmt(r.get("roc_auc")), spec]

    for r in rows:
        ref = REFERENCE_F1.get(r["region"])
        seg = r.get("segment")
        c, s = scores(r if "f1" in r else None), scores(seg)
        px = [_fmt(seg.get("pixel_iou")), _fmt(seg.get("pixel_f1"))] if seg else ["-", "-"]
        lines.append(f"{r['region']:16} {r['tiles']:>5} {r['landslide_tiles']:>6} | "
                     f"{c[0]:>5} {c[1]:>7} {c[2]:>5} | {s[0]:>5} {s[1]:>7} {s[2]:>5} "
                     f"{px[0]:>6} {px[1]:>5} | {(f'{ref:.2f}' if ref else '-'):>6}")
    lines.append("Tile scores on each region held out of training (threshold from each model; "
                 "the same tiles for both: 224 px, stride 224, 5% rule; bijie adds the Bijie "
                 "dataset's test list). px: pixels of the held-out scenes and images. "
                 "ref F1: frozen EfficientNet-Lite0 features + logistic regression "
                 "(published with the sample data).")
    return "\n".join(lines)
