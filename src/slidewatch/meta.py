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
# written before these classes existed load unchanged (tests/fixtures/models_v0_1).

TERRAIN_USES = ("channels", "features")


def _need(d: Mapping, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise WeightsError(f"{where}: missing field(s) {', '.join(missing)}")


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
        _need(d, ("mode", "n_numeric", "num_classes"), where)
        return cls(mode=str(d["mode"]), n_numeric=int(d["n_numeric"]),
                   cat_cardinalities=tuple(int(c) for c in d.get("cat_cardinalities", ())),
                   emb_dim=int(d.get("emb_dim", 4)), mlp_hidden=int(d.get("mlp_hidden", 64)),
                   fusion_hidden=d.get("fusion_hidden"), num_classes=int(d["num_classes"]),
                   size_classes=int(d.get("size_classes", 0)),
                   dropout=float(d.get("dropout", 0.1)))


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
        _need(d, ("use",), where)
        if d["use"] not in TERRAIN_USES:
            raise WeightsError(f"{where}: use must be one of {', '.join(TERRAIN_USES)}, "
                               f"got {d['use']!r}")
        return cls(str(d["use"]), d.get("pixel_size"), tuple(d.get("names") or ()),
                   d.get("dem"))


@dataclass(frozen=True)
class SizeSpec:
    """The size head's classes: from masks (``source`` mask: ``edges`` in ``unit``) or from a CSV
    column (``source`` column). ``scheme`` is the whole stored JSON, read back by
    :func:`slidewatch.data.sizes.size_scheme_from_json`; the typed fields are the ones every
    stage needs."""

    source: str
    names: tuple[str, ...]
    pixel_size: float | None
    join: tuple[str, str | None] | None
    train_counts: tuple[int, ...] | None
    scheme: Mapping[str, Any]

    def to_json(self) -> dict:
        return dict(self.scheme)

    @classmethod
    def from_json(cls, d: Mapping, where: str = "sizes") -> SizeSpec:
        _need(d, ("names",), where)
        join = d.get("join")
        counts = d.get("train_counts")
        return cls(str(d.get("source", "mask")), tuple(d["names"]), d.get("pixel_size"),
                   None if join is None else (join[0], join[1]),
                   None if counts is None else tuple(int(c) for c in counts), dict(d))


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
            return parse(value, f"{where}: {key}")

        return cls(tabular=part("tabular", lambda v, _w: dict(v)),
                   terrain=part("aux", TerrainSpec.from_json),
                   sizes=part("sizes", SizeSpec.from_json),
                   fusion=part("fusion", FusionSpec.from_json))


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
    positive_index: int = 0
    drop_rate: float = 0.0
    weights_source: str = "none"
    inputs: InputSpec = field(default_factory=InputSpec)
    extra: dict[str, Any] = field(default_factory=dict)  # training record: config, metrics...

    @property
    def positive_class(self) -> str:
        return self.classes[self.positive_index]

    @property
    def negative_label(self) -> str:
        """Label of a tile below the threshold: the other class, or ``not_<positive>``."""
        rest = [c for i, c in enumerate(self.classes) if i != self.positive_index]
        return rest[0] if len(rest) == 1 else "not_" + self.positive_class

    def to_json(self) -> dict:
        d = {"format": "slidewatch-model", "format_version": FORMAT_VERSION}
        d.update({k: v for k, v in self.__dict__.items() if k not in ("extra", "inputs")})
        d["positive_class"] = self.positive_class
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
        known = set(cls.__dataclass_fields__) - {"extra", "inputs"}
        missing = [k for k in ("architecture", "classes", "in_chans", "input_size", "mean", "std")
                   if k not in d]
        if missing:
            raise WeightsError(f"{where}: missing field(s) {', '.join(missing)}")
        skip = known | {"format", "format_version", "positive_class", *InputSpec.KEYS}
        kwargs = {k: d[k] for k in known if k in d}
        meta = cls(**kwargs, inputs=InputSpec.from_json(d, where),
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
    need(_is_int(m.positive_index) and 0 <= m.positive_index < len(m.classes),
         "positive_index", f"a class index from 0 to {len(m.classes) - 1}", m.positive_index)
    need(_is_number(m.drop_rate) and 0 <= m.drop_rate < 1, "drop_rate",
         "a number from 0 to below 1", m.drop_rate)
    need(isinstance(m.weights_source, str), "weights_source", "a string", m.weights_source)


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
    atomic_write_text(Path(model_dir) / META_FILE, json.dumps(meta.to_json(), indent=2) + "\n")
