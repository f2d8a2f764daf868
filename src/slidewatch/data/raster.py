"""Windowed raster IO for ``slidewatch scan``: memory that does not grow with the scene.

* :class:`Grid`: the windows of a scene, row by row; the last window of each row and column is
  flush with the right and bottom edges, so every pixel is covered.
* :func:`blend_weights`: per-window pixel weights (``mean``: uniform, ``hann``: a Hann window
  with a floor so that scene edges keep weight).
* :class:`Accumulator`: blended sum and weight for only the rows still being written
  (``tile + OUT_BLOCK`` rows x scene width).
* Scene opening with one-line errors, windowed reads with the nodata mask, and the probability
  GeoTIFF (float32, 256x256 tiles, deflate, nodata :data:`NODATA`) written a block row at a time.

Polygons, GeoJSON and quick-looks from the finished map: :mod:`slidewatch.scan_outputs`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from slidewatch.errors import ConfigError, DataError

NODATA = -1.0  # probabilities are in [0, 1]; -1 marks "not scanned" (nodata in the scene)
OUT_BLOCK = 256  # output GeoTIFF tile size; rows are written a block row at a time
HANN_FLOOR = 0.01
SCAN_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}
GDAL_ENV = {"GDAL_CACHEMAX": 32 * 2**20}  # bytes; the default (5% of RAM) counts towards RSS
MAX_READ_BYTES = 256 * 2**20  # a row of windows is read as one strip up to this size


def gdal_env(**options) -> rasterio.Env:
    return rasterio.Env(**{**GDAL_ENV, **options})


def open_quiet(path: Path, mode: str = "r", **profile):
    """``rasterio.open`` without the warning for files that have no georeferencing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, mode, **profile)


def _one_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- grid and weights


def starts(size: int, tile: int, stride: int) -> list[int]:
    """Window offsets along one axis; the last window ends exactly at ``size``."""
    out = list(range(0, size - tile + 1, stride))
    if out[-1] != size - tile:
        out.append(size - tile)
    return out


@dataclass(frozen=True)
class Grid:
    height: int
    width: int
    tile: int
    stride: int
    rows: tuple[int, ...] = field(init=False)
    cols: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        if not 1 <= self.stride <= self.tile:
            raise ConfigError(f"--stride: must be between 1 and the tile size {self.tile}, "
                              f"got {self.stride}")
        if self.tile > min(self.height, self.width):
            raise ConfigError(f"--tile: a {self.tile}-pixel window is larger than the "
                              f"{self.width}x{self.height} scene; use a smaller --tile")
        object.__setattr__(self, "rows", tuple(starts(self.height, self.tile, self.stride)))
        object.__setattr__(self, "cols", tuple(starts(self.width, self.tile, self.stride)))

    @property
    def n_windows(self) -> int:
        return len(self.rows) * len(self.cols)

    def windows(self, i: int) -> list[Window]:
        """The windows of window row ``i``, left to right."""
        return [Window(c, self.rows[i], self.tile, self.tile) for c in self.cols]

    def done_rows(self, i: int) -> int:
        """Rows that no window after window row ``i`` touches: they are final."""
        return self.rows[i + 1] if i + 1 < len(self.rows) else self.height


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
        """Add ``weights * p`` of each window (NaN = skipped); rows above ``base`` are clipped."""
        for win, p in zip(windows, probs):
            if p is None or not math.isfinite(p):
                continue
            top = win.row_off - self.base
            skip = max(0, -top)
            rows = slice(top + skip, top + win.height)
            cols = slice(win.col_off, win.col_off + win.width)
            w = weights[skip:]
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


# ---------------------------------------------------------------- scenes


@dataclass
class SceneInfo:
    path: Path
    width: int
    height: int
    count: int
    dtype: str
    bands: list[int]
    crs: object  # rasterio CRS or None (pixel space)
    transform: object  # affine.Affine
    has_mask: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def open_raster(path: Path):
    """Open a scene with rasterio; every failure is a one-line DataError naming the file."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.suffix.lower() not in SCAN_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(no suffix)'}; "
                        f"scan reads {' '.join(sorted(SCAN_SUFFIXES))}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        return open_quiet(path)
    except RasterioError as exc:
        raise DataError(f"{path}: not a raster that rasterio can read ({_one_line(exc)})") from None


def _check_complete(ds, path: Path) -> None:
    """A truncated TIFF opens fine; its last block then points past the end of the file."""
    if ds.driver != "GTiff":
        return
    bh, bw = ds.block_shapes[0]
    key = f"{math.ceil(ds.width / bw) - 1}_{math.ceil(ds.height / bh) - 1}"
    size = path.stat().st_size
    for b in range(1, ds.count + 1):
        off = ds.get_tag_item(f"BLOCK_OFFSET_{key}", "TIFF", bidx=b)
        n = ds.get_tag_item(f"BLOCK_SIZE_{key}", "TIFF", bidx=b)
        if off and n and int(off) + int(n) > size:
            raise DataError(f"{path}: truncated or corrupt TIFF (pixel data ends after the end "
                            f"of the file)")


def _default_bands(ds, path: Path, in_chans: int) -> list[int]:
    bands = list(range(1, ds.count + 1))
    if ds.count in (2, 4) and ds.colorinterp[-1] == ColorInterp.alpha:
        bands = bands[:-1]  # alpha is the mask, not data (as in readers.read_image)
    if len(bands) == 1 and in_chans == 3:
        return bands * 3  # greyscale repeated to 3 bands, as read_image does
    if len(bands) != in_chans:
        raise DataError(f"{path}: has {len(bands)} bands; the model takes {in_chans}; "
                        f"choose {in_chans} with --bands (1-based, e.g. --bands 1,2,3)")
    return bands


def inspect_scene(path: str | Path, in_chans: int, bands: list[int] | None = None) -> SceneInfo:
    """Check a scene from its header (bands, completeness); nothing is read or written."""
    path = Path(path)
    with gdal_env(), open_raster(path) as ds:
        if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
            raise DataError(f"{path}: colour-mapped raster; convert it to RGB first")
        _check_complete(ds, path)
        if bands is None:
            bands = _default_bands(ds, path, in_chans)
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise DataError(f"{path}: --bands {bad[0]} does not exist (bands 1..{ds.count})")
        if len(bands) != in_chans:
            raise DataError(f"{path}: --bands gives {len(bands)} bands; the model takes "
                            f"{in_chans}")
        crs = ds.crs
        warn = []
        if crs is None and path.suffix.lower() in (".tif", ".tiff"):
            warn.append(f"{path}: GeoTIFF has no CRS; detections are in pixel coordinates")
        return SceneInfo(path, ds.width, ds.height, ds.count, ds.dtypes[0], list(bands), crs,
                         ds.transform, needs_mask(ds, bands), warn)


def needs_mask(ds, bands: list[int]) -> bool:
    """False when every band is all valid (no nodata value, mask or alpha): masks are skipped."""
    return any(list(ds.mask_flag_enums[b - 1]) != [MaskFlags.all_valid] for b in set(bands))


def _masks(ds, bands: list[int], win: Window) -> np.ndarray:
    try:
        return ds.read_masks(sorted(set(bands)), window=win).any(axis=0)
    except RasterioError as exc:
        raise DataError(f"{ds.name}: cannot read pixels ({_one_line(exc)})") from None


def _read(ds, win: Window, bands: list[int], masked: bool):
    try:
        data = ds.read(bands, window=win)
    except RasterioError as exc:
        raise DataError(f"{ds.name}: cannot read pixels ({_one_line(exc)})") from None
    return data, _masks(ds, bands, win) if masked else None


def read_windows(ds, windows: list[Window], bands: list[int], masked: bool) -> Iterator[tuple]:
    """``(CxHxW data, HxW valid mask or None)`` per window, in order.

    Consecutive windows on the same rows are read as one strip (up to ``MAX_READ_BYTES``).
    """
    i = 0
    itemsize = np.dtype(ds.dtypes[0]).itemsize
    while i < len(windows):
        first = windows[i]
        j = i + 1
        while j < len(windows) and (windows[j].row_off, windows[j].height) == \
                (first.row_off, first.height):
            j += 1
        group = windows[i:j]
        c0 = min(w.col_off for w in group)
        c1 = max(w.col_off + w.width for w in group)
        if len(group) > 1 and len(bands) * first.height * (c1 - c0) * itemsize <= MAX_READ_BYTES:
            data, valid = _read(ds, Window(c0, first.row_off, c1 - c0, first.height), bands,
                                masked)
            for w in group:
                cols = slice(w.col_off - c0, w.col_off - c0 + w.width)
                yield data[:, :, cols], None if valid is None else valid[:, cols]
        else:
            for w in group:
                yield _read(ds, w, bands, masked)
        i = j


def valid_rows(ds, bands: list[int], row0: int, row1: int) -> np.ndarray:
    """Bool mask of scene rows ``[row0, row1)``: True where any of ``bands`` has data."""
    return _masks(ds, bands, Window(0, row0, ds.width, row1 - row0))


def read_decimated(ds, bands: list[int], height: int, width: int) -> np.ndarray:
    """Bands at ``height x width`` (nearest; GDAL uses overviews when the file has them)."""
    try:
        return ds.read(bands, out_shape=(len(bands), height, width),
                       resampling=Resampling.nearest)
    except RasterioError as exc:
        raise DataError(f"{ds.name}: cannot read pixels ({_one_line(exc)})") from None


# ---------------------------------------------------------------- probability GeoTIFF


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
    with open_quiet(path, "w", **profile) as dst:
        dst.update_tags(**tags)


def write_rows(path: Path, row0: int, rows: np.ndarray) -> None:
    """Write rows and close the file, so that what the resume state claims is on disk."""
    with open_quiet(path, "r+") as dst:
        dst.write(rows[None], window=Window(0, row0, rows.shape[1], rows.shape[0]))


def set_tags(path: Path, **tags: str) -> None:
    with open_quiet(path, "r+") as dst:
        dst.update_tags(**tags)
