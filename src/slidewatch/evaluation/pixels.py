"""Pixel and object metrics of landslide maps (pure functions over numpy arrays).

Pixel metrics are of the landslide class, **pooled over pixels** (the counts of all images are
summed before dividing: a large image weighs more than a small one), not averaged per image.
Undefined values (no landslide pixel in the truth nor the prediction) are ``None``, never 0 or 1.
Intervals: bootstrap over images (resampling whole images, so neighbouring pixels stay
together), percentile 95%.

Objects: 8-connected components. A true landslide counts as **found** when a predicted object
overlaps it with IoU >= ``match_iou`` (0.3 by default); a predicted object is **correct** when it
overlaps some true landslide with IoU >= ``match_iou``. Object precision = correct / predicted,
recall = found / true, also per size class of the true objects (pixels or m²).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.3


@dataclass(frozen=True)
class PixelCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                           self.tn + other.tn)


def pixel_counts(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
                 ) -> PixelCounts:
    """Confusion counts of bool maps ``pred`` and ``truth`` (pixels where ``valid``)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if valid is not None:
        pred, truth = pred[valid], truth[valid]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return PixelCounts(tp, fp, fn, int(pred.size) - tp - fp - fn)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def pixel_scores(c: PixelCounts) -> dict[str, float | None]:
    """IoU, F1 (Dice), precision, recall and MCC of the landslide class, and the share of
    landslide pixels in the truth and in the prediction."""
    n = c.tp + c.fp + c.fn + c.tn
    denom = math.sqrt(float(c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn))
    return {
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn),
        "f1": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "precision": _ratio(c.tp, c.tp + c.fp),
        "recall": _ratio(c.tp, c.tp + c.fn),
        "mcc": _ratio(c.tp * c.tn - c.fp * c.fn, denom) if denom > 0 else None,
        "truth_fraction": _ratio(c.tp + c.fn, n),
        "predicted_fraction": _ratio(c.tp + c.fp, n),
        "pixels": n,
    }


def bootstrap_pixel_ci(per_image: Sequence[PixelCounts], keys: Sequence[str] = ("iou", "f1"),
                       resamples: int = 1000, seed: int = 0) -> dict[str, list[float] | None]:
    """95% percentile intervals of pooled scores, resampling images with replacement."""
    if not per_image:
        return {k: None for k in keys}
    arr = np.array([[c.tp, c.fp, c.fn, c.tn] for c in per_image], np.int64)
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in keys}
    for _ in range(resamples):
        s = arr[rng.integers(0, len(arr), len(arr))].sum(0)
        scores = pixel_scores(PixelCounts(*map(int, s)))
        for k in keys:
            if scores[k] is not None:
                draws[k].append(scores[k])
    return {k: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                if len(v) >= resamples // 2 else None) for k, v in draws.items()}


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool map: ``(labels, count)``, labels 1..count."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), int))
    return labels, int(n)


def _pair_iou(pred_labels: np.ndarray, n_pred: int, true_labels: np.ndarray,
              n_true: int) -> np.ndarray:
    """IoU of every (true, predicted) object pair, n_true x n_pred."""
    if n_true == 0 or n_pred == 0:
        return np.zeros((n_true, n_pred))
    both = (true_labels > 0) & (pred_labels > 0)
    inter = np.zeros((n_true + 1, n_pred + 1), np.int64)
    np.add.at(inter, (true_labels[both], pred_labels[both]), 1)
    true_area = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    pred_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    union = true_area[:, None] + pred_area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou[1:, 1:]


def object_counts(pred: np.ndarray, truth: np.ndarray, *, match_iou: float = MATCH_IOU,
                  size_edges: Sequence[float] = (), pixel_area: float = 1.0) -> dict:
    """Objects of one image: true / found / predicted / correct, overall and per size class of
    the true objects (``size_edges`` in the unit of ``pixel_area``: pixels or m²)."""
    true_labels, n_true = label_objects(truth)
    pred_labels, n_pred = label_objects(pred)
    iou = _pair_iou(pred_labels, n_pred, true_labels, n_true)
    found = (iou >= match_iou).any(1) if n_pred else np.zeros(n_true, bool)
    correct = (iou >= match_iou).any(0) if n_true else np.zeros(n_pred, bool)
    areas = np.bincount(true_labels.ravel(), minlength=n_true + 1)[1:] * pixel_area
    size_class = np.searchsorted(np.asarray(size_edges, float), areas, side="right")
    by_size = [{"true": int((size_class == k).sum()), "found": int(found[size_class == k].sum())}
               for k in range(len(size_edges) + 1)]
    return {"true": n_true, "found": int(found.sum()), "predicted": n_pred,
            "correct": int(correct.sum()), "by_size": by_size}


def object_scores(per_image: Sequence[dict]) -> dict:
    """Object precision and recall summed over images (from :func:`object_counts`)."""
    tot = {k: sum(d[k] for d in per_image) for k in ("true", "found", "predicted", "correct")}
    n_sizes = max((len(d["by_size"]) for d in per_image), default=0)
    sizes = []
    for k in range(n_sizes):
        t = sum(d["by_size"][k]["true"] for d in per_image)
        f = sum(d["by_size"][k]["found"] for d in per_image)
        sizes.append({"true": t, "found": f, "recall": _ratio(f, t)})
    return {**tot, "precision": _ratio(tot["correct"], tot["predicted"]),
            "recall": _ratio(tot["found"], tot["true"]), "by_size": sizes}
