"""Figures written next to models and results (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from slidewatch.io_utils import atomic_path  # noqa: E402


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Accuracy (pixel IoU for a segmentation run) and loss per epoch, training against
    validation (the study's Figs. 4-5)."""
    epochs = [r["epoch"] for r in history]
    score = "iou" if history and "train_iou" in history[0] else "accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, (score, "loss")):
        ax.plot(epochs, [r.get(f"train_{key}") for r in history], "o-", label="training")
        if any(f"val_{key}" in r for r in history):
            ax.plot(epochs, [r.get(f"val_{key}") for r in history], "s-", label="validation")
        for r in history:
            if r["phase"] == 2 and r["phase_epoch"] == 1:
                ax.axvline(r["epoch"] - 0.5, color="grey", ls="--", lw=1)
                ax.text(r["epoch"] - 0.4, ax.get_ylim()[1], "fine-tuning", va="top", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(f"{key}: training vs validation")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
