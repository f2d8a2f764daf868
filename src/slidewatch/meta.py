"""The model-folder contract: ``slidewatch.json`` beside ``model.safetensors``.

The metadata carries everything needed to rebuild the model and feed it the same pixels it
was trained on (architecture, classes, bands, input size, scale and normalisation, threshold),
plus the training config, best metrics and library versions. Nothing is pickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidewatch.errors import WeightsError
from slidewatch.io_utils import atomic_write_text

WEIGHTS_FILE = "model.safetensors"
META_FILE = "slidewatch.json"
FORMAT_VERSION = 1
MAX_INPUT_SIZE = 4096  # pixels per side; larger inputs do not fit a forward pass on one device
MAX_BANDS = 1024


# ----------------------------------------------------------------------------- model inputs
# What a model takes besides the image bands, typed. The JSON keys are those slidewatch 0.1.0
# wrote at the top level of slidewatch.json ("fusion", "tabular", "aux", "sizes"), so folders
# written before these classes existed load unchanged (tests/fixtures/models_v0_1). Every
# field is checked when it is read: a wrong type or an impossible value is a one-line
# WeightsError naming the file and the field (``field fusion.n_numeric must be ...``).

TERRAIN_USES = ("channels", "features")
FUSION_MODES = ("fused", "image", "tabular")
SIZE_SOURCES = ("mask", "column", "age")  # age: classes of days, a second task like size
SIZE_UNITS = ("m2", "fraction")
JOIN_KEYS = ("path", "tile_id")
MAX_WIDTH = 65536  # widths of a tabular branch: numeric inputs, embedding, MLP, fusion layer
MAX_CATEGORIES = 1_000_000  # categories of one categorical column
MAX_EMBEDDING_WEIGHTS = 2**28  # all embedding tables together (1 GiB of fp32)
_REQUIRED = object()


def _need(d: Mapping, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise WeightsError(f"{where}: missing field(s) {', '.join(missing)}")


def _get(d: Mapping, name: str, where: str, prefix: str, ok, rule: str,
         default: Any = _REQUIRED) -> Any:
    """``d[name]`` when ``ok`` accepts it (``default`` when absent and not required), else
    a WeightsError naming ``where`` and the field ``prefix.name``."""
    if name not in d:
        if default is _REQUIRED:
            raise WeightsError(f"{where}: field {prefix}: missing field(s) {name}")
        return default
    value = d[name]
    if not ok(value):
        raise _field_error(where, f"{prefix}.{name}", rule, value)
    return value


def _getter(d: Mapping, where: str, prefix: str):
    """:func:`_get` bound to one JSON object: ``get(name, ok, rule, default)``."""
    def get(name: str, ok, rule: str, default: Any = _REQUIRED) -> Any:
        return _get(d, name, where, prefix, ok, rule, default)

    return get


def _whole(lo: int, hi: int):
    return lambda v: _is_int(v) and lo <= v <= hi


def _optional(ok):
    return lambda v: v is None or ok(v)


def _is_name(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _is_names(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_name(s) for s in v)


def _is_positive(v: Any) -> bool:
    return _is_number(v) and v > 0


def _is_fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v < 1


def _split(where: str) -> tuple[str, str]:
    """``"<file>: field fusion"`` -> (``"<file>"``, ``"fusion"``); a bare key stays the key."""
    head, sep, key = where.rpartition(": field ")
    return (head, key) if sep else ("model metadata", where)


@dataclass(frozen=True)
class FusionSpec:
    """The FusionModel around the image backbone (:func:`slidewatch.models.fusion.build_fusion`):
    ``mode`` fused / image / tabular, the tabular branch's sizes and the size head's classes."""

    mode: str
    n_numeric: int
    cat_cardinalities: tuple[int, ...]
    emb_dim: int
    mlp_hidden: int
    fusion_hidden: int | None
    num_classes: int
    size_classes: int
    dropout: float

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["cat_cardinalities"] = list(self.cat_cardinalities)
        return d

    @classmethod
    def from_json(cls, d: Mapping, where: str = "fusion") -> FusionSpec:
        file, key = _split(where)
        _need(d, ("mode", "n_numeric", "num_classes"), where)
        get = _getter(d, file, key)

        width = f"a whole number from 1 to {MAX_WIDTH}"
        mode = get("mode", lambda v: v in FUSION_MODES, f"one of {', '.join(FUSION_MODES)}")
        n_numeric = get("n_numeric", _whole(0, MAX_WIDTH),
                        f"a whole number from 0 to {MAX_WIDTH}")
        cards = get("cat_cardinalities", lambda v: isinstance(v, (list, tuple)) and all(
            _whole(2, MAX_CATEGORIES)(c) for c in v),
            f"a list of whole numbers from 2 to {MAX_CATEGORIES}", ())
        emb_dim = get("emb_dim", _whole(1, MAX_WIDTH), width, 4)
        spec = cls(mode=mode, n_numeric=n_numeric, cat_cardinalities=tuple(cards),
                   emb_dim=emb_dim, mlp_hidden=get("mlp_hidden", _whole(1, MAX_WIDTH), width, 64),
                   fusion_hidden=get("fusion_hidden", _optional(_whole(1, MAX_WIDTH)),
                                     f"null or {width}", None),
                   num_classes=get("num_classes", _whole(2, MAX_WIDTH),
                                   f"a whole number from 2 to {MAX_WIDTH}"),
                   size_classes=get("size_classes", lambda v: _whole(0, MAX_WIDTH)(v) and v != 1,
                                    "0 (no size head) or a whole number of classes from 2", 0),
                   dropout=float(get("dropout", _is_fraction, "a number from 0 to below 1", 0.1)))
        if mode != "image" and n_numeric + len(cards) == 0:
            raise _field_error(file, f"{key}.mode", "image when there are no tabular inputs "
                               "(n_numeric and cat_cardinalities)", mode)
        if sum(cards) * emb_dim > MAX_EMBEDDING_WEIGHTS:
            raise _field_error(file, f"{key}.emb_dim", "small enough for embedding tables of "
                               f"at most {MAX_EMBEDDING_WEIGHTS} weights", emb_dim)
        return spec


@dataclass(frozen=True)
class TerrainSpec:
    """Terrain from a DEM: ``channels`` (elevation, slope, aspect appended to the image bands)
    or summary ``features`` (tabular inputs); ``pixel_size`` in metres for images without a
    georeference; ``dem`` the training DEM (for the record). JSON key ``aux``."""

    use: str
    pixel_size: float | None = None
    names: tuple[str, ...] = ()
    dem: str | None = None

    @property
    def channels(self) -> int:
        return len(self.names) if self.use == "channels" else 0

    def to_json(self) -> dict:
        return {"use": self.use, "pixel_size": self.pixel_size, "names": list(self.names),
                "dem": self.dem}

    @classmethod
    def from_json(cls, d: Mapping, where: str = "aux") -> TerrainSpec:
        file, key = _split(where)
        _need(d, ("use",), where)
        get = _getter(d, file, key)

        use = get("use", lambda v: v in TERRAIN_USES, f"one of {', '.join(TERRAIN_USES)}")
        names = get("names", _optional(_is_names), "a list of channel or feature names", None)
        if use == "channels" and not names:
            raise _field_error(file, f"{key}.names", "the terrain channels' names", names)
        return cls(use, get("pixel_size", _optional(_is_positive),
                            "null or a finite number of metres above 0", None),
                   tuple(names or ()),
                   get("dem", _optional(lambda v: isinstance(v, str)), "null or a path", None))


@dataclass(frozen=True)
class SizeSpec:
    """The size head's classes: from masks (``source`` mask: ``edges`` in ``unit``) or from a CSV
    column (``source`` column). ``scheme`` is the whole stored JSON, read back by
    :func:`slidewatch.data.sizes.size_scheme_from_json`; the typed fields are the ones every
    stage needs. ``source`` age: the head predicts age classes (days between the event and the
    image, :mod:`slidewatch.data.ages`) instead of size classes; :attr:`task` names it."""

    source: str
    names: tuple[str, ...]
    pixel_size: float | None
    join: tuple[str, str | None] | None
    train_counts: tuple[int, ...] | None
    scheme: Mapping[str, Any]

    @property
    def task(self) -> str:
        """The second task's name in outputs: ``age`` or ``size``."""
        return "age" if self.source == "age" else "size"

    def to_json(self) -> dict:
        return dict(self.scheme)

    @classmethod
    def from_json(cls, d: Mapping, where: str = "sizes") -> SizeSpec:
        file, key = _split(where)
        _need(d, ("names",), where)
        get = _getter(d, file, key)

        names = get("names", lambda v: _is_names(v) and len(v) >= 2 and len(set(v)) == len(v),
                    "a list of two or more distinct class names")
        source = get("source", lambda v: v in SIZE_SOURCES, f"one of {', '.join(SIZE_SOURCES)}",
                     "mask")
        def edges(v) -> bool:  # one fewer than names, above 0, strictly increasing
            return (isinstance(v, (list, tuple)) and len(v) == len(names) - 1
                    and all(_is_positive(e) for e in v) and all(a < b for a, b in zip(v, v[1:])))

        if source == "mask":
            get("unit", lambda v: v in SIZE_UNITS, f"one of {', '.join(SIZE_UNITS)}")
            get("edges", edges, f"a list of {len(names) - 1} increasing finite numbers above 0 "
                "(one fewer than names)")
        elif source == "age":
            get("column", _is_name, "the name of the column of days")
            get("unit", lambda v: v == "days", "days", "days")
            get("edges", edges, f"a list of {len(names) - 1} increasing numbers of days above 0 "
                "(one fewer than names)")
        else:
            get("column", _is_name, "the name of the size column")
            get("aliases", lambda v: isinstance(v, Mapping) and all(
                isinstance(a, str) and isinstance(b, str) for a, b in v.items()),
                "an object of text to class name", {})
            get("ignored", lambda v: isinstance(v, (list, tuple)) and all(
                isinstance(s, str) for s in v), "a list of texts", ())
        join = get("join", _optional(lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                                     and v[0] in JOIN_KEYS and (v[1] is None or _is_name(v[1]))),
                   f"null or [key, column] with key one of {', '.join(JOIN_KEYS)}", None)
        counts = get("train_counts", _optional(lambda v: isinstance(v, (list, tuple))
                                               and len(v) == len(names)
                                               and all(_whole(0, 2**63)(c) for c in v)),
                     f"null or a list of {len(names)} whole numbers >= 0", None)
        pixel_size = get("pixel_size", _optional(_is_positive),
                         "null or a finite number of metres above 0", None)
        return cls(source, tuple(names), pixel_size,
                   None if join is None else (join[0], join[1]),
                   None if counts is None else tuple(counts), dict(d))


def check_tabular(d: Mapping, where: str = "tabular") -> dict:
    """The fitted tabular encoder's JSON (:meth:`slidewatch.data.tabular.TabularEncoder.to_json`)
    checked field by field; returned as a plain dict."""
    file, key = _split(where)

    def get(obj, name, prefix, ok, rule, default=_REQUIRED):
        return _get(obj, name, file, prefix, ok, rule, default)

    def mapping(v):
        return isinstance(v, Mapping)

    get(d, "format", key, lambda v: v == "slidewatch-tabular", "'slidewatch-tabular'")
    version = get(d, "format_version", key, _is_int, "a whole number", 0)
    if version > 1:
        raise WeightsError(f"{file}: field {key} was written by a newer slidewatch (tabular "
                           f"format {version}); upgrade slidewatch")
    spec = get(d, "spec", key, mapping, "an object")
    sk = f"{key}.spec"
    numeric = get(spec, "numeric", sk, _is_names, "a list of column names", [])
    categorical = get(spec, "categorical", sk, _is_names, "a list of column names", [])
    columns = [*numeric, *categorical]
    if not columns or len(set(columns)) != len(columns):
        raise _field_error(file, sk, "one or more distinct numeric and categorical columns",
                           columns)
    get(spec, "key", sk, lambda v: v in JOIN_KEYS, f"one of {', '.join(JOIN_KEYS)}", "path")
    get(spec, "key_column", sk, _optional(_is_name), "null or a column name", None)
    get(spec, "missing", sk, lambda v: v in ("error", "impute"), "error or impute", "error")
    get(spec, "unknown", sk, lambda v: v in ("error", "unknown"), "error or unknown", "error")
    stats = get(d, "numeric", key, mapping, "an object of column statistics")
    for c in numeric:
        s = get(stats, c, f"{key}.numeric", mapping, "an object with mean and std")
        get(s, "mean", f"{key}.numeric.{c}", _is_number, "a finite number")
        get(s, "std", f"{key}.numeric.{c}", _is_positive, "a finite number above 0")
    vocab = get(d, "categorical", key, mapping, "an object of vocabularies")
    for c in categorical:
        v = get(vocab, c, f"{key}.categorical", mapping, "an object with vocabulary and fill")
        get(v, "vocabulary", f"{key}.categorical.{c}",
            lambda x: isinstance(x, list) and 2 <= len(x) <= MAX_CATEGORIES
            and all(isinstance(t, str) for t in x),
            f"a list of 2 to {MAX_CATEGORIES} category names (the first for unknown ones)")
        get(v, "fill", f"{key}.categorical.{c}", lambda x: isinstance(x, str), "a category name")
    get(d, "indicators", key, lambda v: isinstance(v, list) and all(c in numeric for c in v),
        "a list of numeric column names")
    get(d, "n_train", key, _whole(0, 2**63), "a whole number >= 0")
    return dict(d)


@dataclass(frozen=True)
class InputSpec:
    """Everything a model takes besides its image bands. ``tabular`` is the fitted encoder's
    JSON (:meth:`slidewatch.data.tabular.TabularEncoder.to_json`: columns, training statistics,
    vocabularies, join key). All None: a plain image model."""

    tabular: Mapping[str, Any] | None = None
    terrain: TerrainSpec | None = None
    sizes: SizeSpec | None = None
    fusion: FusionSpec | None = None

    KEYS = ("fusion", "tabular", "aux", "sizes")  # their keys in slidewatch.json

    @property
    def plain(self) -> bool:
        """An image-only model (no FusionModel, no terrain channels or features)."""
        return self.fusion is None and self.terrain is None

    @property
    def extra_channels(self) -> int:
        """Bands appended to the image (terrain channels)."""
        return self.terrain.channels if self.terrain is not None else 0

    def to_json(self) -> dict:
        d: dict[str, Any] = {}
        if self.fusion is not None:
            d["fusion"] = self.fusion.to_json()
        if self.tabular is not None:
            d["tabular"] = dict(self.tabular)
        if self.terrain is not None:
            d["aux"] = self.terrain.to_json()
        if self.sizes is not None:
            d["sizes"] = self.sizes.to_json()
        return d

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> InputSpec:
        def part(key, parse):
            value = d.get(key)
            if value is None:
                return None
            if not isinstance(value, Mapping):
                raise WeightsError(f"{where}: field {key} must be an object")
            return parse(value, f"{where}: field {key}")

        return cls(tabular=part("tabular", check_tabular),
                   terrain=part("aux", TerrainSpec.from_json),
                   sizes=part("sizes", SizeSpec.from_json),
                   fusion=part("fusion", FusionSpec.from_json))


TASKS = ("classify", "segment")
STANDARDIZE_RULES = ("none", "image")  # see slidewatch.data.standardize


@dataclass(frozen=True)
class SegmentationSpec:
    """How a segmentation model answers the tile question: a tile (or image) is a landslide
    when at least ``min_area_pixels`` of its pixels (counted at the model's input resolution)
    have a landslide probability >= the tile threshold: ``tile_threshold`` when set (chosen
    for a target recall), else the model's ``threshold``, which always draws the pixel maps.
    Its tile score is the ``min_area_pixels``-th largest pixel probability, so score >= the
    tile threshold is the same rule. ``min_area_source``: ``validation`` (chosen on the
    validation split), ``target_recall`` (chosen with ``tile_threshold``), ``default``,
    ``config`` or ``ensemble``."""

    min_area_pixels: int
    min_area_source: str = "default"
    tile_threshold: float | None = None

    def to_json(self) -> dict:
        out = {"min_area_pixels": self.min_area_pixels, "min_area_source": self.min_area_source,
               "tile_rule": "landslide when min_area_pixels pixels reach the threshold"}
        if self.tile_threshold is not None:
            out["tile_threshold"] = self.tile_threshold
            out["tile_rule"] = ("landslide when min_area_pixels pixels reach tile_threshold "
                                "(the pixel maps use the model's threshold)")
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str = "segmentation") -> SegmentationSpec:
        get = _getter(d, *_split(where))
        return cls(min_area_pixels=get("min_area_pixels", _whole(1, 2**40),
                                       "a whole number of pixels >= 1"),
                   min_area_source=get("min_area_source", _is_name, "a name", "default"),
                   tile_threshold=get("tile_threshold",
                                      _optional(lambda v: _is_number(v) and 0 < v < 1),
                                      "a number between 0 and 1 (exclusive)", None))


@dataclass
class ModelMeta:
    architecture: str
    classes: list[str]
    in_chans: int
    input_size: int
    mean: list[float]
    std: list[float]
    scale: float | None = None
    grayscale: bool = False
    threshold: float = 0.5
    # logits are divided by it before softmax / sigmoid (temperature scaling fitted on
    # validation data); 1.0 = none, and then not written, as 0.1.0 wrote folders
    temperature: float = 1.0
    # per-image radiometric standardisation (slidewatch.data.standardize): "none", or "image"
    # (each band by the whole source image's mean and std); "none" is not written
    standardize: str = "none"
    positive_index: int = 0
    drop_rate: float = 0.0
    weights_source: str = "none"
    inputs: InputSpec = field(default_factory=InputSpec)
    task: str = "classify"  # "segment": a per-pixel landslide map (field segmentation)
    segmentation: SegmentationSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # training record: config, metrics...

    @property
    def positive_class(self) -> str:
        return self.classes[self.positive_index]

    def tile_threshold(self, threshold: float | None = None) -> float:
        """The threshold of tile decisions: ``threshold`` when given (a user's flag sets tiles
        and pixels alike), else a segmentation model's ``tile_threshold`` when it has one,
        else the model's ``threshold``."""
        if threshold is not None:
            return float(threshold)
        spec = self.segmentation
        if spec is not None and spec.tile_threshold is not None:
            return float(spec.tile_threshold)
        return float(self.threshold)

    @property
    def negative_label(self) -> str:
        """Label of a tile below the threshold: the other class, or ``not_<positive>``."""
        rest = [c for i, c in enumerate(self.classes) if i != self.positive_index]
        return rest[0] if len(rest) == 1 else "not_" + self.positive_class

    def to_json(self) -> dict:
        d = {"format": "slidewatch-model", "format_version": FORMAT_VERSION}
        d.update({k: v for k, v in self.__dict__.items()
                  if k not in ("extra", "inputs", "segmentation")})
        if self.task == "classify":  # classifiers' folders stay as 0.1.0 wrote them
            del d["task"]
        if self.temperature == 1.0:
            del d["temperature"]
        if self.standardize == "none":
            del d["standardize"]
        d["positive_class"] = self.positive_class
        if self.segmentation is not None:
            d["segmentation"] = self.segmentation.to_json()
        d.update(self.inputs.to_json())
        d.update({k: v for k, v in self.extra.items() if k not in InputSpec.KEYS})
        return d

    @classmethod
    def from_json(cls, d: dict, where: str) -> "ModelMeta":
        if not isinstance(d, dict):
            raise WeightsError(f"{where}: must hold a JSON object, got a JSON "
                               f"{type(d).__name__}")
        if d.get("format") != "slidewatch-model":
            raise WeightsError(f"{where}: not a slidewatch model description")
        version = d.get("format_version", 0)
        if not _is_int(version):
            raise _field_error(where, "format_version", "a whole number", version)
        if version > FORMAT_VERSION:
            raise WeightsError(f"{where}: written by a newer slidewatch (format "
                               f"{d['format_version']}); upgrade slidewatch")
        known = set(cls.__dataclass_fields__) - {"extra", "inputs", "segmentation"}
        missing = [k for k in ("architecture", "classes", "in_chans", "input_size", "mean", "std")
                   if k not in d]
        if missing:
            raise WeightsError(f"{where}: missing field(s) {', '.join(missing)}")
        skip = known | {"format", "format_version", "positive_class", "segmentation",
                        *InputSpec.KEYS}
        kwargs = {k: d[k] for k in known if k in d}
        seg = d.get("segmentation")
        if seg is not None:
            if not isinstance(seg, Mapping):
                raise WeightsError(f"{where}: field segmentation must be an object")
            seg = SegmentationSpec.from_json(seg, f"{where}: field segmentation")
        meta = cls(**kwargs, inputs=InputSpec.from_json(d, where), segmentation=seg,
                   extra={k: v for k, v in d.items() if k not in skip})
        validate_meta(meta, where)
        return meta


def _field_error(where: str, name: str, rule: str, value: Any) -> WeightsError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return WeightsError(f"{where}: field {name} must be {rule}, got {shown}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_meta(m: ModelMeta, where: str) -> None:
    """The whole model-folder contract, checked in one place when a folder is read: a one-line
    WeightsError naming the file, the field and what it must be."""
    def need(ok: bool, name: str, rule: str, value: Any) -> None:
        if not ok:
            raise _field_error(where, name, rule, value)

    need(isinstance(m.architecture, str) and bool(m.architecture), "architecture",
         "a model name", m.architecture)
    need(isinstance(m.classes, list) and len(m.classes) >= 2
         and all(isinstance(c, str) and c for c in m.classes)
         and len(set(m.classes)) == len(m.classes), "classes",
         "a list of two or more distinct names", m.classes)
    need(_is_int(m.in_chans) and 1 <= m.in_chans <= MAX_BANDS, "in_chans",
         f"a whole number of bands between 1 and {MAX_BANDS}", m.in_chans)
    need(_is_int(m.input_size) and 8 <= m.input_size <= MAX_INPUT_SIZE, "input_size",
         f"a whole number of pixels between 8 and {MAX_INPUT_SIZE}", m.input_size)
    for name, values, positive in (("mean", m.mean, False), ("std", m.std, True)):
        need(isinstance(values, list) and len(values) == m.in_chans
             and all(_is_number(v) and (v > 0 or not positive) for v in values), name,
             f"a list of {m.in_chans} finite numbers" + (" above 0" if positive else ""), values)
    need(m.scale is None or (_is_number(m.scale) and m.scale > 0), "scale",
         "null or a finite number above 0", m.scale)
    need(isinstance(m.grayscale, bool), "grayscale", "true or false", m.grayscale)
    need(_is_number(m.threshold) and 0 < m.threshold < 1, "threshold",
         "a number between 0 and 1 (exclusive)", m.threshold)
    need(_is_number(m.temperature) and 0.05 <= m.temperature <= 20, "temperature",
         "a number from 0.05 to 20", m.temperature)
    need(m.standardize in STANDARDIZE_RULES, "standardize",
         " or ".join(STANDARDIZE_RULES), m.standardize)
    need(_is_int(m.positive_index) and 0 <= m.positive_index < len(m.classes),
         "positive_index", f"a class index from 0 to {len(m.classes) - 1}", m.positive_index)
    need(_is_number(m.drop_rate) and 0 <= m.drop_rate < 1, "drop_rate",
         "a number from 0 to below 1", m.drop_rate)
    need(isinstance(m.weights_source, str), "weights_source", "a string", m.weights_source)
    need(m.task in TASKS, "task", " or ".join(TASKS), m.task)
    if m.task == "segment":
        if m.segmentation is None:
            raise WeightsError(f"{where}: field segmentation is missing (a segment model's "
                               "tile rule)")
        if not m.inputs.plain:
            raise WeightsError(f"{where}: a segment model takes image bands only (no fusion, "
                               "tabular or terrain inputs)")
    if m.standardize != "none" and not m.inputs.plain:
        raise WeightsError(f"{where}: field standardize {m.standardize} applies to image-only "
                           "models (no fusion, tabular or terrain inputs)")
    _check_inputs(m, where)


def _check_inputs(m: ModelMeta, where: str) -> None:
    """The parts of ``m.inputs`` agree with each other and with the model (each part's own
    fields were checked when it was read)."""
    i = m.inputs
    f, t, s = i.fusion, i.terrain, i.sizes
    features = t is not None and t.use == "features"
    if f is None:
        for part, name in ((i.tabular, "tabular"), (s, "sizes"), (features or None, "aux")):
            if part is not None:
                raise WeightsError(f"{where}: field {name} needs field fusion (the model's "
                                   "tabular branch or size head), which is missing")
    else:
        if f.num_classes != len(m.classes):
            raise _field_error(where, "fusion.num_classes", f"{len(m.classes)}, one per class",
                               f.num_classes)
        if f.mode != "image" and i.tabular is None and not features:
            raise WeightsError(f"{where}: field fusion.mode {f.mode} needs field tabular or "
                               "terrain features (field aux), which are missing")
        n_sizes = len(s.names) if s is not None else 0
        if f.size_classes != n_sizes:
            raise _field_error(where, "fusion.size_classes", f"{n_sizes}, the number of size "
                               "classes in field sizes", f.size_classes)
    if i.extra_channels >= m.in_chans:
        raise _field_error(where, "in_chans", f"more than the {i.extra_channels} terrain "
                           "channels of field aux", m.in_chans)


def library_versions() -> dict[str, str]:
    import numpy
    import timm
    import torch

    import slidewatch

    return {
        "slidewatch": slidewatch.__version__, "torch": torch.__version__,
        "timm": timm.__version__, "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read_meta(model_dir: str | Path) -> ModelMeta:
    model_dir = Path(model_dir)
    path = model_dir / META_FILE
    if model_dir.is_file() and model_dir.suffix.lower() == ".onnx":
        raise WeightsError(f"{model_dir}: an ONNX file (slidewatch export); this needs the model "
                           "folder it was exported from (predict, evaluate and scan run .onnx "
                           "files)")
    if not model_dir.is_dir():
        raise WeightsError(f"{model_dir}: model folder not found")
    if not path.is_file():
        raise WeightsError(f"{model_dir}: not a slidewatch model folder (no {META_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WeightsError(f"{path}: not valid JSON") from None
    return ModelMeta.from_json(data, str(path))


def write_meta(model_dir: str | Path, meta: ModelMeta) -> None:
    """Write ``slidewatch.json`` atomically, after checking it against the contract (a folder
    that could not be read back is never written)."""
    path = Path(model_dir) / META_FILE
    validate_meta(meta, str(path))
    atomic_write_text(path, json.dumps(meta.to_json(), indent=2) + "\n")
