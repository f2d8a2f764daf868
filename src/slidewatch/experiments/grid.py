"""``slidewatch experiment``: a grid of training runs, each evaluated on test data, as a table.

An experiment file has four top-level keys::

    base: {...}            # a full training config (as for ``slidewatch train --config``)
    grid:                  # dotted config key -> list of values; runs = cartesian product
      model.name: [efficientnet_lite0, baseline_cnn]
      phase2.unfreeze_layers: [0, 5, 10]
      seed: [0, 1]
    test:                  # a list of folders, or {data: [...], regions: [...]}
      data: [${SLIDEWATCH_DATA}/regions/bijie]   # class folders, or scene folders (tiled once)
      regions: [bijie]     # report these regions' tiles (pooled); none: all test tiles
    out: runs/study        # default output folder (``--out`` wins)

A grid has at most :data:`MAX_RUNS` runs (counted before anything is expanded). The test set is
checked before the first run trains: its folders must hold test images of the runs' classes and
every region in ``test.regions`` must be among their regions.

Each run trains into ``<out>/runs/<name>/model`` and is evaluated into ``.../eval``; a run with
both ``slidewatch.json`` and ``metrics.json`` is skipped, so an interrupted experiment resumes.
A run that fails with a ``SlidewatchError`` is recorded as failed and the others go on. After
every run ``results.csv`` and ``results.md`` (the study's Table IV/V columns) are rewritten, and
``metrics_vs_unfrozen.png`` (Figs. 6-7) when the grid varies the number of unfrozen layers.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from slidewatch.config.train import from_dict, load_yaml, merge
from slidewatch.errors import ConfigError, SlidewatchError
from slidewatch.evaluation import metrics
from slidewatch.evaluation.evaluate import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    METRICS_FILE,
    mark_undefined,
)
from slidewatch.io_utils import atomic_write_text, expand_path
from slidewatch.meta import META_FILE
from slidewatch.runtime import no_progress

TOP_KEYS = ("base", "grid", "test", "out", "search")  # "search" is read by slidewatch.search
TEST_KEYS = ("data", "regions", "tile", "stride", "min_landslide")
UNFREEZE_KEYS = ("phase2.unfreeze_layers", "phase2.unfreeze_blocks")
RUN_FILE = "run.json"
MAX_RUNS = 1000  # runs of one grid; a larger grid is refused before it is expanded
METRIC_COLUMNS = ["train_accuracy", "val_accuracy", "test_accuracy", "test_precision",
                  "test_recall", "test_specificity", "test_f1", "test_f1_ci_low",
                  "test_f1_ci_high", "seconds"]


@dataclass
class Experiment:
    """A parsed experiment file: the base config, the grid axes and the test set."""

    base: dict
    grid: list[tuple[str, list]]
    test_data: list[str] = field(default_factory=list)
    test_regions: list[str] = field(default_factory=list)
    test_tiling: dict = field(default_factory=dict)
    out: str | None = None
    source: str | None = None  # the experiment file, named in errors found when it runs


@dataclass
class Run:
    name: str
    values: dict
    config: Any  # TrainConfig


# ------------------------------------------------------------------------- loading


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        child = node.get(p)
        node[p] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = {**node[leaf], **copy.deepcopy(value)}  # a mapping sets several keys
    else:
        node[leaf] = copy.deepcopy(value)


def _parse_grid(grid: Any) -> list[tuple[str, list]]:
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise ConfigError("grid: expected a mapping of dotted config keys to lists of values")
    axes = []
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"grid: keys must be dotted config keys, got {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values")
        axes.append((key, values))
    count = math.prod(len(v) for _, v in axes)
    if count > MAX_RUNS:
        sizes = " x ".join(str(len(v)) for _, v in axes)
        raise ConfigError(f"grid: {count} runs ({sizes} values); at most {MAX_RUNS} runs in "
                          "one experiment (split it into several files)")
    return axes


def _parse_test(test: Any) -> dict:
    if test is None:
        return {"data": [], "regions": []}
    if isinstance(test, list):
        test = {"data": test}
    if not isinstance(test, dict):
        raise ConfigError("test: expected a list of folders or a mapping with data and regions")
    unknown = sorted(set(test) - set(TEST_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key 'test.{unknown[0]}'; known keys here: "
                          f"{', '.join(TEST_KEYS)}")
    for key in ("data", "regions"):
        value = test.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"test.{key}: expected a list of strings")
    if test.get("regions") and not test.get("data"):
        raise ConfigError("test.regions: needs test.data")
    return test


def parse_experiment(data: dict) -> Experiment:
    """Validate an experiment mapping (as read from YAML); every run's config is checked."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown experiment key '{unknown[0]}'; known keys: "
                          f"{', '.join(TOP_KEYS)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError("base: expected a training config mapping")
    test = _parse_test(data.get("test"))
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise ConfigError(f"out: expected a folder name, got {out!r}")
    tiling = {k: test[k] for k in ("tile", "stride", "min_landslide") if k in test}
    exp = Experiment(base, _parse_grid(data.get("grid")), list(test.get("data") or []),
                     list(test.get("regions") or []), tiling, out)
    expand(exp)  # validates every combination before anything runs
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file; errors name the file."""
    data = load_yaml(path)
    try:
        exp = parse_experiment(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    exp.source = str(path)
    return exp


# ------------------------------------------------------------------------- runs


def _safe(value: Any) -> str:
    if isinstance(value, dict):
        return "+".join(_safe(v) for v in value.values()) or "none"
    if isinstance(value, (list, tuple)):
        return "+".join(_safe(v) for v in value) or "none"
    if isinstance(value, str) and ("/" in value or os.sep in value):
        value = Path(value.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))[:60] or "_"


def run_name(values: dict) -> str:
    """A folder name from a run's grid values (last key part, safe characters)."""
    parts = [f"{key.split('.')[-1]}-{_safe(v)}" for key, v in values.items()]
    return "__".join(parts) or "run"


def expand(exp: Experiment) -> list[Run]:
    """The cartesian product of the grid in a stable order (first axis slowest)."""
    keys = [k for k, _ in exp.grid]
    runs, seen = [], set()
    for combo in itertools.product(*(v for _, v in exp.grid)):
        values = dict(zip(keys, combo))
        tree = copy.deepcopy(exp.base)
        for key, value in values.items():
            set_dotted(tree, key, value)
        try:
            cfg = from_dict(merge({}, tree))
        except ConfigError as exc:
            raise ConfigError(f"run {values}: {exc}") from None
        name = run_name(values)
        if name in seen:
            name = f"{name}__{len(runs)}"
        seen.add(name)
        runs.append(Run(name, values, cfg))
    return runs


def check_test_set(exp: Experiment, runs: list[Run]) -> None:
    """Before any run trains: the test folders hold test images of every run's classes (the
    rule ``evaluate`` applies), and each of ``test.regions`` is a region of them (a scene
    folder's region is its name). Reads folder listings only; writes nothing."""
    from slidewatch.data.folders import load_datasets, scan_class_folders
    from slidewatch.data.tiling import is_scene_folder

    where = f"{exp.source}: " if exp.source else ""
    regions: set[str] = set()
    folders: list[Path] = []
    for raw in exp.test_data:
        try:
            path = expand_path(raw, "test.data")
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
        if is_scene_folder(path):
            regions.add(path.resolve().name)
        elif not path.is_dir():
            raise ConfigError(f"{where}test.data: {raw}: no such folder")
        else:
            folders.append(path)
    for classes in dict.fromkeys(tuple(r.config.data.classes) for r in runs):
        try:
            if len(folders) == len(exp.test_data):  # class folders only: evaluate's own check
                samples = load_datasets(folders, classes) if folders else []
            else:  # beside scene folders (tiled later), a class may come from their tiles
                samples = [s for f in folders
                           for s in scan_class_folders(f, classes, allow_empty=True)]
        except SlidewatchError as exc:
            raise type(exc)(f"{where}test.data: {exc}") from None
        regions.update(sample.region for sample in samples)
    missing = [r for r in exp.test_regions if r not in regions]
    if missing:
        raise ConfigError(f"{where}test.regions: {missing[0]!r} is not a region of the test "
                          f"data (regions: {', '.join(sorted(regions)) or 'none'})")


def prepare_test_data(exp: Experiment, out: Path, log: Callable) -> list[Path]:
    """Test roots: ``$VARS`` expanded; scene folders tiled once into ``<out>/test-tiles``."""
    from slidewatch.data.tiling import is_scene_folder, tile_scenes

    roots = []
    classes = tuple(exp.base.get("data", {}).get("classes") or ("landslide", "non_landslide"))
    for raw in exp.test_data:
        path = expand_path(raw, "test.data")
        if is_scene_folder(path):
            tiles = out / "test-tiles" / path.name
            if not (tiles / "tiles.csv").is_file():
                opts = {"tile": 224, "stride": 224, "min_landslide": 0.05, **exp.test_tiling}
                summary = tile_scenes([path], tiles, classes=classes, **opts)
                log(f"tiled test scenes {path} -> {tiles}: {summary.total} tiles")
            path = tiles
        elif not path.is_dir():
            raise ConfigError(f"test.data: {raw}: no such folder")
        roots.append(path)
    return roots


def share_train_tiles(runs: list[Run], out: Path, log: Callable) -> None:
    """Scene folders in the runs' ``data.paths`` are tiled once per tiling setting into
    ``<out>/train-tiles`` and every run reads those tiles (not a copy per run)."""
    from slidewatch.data.tiling import is_scene_folder, tile_scenes

    for run in runs:
        d = run.config.data
        paths = []
        for raw in d.paths:
            path = Path(os.path.expandvars(raw)).expanduser()
            if not is_scene_folder(path):
                paths.append(raw)  # class folders (or a missing path: training reports it)
                continue
            key = f"{path.name}-t{d.tile}-s{d.stride}-m{d.min_landslide:g}"
            tiles = out / "train-tiles" / (key if list(d.classes) == ["landslide", "non_landslide"]
                                           else f"{key}-{'+'.join(d.classes)}")
            if not (tiles / "tiles.csv").is_file():
                summary = tile_scenes([path], tiles, tile=d.tile, stride=d.stride,
                                      min_landslide=d.min_landslide, classes=tuple(d.classes),
                                      overwrite=True)
                log(f"tiled training scenes {path} -> {tiles}: {summary.total} tiles")
            paths.append(str(tiles))
        d.paths = paths


# ------------------------------------------------------------------------- scores


def _test_block(result: dict, regions: list[str]) -> dict:
    """The overall block, or the named regions' blocks pooled (scores from summed counts)."""
    if not regions:
        return result["overall"]
    missing = [r for r in regions if r not in result["regions"]]
    if missing:
        raise ConfigError(f"test.regions: {missing[0]!r} is not in the test data "
                          f"(regions: {', '.join(result['regions']) or 'none'})")
    if len(regions) == 1:
        return result["regions"][regions[0]]
    c = metrics.Confusion(*(sum(result["regions"][r]["confusion"][k] for r in regions)
                            for k in ("tp", "fp", "fn", "tn")))
    ci = metrics.bootstrap_f1_interval(c, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    return mark_undefined({**metrics.scores(c), "ci95": {"f1": ci}}, c)


def row_metrics(model_dir: Path, eval_dir: Path | None, regions: list[str]) -> dict:
    """Table IV/V numbers of one run: best-epoch training/validation accuracy, test scores."""
    meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
    best = meta.get("best_metrics") or {}
    row = {"weights": meta.get("weights_source"), "train_accuracy": best.get("train_accuracy"),
           "val_accuracy": best.get("val_accuracy")}
    if eval_dir is None:
        return row
    block = _test_block(json.loads((eval_dir / METRICS_FILE).read_text(encoding="utf-8")),
                        regions)
    ci = (block.get("ci95") or {}).get("f1") or (None, None)
    row.update({f"test_{k}": block[k] for k in ("accuracy", "precision", "recall",
                                                 "specificity", "f1")})
    row.update(test_f1_ci_low=ci[0], test_f1_ci_high=ci[1])
    return row


# ------------------------------------------------------------------------- running


def _done(run_dir: Path, has_test: bool) -> bool:
    model_ok = (run_dir / "model" / META_FILE).is_file()
    return model_ok and (not has_test or (run_dir / "eval" / METRICS_FILE).is_file())


def _execute(run: Run, run_dir: Path, test_roots: list[Path], progress: Callable,
             log: Callable) -> None:
    from slidewatch.evaluation.evaluate import evaluate
    from slidewatch.training.loop import train

    model_dir = run_dir / "model"
    if not (model_dir / META_FILE).is_file():
        resume = (model_dir / "resume.pt").is_file()
        train(run.config, model_dir, resume=resume, progress=progress, log=log)
    if test_roots and not (run_dir / "eval" / METRICS_FILE).is_file():
        evaluate(model_dir, test_roots, run_dir / "eval", device=run.config.device,
                 overwrite=True, progress=progress)


def run_one(run: Run, out: Path, test_roots: list[Path], regions: list[str],
            progress: Callable, log: Callable) -> dict:
    """Train and evaluate one run (or skip it when done); return its results row."""
    run_dir = out / "runs" / run.name
    row = {**run.values, "run": run.name, "status": "", "error": ""}
    record = run_dir / RUN_FILE
    if _done(run_dir, bool(test_roots)):
        log(f"skip {run.name}: already trained and evaluated")
        old = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        row.update(status="skipped", seconds=old.get("seconds"))
    else:
        log(f"run {run.name}")
        t0 = time.perf_counter()
        try:
            _execute(run, run_dir, test_roots, progress, log)
            row["status"] = "ok"
        except SlidewatchError as exc:
            row.update(status="failed", error=str(exc))
            log(f"run {run.name} failed: {exc}")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({k: row[k] for k in ("run", "status", "error",
                                                                   "seconds")}
                                             | {"values": run.values}, indent=2) + "\n")
    if row["status"] != "failed":
        try:
            row.update(row_metrics(run_dir / "model", run_dir / "eval" if test_roots else None,
                                   regions))
        except SlidewatchError as exc:
            row.update(status="failed", error=str(exc))
    return row


def run_experiment(exp: Experiment | str | Path, out: str | Path | None = None, *,
                   progress: Callable = no_progress,
                   log: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Run (or resume) every run of the grid; write results.csv/.md and the plot.

    Returns one row per run with the grid values, ``status`` (``ok``, ``skipped`` or
    ``failed``), ``error`` and the :data:`METRIC_COLUMNS`.
    """
    if not isinstance(exp, Experiment):
        exp = load_experiment(exp)
    if out is None and exp.out is None:
        raise ConfigError("--out: give an output folder (or `out:` in the experiment file)")
    out = Path(out if out is not None else os.path.expandvars(exp.out))
    runs = expand(exp)
    if exp.test_data:
        check_test_set(exp, runs)
    test_roots = prepare_test_data(exp, out, log)
    share_train_tiles(runs, out, log)
    rows: list[dict] = []
    for i, run in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {run.values}")
        rows.append(run_one(run, out, test_roots, exp.test_regions, progress, log))
        write_results(out, exp, rows)
    return rows


# ------------------------------------------------------------------------- outputs


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return _safe(value)
    return str(value)


def columns(exp: Experiment) -> list[str]:
    return [k for k, _ in exp.grid] + ["run", "status", "weights"] + METRIC_COLUMNS + ["error"]


def write_results(out: Path, exp: Experiment, rows: list[dict]) -> None:
    """Rewrite results.csv, results.md and (if the grid varies unfreezing) the plot."""
    cols = columns(exp)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in cols])
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", results_markdown(cols, rows))
    key = next((k for k, _ in exp.grid if k in UNFREEZE_KEYS), None)
    if key is not None:
        plot_vs_unfrozen(rows, key, exp, out / "metrics_vs_unfrozen.png")


def results_markdown(cols: list[str], rows: list[dict]) -> str:
    def md(row: dict, c: str) -> str:
        v = row.get(c)
        if v is None and c.startswith("test_") and row.get("status") != "failed" \
                and row.get("test_accuracy") is not None:
            return "n/a"  # a score with a zero denominator on this test set
        text = f"{v:.3f}" if isinstance(v, float) and c != "seconds" else _cell(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(md(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_vs_unfrozen(rows: list[dict], key: str, exp: Experiment, path: Path) -> None:
    """Test accuracy, precision, recall and F1 against unfrozen layers (mean over the other
    grid axes), one line per architecture (the study's Figs. 6-7)."""
    from slidewatch.training.curves import atomic_path, plt

    arch_of = {r.name: r.config.model.name for r in expand(exp)}
    series: dict[str, dict[int, list[dict]]] = {}
    for row in rows:
        if row.get("test_f1") is None:
            continue
        series.setdefault(arch_of[row["run"]], {}).setdefault(row[key], []).append(row)
    names = ("accuracy", "precision", "recall", "f1")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharex=True)
    for ax, name in zip(axes, names):
        for arch, by_x in sorted(series.items()):
            xs = sorted(by_x)
            vals = [[r[f"test_{name}"] for r in by_x[x] if r[f"test_{name}"] is not None]
                    for x in xs]
            pts = [(x, sum(v) / len(v)) for x, v in zip(xs, vals) if v]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=arch)
        ax.set_xlabel(key.split(".")[-1].replace("_", " "))
        ax.set_title(f"test {name}")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    if series:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
