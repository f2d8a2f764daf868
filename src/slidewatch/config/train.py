"""Configuration: dataclasses for every setting, loaded from YAML and overridden by flags.

Precedence: dataclass defaults < ``--config FILE.yaml`` < command-line flags. Unknown keys,
keys given twice, wrong types and impossible values (NaN, infinities, out-of-range numbers) are
``ConfigError``s that name the file or the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from slidewatch.config.multimodal import (
    AuxConfig,
    FusionConfig,
    SizesConfig,
    TabularConfig,
    is_multimodal,
    validate_multimodal,
)
from slidewatch.errors import ConfigError
from slidewatch.meta import MAX_INPUT_SIZE

OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
SCHEDULES = ("cosine", "constant", "step")
STOP_METRICS = ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_f2")
# validation metrics of a segmentation run (pixels of the landslide class)
SEGMENT_METRICS = ("val_loss", "val_iou", "val_f1", "val_precision", "val_recall", "val_mcc")
SEGMENT_LOSSES = ("bce_dice", "focal_dice", "bce", "dice", "bce_lovasz")


@dataclass
class DataConfig:
    """Which tiles to train on and how to split them (by image or region, never by tile).

    ``paths`` are class-folder datasets, or scene folders (``images/`` + ``masks/``) that are
    tiled first with ``tile``, ``stride`` and ``min_landslide``. ``$VARS`` are expanded.
    """

    paths: list[str] = field(default_factory=list)
    tile: int = 224
    stride: int = 224
    min_landslide: float = 0.05
    classes: list[str] = field(default_factory=lambda: ["landslide", "non_landslide"])
    split_by: Literal["image", "region", "tile"] = "image"
    val_fraction: float = 0.2
    holdout_regions: list[str] = field(default_factory=list)
    # regions used whole as the validation split (never trained on): early stopping, the
    # temperature and the threshold are then chosen on regions the model did not see
    val_regions: list[str] = field(default_factory=list)
    split_file: Optional[str] = None
    scale: Optional[float] = None
    # per-image radiometric standardisation: "image" = each band by the whole source image's
    # mean and std (slidewatch.data.standardize), stored in the model and applied everywhere
    standardize: Literal["none", "image"] = "none"
    cache: bool = True
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Architecture, starting weights and input geometry."""

    name: str = "efficientnet_b3"
    weights: str = "imagenet"
    input_size: Optional[int] = None
    drop_rate: float = 0.3
    init_from: Optional[str] = None
    # "none": when ``weights: imagenet`` cannot be had (offline, not cached), start from random
    # weights with a warning instead of failing; the model records what it really started from.
    weights_fallback: Optional[str] = None


@dataclass
class AugmentConfig:
    """Training-only augmentation; each part can be switched off. ``resize``/``crop`` follow the
    study (resize to 350, random crop 300); ``crop`` defaults to the model's input size.
    ``random_grayscale`` and ``channel_shuffle`` are probabilities per image (robustness to
    other sensors and band composites); ``grayscale`` turns every image grey, at training and
    at prediction time.

    Sensor and radiometry changes (all off by default; on the image bands only, never the
    mask): ``gain`` / ``offset`` draw a factor in [1 - gain, 1 + gain] and a shift in
    [-offset, offset] per band; ``gamma`` a gamma in [1 / (1 + gamma), 1 + gamma]
    (log-uniform); ``hue`` rotates hue by up to that fraction of the colour circle;
    ``false_colour`` is the probability of a simulated near-infrared false-colour composite
    (NIR-R-G as GeoEye or Landsat colour-infrared, or R-NIR-G with vegetation green);
    ``blur`` / ``sharpen`` probabilities of a Gaussian blur (sigma 0.5-1.5 px) or an unsharp
    mask; ``noise`` the largest standard deviation of Gaussian noise; ``jpeg`` the
    probability of JPEG re-encoding at quality 30-90; ``resolution`` [low, high]: the ground
    resolution changes by a factor drawn log-uniformly in that range (2 = pixels twice as
    coarse: the scene shrinks to half size and is reflected at the border), image and mask
    together. ``mixstyle``: the probability, per batch and stage, of MixStyle in the first
    three backbone stages (feature statistics mixed between the batch's images,
    :mod:`slidewatch.models.mixstyle`); training only, the saved model is a plain one."""

    enabled: bool = True
    resize: Optional[int] = None
    crop: Optional[int] = None
    hflip: bool = True
    vflip: bool = True
    rotate90: bool = False
    translate: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    random_grayscale: float = 0.0
    channel_shuffle: float = 0.0
    grayscale: bool = False
    gain: float = 0.0
    offset: float = 0.0
    gamma: float = 0.0
    hue: float = 0.0
    false_colour: float = 0.0
    blur: float = 0.0
    sharpen: float = 0.0
    noise: float = 0.0
    jpeg: float = 0.0
    resolution: Optional[list[float]] = None
    mixstyle: float = 0.0


@dataclass
class PhaseConfig:
    """One training phase. Phase 1 trains the head on a frozen backbone; phase 2 fine-tunes the
    top ``unfreeze_layers`` layers (Keras counting) or ``unfreeze_blocks`` stages."""

    epochs: int = 3
    lr: float = 1e-3
    unfreeze_layers: Optional[int] = None
    unfreeze_blocks: Optional[int] = None
    patience: Optional[int] = None


@dataclass
class SegmentConfig:
    """Settings of ``task: segment`` (pixel maps learnt from the masks).

    ``loss``: BCE (or focal) plus soft Dice on the landslide pixels, or BCE plus the Lovasz
    hinge (``bce_lovasz``, a surrogate of 1 - IoU); ``pos_weight``: weight of
    landslide pixels in the BCE part, ``auto`` = sqrt(background / landslide pixels) of the
    training masks (capped at 10), or a number, or ``none``. Scene folders give
    ``crops_per_image`` random crops per epoch, a share ``positive_share`` of them centred on a
    landslide pixel; with landslide-free images in the data (class folders), the same share of
    the training draws shows a landslide. ``min_area``: pixels a tile needs above the
    threshold to be a landslide tile; ``auto`` chooses it on the validation split (Youden's J,
    at most 0.5% of the input area: larger areas learnt on the training regions do not
    transfer to new ones), else a whole number."""

    loss: Literal["bce_dice", "focal_dice", "bce", "dice", "bce_lovasz"] = "bce_dice"
    pos_weight: Union[str, float] = "auto"
    crops_per_image: int = 8
    positive_share: float = 0.5
    min_area: Union[str, int] = "auto"


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "adamw", "nadam", "rmsprop", "sgd"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    """Everything ``slidewatch train`` needs; mirrors the command-line flags.

    ``steps_per_epoch`` caps an epoch at that many batches (a random subset of a large
    training set each epoch, as Keras' ``steps_per_epoch``); ``None`` = one full pass.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    phase1: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=3, lr=1e-3))
    phase2: PhaseConfig = field(
        default_factory=lambda: PhaseConfig(epochs=10, lr=1e-4, unfreeze_layers=20)
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    tabular: TabularConfig = field(default_factory=TabularConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    sizes: SizesConfig = field(default_factory=SizesConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    task: Literal["classify", "segment"] = "classify"
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    batch_size: int = 32
    steps_per_epoch: Optional[int] = None
    class_weights: Union[str, list[float]] = "balanced"
    early_stopping_metric: Literal[
        "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_f2",
        "val_iou", "val_mcc"
    ] = "val_f1"
    patience: int = 5
    threshold: float = 0.5
    target_recall: Optional[float] = None
    # "temperature": temperature scaling of the logits fitted on the validation split
    calibration: Literal["none", "temperature"] = "none"
    # the hard-negative pass: after the phases, the N highest-scoring landslide-free training
    # items are drawn ``hard_negative_share`` of the time for ``hard_negative_epochs`` more
    # epochs at phase 2's settings (0: no pass)
    hard_negatives: int = 0
    hard_negative_epochs: int = 1
    hard_negative_share: float = 0.25
    # "validation": the best epoch of all phases is kept (the pass may be dropped);
    # "always": the model is the last epoch of the pass
    hard_negative_keep: Literal["validation", "always"] = "validation"
    # weight of the training-only mask loss of a classifier (0: none): a 1x1 head on the
    # backbone's last feature map learns the landslide share of each cell from the masks that
    # tiles and class folders carry (slidewatch.training.mask_loss); never saved
    mask_loss: float = 0.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        where = prefix or "config"
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in names), key=str)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"unknown config key '{key}'; known keys here: "
                          f"{', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def from_dict(data: dict, cls: type = TrainConfig) -> Any:
    """Build and validate a config from a plain mapping (as read from YAML)."""
    cfg = _from_dict(cls, data)
    validate(cfg)
    return cfg


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently). Keys brought in by a merge (``<<: *anchor``) may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or \
                        not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark.line + 1)
                    seen.add(key)
                except TypeError:  # unhashable: the base class reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a mapping; errors name the file (and the line where the
    YAML parser knows it): not found, not UTF-8, not YAML, a key given twice, not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        utf16 = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})"
                          f"{utf16}; save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: line {exc.line}: key '{exc.key}' appears twice") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` (e.g. from flags; ``None`` values ignored) into ``base``."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, dict):
            out[key] = merge({}, value)
        else:
            out[key] = value
    return out


MULTIMODAL_SECTIONS = {"tabular": TabularConfig, "aux": AuxConfig, "sizes": SizesConfig,
                       "fusion": FusionConfig}


def to_dict(cfg: Any) -> dict:
    """The config as plain data; multi-modal sections left at their defaults are left out, and
    so are ``task`` and ``segment`` of a classification run, so that plain runs describe
    themselves (config.yaml, metadata) exactly as before."""
    data = dataclasses.asdict(cfg)
    if isinstance(cfg, TrainConfig):
        for key, cls in MULTIMODAL_SECTIONS.items():
            if data.get(key) == dataclasses.asdict(cls()):
                del data[key]
        if cfg.task == "classify" and data.get("segment") == dataclasses.asdict(SegmentConfig()):
            del data["task"], data["segment"]
        for path, default in LATER_KEYS.items():  # added after 0.1.0: left out when unused
            *parents, leaf = path.split(".")
            node = data
            for p in parents:
                node = node[p]
            if node.get(leaf) == default:
                del node[leaf]
    return data


# keys added by later versions, with their defaults: a run that does not use them writes
# config.yaml and its metadata as the versions before them did
LATER_KEYS = {"calibration": "none", "data.val_regions": [], "data.standardize": "none",
              "hard_negatives": 0,
              "hard_negative_epochs": 1, "hard_negative_share": 0.25,
              "hard_negative_keep": "validation",
              **{f"augment.{k}": 0.0 for k in ("gain", "offset", "gamma", "hue",
                                                "false_colour", "blur", "sharpen", "noise",
                                                "jpeg")},
              "augment.resolution": None}


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _check(cond: bool, key: str, what: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {what}")


def _check_finite(obj: Any, prefix: str = "") -> None:
    """Every float of the config (and of its lists) is a finite number: NaN and infinities,
    which YAML (``.nan``, ``.inf``) and float flags (``nan``, ``inf``) both accept, are
    refused before any range check could let them through."""
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
            continue
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, v in items:
            if isinstance(v, float) and not math.isfinite(v):
                where = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"{where}: must be a finite number, got {v}")


def validate(cfg: TrainConfig) -> None:
    """Reject impossible values with a message naming the key."""
    _check_finite(cfg)
    d, a = cfg.data, cfg.augment
    _check(d.tile > 0, "data.tile", "must be > 0")
    _check(d.stride > 0, "data.stride", "must be > 0")
    _check(0.0 <= d.min_landslide <= 1.0, "data.min_landslide", "must be in [0, 1]")
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    both = sorted(set(d.val_regions) & set(d.holdout_regions))
    _check(not both, "data.val_regions", f"{', '.join(both)} also held out (test); a region "
           "is validation or test, not both")
    _check(len(d.classes) >= 2, "data.classes", "needs at least two class names")
    _check(len(set(d.classes)) == len(d.classes), "data.classes", "names must differ")
    _check(d.scale is None or d.scale > 0, "data.scale", "must be > 0")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.standardize == "none" or not (is_multimodal(cfg) or cfg.aux.dem),
           "data.standardize", "image applies to image-only models; leave out tabular, aux "
           "(terrain), sizes and fusion inputs")
    _check(cfg.model.input_size is None or 8 <= cfg.model.input_size <= MAX_INPUT_SIZE,
           "model.input_size", f"must be from 8 to {MAX_INPUT_SIZE} pixels, got "
           f"{cfg.model.input_size}")
    _check(0.0 <= cfg.model.drop_rate < 1.0, "model.drop_rate", "must be in [0, 1)")
    _check(cfg.model.weights_fallback in (None, "none"), "model.weights_fallback",
           "must be 'none' or left out")
    for key in ("resize", "crop"):
        v = getattr(a, key)
        _check(v is None or 8 <= v <= MAX_INPUT_SIZE, f"augment.{key}",
               f"must be from 8 to {MAX_INPUT_SIZE} pixels, got {v}")
    _check(0.0 <= a.translate < 0.5, "augment.translate", "must be in [0, 0.5)")
    for key in ("brightness", "contrast", "saturation", "random_grayscale", "channel_shuffle",
                "gain", "false_colour", "blur", "sharpen", "jpeg"):
        _check(0.0 <= getattr(a, key) < 1.0, f"augment.{key}", "must be in [0, 1)")
    for key, top in (("offset", 0.5), ("noise", 0.5), ("hue", 0.5), ("gamma", 2.0),
                     ("mixstyle", 1.0)):
        _check(0.0 <= getattr(a, key) <= top, f"augment.{key}", f"must be in [0, {top}]")
    r = a.resolution
    _check(r is None or (len(r) == 2 and 0.25 <= r[0] <= r[1] <= 4.0), "augment.resolution",
           f"must be [low, high] with 0.25 <= low <= high <= 4, got {r}")
    for name in ("phase1", "phase2"):
        p = getattr(cfg, name)
        _check(p.epochs >= 0, f"{name}.epochs", "must be >= 0")
        _check(p.lr > 0, f"{name}.lr", "must be > 0")
        _check(p.unfreeze_layers is None or p.unfreeze_layers >= 0, f"{name}.unfreeze_layers",
               "must be >= 0")
        _check(p.unfreeze_blocks is None or p.unfreeze_blocks >= 0, f"{name}.unfreeze_blocks",
               "must be >= 0")
        _check(p.patience is None or p.patience >= 1, f"{name}.patience", "must be >= 1")
    _check(not (cfg.phase2.unfreeze_layers is not None and cfg.phase2.unfreeze_blocks is not None),
           "phase2", "give unfreeze_layers or unfreeze_blocks, not both")
    _check(cfg.phase1.epochs + cfg.phase2.epochs > 0, "phase1.epochs", "no epochs to train")
    _check(cfg.batch_size >= 1, "batch_size", "must be >= 1")
    _check(cfg.steps_per_epoch is None or cfg.steps_per_epoch >= 1, "steps_per_epoch",
           "must be >= 1")
    _check(cfg.patience >= 1, "patience", "must be >= 1")
    _check(cfg.hard_negatives >= 0, "hard_negatives", "must be >= 0")
    _check(cfg.hard_negative_epochs >= 1, "hard_negative_epochs", "must be >= 1")
    _check(0.0 < cfg.hard_negative_share < 1.0, "hard_negative_share", "must be in (0, 1)")
    _check(cfg.mask_loss >= 0, "mask_loss", "must be >= 0")
    if cfg.mask_loss > 0:
        _check(cfg.task == "classify", "mask_loss", "is for classifiers (--task segment "
               "learns from the masks themselves)")
        _check(not (is_multimodal(cfg) or cfg.aux.dem), "mask_loss", "applies to image-only "
               "models; leave out tabular, aux (terrain), sizes and fusion inputs")
        _check(not a.grayscale, "mask_loss", "does not combine with augment.grayscale")
    _check(0.0 < cfg.threshold < 1.0, "threshold", f"must be in (0, 1), got {cfg.threshold}")
    _check(0 <= cfg.seed < 2**63, "seed", f"must be from 0 to 2**63 - 1, got {cfg.seed}")
    _check(cfg.target_recall is None or 0.0 < cfg.target_recall <= 1.0, "target_recall",
           "must be in (0, 1]")
    _check(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
    _check(0.0 <= cfg.optim.label_smoothing < 1.0, "optim.label_smoothing", "must be in [0, 1)")
    _check(0.0 <= cfg.optim.momentum < 1.0, "optim.momentum", "must be in [0, 1)")
    _check(cfg.optim.optimizer != "sgd" or cfg.optim.momentum > 0, "optim.momentum",
           "must be > 0 with optim.optimizer sgd (Nesterov momentum)")
    cw = cfg.class_weights
    if isinstance(cw, str):
        _check(cw in ("balanced", "none"), "class_weights", "must be 'balanced', 'none' or a list")
    else:
        _check(len(cw) == len(d.classes) and all(w > 0 for w in cw), "class_weights",
               f"a list needs {len(d.classes)} positive numbers, one per class")
    from slidewatch.runtime import DEVICES, check_device_name  # on use: runtime loads torch

    try:  # the names every command's --device takes (not any Unicode digit after "cuda:")
        check_device_name(cfg.device)
    except ConfigError:
        raise ConfigError(f"device: must be {DEVICES}, got {cfg.device!r}") from None
    validate_multimodal(cfg)
    _validate_task(cfg)


def _validate_task(cfg: TrainConfig) -> None:
    """The task's metric, loss settings and model family agree."""
    sg = cfg.segment
    if cfg.task == "classify":
        _check(cfg.early_stopping_metric in STOP_METRICS, "early_stopping_metric",
               f"must be one of {', '.join(STOP_METRICS)} for task classify")
        return
    _check(cfg.early_stopping_metric in SEGMENT_METRICS, "early_stopping_metric",
           f"must be one of {', '.join(SEGMENT_METRICS)} for task segment (pixel scores)")
    pw = sg.pos_weight
    _check(pw in ("auto", "none") if isinstance(pw, str) else pw > 0, "segment.pos_weight",
           f"must be auto, none or a number > 0, got {pw!r}")
    ma = sg.min_area
    _check(ma == "auto" if isinstance(ma, str) else ma >= 1, "segment.min_area",
           f"must be auto or a whole number of pixels >= 1, got {ma!r}")
    _check(sg.crops_per_image >= 1, "segment.crops_per_image", "must be >= 1")
    _check(0.0 <= sg.positive_share <= 1.0, "segment.positive_share", "must be in [0, 1]")
    _check(cfg.tabular.path is None and not cfg.aux.dem and cfg.sizes.source is None,
           "task", "segment takes image bands only (no tabular, aux or sizes inputs)")
