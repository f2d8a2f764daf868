"""Per-image radiometric standardisation: the model's ``standardize`` rule (``meta.standardize``).

Rule ``none`` (the default): pixels go to the model as the pixel path leaves them (unit scale,
nodata rule, transform, then the model's ``mean``/``std`` in the forward pass).

Rule ``image``: for each band, the mean and standard deviation of the WHOLE source image over
its valid pixels (after the nodata rule, in unit scale: :func:`image_statistics`) are computed
once, and every valid pixel becomes ``(x - image_mean) / image_std * meta.std + meta.mean``
(:func:`standardize`), so that the forward pass's normalisation turns it into
``(x - image_mean) / image_std``. Invalid pixels stay 0, as the nodata rule leaves them. It is
applied to the unit-scale image before any transform (resize, greyscale, augmentation), in
every path:

* the image is the file the pixels are read from: a class-folder image (also a tile that
  ``slidewatch data tiles`` cut from a scene: its ``tiles.csv`` records the source only as
  ``<region>/<stem>``, not as a file, so the tile file's own statistics are used, the same in
  training, evaluation, prediction and explanation), a scene image of a scene folder (its
  random crops and validation windows take the whole scene's statistics, never the crop's),
  or the whole raster being scanned (:func:`raster_statistics`, read strip by strip at full
  resolution, never the whole raster in memory; every window of the scene then uses them);
* statistics are per band, population standard deviation, at least :data:`MIN_STD`; an image
  without a valid pixel has mean 0 and standard deviation 1.

Who applies it: :class:`slidewatch.data.dataset.TileDataset` (training, evaluation,
prediction, explanation of class-folder images, through :func:`slidewatch.data.inputs.
image_dataset`), the datasets of :mod:`slidewatch.data.masks` (segmentation), and
:func:`slidewatch.data.inputs.window_tensor` with the scene's statistics (scan). Models with
tabular, terrain or fusion inputs cannot use it (:func:`slidewatch.meta.validate_meta`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from slidewatch.data import raster
from slidewatch.data.dataset import unit_and_valid
from slidewatch.errors import ModelError
from slidewatch.meta import ModelMeta

MIN_STD = 1e-6  # unit scale: a constant band is not blown up
STATS_READ_BYTES = 4 * 2**20  # raw pixels per strip when a raster's statistics are read
_BLOCK = 2**20  # pixels per block of an in-memory image (float64 copies stay small)


@dataclass(frozen=True)
class ImageStats:
    """Per-band mean and standard deviation of an image's valid pixels (unit scale), and how
    many valid pixels they were taken over."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixels: int


class _Moments:
    """Count, mean and sum of squared deviations per band, merged part by part (Chan et al.),
    so that an image read in strips gives the statistics of the whole image."""

    def __init__(self, bands: int):
        self.n = 0
        self.mean = np.zeros(bands, np.float64)
        self.m2 = np.zeros(bands, np.float64)

    def add(self, unit: np.ndarray, ok: np.ndarray, channel_axis: int = -1) -> None:
        pixels = np.moveaxis(unit, channel_axis, -1).reshape(-1, unit.shape[channel_axis])
        keep = ok.reshape(-1)
        for start in range(0, len(pixels), _BLOCK):
            x = pixels[start:start + _BLOCK][keep[start:start + _BLOCK]].astype(np.float64)
            if not len(x):
                continue
            n, mean = len(x), x.mean(0)
            m2 = ((x - mean) ** 2).sum(0)
            total = self.n + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
            self.n = total

    def stats(self) -> ImageStats:
        if self.n == 0:
            bands = len(self.mean)
            return ImageStats((0.0,) * bands, (1.0,) * bands, 0)
        std = np.maximum(np.sqrt(self.m2 / self.n), MIN_STD)
        return ImageStats(tuple(map(float, self.mean)), tuple(map(float, std)), self.n)


def image_statistics(unit: np.ndarray, ok: np.ndarray, channel_axis: int = -1) -> ImageStats:
    """Statistics of a whole unit-scale image (H x W x C, or C x H x W with ``channel_axis``
    0) over the pixels where ``ok`` (H x W, the nodata rule:
    :func:`~slidewatch.data.dataset.unit_and_valid`) is True."""
    acc = _Moments(unit.shape[channel_axis])
    acc.add(unit, ok, channel_axis)
    return acc.stats()


def raster_statistics(ds, bands: list[int], scale: float | None = None) -> ImageStats:
    """Statistics of the chosen ``bands`` (1-based) of a whole open raster, read strip by
    strip (:data:`STATS_READ_BYTES` at a time) with the nodata rule; the same numbers (to
    float rounding) as :func:`image_statistics` of the raster read whole."""
    bands = list(bands)
    masked = raster.needs_mask(ds, bands)
    itemsize = max(np.dtype(ds.dtypes[b - 1]).itemsize for b in set(bands))
    step = max(1, STATS_READ_BYTES // max(1, len(bands) * ds.width * itemsize))
    acc = _Moments(len(bands))
    for row in range(0, ds.height, step):
        strip = Window(0, row, ds.width, min(step, ds.height - row))
        data, valid = raster.read_window(ds, bands, strip, masked)
        acc.add(*unit_and_valid(data, scale, valid, channel_axis=0), channel_axis=0)
    return acc.stats()


def standardize(unit: np.ndarray, ok: np.ndarray, stats: ImageStats, mean, std,
                channel_axis: int = -1) -> np.ndarray:
    """``(x - stats.mean) / stats.std * std + mean`` per band on the pixels where ``ok``; 0
    elsewhere (nodata stays 0). ``mean``/``std``: the model's, for the image's bands (a new
    float32 array)."""
    c = unit.shape[channel_axis]
    shape = [1] * unit.ndim
    shape[channel_axis] = c

    def column(values) -> np.ndarray:
        return np.asarray(values, np.float64)[:c].reshape(shape)

    gain = (column(std) / column(stats.std)).astype(np.float32)
    out = (unit - column(stats.mean).astype(np.float32)) * gain
    out += column(mean).astype(np.float32)
    bad = ~np.asarray(ok, bool)
    if bad.any():
        np.moveaxis(out, channel_axis, -1)[bad] = 0.0
    return out.astype(np.float32, copy=False)


class Standardizer:
    """The ``image`` rule of a model: called on a whole unit-scale image and its valid mask
    (``stats`` given: a scan window with its scene's statistics). The model's ``mean``/``std``
    are read when it is called, so a training run that sets them after building its datasets
    stays consistent."""

    def __init__(self, meta: ModelMeta):
        self.meta = meta

    def __call__(self, unit: np.ndarray, ok: np.ndarray, stats: ImageStats | None = None,
                 channel_axis: int = -1) -> np.ndarray:
        if stats is None:
            stats = image_statistics(unit, ok, channel_axis)
        return standardize(unit, ok, stats, self.meta.mean, self.meta.std, channel_axis)


def standardizer(meta: ModelMeta) -> Standardizer | None:
    """The model's rule as a callable for the datasets (None: rule ``none``)."""
    if meta.standardize == "none":
        return None
    if meta.standardize != "image":  # validate_meta refuses others when a folder is read
        raise ModelError(f"{meta.architecture}: unknown standardize rule {meta.standardize!r}")
    return Standardizer(meta)
