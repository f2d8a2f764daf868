"""Tensor transforms for CxHxW float images in unit scale (any number of bands).

One normalisation function (:func:`normalize`) is shared by training, evaluation, prediction
and scanning; its statistics live in the model metadata. Augmentation is for training only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from slidewatch.config.train import AugmentConfig

# ITU-R 601 luma weights, as torchvision and PIL use them.
_LUMA = (0.299, 0.587, 0.114)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per band; works on CxHxW and NxCxHxW tensors."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    shape = (-1, 1, 1)
    return (x - m.view(shape)) / s.view(shape)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a CxHxW tensor to size x size (bilinear, antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                      antialias=size < max(x.shape[-2:]))
    return y[0]


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """RGB -> luma repeated on 3 bands; other band counts: mean over bands, same count."""
    if x.shape[0] == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
        g = (x * w).sum(0, keepdim=True)
    else:
        g = x.mean(0, keepdim=True)
    return g.expand_as(x).contiguous()


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


@dataclass
class EvalTransform:
    """Deterministic: optional greyscale, resize to the model's input size."""

    size: int
    grayscale: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.grayscale:
            x = to_grayscale(x)
        return resize(x, self.size)


class TrainTransform:
    """Resize -> random crop -> flips -> translation -> brightness/contrast/saturation.

    Randomness comes from ``torch``'s global generator (seeded by the trainer, and per
    DataLoader worker by ``worker_init``), so runs are repeatable.
    """

    def __init__(self, cfg: AugmentConfig, size: int, color_bands: int | None = None):
        self.cfg = cfg
        self.size = size
        self.color_bands = color_bands  # photometric jitter on these first bands only
        self.crop = cfg.crop or size
        self.resize = cfg.resize or self.crop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        gen = torch.default_generator
        if cfg.grayscale:
            x = to_grayscale(x)
        if not cfg.enabled:
            return resize(x, self.size)
        x = resize(x, self.resize)
        if self.crop < self.resize:
            top = int(torch.randint(0, self.resize - self.crop + 1, (), generator=gen))
            left = int(torch.randint(0, self.resize - self.crop + 1, (), generator=gen))
            x = x[:, top:top + self.crop, left:left + self.crop]
        if cfg.hflip and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        if cfg.vflip and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-2)
        if cfg.rotate90:
            x = torch.rot90(x, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))
        if cfg.translate > 0:
            x = _translate(x, cfg.translate, gen)
        if self.color_bands is None:
            x = color_jitter(x, cfg, gen)
        else:  # extra bands (e.g. terrain) follow the geometry but keep their values
            b = self.color_bands
            x = torch.cat([color_jitter(x[:b], cfg, gen), x[b:]])
        if cfg.channel_shuffle > 0 and torch.rand((), generator=gen) < cfg.channel_shuffle:
            x = x[torch.randperm(x.shape[0], generator=gen)]
        if cfg.random_grayscale > 0 and torch.rand((), generator=gen) < cfg.random_grayscale:
            x = to_grayscale(x)
        return resize(x, self.size)


def _translate(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Shift by up to ``fraction`` of the size; the uncovered border reflects the image."""
    h, w = x.shape[-2:]
    dy = round(_uniform(gen, -fraction, fraction) * h)
    dx = round(_uniform(gen, -fraction, fraction) * w)
    if dx == 0 and dy == 0:
        return x
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    padded = F.pad(x[None], pad, mode="reflect" if max(pad) < min(h, w) else "replicate")[0]
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[:, top:top + h, left:left + w]


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and (3-band only) saturation jitter; unit-range data stays in range."""
    in_unit = bool(x.min() >= 0) and bool(x.max() <= 1)
    if cfg.brightness > 0:
        x = x * _uniform(gen, 1 - cfg.brightness, 1 + cfg.brightness)
    if cfg.contrast > 0:
        f = _uniform(gen, 1 - cfg.contrast, 1 + cfg.contrast)
        x = (x - x.mean()) * f + x.mean()
    if cfg.saturation > 0 and x.shape[0] == 3 and not cfg.grayscale:
        f = _uniform(gen, 1 - cfg.saturation, 1 + cfg.saturation)
        g = to_grayscale(x)
        x = (x - g) * f + g
    return x.clamp(0.0, 1.0) if in_unit else x
