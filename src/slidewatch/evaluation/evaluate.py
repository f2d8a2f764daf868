"""Scores of a trained model on labelled class-folder data: ``metrics.json``,
``predictions.csv`` and figures, overall and per region.

Confidence intervals (95%): Wilson score intervals for accuracy and recall; for F1 a
percentile bootstrap over tiles (1000 resamples, seed 0; see
:func:`slidewatch.metrics.bootstrap_f1_interval`). ROC-AUC and PR-AUC (average precision)
are null, with a reason, when a block holds only one class.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import DataLoader

from slidewatch.data.folders import Sample, load_datasets, tiles_table
from slidewatch.data.inputs import model_dataset
from slidewatch.data.tiling import is_scene_folder
from slidewatch.errors import ConfigError, DataError
from slidewatch.evaluation import metrics
from slidewatch.evaluation.calibration import reliability
from slidewatch.inference.ensemble import describe, is_onnx_path, load_models
from slidewatch.inference.forward import predict_outputs
from slidewatch.io_utils import atomic_dir, atomic_write_text, holding
from slidewatch.meta import (
    ModelMeta,
    SegmentationSpec,
    library_versions,
    now_iso,
    read_meta,
    write_meta,
)
from slidewatch.runtime import no_progress, resolve_device

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
SPLIT_FILE = "split.json"
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
SOURCE_MODEL, SOURCE_FLAG, SOURCE_TARGET = "model", "flag", "target_recall on validation"


def _outputs(model, meta: ModelMeta, samples: list[Sample], batch_size: int, device,
             progress: Callable, desc: str, inputs=None, source: Path | None = None,
             tta: bool = False) -> dict[str, np.ndarray]:
    """Positive-class probabilities (and size probabilities) of ``samples``; ``inputs``
    (:class:`~slidewatch.multimodal.inputs.ModelInputs`) for a multi-modal model."""
    ds = model_dataset(meta, samples, inputs=inputs)
    loader = DataLoader(ds, batch_size=batch_size)
    return predict_outputs(model, meta, progress(loader, desc=desc, total=len(loader)), device,
                           source=source, names=[s.path for s in samples], tta=tta)


def _check_options(threshold, target_recall, batch_size: int) -> None:
    if threshold is not None and target_recall is not None:
        raise ConfigError("--threshold and --target-recall: give one or the other, not both")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold: must be in (0, 1), got {threshold}")
    if target_recall is not None and not 0.0 < target_recall <= 1.0:
        raise ConfigError(f"--target-recall: must be in (0, 1], got {target_recall}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")


def _check_out(out: Path, overwrite: bool, inputs: list) -> None:
    """The output folder, before anything is read: new or empty, or (``overwrite``) replaced
    as a whole at the end; never one that holds an input."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    _check_holds(out, inputs)
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    if (out / METRICS_FILE).exists():
        raise ConfigError(f"--out {out}: already holds {METRICS_FILE}; choose another folder "
                          "or pass --overwrite")
    raise ConfigError(f"--out {out}: exists and is not empty; choose a new or empty folder, or "
                      "pass --overwrite to replace what it holds")


def _check_holds(out: Path, inputs: list) -> None:
    held = holding(out, inputs)
    if held is not None:
        raise ConfigError(f"--out {out}: holds {held}, an input of this evaluation; choose "
                          "another folder")


# ------------------------------------------------------------- threshold from validation


def _training_paths(meta: ModelMeta) -> list[Path]:
    """The training data paths recorded in the model's metadata, ``$VARS`` and ``~`` expanded."""
    raw = list(meta.extra.get("data", {}).get("paths") or [])
    raw += list(meta.extra.get("training", {}).get("data", {}).get("paths") or [])
    return [Path(os.path.expandvars(p)).expanduser() for p in raw]


def _training_roots(model_dir: Path, meta: ModelMeta, extra: list[Path]) -> dict[str, Path]:
    """Dataset roots by folder name: the training paths in the metadata (scene folders as
    the model's ``tiles/<name>``), the model's ``tiles/`` folders, then ``extra``."""
    found: dict[str, Path] = {}
    candidates = _training_paths(meta)
    tiles = model_dir / "tiles"
    candidates += sorted(tiles.iterdir()) if tiles.is_dir() else []
    for path in candidates + list(extra):
        if is_scene_folder(path):
            path = tiles / path.name
        if path.is_dir():
            found.setdefault(path.name, path.resolve())
    return found


def _validation_keys(model_dir: Path) -> tuple[Path, list[str]]:
    """The model's ``split.json`` and the keys of its validation part."""
    path = model_dir / SPLIT_FILE
    if not path.is_file():
        raise ConfigError(f"--target-recall: {path} not found; the model has no validation "
                          "split to set a threshold on")
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))["val"]
        keys = [str(k) for k in keys]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a split file ({exc})") from None
    if not keys:
        raise ConfigError(f"--target-recall: {path} has no validation images")
    return path, keys


def segment_validation_samples(model_dir: Path, meta: ModelMeta, extra_roots: list[Path]
                               ) -> list:
    """The images with masks of a segmentation model's validation split (keys
    ``<dataset or scene folder>/<class or images>/<file>``), found under its training data
    paths and ``extra_roots`` (scene folders, folders of them, class folders with masks/)."""
    from slidewatch.data.masks import as_split_samples, masked_samples

    path, keys = _validation_keys(model_dir)
    found: dict[str, object] = {}
    for root in _training_paths(meta) + list(extra_roots):
        if not root.is_dir():
            continue
        try:
            samples = masked_samples(root, meta.classes)
        except DataError:
            continue  # not a folder of images with masks
        for s, keyed in zip(samples, as_split_samples(samples)):  # keys as training wrote
            found.setdefault(keyed.key, s)
    missing = [k for k in keys if k not in found]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(keys)} validation images not found "
                        f"under the training data (first: {missing[0]}); give their folder "
                        "with --data")
    return [found[k] for k in keys]


def validation_samples(model_dir: Path, meta: ModelMeta, extra_roots: list[Path]
                       ) -> list[Sample]:
    """Samples of the validation part of the model's ``split.json`` (keys
    ``<root name>/<class>/<file>``), found under the training data roots; for a model that
    standardises, a tile listed in its root's ``tiles.csv`` carries its scene's statistics,
    as in training."""
    path, keys = _validation_keys(model_dir)
    roots = _training_roots(model_dir, meta, extra_roots)
    tables: dict[str, dict] = {}  # each root's tiles.csv: a tile's scene statistics
    samples = []
    for key in keys:
        root_name, _, rel = str(key).partition("/")
        cls = rel.split("/", 1)[0]
        if root_name not in roots or cls not in meta.classes:
            raise ConfigError(f"--target-recall: {path}: cannot find the data of {key} (training "
                              f"folders: {', '.join(sorted(roots)) or 'none found'})")
        file = roots[root_name] / rel
        if not file.is_file():
            raise DataError(f"{file}: validation image listed in {path} is missing")
        if root_name not in tables:  # read only for a model that standardises
            standardises = meta.standardize != "none"
            tables[root_name] = tiles_table(roots[root_name]) if standardises else {}
        row = tables[root_name].get(rel)
        samples.append(Sample(path=file, label=meta.classes.index(cls), group="", region="",
                              root=roots[root_name],
                              scene_stats=row["scene_stats"] if row else None))
    return samples


def threshold_for_target(model, meta: ModelMeta, model_dir: Path, target: float,
                         extra_roots: list[Path], batch_size: int, device,
                         progress: Callable, inputs=None) -> tuple[float, dict]:
    """Highest threshold whose recall on the validation split reaches ``target``."""
    samples = validation_samples(model_dir, meta, extra_roots)
    y = np.array([s.label == meta.positive_index for s in samples])
    if not y.any():
        raise ConfigError(f"--target-recall: {model_dir / SPLIT_FILE}: the validation split "
                          f"has no '{meta.positive_class}' images")
    prob = _outputs(model, meta, samples, batch_size, device, progress, "validation",
                    inputs, model_dir)["probability"]
    thr = float(np.clip(metrics.threshold_for_recall(y, prob, target), 1e-4, 0.9999))
    s = metrics.scores(metrics.confusion(y, prob >= thr))
    return thr, {"target_recall": target, "val_recall": s["recall"],
                 "val_precision": s["precision"], "val_n": int(len(y)),
                 "val_positives": int(y.sum())}


def store_threshold(model_dir: Path, threshold: float, source: dict) -> None:
    """Write ``threshold`` and its ``threshold_source`` into the model's metadata."""
    meta = read_meta(model_dir)
    meta.threshold = threshold
    meta.extra["threshold_source"] = source
    write_meta(model_dir, meta)


# ------------------------------------------------------------------------- scores


def score_block(y_true, prob, threshold: float, labels: list[str]) -> dict:
    """Counts, scores, AUCs and 95% intervals of one set of tiles (``labels``: class names)."""
    y = np.asarray(y_true).astype(bool)
    prob = np.asarray(prob, dtype=float)
    c = metrics.confusion(y, prob >= threshold)
    s = metrics.scores(c)
    both = bool(y.any() and not y.all())
    note = None if both else "only one class present: ROC-AUC and PR-AUC are undefined"
    block = {
        "n": c.n,
        "counts": dict(sorted(Counter(labels).items())),
        "accuracy": s["accuracy"], "precision": s["precision"], "recall": s["recall"],
        "sensitivity": s["recall"], "specificity": s["specificity"], "f1": s["f1"],
        "roc_auc": metrics.roc_auc(y, prob) if both else None,
        "pr_auc": metrics.average_precision(y, prob) if both else None,
        "auc_note": note,
        "confusion": asdict(c),
        "ci95": {
            "accuracy": metrics.wilson_interval(c.tp + c.tn, c.n),
            "recall": metrics.wilson_interval(c.tp, c.tp + c.fn),
            "f1": metrics.bootstrap_f1_interval(c, resamples=BOOTSTRAP_RESAMPLES,
                                                seed=BOOTSTRAP_SEED),
        },
    }
    return mark_undefined(block, c)


def mark_undefined(block: dict, c: metrics.Confusion) -> dict:
    """Scores with a zero denominator become null (n/a) and are listed under "undefined"."""
    missing = metrics.undefined(c)
    for key in missing:
        block[key] = None
    block["undefined"] = missing
    return block


def write_predictions(path: Path, samples: list[Sample], prob: np.ndarray, threshold: float,
                      meta: ModelMeta, size_truth=None, size_probs=None) -> None:
    """One row per tile: path, region, source image, true and predicted label, outcome; for a
    model with a size head also the true and predicted size class."""
    from slidewatch.evaluation.sizes import size_columns, task_name

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    task = task_name(meta)
    sizes = ([f"true_{task}", f"predicted_{task}", f"{task}_probability"]
             if size_probs is not None else [])
    w.writerow(["path", "region", "source_image", "true_label", "probability",
                "predicted_label", "outcome", *sizes])
    other = meta.negative_label
    for i, (s, p) in enumerate(zip(samples, prob)):
        true_pos, pred_pos = s.label == meta.positive_index, bool(p >= threshold)
        outcome = ("T" if true_pos == pred_pos else "F") + ("P" if pred_pos else "N")
        extra = size_columns(meta, size_truth, size_probs, i) if sizes else []
        w.writerow([str(s.path), s.region, s.group, meta.classes[s.label], f"{float(p):.9g}",
                    meta.positive_class if pred_pos else other, outcome, *extra])
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------- evaluate


def _threshold(model, meta, model_dir, roots, threshold, target_recall, batch_size, dev,
               progress, inputs=None) -> tuple[float, str, dict | None]:
    if threshold is not None:
        return float(threshold), SOURCE_FLAG, None
    if target_recall is not None:
        thr, info = threshold_for_target(model, meta, model_dir, target_recall, roots,
                                         batch_size, dev, progress, inputs)
        return thr, SOURCE_TARGET, info
    return float(meta.threshold), SOURCE_MODEL, meta.extra.get("threshold_source")


def evaluate(model_dir: str | Path, roots: list[str | Path], out: str | Path, *,
             threshold: float | None = None, target_recall: float | None = None,
             batch_size: int = 64, device: str = "auto", overwrite: bool = False,
             progress: Callable = no_progress, tabular: str | Path | None = None,
             aux: str | Path | None = None, missing: str | None = None,
             unknown: str | None = None, tta: bool = False,
             ensemble: Sequence[str | Path] = (), runtime: str | None = None) -> dict:
    """Evaluate the model of ``model_dir`` on the class-folder datasets ``roots``; write
    ``metrics.json`` (returned), ``predictions.csv`` and the figures into ``out``.

    ``out`` is built under a temporary name and renamed at the end (all files or none); it
    must be new or empty unless ``overwrite``, which replaces it as a whole, and never holds
    an input. ``target_recall`` sets the threshold on the model's validation split; it is
    stored in the model (``slidewatch.json``) with the evaluation. A multi-modal model takes
    the rows of these images from ``tabular`` (CSV) and their terrain from ``aux`` (DEM),
    encoded with the statistics stored in the model; a size head adds the ``size`` block.
    A segmentation model is scored on images with masks (:mod:`slidewatch.evaluation.segment`):
    pixel and object scores beside the tile scores. ``tta``: average over flips and rotations.
    ``ensemble``: more model folders whose probabilities are averaged with the model's
    (:mod:`slidewatch.inference.ensemble`; the threshold is the mean of theirs unless given).
    ``model_dir`` may be an ONNX file (``slidewatch export``); ``runtime`` ``torch`` or ``onnx``
    (default: torch for a folder, onnx for an ONNX file).
    """
    from slidewatch.data.inputs import model_inputs
    from slidewatch.evaluation import sizes as mm

    _check_options(threshold, target_recall, batch_size)
    model_dir, out, roots = Path(model_dir), Path(out), [Path(r) for r in roots]
    members = [Path(d) for d in ensemble]
    if members and target_recall is not None:
        raise ConfigError("--target-recall: stores a threshold in one model folder; with "
                          "--ensemble give --threshold (or set each member's threshold first)")
    if target_recall is not None and is_onnx_path(model_dir):
        raise ConfigError(f"--target-recall: stores a threshold in a model folder, and "
                          f"{model_dir} is an ONNX file; give --threshold, or set it on the "
                          "folder and export again")
    _check_out(out, overwrite, [model_dir, *members, *roots, tabular, aux])
    dev = resolve_device(device)
    model, meta = load_models([model_dir, *members], dev, runtime)
    source = model_dir if not members else describe([model_dir, *members])
    if meta.task == "segment":
        return _evaluate_segment(model, meta, model_dir, roots, out, threshold, target_recall,
                                 batch_size, dev, overwrite, progress, tta, tabular or aux,
                                 source)
    inputs = model_inputs(meta, tabular, aux, missing, unknown)
    samples = load_datasets(roots, tuple(meta.classes))
    if any(holding(r, [out]) for r in roots):
        _check_holds(out, [s.path for s in samples])  # --out inside a dataset: not a class folder
    truth = mm.size_truth(inputs, samples, meta)
    thr, threshold_source, source_info = _threshold(model, meta, model_dir, roots, threshold,
                                                    target_recall, batch_size, dev, progress,
                                                    inputs)
    outputs = _outputs(model, meta, samples, batch_size, dev, progress, "evaluate", inputs,
                       source, tta)
    prob, size_probs = outputs["probability"], outputs.get("size_probs")
    result = _report(model_dir, meta, roots, samples, prob, thr, threshold_source, source_info)
    size = mm.size_block(meta, truth, size_probs)
    if size is not None:
        result[size["task"]] = size
    with atomic_dir(out, overwrite=overwrite) as tmp:  # all files or none, as train does
        write_predictions(tmp / PREDICTIONS_FILE, samples, prob, thr, meta, truth, size_probs)
        result["plots"] = _plots(tmp, samples, prob, thr, meta)
        if size is not None:
            result["plots"][f"{size['task']}_confusion_matrix"] = mm.size_figure(tmp, size)
        atomic_write_text(tmp / METRICS_FILE, json.dumps(result, indent=2) + "\n")
        if target_recall is not None:  # the model changes only with a complete evaluation
            store_threshold(model_dir, thr, source_info)
    return result


def _evaluate_segment(model, meta: ModelMeta, model_dir: Path, roots: list[Path], out: Path,
                      threshold, target_recall, batch_size: int, dev, overwrite: bool,
                      progress: Callable, tta: bool, tabular, name: Path | str) -> dict:
    """Pixel, object and tile scores of a segmentation model (see
    :mod:`slidewatch.evaluation.segment`); the same folder contract as a classifier's."""
    from slidewatch.evaluation import segment as sg

    if tabular:
        raise ConfigError("--tabular/--aux: a segmentation model takes image bands only")
    detail = None
    if target_recall is not None:  # area and tile threshold on the validation split
        meta.segmentation, detail = segment_recall_rule(model, meta, model_dir, roots,
                                                        target_recall, batch_size, dev,
                                                        progress)
    thr = meta.tile_threshold(threshold)  # tiles; pixels at the model's threshold (or the flag)
    px_thr = float(meta.threshold if threshold is None else threshold)
    source = (SOURCE_FLAG if threshold is not None
              else SOURCE_TARGET if target_recall is not None else SOURCE_MODEL)
    items, tiles = sg.score_images(model, meta, sg.samples_of(roots, meta),
                                   batch_size=batch_size, device=dev, progress=progress,
                                   tta=tta, source=name)
    kept, y, prob = sg.scored_tiles(tiles)
    names = [meta.positive_class if t["label"] == 1 else meta.negative_label for t in kept]
    regions: dict[str, list[int]] = {}
    for i, t in enumerate(kept):
        regions.setdefault(t["region"], []).append(i)
    result = {
        "format": "slidewatch-evaluation", "format_version": 1, "task": "segment",
        "model_dir": str(model_dir), "architecture": meta.architecture,
        "classes": list(meta.classes), "positive_class": meta.positive_class,
        "data": [str(r) for r in roots], "threshold": thr, "threshold_source": source,
        "threshold_detail": detail, "tta": tta, **_members(meta),
        "tile_rule": {**meta.segmentation.to_json(), "scene_window_rule":
                      f"the windows of the reference tiling (stride = input size); landslide "
                      f"when its mask share >= {sg.TILE_MIN_SHARE:g}, landslide-free without "
                      "landslide pixels, left out in between"},
        "confidence_intervals": {
            "level": 0.95, "accuracy": "Wilson score", "recall": "Wilson score",
            "f1": f"percentile bootstrap over tiles, {BOOTSTRAP_RESAMPLES} resamples, "
                  f"seed {BOOTSTRAP_SEED}",
            "pixels": "percentile bootstrap over images, 1000 resamples, seed 0"},
        "overall": score_block(y, prob, thr, names),
        "regions": {r: score_block(y[idx], prob[idx], thr, [names[i] for i in idx])
                    for r, idx in sorted(regions.items())},
        "pixel_threshold": px_thr,
        "pixels": sg.segment_report(items, px_thr),
        "created": now_iso(), "versions": library_versions(),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        sg.write_rows(tmp / PREDICTIONS_FILE, tiles, thr, meta)
        from slidewatch.evaluation.plots import write_plots

        plots = write_plots(tmp, y, prob, thr, meta.positive_class, meta.negative_label)
        for name in ("roc", "pr"):
            if plots[name] is None:
                (tmp / f"{name}.png").unlink(missing_ok=True)
        plots["overlays"] = sg.write_overlays(tmp / "overlays", items, roots, meta, px_thr)
        result["plots"] = plots
        atomic_write_text(tmp / METRICS_FILE, json.dumps(result, indent=2) + "\n")
        if target_recall is not None:  # the model changes only with a complete evaluation
            stored = read_meta(model_dir)
            stored.segmentation = meta.segmentation
            stored.extra["threshold_source"] = detail
            write_meta(model_dir, stored)
    return result


def segment_recall_rule(model, meta: ModelMeta, model_dir: Path, roots: list[Path],
                        target: float, batch_size: int, dev, progress: Callable
                        ) -> tuple[SegmentationSpec, dict]:
    """A segmentation model's tile rule for ``target`` tile recall on its validation split
    scored again (:func:`slidewatch.evaluation.tile_rule.rule_for_recall`): the area among
    those up to the cap (the model's own when it was configured) and the tile threshold."""
    from slidewatch.evaluation import segment as sg
    from slidewatch.evaluation.tile_rule import (
        areas_to_try,
        max_area,
        recall_source,
        rule_for_recall,
    )

    samples = segment_validation_samples(model_dir, meta, roots)
    spec = meta.segmentation
    fixed = spec.min_area_source == "config"
    areas = areas_to_try(meta.input_size, spec.min_area_pixels if fixed else None)
    _, tiles = sg.score_images(model, meta, samples, batch_size=batch_size, device=dev,
                               progress=progress, areas=areas, source=model_dir)
    labels = np.array([t["label"] for t in tiles], np.int8)
    scores = {k: np.array([t["scores_by_area"][k] for t in tiles], float) for k in areas}
    k, thr, table = rule_for_recall(scores, labels, target, max_area(meta.input_size))
    detail = {**recall_source(target, k, thr, table), "scored_by": "evaluate",
              "threshold": meta.threshold, "val_tiles": int((labels >= 0).sum()),
              "val_positives": int((labels == 1).sum())}
    return SegmentationSpec(k, "config" if fixed else "target_recall", thr), detail


def format_pixels(result: dict) -> str:
    """Pixel and object scores of a segmentation evaluation, overall and per region."""
    px = result["pixels"]

    def num(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"{'pixels':16} {'images':>6} {'IoU':>6} {'F1':>6} {'precision':>9} "
             f"{'recall':>6} {'IoU 95% CI':>11} {'objects found':>13}"]
    for name, b in [("overall", px["overall"]), *px["regions"].items()]:
        ci = b["ci95"]["iou"]
        o = b.get("objects", {})
        found = f"{o.get('found', 0)}/{o.get('true', 0)}" if o else "-"
        lines.append(f"{name[:16]:16} {b['n_images']:>6} {num(b['iou']):>6} {num(b['f1']):>6} "
                     f"{num(b['precision']):>9} {num(b['recall']):>6} "
                     f"{(f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else 'n/a'):>11} {found:>13}")
    lines.append(f"objects: found when a predicted object overlaps with "
                 f"{px['overall']['objects']['match_rule']}")
    return "\n".join(lines)


def _plots(out: Path, samples, prob, thr: float, meta: ModelMeta) -> dict:
    from slidewatch.evaluation.plots import write_plots

    y = np.array([s.label == meta.positive_index for s in samples])
    plots = write_plots(out, y, prob, thr, meta.positive_class, meta.negative_label)
    for name in ("roc", "pr"):
        if plots[name] is None:
            (out / f"{name}.png").unlink(missing_ok=True)  # stale figure of an earlier run
    return plots


def _members(meta: ModelMeta) -> dict:
    """``{"ensemble": [member folders]}`` for an ensemble's metrics, else nothing."""
    return {"ensemble": list(meta.extra["ensemble"])} if "ensemble" in meta.extra else {}


def _report(model_dir, meta, roots, samples, prob, thr, source, source_info) -> dict:
    y = np.array([s.label == meta.positive_index for s in samples])
    labels = [meta.classes[s.label] for s in samples]
    regions: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        regions.setdefault(s.region, []).append(i)
    return {
        "format": "slidewatch-evaluation", "format_version": 1,
        "model_dir": str(model_dir), "architecture": meta.architecture,
        "classes": list(meta.classes), "positive_class": meta.positive_class,
        "data": [str(r) for r in roots],
        "threshold": thr, "threshold_source": source, "threshold_detail": source_info,
        **_members(meta),
        "confidence_intervals": {
            "level": 0.95, "accuracy": "Wilson score", "recall": "Wilson score",
            "f1": f"percentile bootstrap over tiles, {BOOTSTRAP_RESAMPLES} resamples, "
                  f"seed {BOOTSTRAP_SEED}"},
        "overall": score_block(y, prob, thr, labels),
        "calibration": reliability(y, prob),
        "regions": {r: score_block(y[idx], prob[idx], thr, [labels[i] for i in idx])
                    for r, idx in sorted(regions.items())},
        "created": now_iso(), "versions": library_versions(),
    }


def format_table(result: dict) -> str:
    """Overall and per-region n, precision, recall, specificity and F1 with its 95% CI."""
    head = f"{'':16} {'n':>6} {'precision':>9} {'recall':>7} {'specif.':>7}  {'F1 [95% CI]':<20}"
    lines = [f"threshold {result['threshold']:.4g} ({result['threshold_source']})", head]
    rows = [("overall", result["overall"])] + list(result["regions"].items())
    def num(value: float, defined: bool) -> str:
        return f"{value:.3f}" if defined else "n/a"

    for name, b in rows:
        c = b["confusion"]
        pos, neg, flagged = c["tp"] + c["fn"], c["tn"] + c["fp"], c["tp"] + c["fp"]
        ci = b["ci95"]["f1"]
        f1 = f"{b['f1']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") if pos else "n/a"
        lines.append(f"{name[:16]:16} {b['n']:>6} {num(b['precision'], flagged > 0):>9} "
                     f"{num(b['recall'], pos > 0):>7} {num(b['specificity'], neg > 0):>7}  "
                     f"{f1:<20}")
    lines.append("n/a: undefined (no landslide tiles, no landslide-free tiles, or none flagged)")
    return "\n".join(lines)
