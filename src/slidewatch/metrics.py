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
