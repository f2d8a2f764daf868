"""The architectures slidewatch knows, and building them with the study's classifier head.

``baseline_cnn`` is ours (:mod:`slidewatch.models.baseline`); every other name goes through
timm, and any ``timm.list_models()`` name (tags such as ``resnet50.a1_in1k`` included) is
accepted. The head of every model is global average pooling -> dropout(``drop_rate``) ->
linear(``num_classes``): for the names in :data:`MODELS` slidewatch asks timm for
``global_pool="avg"`` and ``drop_rate``; other timm names keep their own pooling (a ViT keeps
its class token) and get ``drop_rate``. timm's MobileNetV3 keeps its 1x1 ``conv_head`` between
the pooling and the dropout; that is the architecture, not an extra layer.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass

from torch import nn

from slidewatch.errors import ConfigError, ModelError, WeightsError
from slidewatch.models.baseline import BaselineCNN
from slidewatch.models.heads import head_modules
from slidewatch.models.weights import WeightsInfo, hub_weights_status, load_weights

BASELINE = "baseline_cnn"
DEFAULT_MODEL = "efficientnet_b3"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    default_input_size: int  # side in pixels (timm's pretrained config; 224 for ours)
    offline_imagenet: bool  # ImageNet weights ship with slidewatch's dependencies


def _spec(name: str, size: int, description: str, offline: bool = False) -> ModelSpec:
    return ModelSpec(name, description, size, offline)


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    _spec(BASELINE, 224, "the study's small CNN: 3 conv blocks + dense layer, from scratch"),
    _spec("efficientnet_b3", 288, "EfficientNet-B3, the study's best model (default)"),
    _spec("efficientnet_b4", 320, "EfficientNet-B4, larger and slower than B3"),
    _spec("resnet50", 224, "ResNet-50"),
    _spec("mobilenetv2_100", 224, "MobileNetV2 1.0, small and fast"),
    _spec("mobilenetv3_large_100", 224, "MobileNetV3-Large 1.0, small and fast"),
    _spec("densenet121", 224, "DenseNet-121"),
    _spec("nasnetalarge", 331, "NASNet-A Large, big and slow"),
    _spec("efficientnet_lite0", 224, "EfficientNet-Lite0; ImageNet weights offline", True),
    _spec("efficientnet_lite1", 240, "EfficientNet-Lite1; ImageNet weights offline", True),
    _spec("efficientnet_lite2", 260, "EfficientNet-Lite2; ImageNet weights offline", True),
)}


def list_models(check_cache: bool = True) -> list[dict]:
    """Rows for ``slidewatch models``: the :class:`ModelSpec` fields plus ``default`` and
    ``imagenet`` ("packaged", "cached" in the HF cache, "hub" when online, or "none")."""
    rows = []
    for spec in MODELS.values():
        if spec.name == BASELINE:
            imagenet = "none"
        elif check_cache:
            imagenet = hub_weights_status(spec.name)
        else:
            imagenet = "packaged" if spec.offline_imagenet else "hub"
        rows.append({**asdict(spec), "default": spec.name == DEFAULT_MODEL, "imagenet": imagenet})
    return rows


def check_model_name(name: str) -> str:
    """``name`` if slidewatch or timm knows it; else :class:`ModelError` with suggestions."""
    import timm

    name = str(name).strip()
    if name in MODELS or (name and timm.is_model(name)):
        return name
    candidates = list(dict.fromkeys([*MODELS, *timm.list_models()]))
    close = difflib.get_close_matches(name.lower().replace("-", "_"), candidates, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(f"--model {name!r}: unknown architecture; {hint}`slidewatch models` lists "
                     "them (any timm.list_models() name works too)")


def build_model(name: str, *, num_classes: int = 2, in_chans: int = 3,
                weights: str | os.PathLike | None = "none", drop_rate: float = 0.2,
                input_size: int | None = None) -> nn.Module:
    """Build ``name`` with a ``num_classes`` head for ``in_chans`` bands and load ``weights``.

    ``input_size`` (pixels) is recorded in ``model.pretrained_cfg`` (and passed to timm as
    ``img_size`` for models with a fixed input size). The returned model carries
    ``model.slidewatch_weights``, a :class:`WeightsInfo` for the model metadata.
    """
    import timm

    _check_build_args(num_classes, in_chans, drop_rate, input_size)
    name = check_model_name(name)
    if name == BASELINE:
        if str(weights).lower() == "imagenet":
            raise WeightsError(f"--weights imagenet: {BASELINE} has no ImageNet weights; "
                              "use --weights none or --weights PATH")
        model = BaselineCNN(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
    else:
        kwargs = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
        if name in MODELS:
            kwargs["global_pool"] = "avg"
        cfg = timm.models.get_pretrained_cfg(name)
        if input_size and cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = input_size
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"--model {name}: timm cannot build it with {kwargs} "
                             f"({exc})") from None
    info = load_weights(model, name, weights, num_classes=num_classes, in_chans=in_chans)
    if str(weights).lower() == "none" or info.skipped:
        init_head(model)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    side = input_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    cfg["input_size"] = (in_chans, side, side)
    model.pretrained_cfg = cfg
    if hasattr(model, "default_cfg"):
        model.default_cfg = cfg
    model.slidewatch_weights = info
    return model


def init_head(model: nn.Module) -> None:
    """Fresh head as Keras initialises a Dense layer (Glorot-uniform weights, zero bias).

    timm's own EfficientNet init scales by fan-out, which for a 2-class head gives logits of
    several units before any training; this keeps the first loss near log(num_classes).
    """
    for _, module in head_modules(model):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _check_build_args(num_classes, in_chans, drop_rate, input_size) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"in_chans: the number of bands must be >= 1, got {in_chans!r}")
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ConfigError(f"--drop-rate: must be in [0, 1), got {drop_rate!r}")
    if input_size is not None and (not isinstance(input_size, int) or input_size < 8):
        raise ConfigError(f"--input-size: must be an integer >= 8 pixels, got {input_size!r}")


def model_data_config(name: str, model: nn.Module) -> dict:
    """``input_size`` (C, H, W), ``mean``, ``std`` (one per band), ``interpolation``.

    From ``timm.data.resolve_model_data_config``: timm models give their pretrained config
    (ImageNet mean/std for almost all; 0.5/0.5 for nasnetalarge); ``baseline_cnn`` gives 224 px,
    mean 0.5 / std 0.5, bilinear. For ``in_chans != 3`` mean/std are placeholders (0.5 per
    band): the caller must compute per-band statistics on the training data.
    """
    import timm.data

    check_model_name(name)
    cfg = timm.data.resolve_model_data_config(model)
    chans = first_conv_in_chans(model)
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    if len(mean) != chans:
        mean, std = (0.5,) * chans, (0.5,) * chans
    size = tuple(cfg["input_size"])[-2:]
    return {"input_size": (chans, *size), "mean": mean, "std": std,
            "interpolation": cfg.get("interpolation", "bilinear")}


def first_conv_in_chans(model: nn.Module) -> int:
    """The number of input bands of ``model`` (from its first convolution)."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first, str):
        try:
            module = model.get_submodule(first)
            return int(module.in_channels)
        except AttributeError:
            pass  # fall back to the first conv in registration order
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return int(module.in_channels)
    raise ModelError(f"{type(model).__name__}: no convolution found to tell the input bands")


__all__ = ["BASELINE", "DEFAULT_MODEL", "MODELS", "ModelSpec", "WeightsInfo",
           "build_model", "check_model_name", "first_conv_in_chans", "list_models",
           "model_data_config"]
