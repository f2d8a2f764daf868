"""Per-band image statistics (:class:`ImageStats`) and their text form in ``tiles.csv``.

The statistics themselves are computed in :mod:`slidewatch.data.standardize` (the ``image``
standardisation rule); this module only holds the record, so that the dataset scanner
(:mod:`slidewatch.data.folders`) can carry a tile's scene statistics on its ``Sample``
without importing the datasets that apply them.

``tiles.csv`` columns ``scene_mean`` and ``scene_std`` (written by
:func:`slidewatch.data.tiling.tile_scenes`): one float per band, separated by spaces, each in
Python's shortest round-trip form (``repr``), so they read back as the very same numbers.
They are in unit scale by the dtype rule (:func:`slidewatch.data.readers.scale_to_unit`
without an explicit scale); a model with an explicit ``scale`` rescales them
(:meth:`ImageStats.scaled`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

SCENE_COLUMNS = ("scene_mean", "scene_std")  # the tiles.csv columns of a tile's scene
_SEPARATORS = re.compile(r"[\s;]+")  # written with spaces; semicolons are read as well


@dataclass(frozen=True)
class ImageStats:
    """Per-band mean and standard deviation of an image's valid pixels (unit scale), and how
    many valid pixels they were taken over (None: not recorded, e.g. read from ``tiles.csv``)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixels: int | None = None

    @property
    def bands(self) -> int:
        return len(self.mean)

    def scaled(self, factor: float) -> ImageStats:
        """The statistics of the same pixels multiplied by ``factor`` (another unit scale)."""
        if factor == 1:
            return self
        return ImageStats(tuple(float(m * factor) for m in self.mean),
                          tuple(float(s * factor) for s in self.std), self.pixels)


def format_values(values: Iterable[float]) -> str:
    """``tiles.csv`` text of per-band values: ``repr`` of each float, space-separated."""
    return " ".join(repr(float(v)) for v in values)


def parse_values(text: str, column: str) -> tuple[float, ...]:
    """Per-band floats of a ``tiles.csv`` cell (:func:`format_values`); ValueError naming the
    column for text that is not finite numbers."""
    parts = [p for p in _SEPARATORS.split(text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not numbers separated by spaces") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{column} {text!r} must be one finite number per band")
    return values


def parse_scene_stats(mean: str | None, std: str | None) -> ImageStats | None:
    """The scene statistics of a ``tiles.csv`` row (its ``scene_mean`` and ``scene_std``
    cells); None when both are absent or empty (the tile's own statistics are used then).
    ValueError for one without the other, unequal band counts or a std that is not > 0."""
    mean, std = (mean or "").strip(), (std or "").strip()
    if not mean and not std:
        return None
    if not mean or not std:
        missing = SCENE_COLUMNS[0] if not mean else SCENE_COLUMNS[1]
        raise ValueError(f"{missing} is empty but {' '.join(SCENE_COLUMNS)} go together")
    m, s = parse_values(mean, SCENE_COLUMNS[0]), parse_values(std, SCENE_COLUMNS[1])
    if len(m) != len(s):
        raise ValueError(f"{SCENE_COLUMNS[0]} has {len(m)} bands but {SCENE_COLUMNS[1]} "
                         f"{len(s)}")
    if not all(v > 0 for v in s):
        raise ValueError(f"{SCENE_COLUMNS[1]} {std!r} must be > 0 in every band")
    return ImageStats(m, s)
