"""Evaluation figures: confusion matrix, ROC and precision-recall curves, reliability diagram
(Agg, atomic PNGs)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from slidewatch.evaluation import metrics  # noqa: E402
from slidewatch.io_utils import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def plot_confusion(c: metrics.Confusion, positive: str, negative: str, path: str | Path,
                   title: str = "") -> None:
    """2x2 counts: rows = true class, columns = predicted class, positive first."""
    counts = np.array([[c.tp, c.fn], [c.fp, c.tn]])
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    names = [positive, negative]
    cells = [["TP", "FN"], ["FP", "TN"]]
    for i in range(2):
        for j in range(2):
            dark = counts[i, j] > counts.max() / 2
            ax.text(j, i, f"{cells[i][j]}\n{counts[i, j]}", ha="center", va="center",
                    color="white" if dark else "black", fontsize=12)
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion matrix (n = {c.n})")
    _save(fig, Path(path))


def _operating_point(ax, x: float, y: float, threshold: float) -> None:
    ax.plot([x], [y], "o", color="tab:red", label=f"threshold {threshold:.3g}")


def _finish_curve(fig, ax, xlabel: str, ylabel: str, title: str, legend: str,
                  path: str | Path) -> None:
    """Unit axes, labels, grid and legend shared by the ROC and PR figures; then save."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)
    _save(fig, Path(path))


def plot_roc(y_true, prob, threshold: float, path: str | Path) -> None:
    """ROC curve with its AUC and the operating point at ``threshold``."""
    fpr, tpr, _ = metrics.roc_curve(y_true, prob)
    c = metrics.confusion(y_true, np.asarray(prob) >= threshold)
    s = metrics.scores(c)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(fpr, tpr, "-", label=f"ROC (AUC = {metrics.roc_auc(y_true, prob):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    _operating_point(ax, 1 - s["specificity"], s["recall"], threshold)
    _finish_curve(fig, ax, "false positive rate (1 - specificity)", "true positive rate (recall)",
                  "ROC", "lower right", path)


def plot_pr(y_true, prob, threshold: float, path: str | Path) -> None:
    """Precision-recall curve with average precision, prevalence and the operating point."""
    precision, recall, _ = metrics.pr_curve(y_true, prob)
    c = metrics.confusion(y_true, np.asarray(prob) >= threshold)
    s = metrics.scores(c)
    prevalence = float(np.mean(np.asarray(y_true).astype(bool)))
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ap = metrics.average_precision(y_true, prob)
    ax.step(np.r_[0.0, recall], np.r_[1.0, precision], where="pre", label=f"PR (AP = {ap:.3f})")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.2f}")
    _operating_point(ax, s["recall"], s["precision"], threshold)
    _finish_curve(fig, ax, "recall", "precision", "precision-recall", "lower left", path)


def write_plots(out: str | Path, y_true, prob, threshold: float, positive: str,
                negative: str) -> dict:
    """All four figures into ``out``; ROC and PR skipped (with a note) when a class is absent.

    Returns ``{"confusion_matrix": name, "roc": name | None, "pr": name | None,
    "reliability": name, "note": ...}``.
    """
    from slidewatch.evaluation.calibration import reliability

    out = Path(out)
    y = np.asarray(y_true).astype(bool)
    prob = np.asarray(prob, dtype=float)
    plot_confusion(metrics.confusion(y, prob >= threshold), positive, negative,
                   out / "confusion_matrix.png")
    plot_reliability(reliability(y, prob), out / "reliability.png",
                     f"reliability of P({positive})")
    written = {"confusion_matrix": "confusion_matrix.png", "roc": None, "pr": None,
               "reliability": "reliability.png", "note": None}
    if y.all() or not y.any():
        absent = negative if y.all() else positive
        written["note"] = f"roc.png and pr.png not written: no '{absent}' tiles"
        return written
    plot_roc(y, prob, threshold, out / "roc.png")
    plot_pr(y, prob, threshold, out / "pr.png")
    written.update(roc="roc.png", pr="pr.png")
    return written


def plot_size_confusion(counts: np.ndarray, names: list[str], path: str | Path,
                        macro_f1: float | None = None, task: str = "size") -> None:
    """KxK size- (or age-) class counts: rows = true class, columns = predicted class."""
    counts = np.asarray(counts)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.4, 1.1 * k + 2.0))
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for i in range(k):
        for j in range(k):
            dark = counts[i, j] > counts.max() / 2
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if dark else "black", fontsize=11)
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel(f"predicted {task}")
    ax.set_ylabel(f"true {task}")
    score = "" if macro_f1 is None else f", macro-F1 {macro_f1:.3f}"
    ax.set_title(f"{task} classes (n = {int(counts.sum())}{score})")
    _save(fig, Path(path))


def plot_reliability(rel: dict, path: str | Path, title: str = "reliability") -> None:
    """Reliability diagram of :func:`~slidewatch.evaluation.calibration.reliability`: observed
    landslide frequency against mean probability per bin (marker area ~ count), the diagonal
    of perfect calibration, ECE and Brier score in the legend."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    bins = [b for b in rel["bins"] if b["n"]]
    if bins:
        n = np.array([b["n"] for b in bins], dtype=float)
        ax.plot([b["mean_probability"] for b in bins], [b["frequency"] for b in bins],
                color="tab:blue", lw=1)
        ax.scatter([b["mean_probability"] for b in bins], [b["frequency"] for b in bins],
                   s=20 + 180 * n / n.max(), color="tab:blue", zorder=3,
                   label=f"ECE {rel['ece']:.3f}, Brier {rel['brier']:.3f} (n {rel['n']})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed landslide frequency")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, Path(path))
