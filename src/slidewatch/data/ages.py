"""Landslide age classes, a second task like the size classes (:mod:`slidewatch.data.sizes`).

The label is the time between the inventory event and the image, in days, read from a numeric
column of a CSV joined to the tiles: ``days_from_event`` of the ``tiles.csv`` that
``slidewatch data from-inventory --stac`` writes (image time minus event time), or any column
of days. It is binned by increasing edges (:class:`AgeColumn`): class ``i`` holds
``edges[i-1] <= days < edges[i]``; the defaults are fresh (< 90 days), recent (90 to 365 days)
and old (>= 365 days).

What gets no age (:data:`~slidewatch.data.sizes.IGNORE_INDEX`, skipped by the loss and the
scores): landslide-free tiles, empty or unknown cells, and images taken *before* the event
(negative days: the landslide is not on them yet). Text that is not a number is an error that
names the tile and the column. The head, its loss and its report are the size head's
(:mod:`slidewatch.evaluation.sizes`), named ``age`` wherever the task is named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from slidewatch.config.multimodal import (
    DEFAULT_AGE_COLUMN,
    DEFAULT_AGE_EDGES,
    DEFAULT_AGE_NAMES,
    validate_age_edges,
)
from slidewatch.data.sizes import (
    IGNORE_INDEX,
    IGNORED_VALUES,
    ColumnLabels,
    SizeClasses,
    SizeColumn,
    size_scheme_from_json,
)
from slidewatch.errors import ConfigError, DataError

__all__ = ["DEFAULT_AGE_COLUMN", "DEFAULT_AGE_EDGES", "DEFAULT_AGE_NAMES", "AgeColumn",
           "scheme_from_json", "validate_age_edges"]


@dataclass(frozen=True)
class AgeColumn(ColumnLabels):
    """Age classes from a column of days between the event and the image."""

    column: str = DEFAULT_AGE_COLUMN
    edges: tuple[float, ...] = DEFAULT_AGE_EDGES
    names: tuple[str, ...] = DEFAULT_AGE_NAMES

    task = "age"

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", validate_age_edges(self.edges))
        object.__setattr__(self, "names", tuple(str(n).strip() for n in self.names))
        if len(self.names) != len(self.edges) + 1:
            raise ConfigError(f"--age-names: {len(self.edges)} edge(s) make "
                              f"{len(self.edges) + 1} classes, got {len(self.names)} names")
        if len(set(self.names)) != len(self.names) or not all(self.names):
            raise ConfigError(f"--age-names: names must be distinct and non-empty, got "
                              f"{list(self.names)}")
        if not str(self.column).strip():
            raise ConfigError("--age-from: give the name of the column of days")

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def classify(self, days: float) -> int:
        """Class of ``days`` (>= 0); :data:`IGNORE_INDEX` for an image before the event."""
        if not math.isfinite(days):
            raise ValueError(f"age: days must be finite, got {days}")
        if days < 0:
            return IGNORE_INDEX
        return int(np.searchsorted(np.asarray(self.edges), days, side="right"))

    def label(self, value: object, where: str = "row") -> int:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return IGNORE_INDEX
        text = str(value).strip()
        if text.lower() in IGNORED_VALUES:
            return IGNORE_INDEX
        try:
            days = float(text)
        except ValueError:
            days = math.nan
        if not math.isfinite(days):
            raise DataError(f"{where}, column '{self.column}': {value!r} is not a number of "
                            "days between the event and the image (or empty/unknown)")
        return self.classify(days)

    def to_json(self) -> dict:
        return {"source": "age", "column": self.column, "edges": list(self.edges),
                "names": list(self.names), "unit": "days"}

    @classmethod
    def from_json(cls, data: Mapping) -> AgeColumn:
        return cls(data["column"], tuple(data["edges"]), tuple(data["names"]))


def scheme_from_json(data: Mapping) -> SizeClasses | SizeColumn | AgeColumn:
    """Rebuild the second task's classes that ``meta.inputs.sizes.scheme`` stores: age classes
    (``source`` age) or size classes from masks or a column."""
    if data.get("source") == "age":
        return AgeColumn.from_json(data)
    return size_scheme_from_json(data)
