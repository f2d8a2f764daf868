"""``slidewatch experiment FILE --search N``: an Optuna search over ranges of config values.

The experiment file gets an optional top-level ``search`` section::

    search:
      metric: val_f1          # a validation metric of train's best_metrics (val_loss: minimised)
      storage: null           # default sqlite:///<out>/search.db (an interrupted search resumes)
      sampler_seed: 0
      params:                 # dotted config key -> a range or a list of choices
        phase2.lr: {low: 1.0e-5, high: 1.0e-3, log: true}
        phase2.unfreeze_layers: {low: 0, high: 40, step: 5}   # ints when low/high are ints
        optim.optimizer: {choices: [adam, adamw, sgd]}

Each trial merges its sampled values into ``base`` and trains into
``<out>/trials/<number>/model``; ``grid`` and ``test`` are not used by a search. Completed
trials in the storage count toward N. ``search.csv`` and ``best.yaml`` (the base config with
the best trial's values, a ready ``slidewatch train --config`` file) are written at the end.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from slidewatch.config.train import STOP_METRICS, dump_yaml, from_dict, load_yaml, merge
from slidewatch.errors import ConfigError, SlidewatchError
from slidewatch.experiments.grid import parse_experiment, set_dotted
from slidewatch.io_utils import atomic_write_text
from slidewatch.runtime import no_progress

SEARCH_KEYS = ("metric", "storage", "sampler_seed", "params")
RANGE_KEYS = ("low", "high", "log", "step")
STUDY_NAME = "slidewatch-search"
MINIMISED = {"val_loss"}


@dataclass
class SearchSpec:
    metric: str = "val_f1"
    storage: str | None = None
    sampler_seed: int | None = 0
    params: dict[str, dict] = field(default_factory=dict)


@dataclass
class SearchResult:
    out: Path
    rows: list[dict]
    best_number: int
    best_value: float
    best_params: dict


# ------------------------------------------------------------------------- parsing


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_range(key: str, spec: dict) -> dict:
    where = f"search.params.{key}"
    low, high = spec.get("low"), spec.get("high")
    if not (_is_num(low) and _is_num(high)):
        raise ConfigError(f"{where}: low and high must both be finite numbers, got {low!r} and "
                          f"{high!r}")
    if low > high:
        raise ConfigError(f"{where}: low must be <= high")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0")
    if step is not None and (not _is_num(step) or step <= 0 or log):
        raise ConfigError(f"{where}.step: must be a positive number, and not with log: true")
    is_int = _is_int(low) and _is_int(high) and (step is None or _is_int(step))
    return {"low": low, "high": high, "log": log, "step": step, "int": is_int}


def _parse_param(key: Any, spec: Any) -> dict:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"search.params: keys must be dotted config keys, got {key!r}")
    where = f"search.params.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected {{low: .., high: ..}} or {{choices: [..]}}")
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: not allowed with choices")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{where}.choices: expected a non-empty list of plain values")
        return {"choices": choices}
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown or not {"low", "high"} <= set(spec):
        bad = unknown[0] if unknown else "low/high"
        raise ConfigError(f"{where}.{bad}: a param is a range {{low, high, log, step}} or "
                          "{choices: [..]}")
    return _parse_range(key, spec)


def parse_search(data: Any) -> SearchSpec:
    """Validate the ``search`` section (keys, metric and every param spec)."""
    if not isinstance(data, dict):
        raise ConfigError("search: expected a mapping with metric, storage, sampler_seed, params")
    unknown = sorted(set(data) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"unknown search key 'search.{unknown[0]}'; known keys: "
                          f"{', '.join(SEARCH_KEYS)}")
    metric = data.get("metric", "val_f1")
    if metric not in STOP_METRICS:
        raise ConfigError(f"search.metric: must be one of {', '.join(STOP_METRICS)}; "
                          f"got {metric!r}")
    storage, seed = data.get("storage"), data.get("sampler_seed", 0)
    if storage is not None and not isinstance(storage, str):
        raise ConfigError(f"search.storage: expected a database URL, got {storage!r}")
    if seed is not None and not _is_int(seed):
        raise ConfigError(f"search.sampler_seed: expected an integer, got {seed!r}")
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError("search.params: expected a mapping of dotted config keys to ranges")
    return SearchSpec(metric, storage, seed,
                      {k: _parse_param(k, v) for k, v in params.items()})


def config_for(base: dict, values: dict) -> Any:
    """``base`` with ``values`` (dotted keys) merged in, validated as a TrainConfig."""
    tree = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(tree, key, value)
    return from_dict(merge({}, tree))


def _check_params(base: dict, spec: SearchSpec) -> None:
    """Every range end and every choice must give a valid config (checked before training)."""
    for key, p in spec.params.items():
        for value in p.get("choices") or (p["low"], p["high"]):
            try:
                config_for(base, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"search.params.{key} = {value!r}: {exc}") from None


def load_search(path: str | Path) -> tuple[Any, SearchSpec]:
    """Read an experiment file with a ``search`` section: (Experiment, SearchSpec)."""
    data = load_yaml(path)
    try:
        if "search" not in data:
            raise ConfigError("--search: the file has no `search:` section")
        rest = {k: v for k, v in data.items() if k != "search"}
        exp, spec = parse_experiment(rest), parse_search(data["search"])
        _check_params(exp.base, spec)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return exp, spec


# ------------------------------------------------------------------------- running


def _suggest(trial: Any, key: str, p: dict) -> Any:
    if "choices" in p:
        return trial.suggest_categorical(key, p["choices"])
    if p["int"]:
        return trial.suggest_int(key, p["low"], p["high"], step=p["step"] or 1, log=p["log"])
    return trial.suggest_float(key, float(p["low"]), float(p["high"]), step=p["step"],
                               log=p["log"])


def _objective(base: dict, spec: SearchSpec, out: Path, progress: Callable,
               log: Callable) -> Callable:
    from slidewatch.training.loop import train

    def objective(trial: Any) -> float:
        values = {key: _suggest(trial, key, p) for key, p in spec.params.items()}
        try:
            cfg = config_for(base, values)
            log(f"trial {trial.number}: {values}")
            result = train(cfg, out / "trials" / str(trial.number) / "model",
                           progress=progress, log=lambda m: None)
            value = result.best_metrics.get(spec.metric)
            if value is None:
                raise ConfigError(f"search.metric: no {spec.metric} in this trial's results "
                                  "(is the validation split empty?)")
        except SlidewatchError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        return float(value)

    return objective


def _trial_logger(metric: str, log: Callable) -> Callable:
    def callback(study: Any, frozen: Any) -> None:
        if frozen.value is not None:
            log(f"trial {frozen.number} done: {metric}={frozen.value:.4g} {frozen.params}")
        else:
            reason = frozen.user_attrs.get("error") or "no value"
            log(f"trial {frozen.number} failed: {reason}")

    return callback


def _open_study(spec: SearchSpec, out: Path, log: Callable) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our one line, no traceback
    out.mkdir(parents=True, exist_ok=True)
    storage = spec.storage or f"sqlite:///{(out / 'search.db').resolve()}"
    direction = "minimize" if spec.metric in MINIMISED else "maximize"
    try:
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction,
                                    sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed),
                                    load_if_exists=True)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"search.storage: {storage}: {exc}") from None
    if study.direction.name.lower() != direction:
        raise ConfigError(f"search.metric: {storage} holds a search that was run to "
                          f"{study.direction.name.lower()}; use another --out or storage")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        log(f"trial {t.number}: left running by an interrupted search; marked failed")
    return study


def search_rows(study: Any, spec: SearchSpec) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **{k: t.params.get(k) for k in spec.params},
                     "error": t.user_attrs.get("error", "")})
    return rows


def write_csv(path: Path, rows: list[dict], spec: SearchSpec) -> None:
    cols = ["number", "state", "value", *spec.params, "error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in rows:
        w.writerow(["" if row.get(c) is None else row[c] for c in cols])
    atomic_write_text(path, buf.getvalue())


def run_search(experiment: str | Path, n_trials: int, out: str | Path | None = None, *,
               progress: Callable = no_progress,
               log: Callable[[str], None] = lambda m: None) -> SearchResult:
    """Run (or resume) a search of ``n_trials`` completed trials; write search.csv, best.yaml."""
    import optuna

    if n_trials < 1:
        raise ConfigError(f"--search: expected a number of trials >= 1, got {n_trials}")
    exp, spec = load_search(experiment)
    if out is None and exp.out is None:
        raise ConfigError("--out: give an output folder (or `out:` in the experiment file)")
    out = Path(out if out is not None else os.path.expandvars(exp.out))
    study = _open_study(spec, out, log)
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    todo = max(0, n_trials - done)
    log(f"search: {done} trials completed, {todo} to run -> {out / 'trials'}")
    if todo:
        try:
            study.optimize(_objective(exp.base, spec, out, progress, log), n_trials=todo,
                           catch=(SlidewatchError,), callbacks=[_trial_logger(spec.metric, log)])
        except ValueError as exc:  # e.g. ranges changed against an existing storage
            raise ConfigError(f"search: {' '.join(str(exc).split())[:200]}; use a new --out "
                              "or search.storage for a changed search space") from None
    rows = search_rows(study, spec)
    write_csv(out / "search.csv", rows, spec)
    if not any(r["state"] == "COMPLETE" for r in rows):
        raise ConfigError(f"--search: no trial completed; see {out / 'search.csv'}")
    best = study.best_trial
    atomic_write_text(out / "best.yaml", dump_yaml(config_for(exp.base, best.params)))
    return SearchResult(out, rows, best.number, best.value, dict(best.params))
