"""MixStyle: feature-statistics mixing for training that generalises to new sensors and regions.

Zhou et al., "Domain Generalization with MixStyle" (ICLR 2021). In a CNN's early stages the
per-channel mean and standard deviation of a feature map carry the image's "style" (colour,
contrast, texture of the sensor and the light) more than its content. During training, after
each of the first :data:`STAGES` stages of the backbone, with probability ``p`` per batch and
stage, every sample's feature map is re-normalised with statistics mixed with those of another
sample of the batch::

    y = (x - mu(x)) / sigma(x) * (lam * sigma(x) + (1 - lam) * sigma(x'))
                                + (lam * mu(x) + (1 - lam) * mu(x'))

with ``lam ~ Beta(alpha, alpha)`` per sample and ``x'`` a shuffled sample (the statistics are
detached, as in the paper). Batches mix regions and sensors, so the network sees each content in
other images' styles. It is a training-only perturbation: the hooks do nothing in ``eval()``
mode, are not part of the state dict, and the saved model folder is that of a plain model, so
predict, evaluate, scan and ONNX export are unchanged.

Stages are the backbone's stages of :func:`slidewatch.models.freezing.blocks` (timm's
``group_matcher`` stages; for a segmenter, its encoder's), the stem not counted.
"""

from __future__ import annotations

import torch
from torch import nn

from slidewatch.errors import ConfigError, ModelError
from slidewatch.models.freezing import blocks

ALPHA = 0.1  # Beta(alpha, alpha): most draws near 0 or 1 (the paper's value)
STAGES = 3  # after the first three stages past the stem (the paper: res1-res3 of a ResNet)
EPS = 1e-6


def mix_statistics(x: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """``x`` (B, C, H, W) with each sample's channel statistics mixed with another sample's."""
    b = x.shape[0]
    if b < 2:
        return x
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sigma = (x.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
    normed = (x - mu) / sigma
    lam = torch.distributions.Beta(alpha, alpha).sample((b, 1, 1, 1)).to(x)
    perm = torch.randperm(b, device=x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
    return normed * sigma_mix + mu_mix


def stage_modules(model: nn.Module, n: int = STAGES) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the first ``n`` backbone stages after the stem: the module that
    holds each stage's layers (their longest common dotted prefix)."""
    modules = dict(model.named_modules())
    try:
        stages = blocks(model)
    except (AttributeError, ModelError):  # no classifier head to tell backbone from head
        return []
    found = []
    for stage in stages[1:]:
        parts = [name.split(".") for name, _ in stage]
        prefix = []
        for column in zip(*parts):
            if len(set(column)) != 1:
                break
            prefix.append(column[0])
        name = ".".join(prefix)
        if name in modules and name:  # "" would be the whole model
            found.append((name, modules[name]))
        if len(found) == n:
            break
    return found


def attach(model: nn.Module, p: float, *, alpha: float = ALPHA,
           n: int = STAGES) -> list[torch.utils.hooks.RemovableHandle]:
    """Register MixStyle after the first ``n`` stages of ``model``'s backbone, applied with
    probability ``p`` per batch and stage while the stage is in training mode. Returns the hook
    handles (``handle.remove()`` detaches them)."""
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"augment.mixstyle: must be in (0, 1], got {p}")
    stages = stage_modules(model, n)
    if len(stages) < n:
        raise ConfigError(f"augment.mixstyle: found {len(stages)} backbone stages in "
                          f"{type(model).__name__}, needs {n} (timm CNNs and segmentation "
                          "encoders have them); set augment.mixstyle: 0")

    def hook(module: nn.Module, _inputs, output):
        if not module.training or not isinstance(output, torch.Tensor) or output.ndim != 4:
            return None
        if torch.rand(()) >= p:
            return None
        return mix_statistics(output, alpha)

    return [module.register_forward_hook(hook) for _, module in stages]
