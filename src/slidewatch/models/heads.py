"""Where a model's classifier head is, and the layer whose features feed it.

Pure functions over ``nn.Module``s: used by weight transfer (head tensors are skipped), freezing
(the head always trains), fusion (the image features) and explanations (the CAM target layer).
"""

from __future__ import annotations

from torch import nn

from slidewatch.errors import ModelError


def head_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The classifier module(s) (``get_classifier()``) with their qualified names."""
    classifier = model.get_classifier()
    wanted = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    ids = {id(m) for m in wanted if isinstance(m, nn.Module)}
    found = [(n, m) for n, m in model.named_modules() if id(m) in ids and n]
    if not found:
        raise ModelError(f"{type(model).__name__}: get_classifier() is not a submodule")
    return found


def get_head(model: nn.Module) -> tuple[str, nn.Module]:
    """``(qualified name, module)`` of the final classifier layer."""
    return head_modules(model)[0]


def head_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys that belong to the classifier head."""
    prefixes = tuple(f"{n}." for n, _ in head_modules(model))
    return {k for k in model.state_dict() if k.startswith(prefixes)}


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters outside the classifier head (e.g. for a smaller learning rate)."""
    head = {id(p) for _, m in head_modules(model) for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def default_target_layer(model: nn.Module) -> str:
    """The last convolutional stage of ``model``, by architecture (see the module README):
    baseline_cnn ``feature_layer``; timm EfficientNet/MobileNetV2 ``conv_head``; MobileNetV3
    (whose ``conv_head`` follows the pooling) the last of ``blocks``; ResNet ``layer4``;
    DenseNet ``features.norm5``; otherwise the last ``nn.Conv2d``."""
    names = dict(model.named_modules())
    feature_layer = getattr(model, "feature_layer", None)
    if isinstance(feature_layer, str) and feature_layer in names:
        return feature_layer
    if type(model).__name__ == "MobileNetV3" and "blocks" in names:
        return f"blocks.{len(names['blocks']) - 1}"
    for name in ("conv_head", "layer4", "features.norm5", "features.denseblock4"):
        if name in names:
            return name
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__}: no convolution layer to explain; "
                         "give --target-layer")
    return convs[-1]
