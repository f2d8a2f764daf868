"""Size- or age-class scores of a multi-task model for ``slidewatch evaluate``.

The ``size`` block of ``metrics.json`` (``age`` for a model whose second task is the age,
:mod:`slidewatch.data.ages`; the block's ``task`` names it, and so do the predictions' columns
and the figure's name): :func:`size_report` (confusion
matrix with rows = true class, per-class precision/recall/F1, macro-F1, accuracy) over the
landslide tiles with a known size, plus the same scores of the majority baseline (always the
class most common among the *training* labels, stored in the model) for comparison, and of
always the most common class of the evaluated tiles themselves (``baseline_evaluated_majority``;
a reference that peeks at the answers, telling how much of a score the class mix alone gives).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slidewatch.data.sizes import IGNORE_INDEX

if TYPE_CHECKING:
    from slidewatch.data.inputs import ModelInputs

SIZE_FIGURE = "size_confusion_matrix.png"
TASKS = ("size", "age")  # the second task's names: keys of metrics.json, column prefixes


def task_name(meta) -> str:
    """``age`` or ``size``: what the model's second head predicts."""
    spec = meta.inputs.sizes
    return spec.task if spec is not None else "size"


def figure_name(task: str) -> str:
    return f"{task}_confusion_matrix.png"


def second_task(result: dict) -> tuple[str, dict] | None:
    """``(task, block)`` of a metrics.json that has a size or an age block, else None."""
    for task in TASKS:
        if result.get(task):
            return task, result[task]
    return None


def size_report(y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]) -> dict:
    """Confusion matrix (rows = truth), per-class precision/recall/F1 and macro-F1 over the
    classes present in the truth or the predictions; samples with truth -1 are skipped."""
    t, p = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if t.shape != p.shape:
        raise ValueError(f"size_report: y_true and y_pred differ in shape {t.shape}, {p.shape}")
    keep = t != IGNORE_INDEX
    t, p, k = t[keep], p[keep], len(names)
    if ((t < 0) | (t >= k) | (p < 0) | (p >= k)).any():
        raise ValueError(f"size_report: labels outside 0..{k - 1}")
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (t, p), 1)
    tp = np.diag(cm).astype(float)
    pred_n, true_n = cm.sum(0).astype(float), cm.sum(1).astype(float)
    prec = np.divide(tp, pred_n, out=np.zeros(k), where=pred_n > 0)
    rec = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    present = (true_n + pred_n) > 0
    return {"names": list(names), "n": int(keep.sum()), "confusion": cm.tolist(),
            "precision": prec.tolist(), "recall": rec.tolist(), "f1": f1.tolist(),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "accuracy": float(tp.sum() / max(1, len(t)))}


def size_truth(inputs: ModelInputs | None, samples: Sequence, meta) -> np.ndarray | None:
    """True size class of each sample (-1: none or unknown); None without a size task or,
    for a size column, without that column in the evaluation CSV."""
    if inputs is None or inputs.sizes is None:
        return None
    return inputs.size_labels(samples, meta.positive_index, required=False)


def size_block(meta, truth: np.ndarray | None, size_probs: np.ndarray | None) -> dict | None:
    """The ``size`` block of metrics.json (None for a model without a size head)."""
    spec = meta.inputs.sizes
    if spec is None or size_probs is None:
        return None
    sizes = spec.scheme
    names = list(spec.names)
    source, task = spec.source, spec.task
    if truth is None:
        return {"task": task, "names": names, "source": source, "n": 0,
                "note": f"no {task} labels: the evaluation CSV has no column "
                        f"'{sizes.get('column')}'"}
    pred = size_probs.argmax(1)
    block = {"task": task, **size_report(truth, pred, names), "source": source,
             "unit": sizes.get("unit"), "edges": sizes.get("edges")}
    if task == "age":
        block["column"] = sizes.get("column")
    counts = spec.train_counts or []
    if counts and sum(counts):
        block["baseline"] = _constant(truth, int(np.argmax(counts)), names,
                                      "always the most common class of the training labels")
    known = truth[truth != IGNORE_INDEX]
    if known.size:
        block["baseline_evaluated_majority"] = _constant(
            truth, int(np.bincount(known, minlength=len(names)).argmax()), names,
            "always the most common class of the evaluated tiles (known only afterwards)")
    if block["n"] == 0:
        block["note"] = f"no landslide tile with a known {task} in this data"
    return block


def _constant(truth: np.ndarray, k: int, names: list[str], rule: str) -> dict:
    """Scores of always predicting class ``k``."""
    report = size_report(truth, np.full_like(truth, k), names)
    return {"rule": rule, "class": names[k], "macro_f1": report["macro_f1"],
            "accuracy": report["accuracy"]}


def size_columns(meta, truth: np.ndarray | None, size_probs: np.ndarray | None,
                 i: int) -> list[str]:
    """``true_size``, ``predicted_size``, ``size_probability`` (``..._age...``) of sample
    ``i``."""
    names = meta.inputs.sizes.names
    k = int(size_probs[i].argmax())
    t = "" if truth is None or truth[i] == IGNORE_INDEX else names[int(truth[i])]
    return [t, names[k], f"{float(size_probs[i, k]):.6g}"]


def size_figure(out: Path, block: dict | None) -> str | None:
    """The size (age) confusion matrix as a PNG in ``out``; its file name, or None."""
    task = (block or {}).get("task", "size")
    if not block or not block.get("n"):
        (out / figure_name(task)).unlink(missing_ok=True)
        return None
    from slidewatch.evaluation.plots import plot_size_confusion

    plot_size_confusion(np.asarray(block["confusion"]), block["names"], out / figure_name(task),
                        block["macro_f1"], task)
    return figure_name(task)


def format_size(block: dict | None) -> str:
    """One line for the console."""
    if not block:
        return ""
    task = block.get("task", "size")
    if not block.get("n"):
        return f"{task}: {block.get('note', 'no labelled tiles')}"
    line = f"{task}: macro-F1 {block['macro_f1']:.3f}, accuracy {block['accuracy']:.3f} " \
           f"(n = {block['n']})"
    for key, whose in (("baseline", "training"), ("baseline_evaluated_majority", "evaluated")):
        base = block.get(key)
        if base:
            line += (f"; always '{base['class']}' ({whose} majority): "
                     f"macro-F1 {base['macro_f1']:.3f}")
    return line
