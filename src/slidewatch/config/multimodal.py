"""Config sections of multi-modal training: tabular inputs, terrain (DEM), size task, fusion.

Part of :class:`slidewatch.config.TrainConfig` (keys ``tabular``, ``aux``, ``sizes``,
``fusion``). The defaults add nothing: a config without these keys trains the plain image
classifier exactly as before. :func:`validate_multimodal` rejects impossible combinations with
a message that names the key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional

from slidewatch.errors import ConfigError
from slidewatch.meta import MAX_WIDTH

SIZE_UNITS = ("m2", "fraction")


def validate_edges(edges: Sequence[float], unit: str) -> tuple[float, ...]:
    """Finite, positive, strictly increasing edges (fractions below 1); ConfigError otherwise."""
    if unit not in SIZE_UNITS:
        raise ConfigError(f"--size-unit: must be one of {', '.join(SIZE_UNITS)}, got {unit!r}")
    edges = tuple(float(e) for e in edges)
    if not edges:
        raise ConfigError("--size-edges: give at least one edge (two classes)")
    if not all(math.isfinite(e) and e > 0 for e in edges):
        raise ConfigError(f"--size-edges: edges must be finite and > 0, got {list(edges)}")
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"--size-edges: edges must increase strictly, got {list(edges)}")
    if unit == "fraction" and edges[-1] >= 1:
        raise ConfigError(f"--size-edges: fractions of a tile must be below 1, got {edges[-1]}")
    return edges


@dataclass
class TabularConfig:
    """A CSV with one row per image (``--tabular``), joined by ``key`` (``path`` relative to
    the dataset root, or ``tile_id`` = file stem) found in ``key_column`` (default: the key's
    name). ``missing``: an image without a row is an ``error`` or imputed (``impute``);
    ``unknown``: a category never seen in training is an ``error`` or ``unknown`` (index 0)."""

    path: Optional[str] = None
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    key: Literal["path", "tile_id"] = "path"
    key_column: Optional[str] = None
    missing: Literal["error", "impute"] = "error"
    unknown: Literal["error", "unknown"] = "error"


@dataclass
class AuxConfig:
    """A DEM (``--aux DEM.tif``): elevation, slope and aspect on each image's grid, used as
    three extra input ``channels`` or as summary ``features`` of the tabular branch.
    ``pixel_size`` (metres) is needed only when neither the DEM nor the image is
    georeferenced."""

    dem: Optional[str] = None
    use: Literal["channels", "features"] = "features"
    pixel_size: Optional[float] = None


@dataclass
class SizesConfig:
    """A second task: the landslide size class. ``source``: ``mask`` (area of the tile's mask,
    from tiles.csv ``landslide_fraction``; m² when the ground resolution is known, else the
    fraction of the tile) or ``column`` (a text column of the tabular CSV, e.g. NASA
    ``landslide_size``); left out = no size task. ``edges``/``names``/``unit`` set the mask
    classes (defaults in :mod:`slidewatch.sizes`); ``names`` also orders column values.
    ``weight``: the size loss's weight (the landslide loss has ``fusion.weight``).
    ``class_weights``: ``balanced`` weighs each size class by ``n / (k * n_class)`` over the
    training split's labelled tiles (classes without a tile get 0), so a rare class counts as
    much as a common one; ``none`` (default) weighs every tile alike.

    ``source: age`` makes the second task the landslide's age instead (one second task per
    model): classes of the days between the event and the image in ``column`` (a numeric
    column of the tabular CSV, e.g. ``days_from_event`` of ``data from-inventory --stac``),
    binned by ``edges`` in days (default 90 and 365: fresh, recent, old;
    :mod:`slidewatch.data.ages`)."""

    source: Optional[Literal["mask", "column", "age"]] = None
    edges: Optional[list[float]] = None
    names: Optional[list[str]] = None
    unit: Optional[Literal["m2", "fraction"]] = None
    column: str = "landslide_size"
    pixel_size: Optional[float] = None
    weight: float = 1.0
    class_weights: Literal["none", "balanced"] = "none"


@dataclass
class FusionConfig:
    """How image and tabular features are joined. ``mode``: ``fused`` (both branches),
    ``image`` or ``tabular`` (one branch, for comparisons); left out = ``fused`` when there
    are tabular inputs, else ``image``. ``weight``: the landslide loss's weight."""

    mode: Optional[Literal["fused", "image", "tabular"]] = None
    emb_dim: int = 4
    mlp_hidden: int = 64
    fusion_hidden: Optional[int] = None
    dropout: float = 0.1
    weight: float = 1.0


DEFAULT_AGE_COLUMN = "days_from_event"
DEFAULT_AGE_EDGES = (90.0, 365.0)  # days: fresh < 90 <= recent < 365 <= old
DEFAULT_AGE_NAMES = ("fresh", "recent", "old")


def validate_age_edges(edges) -> tuple[float, ...]:
    """Age class edges in days: one or more, finite, above 0, strictly increasing."""
    try:
        out = tuple(float(e) for e in edges)
    except (TypeError, ValueError):
        raise ConfigError(f"--age-edges: edges must be numbers of days, got {list(edges)}"
                          ) from None
    if not out:
        raise ConfigError("--age-edges: give at least one edge (two classes)")
    if not all(math.isfinite(e) and e > 0 for e in out):
        raise ConfigError(f"--age-edges: edges must be finite numbers of days > 0, got "
                          f"{list(out)}")
    if any(a >= b for a, b in zip(out, out[1:])):
        raise ConfigError(f"--age-edges: edges must increase strictly, got {list(out)}")
    return out


def _check(cond: bool, key: str, what: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {what}")


def has_tabular_inputs(cfg) -> bool:
    """Tabular columns from a CSV or terrain features feed a tabular branch (a CSV that only
    holds the size labels does not)."""
    t = cfg.tabular
    return (bool(t.path) and bool([*t.numeric, *t.categorical])) or (
        bool(cfg.aux.dem) and cfg.aux.use == "features")


def is_multimodal(cfg) -> bool:
    """The model is a FusionModel (tabular inputs, a size task, or an explicit fusion mode)."""
    return has_tabular_inputs(cfg) or cfg.sizes.source is not None or cfg.fusion.mode is not None


def validate_multimodal(cfg) -> None:
    """Reject impossible multi-modal settings with a message naming the key."""
    t, a, s, f = cfg.tabular, cfg.aux, cfg.sizes, cfg.fusion
    columns = [*t.numeric, *t.categorical]
    _check(bool(t.path) or not columns, "tabular.numeric",
           "columns need a tabular file (tabular.path, --tabular)")
    _check(not t.path or bool(columns) or s.source in ("column", "age"), "tabular.path",
           "name at least one column (tabular.numeric / tabular.categorical, --numeric / "
           "--categorical), or take size labels from it (sizes.source: column, --size-from "
           "column) or age labels (--age-from COLUMN)")
    _check(len(set(columns)) == len(columns), "tabular.numeric",
           f"a column is named twice in {columns}")
    _check(a.pixel_size is None or a.pixel_size > 0, "aux.pixel_size", "must be > 0 metres")
    _check(bool(a.dem) or a.use == "features", "aux.use", "needs a DEM (aux.dem, --aux)")
    if a.dem and a.use == "channels":
        g = cfg.augment
        _check(not (g.grayscale or g.random_grayscale or g.channel_shuffle), "aux.use",
               "channels cannot be used with augment.grayscale, random_grayscale or "
               "channel_shuffle (they would mix terrain into the image bands)")
    _check(s.source not in ("column", "age") or bool(t.path), "sizes.source",
           f"{s.source} needs the tabular file that holds the column (tabular.path, "
           "--tabular; e.g. the tiles.csv of data from-inventory)")
    _check(s.source != "age" or (s.unit is None and s.pixel_size is None), "sizes.source",
           "age classes are days; sizes.unit and sizes.pixel_size are for size classes")
    _check(s.source is not None or (s.edges is None and s.names is None and s.unit is None),
           "sizes.source", "size classes are set but no source (mask or column) is given")
    _check(s.pixel_size is None or s.pixel_size > 0, "sizes.pixel_size", "must be > 0 metres")
    _check(s.weight >= 0, "sizes.weight", "must be >= 0")
    _check(s.source not in ("column", "age") or s.column not in columns, "sizes.column",
           f"{s.column!r} is also a feature column; the {s.source if s.source == 'age' else 'size'}"
           " label cannot be an input")
    if s.source == "age":
        edges = validate_age_edges(s.edges) if s.edges is not None else None
        n = len(edges) + 1 if edges is not None else len(DEFAULT_AGE_NAMES)
        _check(s.names is None or len(s.names) == n, "sizes.names",
               f"{n} age classes need {n} names, got {len(s.names or [])}")
    if s.source == "mask" and s.edges is not None:
        try:
            validate_edges(s.edges, s.unit or "m2")
        except ConfigError as exc:
            raise ConfigError(f"sizes.edges: {str(exc).split(': ', 1)[-1]}") from None
    for key in ("emb_dim", "mlp_hidden", "fusion_hidden"):
        v = getattr(f, key)
        _check(v is None or 1 <= v <= MAX_WIDTH, f"fusion.{key}",
               f"must be from 1 to {MAX_WIDTH}, got {v}")
    _check(0.0 <= f.dropout < 1.0, "fusion.dropout", "must be in [0, 1)")
    _check(f.weight > 0, "fusion.weight", "must be > 0")
    _check(f.mode not in ("fused", "tabular") or has_tabular_inputs(cfg), "fusion.mode",
           f"{f.mode} needs tabular inputs (--tabular with --numeric/--categorical, or "
           "--aux-as features)")
    _check(not (is_multimodal(cfg) and cfg.model.init_from), "model.init_from",
           "continuing an earlier model is not supported with tabular inputs or a size task")
