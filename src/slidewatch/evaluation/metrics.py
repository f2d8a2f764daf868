"""Pure metric functions for binary landslide detection (positive class = landslide).

Conventions for empty denominators follow scikit-learn's ``zero_division=0``: a metric whose
denominator is zero is 0.0 (e.g. precision when nothing is predicted positive).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def confusion(y_true, y_pred) -> Confusion:
    """Counts for binary labels where 1 = landslide (positive) and 0 = not."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    return Confusion(
        tp=int(np.sum(t & p)), fp=int(np.sum(~t & p)), fn=int(np.sum(t & ~p)),
        tn=int(np.sum(~t & ~p)),
    )


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def fbeta(c: Confusion, beta: float = 1.0) -> float:
    b2 = beta * beta
    return _div((1 + b2) * c.tp, (1 + b2) * c.tp + b2 * c.fn + c.fp)


def scores(c: Confusion) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity, F1 and F2 from counts."""
    return {
        "accuracy": _div(c.tp + c.tn, c.n),
        "precision": _div(c.tp, c.tp + c.fp),
        "recall": _div(c.tp, c.tp + c.fn),
        "specificity": _div(c.tn, c.tn + c.fp),
        "f1": fbeta(c, 1.0),
        "f2": fbeta(c, 2.0),
    }


def undefined(c: Confusion) -> list[str]:
    """Scores whose denominator is zero for these counts: reports show them as n/a, not 0."""
    out = []
    if c.tp + c.fp == 0:
        out.append("precision")
    if c.tp + c.fn == 0:
        out += ["recall", "sensitivity"]
    if c.tn + c.fp == 0:
        out.append("specificity")
    if c.tp + c.fp + c.fn == 0:
        out.append("f1")
    return out


def binary_report(y_true, prob, threshold: float = 0.5) -> dict:
    """Scores and confusion counts for probabilities ``prob`` at ``threshold``."""
    prob = np.asarray(prob, dtype=float)
    c = confusion(y_true, prob >= threshold)
    return {**scores(c), **asdict(c), "n": c.n, "threshold": float(threshold)}


def threshold_for_recall(y_true, prob, target: float) -> float:
    """Highest threshold whose recall on (y_true, prob) reaches ``target``."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=float)
    pos = np.sort(p[t])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive examples to set a recall target on")
    k = int(np.ceil(target * len(pos)))
    k = min(max(k, 1), len(pos))
    return float(pos[k - 1])


# ------------------------------------------------------------- ranking metrics, intervals

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def _ranked_counts(y_true, prob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) at each distinct threshold, highest threshold first."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=float)
    order = np.argsort(-p, kind="mergesort")
    p, t = p[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    tps = np.cumsum(t)[last].astype(float)
    return tps, (last + 1) - tps, p[last]


def roc_curve(y_true, prob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) from (0, 0); needs both classes."""
    tps, fps, thr = _ranked_counts(y_true, prob)
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("ROC needs both positive and negative examples")
    return np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1], np.r_[np.inf, thr]


def roc_auc(y_true, prob) -> float:
    """Area under the ROC curve (trapezoids; equals scikit-learn's ``roc_auc_score``)."""
    fpr, tpr, _ = roc_curve(y_true, prob)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def recall_at_fpr(y_true, prob, fpr: float) -> float:
    """The highest recall of any threshold whose false-positive rate is at most ``fpr`` (the
    ROC curve's operating points, no interpolation); needs both classes."""
    f, t, _ = roc_curve(y_true, prob)
    return float(t[f <= fpr + 1e-12].max())


def fpr_at_recall(y_true, prob, recall: float) -> float:
    """The lowest false-positive rate of any threshold whose recall is at least ``recall``;
    needs both classes."""
    f, t, _ = roc_curve(y_true, prob)
    return float(f[t >= recall - 1e-12].min())


def pr_curve(y_true, prob) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), highest threshold first; needs a positive example."""
    tps, fps, thr = _ranked_counts(y_true, prob)
    if tps[-1] == 0:
        raise ValueError("a precision-recall curve needs positive examples")
    return tps / (tps + fps), tps / tps[-1], thr


def average_precision(y_true, prob) -> float:
    """PR-AUC as scikit-learn's ``average_precision_score``: sum of (R_k - R_k-1) * P_k."""
    precision, recall, _ = pr_curve(y_true, prob)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``successes / n``; None when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_f1_interval(c: Confusion, *, resamples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of F1 over tiles (None for no tiles).

    Resampling n tiles with replacement only changes how many fall in each confusion cell,
    so each resample draws the four counts from a multinomial (n, cell / n): the same
    distribution as resampling tile indexes, in O(resamples) memory.
    """
    if c.n == 0:
        return None
    cells = np.array([c.tp, c.fp, c.fn, c.tn], dtype=float)
    draws = np.random.default_rng(seed).multinomial(c.n, cells / c.n, size=resamples)
    tp, fp, fn = draws[:, 0], draws[:, 1], draws[:, 2]
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(resamples), where=denom > 0)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(f1, [alpha, 1 - alpha])
    return float(lo), float(hi)
