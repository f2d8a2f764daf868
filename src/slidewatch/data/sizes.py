"""Landslide size classes, the second task of a multi-task model.

From a mask: the landslide area in a tile, in m² when the ground resolution is known (from the
GeoTIFF's georeference or given) or as a fraction of the tile, binned by configurable class
edges (:class:`SizeClasses`). From a column: text values such as the NASA Global Landslide
Catalog's ``landslide_size`` (small, medium, large, very_large, catastrophic) mapped to ordered
classes (:class:`SizeColumn`). Tiles without a landslide and unknown or empty values get
:data:`IGNORE_INDEX` (-1), which the size loss and the size metrics skip. Ground areas:
:mod:`slidewatch.data.geometry`; the size head's scores: :mod:`slidewatch.evaluation.sizes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidewatch.config.multimodal import validate_edges
from slidewatch.data.geometry import pixel_area_m2
from slidewatch.errors import ConfigError, DataError

IGNORE_INDEX = -1
NASA_SIZES = ("small", "medium", "large", "very_large", "catastrophic")
IGNORED_VALUES = frozenset({"", "unknown", "na", "n/a", "nan", "none", "null"})
DEFAULT_EDGES = {"m2": (1_000.0, 10_000.0, 100_000.0), "fraction": (0.1, 0.3, 0.6)}
DEFAULT_NAMES = ("small", "medium", "large", "very_large")


def _norm(value: object) -> str:
    return "_".join(str(value).strip().lower().replace("-", " ").split())


@dataclass(frozen=True)
class SizeClasses:
    """Bins of landslide area: class ``i`` holds ``edges[i-1] <= area < edges[i]``.

    ``unit``: ``"m2"`` (needs the ground resolution) or ``"fraction"`` of the tile's pixels.
    ``len(names) == len(edges) + 1``. An area of 0 (no landslide) is :data:`IGNORE_INDEX`.
    """

    edges: tuple[float, ...] = DEFAULT_EDGES["m2"]
    names: tuple[str, ...] = DEFAULT_NAMES
    unit: str = "m2"

    task = "size"

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        validate_edges(self.edges, self.unit)
        if len(self.names) != len(self.edges) + 1:
            raise ConfigError(f"--size-names: {len(self.edges)} edge(s) make "
                              f"{len(self.edges) + 1} classes, got {len(self.names)} names")
        if len(set(self.names)) != len(self.names) or not all(n.strip() for n in self.names):
            raise ConfigError(f"--size-names: names must be distinct and non-empty, "
                              f"got {list(self.names)}")

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def classify(self, area: float) -> int:
        """Class index of ``area`` (in ``unit``), :data:`IGNORE_INDEX` for no landslide."""
        if not math.isfinite(area) or area < 0:
            raise ValueError(f"size: area must be a finite number >= 0, got {area}")
        if area == 0:
            return IGNORE_INDEX
        return int(np.searchsorted(np.asarray(self.edges), area, side="right"))

    def to_json(self) -> dict:
        return {"source": "mask", "edges": list(self.edges), "names": list(self.names),
                "unit": self.unit}

    @classmethod
    def from_json(cls, data: Mapping) -> SizeClasses:
        return cls(tuple(data["edges"]), tuple(data["names"]), data["unit"])


def default_size_classes(has_resolution: bool) -> SizeClasses:
    """m² classes when the ground resolution is known, else classes of the tile fraction."""
    unit = "m2" if has_resolution else "fraction"
    return SizeClasses(DEFAULT_EDGES[unit], DEFAULT_NAMES, unit)


# ----------------------------------------------------------------------------- from masks


def image_pixel_area(path: str | Path, pixel_size: float | None = None) -> float | None:
    """m² per pixel of ``path``: ``pixel_size**2`` when given (metres), else from its
    georeference, else None (only a fraction can be measured)."""
    from slidewatch.data.readers import georef, probe

    if pixel_size is not None:
        if not pixel_size > 0:
            raise ConfigError(f"--pixel-size: must be > 0 metres, got {pixel_size}")
        return float(pixel_size) ** 2
    geo = georef(path)
    if geo is None or geo["crs"] is None:
        return None
    return pixel_area_m2(geo["transform"], geo["crs"], str(path), probe(path).height / 2)


def mask_area(mask: np.ndarray, pixel_area: float | None, unit: str,
              where: str = "mask") -> float:
    """Landslide area of a bool mask in ``unit`` (m² needs ``pixel_area``)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        raise DataError(f"{where}: empty mask")
    if unit == "fraction":
        return float(mask.mean())
    if pixel_area is None:
        raise DataError(f"{where}: no ground resolution (not georeferenced); size classes in m² "
                        "need --pixel-size, or use --size-unit fraction")
    return float(mask.sum()) * pixel_area


def size_label_from_mask(mask: np.ndarray, classes: SizeClasses, pixel_area: float | None = None,
                         where: str = "mask") -> int:
    """Size class of the landslide pixels in ``mask`` (:data:`IGNORE_INDEX` if none)."""
    return classes.classify(mask_area(mask, pixel_area, classes.unit, where))


def size_label_for_sample(sample, classes: SizeClasses, pixel_size: float | None = None) -> int:
    """Size class of a tile from its ``landslide_fraction`` (tiles.csv) and its image's size
    and georeference; :data:`IGNORE_INDEX` when the fraction is unknown or 0."""
    from slidewatch.data.readers import probe

    fraction = getattr(sample, "landslide_fraction", None)
    if fraction is None or fraction == 0:
        return IGNORE_INDEX
    if classes.unit == "fraction":
        return classes.classify(float(fraction))
    info = probe(sample.path)
    area = image_pixel_area(sample.path, pixel_size)
    if area is None:
        raise DataError(f"{sample.path}: no ground resolution (not georeferenced); size "
                        "classes in m² need --pixel-size, or use --size-unit fraction")
    return classes.classify(float(fraction) * info.width * info.height * area)


# ----------------------------------------------------------------------------- from a column


class ColumnLabels:
    """Classes read from one column of a table joined to the images (size names here, days in
    :class:`slidewatch.data.ages.AgeColumn`): a subclass gives ``column`` and
    ``label(value, where)``; :meth:`labels` reads a whole list of rows."""

    column: str

    def label(self, value: object, where: str = "row") -> int:
        raise NotImplementedError

    def labels(self, rows: Sequence[Mapping | None], names: Sequence[str] | None = None
               ) -> np.ndarray:
        """int64 labels of ``rows`` (a missing row or cell gives :data:`IGNORE_INDEX`)."""
        out = np.full(len(rows), IGNORE_INDEX, np.int64)
        for i, row in enumerate(rows):
            if row is not None:
                where = str(names[i]) if names is not None else f"row {i}"
                out[i] = self.label(row.get(self.column), where)
        return out


@dataclass(frozen=True)
class SizeColumn(ColumnLabels):
    """Ordered class names read from a text column (case, spaces and hyphens ignored:
    "Very large" == "very_large"); ``aliases`` map other values onto the names; values in
    ``ignored`` (unknown, empty) give :data:`IGNORE_INDEX`; anything else is an error."""

    column: str = "landslide_size"
    names: tuple[str, ...] = NASA_SIZES
    aliases: Mapping[str, str] = field(default_factory=dict)
    ignored: frozenset[str] = IGNORED_VALUES

    task = "size"

    def __post_init__(self) -> None:
        names = tuple(_norm(n) for n in self.names)
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"--size-names: need two or more distinct names, got "
                              f"{list(self.names)}")
        bad = [a for a, t in self.aliases.items() if _norm(t) not in names]
        if bad:
            raise ConfigError(f"--size-aliases: {bad[0]!r} maps to {self.aliases[bad[0]]!r}, "
                              f"which is not one of {', '.join(names)}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "aliases", {_norm(a): _norm(t) for a, t in self.aliases.items()})
        object.__setattr__(self, "ignored", frozenset(_norm(v) for v in self.ignored))

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def label(self, value: object, where: str = "row") -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return IGNORE_INDEX
        key = _norm(value)
        key = self.aliases.get(key, key)
        if key in self.ignored:
            return IGNORE_INDEX
        if key not in self.names:
            raise DataError(f"{where}, column '{self.column}': size {value!r} is not one of "
                            f"{', '.join(self.names)} (or unknown/empty)")
        return self.names.index(key)

    def to_json(self) -> dict:
        return {"source": "column", "column": self.column, "names": list(self.names),
                "aliases": dict(self.aliases), "ignored": sorted(self.ignored)}

    @classmethod
    def from_json(cls, data: Mapping) -> SizeColumn:
        return cls(data["column"], tuple(data["names"]), dict(data.get("aliases", {})),
                   frozenset(data.get("ignored", IGNORED_VALUES)))


def size_scheme_from_json(data: Mapping) -> SizeClasses | SizeColumn:
    """Rebuild what ``meta.inputs.sizes.scheme`` stores (either kind of size classes; any
    second task, age included: :func:`slidewatch.data.ages.scheme_from_json`)."""
    if data.get("source") == "column":
        return SizeColumn.from_json(data)
    return SizeClasses.from_json(data)
