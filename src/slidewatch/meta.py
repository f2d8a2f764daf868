"""The model-folder contract: ``slidewatch.json`` beside ``model.safetensors``.

The metadata carries everything needed to rebuild the model and feed it the same pixels it
was trained on (architecture, classes, bands, input size, scale and normalisation, threshold),
plus the training config, best metrics and library versions. Nothing is pickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidewatch.errors import WeightsError
from slidewatch.io_utils import atomic_write_text

WEIGHTS_FILE = "model.safetensors"
META_FILE = "slidewatch.json"
FORMAT_VERSION = 1


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
    extra: dict[str, Any] = field(default_factory=dict)

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
        d.update({k: v for k, v in self.__dict__.items() if k != "extra"})
        d["positive_class"] = self.positive_class
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str) -> "ModelMeta":
        if d.get("format") != "slidewatch-model":
            raise WeightsError(f"{where}: not a slidewatch model description")
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise WeightsError(f"{where}: written by a newer slidewatch (format "
                               f"{d['format_version']}); upgrade slidewatch")
        known = set(cls.__dataclass_fields__) - {"extra"}
        missing = [k for k in ("architecture", "classes", "in_chans", "input_size", "mean", "std")
                   if k not in d]
        if missing:
            raise WeightsError(f"{where}: missing field(s) {', '.join(missing)}")
        skip = known | {"format", "format_version", "positive_class"}
        kwargs = {k: d[k] for k in known if k in d}
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in skip})


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
