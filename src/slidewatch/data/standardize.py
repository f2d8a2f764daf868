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

* the image is the source image the pixels come from: a class-folder image (its own
  statistics), a tile that ``slidewatch data tiles`` (or training's automatic tiling) cut from
  a scene image (the statistics of that whole scene image, :func:`array_statistics`, which
  tiling records in ``tiles.csv`` as ``scene_mean`` / ``scene_std``,
  :mod:`slidewatch.data.imagestats`, and the dataset scanner puts on each tile's ``Sample``
  as ``scene_stats``; a ``tiles.csv`` without these columns, written before they existed or by
  hand, and a tile file given alone, as to ``slidewatch predict``, fall back to the tile
  file's own statistics), a scene image of a scene folder (its random crops and validation
  windows take the whole scene's statistics, never the crop's), or the whole raster being
  scanned (:func:`raster_statistics`, read strip by strip at full resolution, never the whole
  raster in memory; every window of the scene then uses them), so a tile from ``tiles.csv``
  and the scan window over the same pixels give the model the same input;
* statistics are per band, population standard deviation, at least :data:`MIN_STD`; an image
  without a valid pixel has mean 0 and standard deviation 1.

Who applies it: :class:`slidewatch.data.dataset.TileDataset` (training, evaluation,
prediction, explanation of class-folder images and tiles, with a sample's ``scene_stats``
when it has them, through :func:`slidewatch.data.inputs.
image_dataset`), the datasets of :mod:`slidewatch.data.masks` (segmentation), and
:func:`slidewatch.data.inputs.window_tensor` with the scene's statistics (scan). Models with
tabular, terrain or fusion inputs cannot use it (:func:`slidewatch.meta.validate_meta`).
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from slidewatch.data import raster
from slidewatch.data.dataset import unit_and_valid
from slidewatch.data.imagestats import ImageStats
from slidewatch.errors import ModelError
from slidewatch.meta import ModelMeta

MIN_STD = 1e-6  # unit scale: a constant band is not blown up
STATS_READ_BYTES = 4 * 2**20  # raw pixels per strip when a raster's statistics are read
_BLOCK = 2**20  # pixels per block of an in-memory image (float64 copies stay small)


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


def array_statistics(arr: np.ndarray, valid: np.ndarray | None = None,
                     scale: float | None = None) -> ImageStats:
    """Statistics of a whole image as read (H x W x C, native dtype; ``valid``: its declared
    validity, :func:`~slidewatch.data.dataset.declared_valid`, or None) in unit scale with the
    nodata rule, taken a strip of rows at a time so that no float copy of the whole image is
    made: the numbers of :func:`image_statistics` of
    :func:`~slidewatch.data.dataset.unit_and_valid` (to float rounding). ``slidewatch data
    tiles`` records them for each scene image (``tiles.csv``)."""
    acc = _Moments(arr.shape[2])
    step = max(1, _BLOCK // max(1, arr.shape[1]))
    for row in range(0, arr.shape[0], step):
        part = None if valid is None else valid[row:row + step]
        acc.add(*unit_and_valid(arr[row:row + step], scale, part))
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
