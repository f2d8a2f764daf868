"""Blending scored windows into the probability GeoTIFF: memory that does not grow with the scene.

* :func:`blend_weights`: per-window pixel weights (``mean``: uniform, ``hann``: a Hann window
  with a floor so that scene edges keep weight).
* :class:`Accumulator`: blended sum and weight for only the rows still being written
  (``tile + OUT_BLOCK`` rows x scene width).
* The probability GeoTIFF (float32, 256x256 tiles, deflate, nodata :data:`NODATA`):
  :func:`create_probability` makes it empty on the scene's grid, :func:`write_rows` writes a
  block row at a time, :func:`set_tags` adds the final tags; each write is :func:`gdal_writing`
  (nothing printed by libtiff/GDAL, a failure is one DataError naming the file).
  :func:`write_cog` copies the finished map into a Cloud-Optimized GeoTIFF (GDAL's COG
  driver: the same tiles and compression, average overviews, IFDs first), the final file.

The windows themselves (:class:`slidewatch.data.raster.Grid`) and reading the scene: in
:mod:`slidewatch.data.raster`. Polygons, GeoJSON and quick-looks: :mod:`slidewatch.scan.outputs`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError
from rasterio.windows import Window

from slidewatch.data.raster import SceneInfo, open_raster
from slidewatch.errors import ConfigError
from slidewatch.io_utils import quiet_writing

try:  # GDAL's errors that rasterio raises as they are (e.g. a damaged directory on reopening)
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - rasterio moved it
    CPLE_BaseError = RasterioError
RASTER_WRITE_ERRORS = (RasterioError, CPLE_BaseError, OSError)

NODATA = -1.0  # probabilities are in [0, 1]; -1 marks "not scanned" (nodata in the scene)
OUT_BLOCK = 256  # output GeoTIFF tile size; rows are written a block row at a time
HANN_FLOOR = 0.01


def blend_weights(tile: int, blend: str) -> np.ndarray:
    """``tile x tile`` float32 weights: 1 everywhere (mean) or a floored Hann window."""
    if blend == "mean":
        return np.ones((tile, tile), np.float32)
    if blend == "hann":
        x = (np.arange(tile) + 0.5) / tile
        w1 = HANN_FLOOR + (1.0 - HANN_FLOOR) * np.sin(np.pi * x) ** 2
        return np.outer(w1, w1).astype(np.float32)
    raise ConfigError(f"--blend: must be mean or hann, got {blend!r}")


class Accumulator:
    """Blended sum and weight of rows ``[base, base + tile + OUT_BLOCK)`` of a scene."""

    def __init__(self, width: int, tile: int, base: int = 0):
        self.base = base
        self.sum = np.zeros((tile + OUT_BLOCK, width), np.float32)
        self.weight = np.zeros_like(self.sum)

    def add(self, windows: list[Window], probs, weights: np.ndarray) -> None:
        """Add ``weights * p`` of each window (NaN = skipped); rows above ``base`` are clipped.
        ``p`` is one probability per window (a classifier) or a map per window (segmentation,
        NaN on invalid pixels, which get no weight)."""
        for win, p in zip(windows, probs):
            top = win.row_off - self.base
            skip = max(0, -top)
            rows = slice(top + skip, top + win.height)
            cols = slice(win.col_off, win.col_off + win.width)
            w = weights[skip:]
            if isinstance(p, np.ndarray) and p.ndim == 2:
                m = p[skip:]
                ok = np.isfinite(m)
                if not ok.any():
                    continue
                self.sum[rows, cols] += np.where(ok, w * m, 0.0)
                self.weight[rows, cols] += np.where(ok, w, 0.0)
                continue
            if p is None or not math.isfinite(p):
                continue
            self.sum[rows, cols] += w * np.float32(p)
            self.weight[rows, cols] += w

    def pop(self, upto: int) -> np.ndarray:
        """Final float32 probabilities of rows ``[base, upto)`` (NODATA where no weight)."""
        n = upto - self.base
        if n <= 0:
            return np.zeros((0, self.sum.shape[1]), np.float32)
        w = self.weight[:n]
        out = np.full(w.shape, NODATA, np.float32)
        np.divide(self.sum[:n], w, out=out, where=w > 0)
        for buf in (self.sum, self.weight):
            buf[:-n] = buf[n:].copy()
            buf[-n:] = 0.0
        self.base = upto
        return out


# ---------------------------------------------------------------- probability GeoTIFF


def gdal_writing(path: Path):
    """Writes of the GeoTIFF ``path`` (:func:`slidewatch.io_utils.quiet_writing`): nothing
    printed by libtiff or GDAL, a failure is one DataError naming ``path`` (a failure libtiff
    only prints counts too, so the resume state never claims rows that are not on disk)."""
    return quiet_writing(path, RASTER_WRITE_ERRORS)


def create_probability(path: Path, info: SceneInfo, tags: dict[str, str]) -> None:
    """An empty float32 GeoTIFF on the scene's grid, filled later by :func:`write_rows`."""
    profile = {
        "driver": "GTiff", "width": info.width, "height": info.height, "count": 1,
        "dtype": "float32", "nodata": NODATA, "tiled": True, "blockxsize": OUT_BLOCK,
        "blockysize": OUT_BLOCK, "compress": "deflate", "predictor": 3, "sparse_ok": True,
        "bigtiff": "if_safer",
    }
    if info.crs is not None or not info.transform.is_identity:
        profile.update(crs=info.crs, transform=info.transform)
    with gdal_writing(path), open_raster(path, "w", **profile) as dst:
        dst.update_tags(**tags)


def write_rows(path: Path, row0: int, rows: np.ndarray) -> None:
    """Write rows and close the file, so that what the resume state claims is on disk."""
    with gdal_writing(path), open_raster(path, "r+") as dst:
        dst.write(rows[None], window=Window(0, row0, rows.shape[1], rows.shape[0]))


def set_tags(path: Path, **tags: str) -> None:
    with gdal_writing(path), open_raster(path, "r+") as dst:
        dst.update_tags(**tags)


def write_cog(src: Path, dst: Path, final: Path | None = None) -> None:
    """Copy the finished probability map ``src`` to ``dst`` as a Cloud-Optimized GeoTIFF:
    256x256 tiles, deflate with the floating-point predictor, overviews (averages of valid
    pixels, nodata kept) down to one tile, tags, CRS and nodata kept. Streams block by block
    under the caller's GDAL cache limit. ``final``: the name a failure names (``dst`` may be a
    temporary file)."""
    from rasterio.shutil import copy

    with gdal_writing(final or dst):
        copy(src, dst, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=OUT_BLOCK,
             OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER", NUM_THREADS="1")
