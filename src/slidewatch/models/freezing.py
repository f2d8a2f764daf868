"""Freezing and unfreezing for transfer learning, counted the way the study (Keras) counted.

Layers: :func:`weighted_layers` lists the modules that own parameters directly (conv, linear,
BatchNorm, ...), in registration order (the forward order for timm CNNs), without the
classifier head. This is Keras' ``[l for l in model.layers if l.weights]`` for these models:
BatchNorm counts as a layer. ``unfreeze_top_layers(model, n)`` makes the top ``n`` of them
trainable, except BatchNorm layers, which count towards ``n`` but stay frozen (as Keras
fine-tuning recommends), plus the head.

Blocks: timm's ``group_matcher(coarse=True)`` groups (stem, stage 1, ..., last stage).
Head-only groups are dropped and a group that mixes head and backbone layers (DenseNet's
``norm5``, MobileNetV3's ``conv_head``) is merged into the stage before it. For
``BaselineCNN`` each conv is a block and the hidden dense layer is the last block.

``n`` larger than what exists unfreezes everything. The lists returned name the backbone
layers made trainable (the head is always trainable and not listed).

Call :func:`set_batchnorm_eval` after every ``model.train()`` when fine-tuning pretrained
weights: BatchNorm keeps its running statistics and frozen affine parameters.
"""

from __future__ import annotations

from torch import nn

from slidewatch.errors import ConfigError
from slidewatch.models.heads import head_modules


def is_batchnorm(module: nn.Module) -> bool:
    """BatchNorm (any dimension, timm's BatchNormAct too) or another norm with running stats."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return bool(getattr(module, "track_running_stats", False)) and \
        getattr(module, "running_mean", None) is not None


def _owns_params(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


def _head_ids(model: nn.Module) -> set[int]:
    return {id(m) for _, head in head_modules(model) for m in head.modules()}


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module that owns parameters, in order, head excluded."""
    head = _head_ids(model)
    return [(n, m) for n, m in model.named_modules()
            if n and id(m) not in head and _owns_params(m)]


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters(recurse=False):
        p.requires_grad = flag


def freeze_backbone(model: nn.Module) -> None:
    """Freeze everything except the classifier head."""
    for p in model.parameters():
        p.requires_grad = False
    for _, head in head_modules(model):
        for p in head.parameters():
            p.requires_grad = True


def _check_n(n, option: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{option}: must be an integer >= 0, got {n!r}")
    return n


def _unfreeze(layers: list[tuple[str, nn.Module]]) -> list[str]:
    names = []
    for name, module in layers:
        if not is_batchnorm(module):
            _set_trainable(module, True)
            names.append(name)
    return names


def unfreeze_top_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the backbone, then unfreeze its top ``n`` weighted layers (BatchNorm counted but
    kept frozen) and the head; returns the names of the backbone layers made trainable."""
    n = _check_n(n, "--unfreeze-layers")
    freeze_backbone(model)
    layers = weighted_layers(model)
    return _unfreeze(layers[max(0, len(layers) - n):] if n else [])


def blocks(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The backbone's weighted layers grouped into stages (see the module docstring)."""
    from timm.models import group_modules

    layers = weighted_layers(model)
    head_names = {f"{hn}.{cn}" if cn else hn
                  for hn, head in head_modules(model) for cn, _ in head.named_modules()}
    matcher = model.group_matcher(coarse=True) if hasattr(model, "group_matcher") else None
    if matcher is None:  # no timm grouping: one block per top-level child
        group_of = {name: name.split(".")[0] for name, _ in layers}
        order = list(dict.fromkeys(group_of.values()))
        group_index = {name: order.index(g) for name, g in group_of.items()}
        mixed: set[int] = set()
    else:
        grouping = group_modules(model, matcher)
        group_index = {name: gid for gid, names in grouping.items() for name in names}
        mixed = {gid for gid, names in grouping.items() if any(n in head_names for n in names)}
    grouped: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in layers:
        grouped.setdefault(group_index.get(name, 1 << 30), []).append((name, module))
    result: list[list[tuple[str, nn.Module]]] = []
    for gid in sorted(grouped):
        if gid in mixed and result:
            result[-1].extend(grouped[gid])  # e.g. DenseNet norm5 joins the last dense block
        else:
            result.append(grouped[gid])
    return result


def unfreeze_top_blocks(model: nn.Module, n: int) -> list[str]:
    """Freeze the backbone, then unfreeze its last ``n`` stages (BatchNorm kept frozen) and the
    head; returns the names of the backbone layers made trainable."""
    n = _check_n(n, "--unfreeze-blocks")
    freeze_backbone(model)
    stages = blocks(model)
    top = stages[max(0, len(stages) - n):] if n else []
    return _unfreeze([layer for stage in top for layer in stage])


def set_batchnorm_eval(model: nn.Module) -> int:
    """Put every BatchNorm (and norm with running stats) in eval mode with frozen parameters;
    returns how many. Call it after each ``model.train()`` when fine-tuning."""
    count = 0
    for module in model.modules():
        if is_batchnorm(module):
            module.eval()
            _set_trainable(module, False)
            count += 1
    return count


def trainable_summary(model: nn.Module) -> dict:
    """``trainable_params``, ``total_params`` and ``trainable_layers`` (modules, head included,
    that own at least one trainable parameter)."""
    params = list(model.parameters())
    layers = sum(1 for m in model.modules()
                 if any(p is not None and p.requires_grad for p in m._parameters.values()))
    return {"trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "total_params": sum(p.numel() for p in params),
            "trainable_layers": layers}
