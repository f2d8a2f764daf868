"""Architectures (timm + the study's baseline CNN), weight sources, heads, freezing, fusion with
tabular inputs, and ``checkpoint`` (save and rebuild a model folder).

May import: the leaf modules and ``config``; never data or anything above.

Public API::

    build_model(name, *, num_classes=2, in_chans=3, weights="none", drop_rate=0.2,
                input_size=None) -> nn.Module       # model.slidewatch_weights: WeightsInfo
    model_data_config(name, model) -> {input_size: (C, H, W), mean, std, interpolation}
    MODELS, DEFAULT_MODEL, ModelSpec, list_models(), check_model_name(name)
    get_head(model) -> (name, module), backbone_parameters(model)
    load_weights(model, name, weights, *, num_classes, in_chans) -> WeightsInfo
    freeze_backbone, weighted_layers, unfreeze_top_layers, unfreeze_top_blocks,
    set_batchnorm_eval, trainable_summary
"""

from slidewatch.models.baseline import BaselineCNN
from slidewatch.models.freezing import (
    blocks,
    freeze_backbone,
    set_batchnorm_eval,
    trainable_summary,
    unfreeze_top_blocks,
    unfreeze_top_layers,
    weighted_layers,
)
from slidewatch.models.heads import backbone_parameters, get_head, head_modules, head_state_keys
from slidewatch.models.registry import (
    BASELINE,
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    build_model,
    check_model_name,
    first_conv_in_chans,
    list_models,
    model_data_config,
)
from slidewatch.models.weights import WeightsInfo, load_weights, read_weights

__all__ = [
    "BASELINE", "DEFAULT_MODEL", "MODELS", "BaselineCNN", "ModelSpec", "WeightsInfo",
    "backbone_parameters", "blocks", "build_model", "check_model_name", "first_conv_in_chans",
    "freeze_backbone", "get_head", "head_modules", "head_state_keys", "list_models",
    "load_weights", "model_data_config",
    "read_weights", "set_batchnorm_eval", "trainable_summary", "unfreeze_top_blocks",
    "unfreeze_top_layers", "weighted_layers",
]
