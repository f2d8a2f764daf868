"""Training of segmentation models (``task: segment``): data from masks, the pixel loss, pixel
validation scores and the tile rule chosen on the validation split.

The loop of :mod:`slidewatch.training.loop` runs both tasks (phases, schedules, early stopping,
resume); this module supplies what differs for pixel maps:

* data: scene folders (``images/`` + ``masks/``) give random crops each epoch, a share centred
  on landslides (:class:`~slidewatch.data.masks.SceneCrops`), and a fixed grid of windows for
  validation; class folders with ``masks/`` (the Bijie layout) give whole images fitted to the
  input size. The split is by image or region as for classifiers (a scene is one image).
* loss: :func:`~slidewatch.training.losses.segmentation_loss` over valid (not padded) pixels,
  landslide pixels weighted by ``segment.pos_weight``;
* scores: pixel IoU, F1, precision, recall and MCC of the landslide class, pooled over the
  split (``val_iou`` ... for early stopping);
* tile rule: a tile is a landslide when ``min_area_pixels`` pixels reach the threshold; with
  ``segment.min_area: auto`` the area maximising Youden's J (recall + specificity - 1) of the
  validation tiles among areas up to
  :data:`~slidewatch.evaluation.tile_rule.MAX_MIN_AREA` of the input, else the value given
  (:class:`slidewatch.meta.SegmentationSpec`); with ``target_recall`` the area and the threshold
  together (:func:`~slidewatch.evaluation.tile_rule.rule_for_recall`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from slidewatch.config.train import TrainConfig
from slidewatch.data.masks import (
    JointTransform,
    MaskedImages,
    MaskedSample,
    SceneCrops,
    SceneTiles,
    as_split_samples,
    masked_samples,
)
from slidewatch.data.readers import probe
from slidewatch.data.splits import Split, split_for
from slidewatch.errors import ConfigError, DataError
from slidewatch.evaluation.pixels import PixelCounts, pixel_counts, pixel_scores
from slidewatch.evaluation.tile_rule import (
    area_candidates,
    areas_to_try,
    choose_min_area,
    max_area,
    recall_source,
    rule_for_recall,
)
from slidewatch.inference.forward import forward_logits
from slidewatch.meta import ModelMeta, SegmentationSpec
from slidewatch.models.segmentation import SEGMENTERS, build_segmenter, encoder_module
from slidewatch.runtime import worker_init
from slidewatch.training.losses import segmentation_loss

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAX_POS_WEIGHT = 10.0


@dataclass
class SegmentSetup:
    """What the loop needs besides the shared :class:`~slidewatch.training.setup.Setup`."""

    loss: str
    pos_weight: float | None
    landslide_share: float
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tile labels (1/0/-1)


# ------------------------------------------------------------------------------- data


def find_samples(roots: list[Path], classes: list[str]) -> list[MaskedSample]:
    """Every image with its mask under ``roots`` (scene folders or class folders + masks/)."""
    out: list[MaskedSample] = []
    for root in roots:
        out += masked_samples(root, classes)
    if not any(s.mask is not None for s in out):
        raise DataError(f"{', '.join(map(str, roots))}: no landslide mask among the images; "
                        "--task segment learns from masks")
    return out


def from_class_folder(s: MaskedSample) -> bool:
    """A class-folder image (with or without a mask), not a scene of a scene folder."""
    return s.image.parent.name != "images"


def split(cfg: TrainConfig, samples: list[MaskedSample]) -> Split:
    if cfg.data.split_by == "tile":
        raise ConfigError("data.split_by: tile does not apply to --task segment (images are "
                          "not tiled); use image or region")
    return split_for(cfg.data, cfg.seed, as_split_samples(samples))


def datasets(cfg: TrainConfig, size: int, train_s: list[MaskedSample],
             val_s: list[MaskedSample], scale: float | None, standardize: Callable | None = None
             ) -> tuple[Dataset, Dataset | None]:
    """Training data (augmented: crops of scenes, fitted class-folder images) and validation
    data (a fixed grid over scenes, fitted class-folder images); ``standardize``: the model's
    rule (:func:`slidewatch.data.standardize.standardizer`), each image or scene by its own
    whole statistics."""
    tf = JointTransform(cfg.augment)
    sg = cfg.segment

    def build(part: list[MaskedSample], train: bool) -> Dataset | None:
        whole = [s for s in part if from_class_folder(s)]
        scenes = [s for s in part if not from_class_folder(s)]
        parts: list[Dataset] = []
        if whole:
            parts.append(MaskedImages(whole, size, transform=tf if train else None, scale=scale,
                                      cache=cfg.data.cache, standardize=standardize))
        if scenes:
            parts.append(SceneCrops(scenes, size, crops_per_image=sg.crops_per_image,
                                    positive_share=sg.positive_share, transform=tf, scale=scale,
                                    standardize=standardize)
                         if train else SceneTiles(scenes, size, scale=scale,
                                                  standardize=standardize))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    return build(train_s, True), build(val_s, False)


def shows_landslide(ds: Dataset) -> np.ndarray:
    """For each training item: does it come from an image with a landslide (a class-folder
    image with a mask, or a crop of a scene, which all have landslides)."""
    parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
    out = []
    for part in parts:
        if isinstance(part, MaskedImages):
            out += [s.mask is not None for s in part.samples]
        else:
            out += [True] * len(part)
    return np.array(out, bool)


def draw_weights(pos: np.ndarray, share: float) -> np.ndarray | None:
    """Per-item draw probabilities giving items that show a landslide (``pos``) the total
    ``share``; None when the data has only one kind (draw uniformly)."""
    if pos.all() or not pos.any():
        return None
    return np.where(pos, share / pos.sum(), (1 - share) / (~pos).sum())


def balanced_sampler(ds: Dataset, share: float, gen: torch.Generator
                     ) -> WeightedRandomSampler | None:
    """Draws items so that a share ``share`` of them shows a landslide (with replacement, one
    epoch = len(ds) draws), when the data has both kinds; None otherwise (plain shuffling).
    A dataset like Bijie's, two thirds landslide-free images, would otherwise leave the
    landslide pixels at a few percent of what the model sees."""
    w = draw_weights(shows_landslide(ds), share)
    if w is None:
        return None
    return WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(ds),
                                 replacement=True, generator=gen)


def loader(ds: Dataset, cfg: TrainConfig, shuffle: bool, drop_last: bool = False) -> DataLoader:
    """Batches of ``ds``; training batches (``shuffle``) balanced by
    :func:`balanced_sampler` with ``segment.positive_share``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    nw = cfg.data.num_workers
    sampler = balanced_sampler(ds, cfg.segment.positive_share, gen) if shuffle else None
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, generator=gen, num_workers=nw, worker_init_fn=worker_init,
                      persistent_workers=nw > 0,
                      drop_last=drop_last and len(ds) > cfg.batch_size)


def band_count(samples: list[MaskedSample]) -> int:
    seen: dict[int, Path] = {}
    for s in samples:
        seen.setdefault(probe(s.image).bands, s.image)
    if len(seen) > 1:
        (b1, p1), (b2, p2) = list(seen.items())[:2]
        raise DataError(f"{p2}: has {b2} bands but {p1} has {b1}; a dataset needs one band count")
    return next(iter(seen))


def pixel_statistics(ds: Dataset, limit: int = 256, seed: int = 0,
                     share: float | None = None) -> tuple[list[float], list[float], float]:
    """Per-band mean and std of valid pixels (unit scale) and the landslide share, over up to
    ``limit`` items of ``ds``, drawn as training draws them (``share``: the balanced draws of
    :func:`balanced_sampler`), so that ``pos_weight: auto`` fits what the model sees."""
    rng = np.random.default_rng(seed)
    w = None if share is None else draw_weights(shows_landslide(ds), share)
    if w is not None:
        pick = rng.choice(len(ds), size=min(limit, len(ds)), replace=False, p=w / w.sum())
    else:
        pick = rng.permutation(len(ds))[:limit]
    s1 = s2 = None
    n = pos = 0
    for i in pick:
        item = ds[int(i)]
        valid = item["valid"][0] > 0
        x = item["image"][:, valid].double()  # C x valid pixels
        s1 = x.sum(1) if s1 is None else s1 + x.sum(1)
        s2 = (x * x).sum(1) if s2 is None else s2 + (x * x).sum(1)
        n += x.shape[1]
        pos += int(item["mask"][0][valid].sum())
    if not n:
        raise DataError("--data: no valid pixels to compute the band statistics from")
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-6)
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise DataError("--data: the band statistics of the training images are not finite; "
                        "check the images or --scale")
    return mean.tolist(), std.tolist(), pos / n


def input_size(cfg: TrainConfig) -> int:
    if cfg.model.input_size:
        return cfg.model.input_size
    spec = SEGMENTERS.get(cfg.model.name)
    return spec.default_input_size if spec else 256


def build(cfg: TrainConfig, in_chans: int, log: Callable) -> tuple[torch.nn.Module, ModelMeta]:
    """The segmenter and its metadata (statistics filled in by :func:`prepare_data`): built
    afresh, or with ``model.init_from`` the folder it continues (:func:`continue_from`)."""
    m = cfg.model
    if m.init_from:
        model, mean, std, size = continue_from(cfg, in_chans, log)
    else:
        model = build_segmenter(m.name, in_chans=in_chans, weights=m.weights)
        mean, std = _encoder_statistics(model, in_chans)
        size = input_size(cfg)
    meta = ModelMeta(architecture=model.architecture, classes=list(cfg.data.classes),
                     in_chans=in_chans, input_size=size, mean=mean, std=std,
                     scale=cfg.data.scale, grayscale=cfg.augment.grayscale,
                     threshold=cfg.threshold, drop_rate=0.0, weights_source=str(
                         model.slidewatch_weights), task="segment",
                     standardize=cfg.data.standardize,
                     segmentation=SegmentationSpec(max_area(size)))
    if m.init_from:
        meta.extra = {"init_from": str(m.init_from)}
    return model, meta


def _encoder_statistics(model: torch.nn.Module, in_chans: int) -> tuple[list, list]:
    """The band mean and std a new segmenter normalises with: its pretrained encoder's (timm's
    data config) for 3 bands, else ImageNet's, or 0.5 for other band counts (then replaced
    by the training data's own statistics)."""
    mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if in_chans == 3 else \
        ([0.5] * in_chans, [0.5] * in_chans)
    if model.slidewatch_weights != "none" and in_chans == 3:
        try:
            import timm.data

            dc = timm.data.resolve_model_data_config(encoder_module(model))
            if len(dc["mean"]) == 3:
                mean, std = [float(v) for v in dc["mean"]], [float(v) for v in dc["std"]]
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError):
            pass
    return mean, std


def continue_from(cfg: TrainConfig, in_chans: int, log: Callable) -> tuple:
    """``(model, mean, std, input size)`` of the segmentation model folder that
    ``model.init_from`` trains further, e.g. on a few labelled images of a new region. It keeps
    its architecture and band normalisation (it counts as pretrained: BatchNorm statistics
    stay frozen); the tile rule is chosen again on the new validation split. Another task,
    band count or standardisation rule is a ConfigError naming the folder."""
    from slidewatch.models.checkpoint import load_init_model

    path = cfg.model.init_from
    model, prev = load_init_model(path, "segment", cfg.data.standardize)
    where = f"--init-from {path}"
    if prev.in_chans != in_chans:
        raise ConfigError(f"{where}: that model takes {prev.in_chans} bands; this data has "
                          f"{in_chans}")
    log(f"continuing from {path} ({prev.architecture})")
    model.slidewatch_weights = f"init_from:{path}"
    return model, list(prev.mean), list(prev.std), cfg.model.input_size or prev.input_size


def pos_weight(cfg: TrainConfig, share: float) -> float | None:
    """The BCE weight of landslide pixels: ``auto`` = sqrt(background / landslide), at most
    :data:`MAX_POS_WEIGHT`; a number as given; ``none`` = 1."""
    pw = cfg.segment.pos_weight
    if pw == "none":
        return None
    if pw == "auto":
        if share <= 0:
            return None
        return float(min(MAX_POS_WEIGHT, max(1.0, math.sqrt((1 - share) / share))))
    return float(pw)


def summary(cfg: TrainConfig, samples: list[MaskedSample], sp: Split) -> dict:
    def counts(idx):
        c = Counter("with landslides" if samples[i].mask is not None else "landslide-free"
                    for i in idx)
        return dict(sorted(c.items()))

    return {"paths": list(cfg.data.paths), "split_by": cfg.data.split_by, "task": "segment",
            "train": counts(sp.train), "val": counts(sp.val), "test": counts(sp.test),
            "train_regions": sorted({samples[i].region for i in sp.train}),
            "val_regions": sorted({samples[i].region for i in sp.val}),
            "holdout_regions": list(cfg.data.holdout_regions)}


# ------------------------------------------------------------------------- loss, scores


def batch_loss(seg: SegmentSetup, model: torch.nn.Module, batch: dict, meta: ModelMeta,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N x 1 x H x W) and loss of one batch."""
    logits = forward_logits(model, batch["image"], meta, device)
    mask = batch["mask"].to(device)
    valid = batch["valid"].to(device)
    loss = segmentation_loss(logits, mask, seg.loss, pos_weight=seg.pos_weight, valid=valid)
    return logits, loss


def counts_of(logits: torch.Tensor, batch: dict, threshold: float) -> PixelCounts:
    pred = (torch.sigmoid(logits.detach()) >= threshold).cpu().numpy()
    return pixel_counts(pred, batch["mask"].numpy() > 0.5, batch["valid"].numpy() > 0.5)


def pixel_row(prefix: str, loss: float, c: PixelCounts) -> dict:
    """History columns of a split: loss and the landslide class's pixel scores (0 when
    undefined, so that early stopping can compare them)."""
    sc = pixel_scores(c)
    return {f"{prefix}_loss": loss,
            **{f"{prefix}_{k}": float(sc[k] or 0.0)
               for k in ("iou", "f1", "precision", "recall", "mcc")}}


def tile_labels(ds: Dataset, min_landslide: float) -> np.ndarray:
    """1 (landslide tile: mask share >= ``min_landslide``, or any landslide in a class-folder
    image), 0 (no landslide pixel), -1 (ambiguous, left out) for each item of ``ds``."""
    out = []
    for i in range(len(ds)):
        item = ds[i]
        valid = item["valid"][0] > 0.5
        share = float(item["mask"][0][valid].float().mean()) if valid.any() else 0.0
        part, j = _part(ds, i)
        whole = not isinstance(part, SceneTiles)
        if not whole and part.edge[j]:  # a window flush with the scene's edge: no tile
            out.append(-1)
        elif share == 0:
            out.append(0)
        elif whole or share >= min_landslide:
            out.append(1)
        else:
            out.append(-1)
    return np.array(out, dtype=np.int8)


def _part(ds: Dataset, i: int) -> tuple[Dataset, int]:
    """The dataset holding item ``i`` of ``ds`` (a ConcatDataset or not) and its index there."""
    if isinstance(ds, ConcatDataset):
        k = int(np.searchsorted(ds.cumulative_sizes, i, side="right"))
        return ds.datasets[k], i - (ds.cumulative_sizes[k - 1] if k else 0)
    return ds, i


@torch.no_grad()
def validate(s, max_k: int | None = None) -> tuple[dict, np.ndarray | None]:
    """Loss and pixel scores of the validation split; with ``max_k``, also each tile's
    ``max_k`` largest valid probabilities (descending) for the tile rule."""
    seg: SegmentSetup = s.segment
    s.model.eval()
    total, n, counts, tops = 0.0, 0, PixelCounts(), []
    for batch in s.val_loader:
        logits, loss = batch_loss(seg, s.model, batch, s.meta, s.device)
        total += float(loss) * len(logits)
        n += len(logits)
        logits = logits / s.meta.temperature  # 1 until calibrated
        counts = counts + counts_of(logits, batch, s.meta.threshold)
        if max_k:
            prob = torch.sigmoid(logits).flatten(1).cpu()
            prob = torch.where(batch["valid"].flatten(1) > 0.5, prob, torch.zeros_like(prob))
            tops.append(prob.topk(min(max_k, prob.shape[1]), dim=1).values.numpy())
    row = pixel_row("val", total / max(n, 1), counts)
    return row, (np.concatenate(tops) if tops else None)


@torch.no_grad()
def val_pixels(s, limit: int = 400_000) -> tuple[np.ndarray, np.ndarray]:
    """Logits and 0/1 labels of the validation split's valid pixels (every k-th pixel when
    there are more than ``limit``, so the temperature fit stays cheap and deterministic)."""
    s.model.eval()
    zs, ys = [], []
    for batch in s.val_loader:
        logits = forward_logits(s.model, batch["image"], s.meta, s.device)[:, 0].cpu()
        keep = batch["valid"][:, 0] > 0.5
        zs.append(logits[keep].numpy())
        ys.append((batch["mask"][:, 0] > 0.5)[keep].numpy())
    z, y = np.concatenate(zs), np.concatenate(ys)
    step = max(1, len(z) // limit)
    return z[::step], y[::step]


def recall_rule(s, target: float, log: Callable) -> tuple[SegmentationSpec, dict]:
    """The tile rule (area and tile threshold) for ``target`` recall of the validation tiles
    (:func:`~slidewatch.evaluation.tile_rule.rule_for_recall`) and its description; the
    configured area when ``segment.min_area`` is a number. The model's threshold (pixel maps)
    stays as it is."""
    if s.val_loader is None:
        raise ConfigError("target_recall: needs a validation split (val_fraction > 0)")
    ma, size = s.cfg.segment.min_area, s.meta.input_size
    fixed = None if ma == "auto" else int(ma)
    areas = areas_to_try(size, fixed)
    _, top = validate(s, max_k=max(areas))
    scores = {k: top[:, k - 1] for k in areas if k <= top.shape[1]}
    k, thr, table = rule_for_recall(scores, s.segment.val_labels, target, max_area(size))
    r = table[k]
    log(f"tile rule for recall {target:g}: landslide when >= {k} pixels reach {thr:.4f} "
        f"(validation tiles: recall {r['recall']:.3f}, specificity {r['specificity']:.3f}); "
        f"pixel maps at {s.meta.threshold:g}")
    source = "config" if fixed else "target_recall"
    return SegmentationSpec(k, source, thr), recall_source(target, k, thr, table)


def tile_rule(s, log: Callable) -> SegmentationSpec:
    """The tile rule stored in the model: the configured area, or one chosen on validation."""
    ma, size = s.cfg.segment.min_area, s.meta.input_size
    if ma != "auto":
        return SegmentationSpec(int(ma), "config")
    if s.val_loader is None:
        return s.meta.segmentation
    _, top = validate(s, max_k=area_candidates(size)[-1])  # never empty: 1 is always tried
    k, source, table = choose_min_area(top, s.segment.val_labels, s.meta.threshold, size)
    if source == "validation":
        r = table[k]
        log(f"tile rule: landslide when >= {k} pixels reach {s.meta.threshold:g} "
            f"(validation tiles: recall {r['recall']:.3f}, specificity {r['specificity']:.3f})")
    else:
        log(f"tile rule: landslide when >= {k} pixels reach {s.meta.threshold:g} (default: no "
            "area separates the validation split's landslide and landslide-free tiles)")
    return SegmentationSpec(k, source)
