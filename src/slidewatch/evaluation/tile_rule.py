"""The tile rule of a segmentation model, chosen from scored validation tiles.

A segmentation model calls a tile a landslide when at least ``min_area_pixels`` of its pixels
reach the threshold; a tile's score is its ``min_area_pixels``-th largest pixel probability
(:class:`slidewatch.meta.SegmentationSpec`). These pure functions choose the area (and, for a
target recall, the threshold) from tile scores and labels (1 landslide, 0 landslide-free, -1
left out); training calls them on its validation split, ``evaluate --target-recall`` on the
model's validation images scored again.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from slidewatch.errors import ConfigError
from slidewatch.evaluation import metrics

# Largest share of the input area the tile rule may ask for (also the rule when validation
# cannot choose one): 0.5%, 251 pixels of a 224-pixel input (the largest area tried there is
# 128, about 80 m2 at 0.8 m). An area chosen freely on the validation split follows the
# training regions' landslide sizes and how fully the model paints them there (up to 8,192
# pixels measured); on a region the model never saw its maps cover a smaller part of each
# landslide, and such areas ranked the tiles of held-out regions worse than chance
# (generalisation benchmark, docs/results.md#tile-rule).
MAX_MIN_AREA = 0.005


def max_area(size: int) -> int:
    """:data:`MAX_MIN_AREA` of a ``size`` x ``size`` input in pixels (at least 1): the largest
    area the tile rule may ask for, and the rule when validation cannot choose one."""
    return max(1, round(MAX_MIN_AREA * size * size))


def area_candidates(size: int) -> list[int]:
    """Minimum areas tried on validation: 1, 2, 4, ... pixels up to :func:`max_area`."""
    out, k = [], 1
    while k <= max_area(size):
        out.append(k)
        k *= 2
    return out


def areas_to_try(size: int, fixed: int | None = None) -> list[int]:
    """The areas a rule is chosen among: ``fixed`` alone (an area given in the config), else
    :func:`area_candidates`."""
    return [fixed] if fixed else area_candidates(size)


def _rates(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Recall and specificity (nan without landslide-free tiles) of tile decisions."""
    rec = float((pred & y).sum() / y.sum())
    spec = float((~pred & ~y).sum() / (~y).sum()) if (~y).any() else float("nan")
    return rec, spec


def choose_min_area(top: np.ndarray, labels: np.ndarray, threshold: float, size: int
                    ) -> tuple[int, str, dict]:
    """The tile rule's minimum area from validation tiles: ``top`` holds each tile's largest
    pixel probabilities in descending order (N x K). Youden's J = recall + specificity - 1 of
    the tiles, ties to the smaller area; the default share of the input when the validation
    tiles lack a class or no area separates them at all (J <= 0)."""
    keep = labels >= 0
    y = labels[keep] == 1
    default = max_area(size)
    if not y.any() or y.all():
        return default, "default", {}
    best, table = None, {}
    for k in area_candidates(size):
        if k > top.shape[1]:
            break
        rec, spec = _rates(top[keep, k - 1] >= threshold, y)
        j = rec + spec - 1
        table[k] = {"recall": round(rec, 4), "specificity": round(spec, 4)}
        if best is None or j > best[1] + 1e-12:
            best = (k, j)
    if best is None or best[1] <= 0:
        return default, "default", table
    return best[0], "validation", table


def rule_for_recall(scores: Mapping[int, np.ndarray], labels: np.ndarray, target: float,
                    default_area: int) -> tuple[int, float, dict]:
    """The tile rule and threshold for a target tile recall: ``scores`` maps each area tried
    to every tile's score under it; for each area the highest threshold whose recall reaches
    ``target``, and the area whose threshold leaves the most landslide-free tiles below it
    wins (ties to the smaller area). Without landslide-free tiles, ``default_area`` (or the
    largest area tried when it is not among them). Returns (area, threshold, table by area)."""
    keep = np.asarray(labels) >= 0
    y = np.asarray(labels)[keep] == 1
    if not scores:
        raise ConfigError("target_recall: no tile area to choose from")
    if not y.any():
        raise ConfigError("target_recall: the validation split has no landslide tiles")
    areas = sorted(scores)
    if not (~y).any():
        areas = [default_area if default_area in scores else areas[-1]]
    best, table = None, {}
    for k in areas:
        score = np.asarray(scores[k], float)[keep]
        thr = float(np.clip(metrics.threshold_for_recall(y, score, target), 1e-4, 0.9999))
        rec, spec = _rates(score >= thr, y)
        table[k] = {"threshold": round(thr, 6), "recall": round(rec, 4),
                    "specificity": round(spec, 4)}
        if best is None or spec > table[best]["specificity"] + 1e-12:
            best = k
    return best, table[best]["threshold"], table


def recall_source(target: float, area: int, threshold: float, table: dict) -> dict:
    """The model's ``threshold_source`` for a rule of :func:`rule_for_recall` (the caller adds
    where the validation tiles came from)."""
    return {"rule": f"tile threshold: the highest reaching tile recall {target:g} on the "
                    "validation split, with the tile rule's area (up to the cap) that leaves "
                    "the most landslide-free tiles below it; pixel maps keep the threshold",
            "target_recall": target, "tile_threshold": threshold, "min_area_pixels": area,
            "areas": {str(a): v for a, v in table.items()}}
