"""Calibration of probabilities (pure functions): temperature scaling fitted on validation
logits, and the reliability of probabilities (expected calibration error, Brier score and the
bins of a reliability diagram)."""

from __future__ import annotations

import math

import numpy as np

TEMPERATURE_RANGE = (0.05, 20.0)


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``logits / t``: sigmoid for 1-d
    logits (labels 0/1), softmax over the last axis otherwise (labels = class indexes)."""
    z = logits / t
    if z.ndim == 1:
        y = labels.astype(bool)
        # -log sigmoid(z) = softplus(-z), -log(1 - sigmoid(z)) = softplus(z)
        return float(np.mean(np.where(y, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))))
    zmax = z.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
    return float(np.mean(logsum - z[np.arange(len(z)), labels.astype(int)]))


def fit_temperature(logits, labels) -> tuple[float, dict]:
    """The temperature T (from 0.05 to 20) minimising the validation NLL of ``logits / T``
    (golden-section search on log T, deterministic). Returns T and the NLL before and after."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if len(z) == 0:
        raise ValueError("no validation outputs to fit a temperature on")
    lo, hi = (math.log(v) for v in TEMPERATURE_RANGE)
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(z, y, math.exp(c)), _nll(z, y, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(z, y, math.exp(d))
    t = math.exp((a + b) / 2)
    before, after = _nll(z, y, 1.0), _nll(z, y, t)
    if before <= after:  # never worse than no scaling
        t, after = 1.0, before
    return t, {"nll_before": before, "nll_after": after}


def reliability(y_true, prob, bins: int = 10) -> dict:
    """Reliability of landslide probabilities: ``bins`` equal-width bins of the probability,
    each with its count, mean probability and observed landslide frequency; the expected
    calibration error (ECE: bin-count-weighted mean |frequency - mean probability|) and the
    Brier score (mean squared error of the probability)."""
    y = np.asarray(y_true).astype(float)
    p = np.clip(np.asarray(prob, dtype=float), 0.0, 1.0)
    if len(y) == 0:
        return {"bins": [], "ece": None, "brier": None, "n": 0}
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = index == b
        n = int(sel.sum())
        row = {"low": b / bins, "high": (b + 1) / bins, "n": n,
               "mean_probability": float(p[sel].mean()) if n else None,
               "frequency": float(y[sel].mean()) if n else None}
        if n:
            ece += n / len(y) * abs(row["frequency"] - row["mean_probability"])
        rows.append(row)
    return {"bins": rows, "ece": float(ece), "brier": float(np.mean((p - y) ** 2)),
            "n": int(len(y))}
