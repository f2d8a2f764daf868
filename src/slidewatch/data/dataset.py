"""The dataset every stage reads images through: ``Sample`` lists -> ``{"image": float32 CxHxW,
"label": int, "index": i}``, with the one pixel rule (:func:`unit_pixels`).

Build it for a model with :func:`slidewatch.data.inputs.image_dataset` /
:func:`~slidewatch.data.inputs.model_dataset`, which read the model's metadata (bands, scale,
terrain channels, transform); training, evaluation, prediction, explanation and the demo all
do, and scan windows go through :func:`unit_pixels` and the same transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from slidewatch.data import raster
from slidewatch.data.folders import Sample
from slidewatch.data.imagestats import ImageStats
from slidewatch.data.readers import (
    DEFAULT_MAX_PIXELS,
    TIFF_SUFFIXES,
    dtype_unit,
    read_image,
    scale_to_unit,
)
from slidewatch.errors import DataError


def unit_pixels(arr: np.ndarray, scale: float | None = None, valid: np.ndarray | None = None,
                channel_axis: int = -1) -> np.ndarray:
    """Pixels as read (native dtype) -> float32 in unit scale, with the one nodata rule.

    Unit scale is :func:`~slidewatch.data.readers.scale_to_unit` (``scale`` when the model has
    one). A pixel is nodata where ``valid`` (the raster's mask: declared nodata value, internal
    mask or alpha, see :mod:`slidewatch.data.raster`) is False or where any band is not finite
    (NaN, inf); nodata pixels are 0 in every band after scaling, before normalisation. Training
    tiles, evaluation and prediction images, scan windows and inventory chips all follow it.
    """
    return unit_and_valid(arr, scale, valid, channel_axis)[0]


def unit_and_valid(arr: np.ndarray, scale: float | None = None, valid: np.ndarray | None = None,
                   channel_axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`unit_pixels` and the H x W bool mask of the pixels the nodata rule keeps (what
    :mod:`slidewatch.data.standardize` takes its image statistics over)."""
    unit = scale_to_unit(arr, scale)
    bad = ~np.isfinite(unit).all(axis=channel_axis)
    if valid is not None:
        bad |= ~valid
    if bad.any():
        unit = unit.copy() if unit is arr else unit
        if channel_axis in (-1, unit.ndim - 1):
            unit[bad] = 0.0
        else:
            np.moveaxis(unit, channel_axis, -1)[bad] = 0.0
    return unit, ~bad


def declared_valid(path: str | Path) -> np.ndarray | None:
    """H x W validity of a GeoTIFF image from rasterio's masks (declared nodata value, internal
    mask, alpha band; :func:`slidewatch.data.raster.declared_mask`), or None when it has none
    (other formats: None; their non-finite pixels are caught by :func:`unit_pixels`)."""
    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return None
    with raster.open_raster(path) as ds:
        bands = raster.image_bands(ds)
        if raster.is_palette(ds):
            return None
        return raster.declared_mask(ds, bands)


class TileDataset(Dataset):
    """Images of ``samples`` in unit scale by :func:`unit_pixels` (normalise in ``transform``).

    ``cache`` keeps each image's native-dtype array in memory after its first read (each
    DataLoader worker holds its own copy). ``transform`` is called on the CxHxW tensor.
    ``bands``: the band count the model takes (a one-line DataError for other images). ``dem``:
    a DEM whose elevation, slope and aspect (metres and degrees, on the image's grid) are
    appended after the image's unit-scale bands, before any transform. ``standardize``: the
    model's per-image standardisation (:class:`slidewatch.data.standardize.Standardizer`,
    called with the whole unit-scale image, its valid mask and the statistics to use),
    applied to the image bands before the terrain and the transform. The statistics are the
    sample's ``scene_stats`` when it has them (a tile cut from a scene: its scene image's,
    from ``tiles.csv``; rescaled to the model's explicit ``scale``), else None: the file's
    own whole-image statistics (a class-folder image, a bare file, a tile of an older
    ``tiles.csv``). ``masks``: called with an index and the image's (H, W), the sample's
    landslide mask as H x W 0/1 or None (unknown); items then also carry ``mask`` and
    ``mask_known`` (:class:`slidewatch.data.masks.TileMasks`, for the training-only mask loss).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        scale: float | None = None,
        bands: int | None = None,
        dem: str | Path | None = None,
        pixel_size: float | None = None,
        standardize: Callable[[np.ndarray, np.ndarray, ImageStats | None], np.ndarray]
        | None = None,
        masks: Callable[[int, tuple[int, int]], np.ndarray | None] | None = None,
    ) -> None:
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform).__name__}")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        self.max_pixels = max_pixels
        self.scale = scale
        self.bands, self.dem, self.pixel_size = bands, dem, pixel_size
        self.standardize = standardize
        self.masks = masks
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._terrain: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def targets(self) -> list[int]:
        """Labels in sample order (for samplers and class weights)."""
        return [s.label for s in self.samples]

    def _array(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image ``i`` as read (HxWxC, native dtype) and its declared validity (or None)."""
        item = self._cache.get(i)
        if item is None:
            path = self.samples[i].path
            item = (read_image(path, max_pixels=self.max_pixels), declared_valid(path))
            if self.cache:
                self._cache[i] = item
        return item

    def preload(self) -> None:
        """Read (and so check) every image and its terrain now; with ``cache`` they stay in
        memory."""
        for i in range(len(self)):
            self.unit_image(i)

    def terrain(self, i: int) -> np.ndarray:
        from slidewatch.data.terrain import terrain_for_image

        t = self._terrain.get(i)
        if t is None:
            t = terrain_for_image(self.dem, self.samples[i].path, pixel_size=self.pixel_size)
            if self.cache:
                self._terrain[i] = t
        return t

    def unit_image(self, i: int) -> np.ndarray:
        """Image ``i`` as HxWxC float32 in unit scale (plus terrain channels), before any
        transform."""
        arr, valid = self._array(i)
        unit, ok = unit_and_valid(arr, self.scale, valid)
        if self.bands is not None and unit.shape[2] != self.bands:
            extra = " image bands (plus 3 terrain channels)" if self.dem is not None else ""
            raise DataError(f"{self.samples[i].path}: has {unit.shape[2]} bands; the model "
                            f"takes {self.bands}{extra}")
        if self.standardize is not None:  # the whole source image's statistics
            unit = self.standardize(unit, ok, self.scene_stats(i, arr.dtype, unit.shape[2]))
        if self.dem is None:
            return unit
        return np.concatenate([unit, self.terrain(i)], axis=2)

    def scene_stats(self, i: int, dtype, bands: int) -> ImageStats | None:
        """Sample ``i``'s scene statistics in this dataset's unit scale (recorded by the dtype
        rule of the scene, which its tile files keep; an explicit ``scale`` rescales them),
        or None (the file's own statistics are used)."""
        sample = self.samples[i]
        stats = getattr(sample, "scene_stats", None)
        if stats is None:
            return None
        if stats.bands != bands:
            raise DataError(f"{sample.path}: tiles.csv gives its scene statistics for "
                            f"{stats.bands} bands, the tile has {bands}")
        if self.scale is None:
            return stats
        return stats.scaled(dtype_unit(dtype) / self.scale)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        unit = self.unit_image(i)
        image = torch.from_numpy(unit.transpose(2, 0, 1).copy())  # never a view of the cache
        if self.masks is not None:  # the mask rides as the last band through the geometry
            return self._with_mask(i, image)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": int(self.samples[i].label), "index": i}

    def _with_mask(self, i: int, image: torch.Tensor) -> dict:
        """Item ``i`` with ``mask`` (1 x H x W, the landslide share of each pixel after the
        transform) and ``mask_known`` (0.0 when the sample has no mask: its mask is zeros
        and is not to be learnt from). The transform must keep the last band's values
        (``TrainTransform(color_bands=...)``)."""
        found = self.masks(i, tuple(image.shape[-2:]))
        mask = torch.zeros((1, *image.shape[-2:])) if found is None else \
            torch.from_numpy(np.asarray(found, dtype=np.float32))[None]
        x = torch.cat([image, mask])
        if self.transform is not None:
            x = self.transform(x)
        return {"image": x[:-1], "label": int(self.samples[i].label), "index": i,
                "mask": x[-1:].clamp(0, 1), "mask_known": float(found is not None)}


def class_counts(samples: Sequence[Sample], n_classes: int) -> list[int]:
    """Number of samples of each label ``0 .. n_classes-1``."""
    counts = [0] * n_classes
    for s in samples:
        if not 0 <= s.label < n_classes:
            raise ValueError(f"{s.path}: label {s.label} outside 0..{n_classes - 1}")
        counts[s.label] += 1
    return counts
