"""Tensor transforms for CxHxW float images in unit scale (any number of bands).

One normalisation function (:func:`normalize`) is shared by training, evaluation, prediction
and scanning; its statistics live in the model metadata. Augmentation is for training only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
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
    """Resize -> random crop -> resolution change -> flips -> translation ->
    brightness/contrast/saturation -> :func:`radiometry` (sensor changes, channel shuffle,
    random greyscale; on the image bands only).

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
        if cfg.resolution is not None:
            x = change_resolution(x, draw_resolution(cfg.resolution, gen), gen)
        if cfg.hflip and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        if cfg.vflip and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-2)
        if cfg.rotate90:
            x = torch.rot90(x, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))
        if cfg.translate > 0:
            x = _translate(x, cfg.translate, gen)
        if self.color_bands is None:
            x = radiometry(color_jitter(x, cfg, gen), cfg, gen)
        else:  # extra bands (e.g. terrain) follow the geometry but keep their values
            b = self.color_bands
            x = torch.cat([radiometry(color_jitter(x[:b], cfg, gen), cfg, gen), x[b:]])
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


# ----------------------------------------------------------------- sensors and radiometry


def draw_resolution(bounds: Sequence[float], gen: torch.Generator) -> float:
    """A ground-resolution factor drawn log-uniformly in ``[low, high]``."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return math.exp(_uniform(gen, lo, hi)) if hi > lo else float(bounds[0])


def change_resolution(x: torch.Tensor, factor: float, gen: torch.Generator,
                      binary_from: int | None = None) -> torch.Tensor:
    """The same ground seen with pixels ``factor`` times as large, at the same array size:
    shrink by ``factor`` and reflect the border (factor > 1), or enlarge and take a random
    crop (factor < 1). Bands from ``binary_from`` on (masks) are thresholded at 0.5 after
    resampling, so they stay 0/1 and move with the image."""
    h, w = x.shape[-2:]
    nh, nw = max(2, round(h / factor)), max(2, round(w / factor))
    if (nh, nw) == (h, w):
        return x
    y = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False,
                      antialias=nh < h)[0]
    if nh > h or nw > w:
        top = int(torch.randint(0, max(nh - h, 0) + 1, (), generator=gen))
        left = int(torch.randint(0, max(nw - w, 0) + 1, (), generator=gen))
        y = y[:, top:top + h, left:left + w]
    if y.shape[-2:] != (h, w):
        ph, pw = h - y.shape[-2], w - y.shape[-1]
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        mode = "reflect" if max(pad) < min(y.shape[-2:]) else "replicate"
        y = F.pad(y[None], pad, mode=mode)[0]
    if binary_from is not None:
        y = torch.cat([y[:binary_from], (y[binary_from:] >= 0.5).to(y.dtype)])
    return y


def false_colour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A simulated colour-infrared composite of an RGB image in unit scale. Near infrared is
    approximated as bright where green exceeds red (vegetation) and dimmer than red and green
    on bare ground, water and landslide scars; the composite is NIR-R-G (vegetation red, as
    GeoEye or Landsat colour-infrared) or R-NIR-G (vegetation green, as SWIR-NIR-R
    composites show it), chosen at random."""
    r, g, b = x[0], x[1], x[2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    nir = (_uniform(gen, 0.6, 1.0) * lum + _uniform(gen, 2.0, 6.0) * (g - r).clamp_min(0))
    nir = nir.clamp(0.0, 1.0)
    if torch.rand((), generator=gen) < 0.5:
        return torch.stack([nir, r, g])
    return torch.stack([r, nir, g])


def rotate_hue(x: torch.Tensor, turn: float) -> torch.Tensor:
    """Rotate the hue of an RGB image by ``turn`` of the colour circle (in YIQ space, which
    keeps luma), clamped to unit range."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], dtype=x.dtype, device=x.device)
    c, s = math.cos(2 * math.pi * turn), math.sin(2 * math.pi * turn)
    rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=x.dtype, device=x.device)
    m = torch.linalg.inv(yiq) @ rot @ yiq
    return torch.einsum("ij,jhw->ihw", m, x).clamp(0.0, 1.0)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    mode = "reflect" if radius < min(x.shape[-2:]) else "replicate"
    y = F.pad(x[None], (radius, radius, radius, radius), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode a 1- or 3-band unit-scale image as JPEG at ``quality`` and decode it (Pillow)."""
    import io

    from PIL import Image

    u8 = (x.clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    arr = np.asarray(Image.open(buf), dtype=np.float32) / 255.0
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(x.dtype)


def radiometry(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """The sensor and radiometry changes of ``cfg`` (see :class:`AugmentConfig`) on an image's
    bands. Parts that are off draw no random numbers, so recipes without them train exactly as
    before. Unit-range data stays in range."""
    in_unit = bool(x.min() >= 0) and bool(x.max() <= 1)
    rgb = x.shape[0] == 3 and not cfg.grayscale
    if cfg.false_colour > 0 and rgb and torch.rand((), generator=gen) < cfg.false_colour:
        x = false_colour(x, gen)
    if cfg.hue > 0 and rgb:
        x = rotate_hue(x, _uniform(gen, -cfg.hue, cfg.hue))
    c = x.shape[0]
    if cfg.gain > 0:
        x = x * (1 + (2 * torch.rand(c, generator=gen) - 1) * cfg.gain).view(-1, 1, 1)
    if cfg.offset > 0:
        x = x + ((2 * torch.rand(c, generator=gen) - 1) * cfg.offset).view(-1, 1, 1)
    if in_unit:
        x = x.clamp(0.0, 1.0)
    if cfg.gamma > 0 and in_unit:
        top = math.log(1 + cfg.gamma)
        x = x.clamp_min(1e-6) ** math.exp(_uniform(gen, -top, top))
    if cfg.blur > 0 and torch.rand((), generator=gen) < cfg.blur:
        x = _blur(x, _uniform(gen, 0.5, 1.5))
    elif cfg.sharpen > 0 and torch.rand((), generator=gen) < cfg.sharpen:
        x = x + _uniform(gen, 0.5, 1.5) * (x - _blur(x, 1.0))
    if cfg.noise > 0:
        x = x + torch.randn(x.shape, generator=gen) * _uniform(gen, 0.0, cfg.noise)
    if in_unit:
        x = x.clamp(0.0, 1.0)
    if cfg.jpeg > 0 and in_unit and c in (1, 3) and torch.rand((), generator=gen) < cfg.jpeg:
        x = jpeg_roundtrip(x, int(torch.randint(30, 91, (), generator=gen)))
    if cfg.channel_shuffle > 0 and torch.rand((), generator=gen) < cfg.channel_shuffle:
        x = x[torch.randperm(c, generator=gen)]
    if cfg.random_grayscale > 0 and torch.rand((), generator=gen) < cfg.random_grayscale:
        x = to_grayscale(x)
    return x
