"""Tabular inputs (slope, elevation, rainfall, trigger, ...) joined to image samples.

A CSV holds one row per image, found by its ``path`` relative to the dataset root (or by the
tile id, the file stem). :class:`TabularSpec` names the numeric and categorical columns and the
policies; :func:`read_table` reads and checks the CSV; :func:`join_samples` gives each
:class:`~slidewatch.data.folders.Sample` its row; :class:`TabularEncoder` is fitted on the rows
of the *training* samples only and turns rows into model inputs:

- numeric columns: ``(value - mean) / std`` (training statistics; std 0 -> 1), empty cells
  imputed with the training mean; one 0/1 indicator column per column (numeric or categorical)
  that had empty cells in the training rows, appended after the numeric columns;
- categorical columns: index into a vocabulary of the training values, index 0 reserved for
  a value never seen in training (``unknown="unknown"``; ``"error"`` refuses it); empty cells
  imputed with the most common training value.

The fitted encoder is stored in the model metadata (``meta.inputs.tabular``) as
:meth:`TabularEncoder.to_json`, so that evaluation and prediction encode rows identically.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidewatch.errors import ConfigError, DataError

JSON_FORMAT = "slidewatch-tabular"
JSON_VERSION = 1
UNKNOWN = "<unknown>"
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})
JOIN_KEYS = ("path", "tile_id")
MISSING_POLICIES = ("error", "impute")
UNKNOWN_POLICIES = ("error", "unknown")

Row = Mapping[str, Any]  # column -> float (numeric), str (categorical) or None (empty)


@dataclass(frozen=True)
class TabularSpec:
    """Which columns feed the model and how rows are found and checked.

    ``key``: ``"path"`` (image path relative to its dataset root, as in tiles.csv) or
    ``"tile_id"`` (the image's file stem); ``key_column`` is the CSV column holding it
    (default: the same name). ``missing``: an image without a row is an ``"error"`` or gets
    every value imputed (``"impute"``). ``unknown``: a category never seen in training is an
    ``"error"`` or maps to the reserved index 0 (``"unknown"``).
    """

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    key: str = "path"
    key_column: str | None = None
    missing: str = "error"
    unknown: str = "error"

    def __post_init__(self) -> None:
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "categorical", tuple(self.categorical))
        if self.key not in JOIN_KEYS:
            raise ConfigError(f"--tabular-key: must be one of {', '.join(JOIN_KEYS)}, "
                              f"got {self.key!r}")
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"--tabular-missing: must be one of {', '.join(MISSING_POLICIES)}"
                              f", got {self.missing!r}")
        if self.unknown not in UNKNOWN_POLICIES:
            raise ConfigError(f"--tabular-unknown: must be one of {', '.join(UNKNOWN_POLICIES)}"
                              f", got {self.unknown!r}")
        columns = [*self.numeric, *self.categorical]
        if not columns:
            raise ConfigError("--tabular: name at least one --numeric or --categorical column")
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated or any(not str(c).strip() for c in columns):
            raise ConfigError(f"--numeric/--categorical: column names must be distinct and "
                              f"non-empty, got {columns}")
        if self.join_column in columns:
            raise ConfigError(f"--tabular-key: the key column {self.join_column!r} cannot "
                              "also be a feature")

    @property
    def join_column(self) -> str:
        return self.key_column or self.key

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    def to_json(self) -> dict:
        return {**asdict(self), "numeric": list(self.numeric),
                "categorical": list(self.categorical)}

    @classmethod
    def from_json(cls, data: Mapping) -> TabularSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ----------------------------------------------------------------------------- reading


@dataclass
class TabularTable:
    """Rows of a tabular CSV keyed by their join key; ``lines`` gives each key's CSV line."""

    path: Path
    spec: TabularSpec
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def is_missing(value: Any) -> bool:
    """Empty cell: None, NaN, or text such as "", "NA", "nan", "null"."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS


def parse_numeric(value: Any, where: str, column: str) -> float | None:
    """A finite float, None for an empty cell, or DataError naming ``where``, column, value."""
    if is_missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}, column '{column}': {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{where}, column '{column}': {value!r} is not a finite number")
    return number


def normalise_key(value: str) -> str:
    """Join keys compare as posix paths without a leading ``./`` or surrounding spaces."""
    key = str(value).strip().replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def read_table(path: str | Path, spec: TabularSpec) -> TabularTable:
    """Read ``path`` (CSV with a header) into a :class:`TabularTable`, checking every cell."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tabular file not found")
    table = TabularTable(path, spec)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or ()]
            reader.fieldnames = header
            missing = [c for c in (spec.join_column, *spec.columns) if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                                f"(columns present: {', '.join(header) or 'none'})")
            for line, raw in enumerate(reader, start=2):
                _add_row(table, raw, line)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a valid CSV file ({exc})") from None
    if not table.rows:
        raise DataError(f"{path}: no data rows")
    return table


def _add_row(table: TabularTable, raw: dict, line: int) -> None:
    spec, where = table.spec, f"{table.path}: line {line}"
    key = normalise_key(raw.get(spec.join_column) or "")
    if not key:
        raise DataError(f"{where}, column '{spec.join_column}': empty key")
    if key in table.rows:
        raise DataError(f"{where}: duplicate key {key!r} (first on line {table.lines[key]})")
    row: dict[str, Any] = {c: parse_numeric(raw.get(c), where, c) for c in spec.numeric}
    for column in spec.categorical:
        value = raw.get(column)
        row[column] = None if is_missing(value) else str(value).strip()
    table.rows[key] = row
    table.lines[key] = line


# ----------------------------------------------------------------------------- joining


def sample_keys(sample, key: str) -> list[str]:
    """The keys under which ``sample``'s row may be listed, most specific first."""
    if key == "tile_id":
        return [sample.path.stem]
    keys = []
    root = getattr(sample, "root", None)
    if root is not None:
        try:
            keys.append(sample.path.relative_to(root).as_posix())
        except ValueError:
            pass
        keys.append(sample.key)
    keys += [Path(sample.path).as_posix(), Path(sample.path).resolve().as_posix()]
    return list(dict.fromkeys(keys))


def join_samples(samples: Sequence, table: TabularTable) -> list[dict[str, Any] | None]:
    """The row of each sample, in order; None where the spec's ``missing`` is ``"impute"`` and
    the image has no row. DataError naming the first image without a row otherwise."""
    spec, out, absent, seen = table.spec, [], 0, {}
    for sample in samples:
        keys = sample_keys(sample, spec.key)
        if spec.key == "tile_id" and seen.setdefault(keys[0], sample.path) != sample.path:
            raise DataError(f"{sample.path}: same tile id {keys[0]!r} as {seen[keys[0]]}; "
                            "join by path instead (--tabular-key path)")
        row = next((table.rows[k] for k in keys if k in table.rows), None)
        if row is None:
            if spec.missing == "error":
                raise DataError(
                    f"{sample.path}: no row in {table.path} (looked for {spec.join_column} "
                    f"= {keys[0]!r}); add one or use --tabular-missing impute")
            absent += 1
        out.append(row)
    if absent == len(out) and out:
        raise DataError(f"{table.path}: no image matches a row by {spec.join_column}; "
                        f"first image key {sample_keys(samples[0], spec.key)[0]!r}")
    return out


# ----------------------------------------------------------------------------- encoding


class TabularEncoder:
    """Standardise, impute and index tabular rows with statistics of the training rows.

    ``fit(rows)`` takes the rows of the training samples only (None for an image without a
    row). ``transform(rows)`` returns ``numeric`` float32 ``[N, n_numeric]`` (standardised
    columns then missing indicators) and ``categorical`` int64 ``[N, n_categorical]``.
    """

    def __init__(self, spec: TabularSpec) -> None:
        self.spec = spec
        self.mean: dict[str, float] = {}
        self.std: dict[str, float] = {}
        self.indicators: list[str] = []
        self.vocab: dict[str, list[str]] = {}
        self.fill: dict[str, str] = {}
        self.n_train = 0

    @property
    def fitted(self) -> bool:
        return self.n_train > 0

    def fit(self, rows: Sequence[Row | None]) -> TabularEncoder:
        rows = list(rows)
        if not rows:
            raise DataError("tabular: no training rows to compute statistics from")
        for column in self.spec.numeric:
            values = np.array([r[column] for r in rows if r is not None and
                               not is_missing(r.get(column))], dtype=np.float64)
            if values.size == 0:
                raise DataError(f"tabular column '{column}': no values in the training rows")
            std = float(values.std())
            self.mean[column] = float(values.mean())
            self.std[column] = std if std > 1e-12 else 1.0
        for column in self.spec.categorical:
            counts = Counter(str(r[column]) for r in rows
                             if r is not None and not is_missing(r.get(column)))
            if not counts:
                raise DataError(f"tabular column '{column}': no values in the training rows")
            self.vocab[column] = [UNKNOWN, *sorted(counts)]
            self.fill[column] = max(sorted(counts), key=lambda v: counts[v])
        self.indicators = [c for c in self.spec.columns
                           if any(r is None or is_missing(r.get(c)) for r in rows)]
        self.n_train = len(rows)
        return self

    @property
    def numeric_names(self) -> list[str]:
        return [*self.spec.numeric, *(f"{c}_missing" for c in self.indicators)]

    @property
    def categorical_names(self) -> list[str]:
        return list(self.spec.categorical)

    @property
    def feature_names(self) -> list[str]:
        """Names of the model's tabular inputs: numeric, indicators, then categorical."""
        return [*self.numeric_names, *self.categorical_names]

    @property
    def cardinalities(self) -> list[int]:
        """Embedding sizes, index 0 (unknown) included."""
        return [len(self.vocab[c]) for c in self.spec.categorical]

    def transform(self, rows: Sequence[Row | None], names: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric [N, n_numeric] float32, categorical [N, n_cat] int64)``; ``names``
        (e.g. image paths) are used in error messages."""
        if not self.fitted:
            raise DataError("tabular: the encoder is not fitted; call fit() on training rows")
        rows = list(rows)
        spec = self.spec
        num = np.zeros((len(rows), len(self.numeric_names)), np.float32)
        cat = np.zeros((len(rows), len(spec.categorical)), np.int64)
        index = {c: {v: i for i, v in enumerate(self.vocab[c])} for c in spec.categorical}
        for i, row in enumerate(rows):
            where = str(names[i]) if names is not None else f"row {i}"
            empty = {c for c in spec.columns if row is None or is_missing(row.get(c))}
            for j, column in enumerate(spec.numeric):
                value = self.mean[column] if column in empty else \
                    parse_numeric(row[column], where, column)
                num[i, j] = (value - self.mean[column]) / self.std[column]
            for j, column in enumerate(self.indicators):
                num[i, len(spec.numeric) + j] = float(column in empty)
            for j, column in enumerate(spec.categorical):
                value = self.fill[column] if column in empty else str(row[column]).strip()
                cat[i, j] = self._category(index[column], column, value, where)
        return num, cat

    def _category(self, index: dict[str, int], column: str, value: str, where: str) -> int:
        if value in index:
            return index[value]
        if self.spec.unknown == "unknown":
            return 0
        known = ", ".join(self.vocab[column][1:][:10])
        raise DataError(f"{where}, column '{column}': category {value!r} never seen in training "
                        f"(known: {known}); use --tabular-unknown unknown to allow it")

    def to_json(self) -> dict:
        """The JSON stored as ``meta.inputs.tabular`` (key ``tabular`` of slidewatch.json)."""
        return {
            "format": JSON_FORMAT, "format_version": JSON_VERSION,
            "spec": self.spec.to_json(), "n_train": self.n_train,
            "numeric": {c: {"mean": self.mean[c], "std": self.std[c]} for c in self.spec.numeric},
            "categorical": {c: {"vocabulary": self.vocab[c], "fill": self.fill[c]}
                            for c in self.spec.categorical},
            "indicators": list(self.indicators),
            "feature_names": self.feature_names,
        }

    @classmethod
    def from_json(cls, data: Mapping, where: str = "model metadata") -> TabularEncoder:
        if not isinstance(data, Mapping) or data.get("format") != JSON_FORMAT:
            raise DataError(f"{where}: 'tabular' is not a slidewatch tabular encoder")
        if data.get("format_version", 0) > JSON_VERSION:
            raise DataError(f"{where}: tabular encoder written by a newer slidewatch")
        try:
            enc = cls(TabularSpec.from_json(data["spec"]))
            for c in enc.spec.numeric:
                enc.mean[c] = float(data["numeric"][c]["mean"])
                enc.std[c] = float(data["numeric"][c]["std"])
            for c in enc.spec.categorical:
                enc.vocab[c] = [str(v) for v in data["categorical"][c]["vocabulary"]]
                enc.fill[c] = str(data["categorical"][c]["fill"])
            enc.indicators = [str(c) for c in data["indicators"]]
            enc.n_train = int(data["n_train"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: incomplete tabular encoder ({exc!r})") from None
        return enc


def merge_rows(*parts: Sequence[Row | None]) -> list[dict[str, Any] | None]:
    """Join per-sample rows from several sources (e.g. the CSV and terrain features); a sample
    is None only where every source is None."""
    if len({len(p) for p in parts}) > 1:
        raise ValueError(f"merge_rows: parts differ in length {[len(p) for p in parts]}")
    out: list[dict[str, Any] | None] = []
    for rows in zip(*parts):
        present = [r for r in rows if r is not None]
        out.append({k: v for r in present for k, v in r.items()} if present else None)
    return out


def tabular_dataset(base, numeric: np.ndarray, categorical: np.ndarray,
                    size_labels: Sequence[int] | None = None):
    """Wrap a dataset whose items carry ``"index"`` (e.g. TileDataset) so that each item also
    has ``"numeric"``, ``"categorical"`` and, when given, ``"size_label"`` (-1 = none)."""
    from torch.utils.data import Dataset

    n = len(base)
    if len(numeric) != n or len(categorical) != n or (size_labels is not None
                                                      and len(size_labels) != n):
        raise ValueError(f"tabular_dataset: {n} images but {len(numeric)} numeric rows, "
                         f"{len(categorical)} categorical rows")

    class _Tabular(Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> dict:
            item = dict(base[i])
            j = int(item.get("index", i))
            item["numeric"] = numeric[j]
            item["categorical"] = categorical[j]
            if size_labels is not None:
                item["size_label"] = int(size_labels[j])
            return item

    return _Tabular()
