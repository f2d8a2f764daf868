"""Rasterio access: the one module that opens rasters, and windowed reads with the nodata mask.

Every raster in slidewatch (scenes, GeoTIFF images and tiles, DEMs, probability maps) is opened
by :func:`open_raster`; nothing else calls ``rasterio.open``.

* Opening: :func:`open_raster` (no warning for files without georeferencing; in read mode every
  failure is a one-line :class:`DataError` naming the file, worded by :func:`one_line`),
  :func:`open_scene` (the checks of a scan scene first), :func:`gdal_env` (GDAL's block cache
  kept small), :func:`georef` (CRS and transform from the header), :func:`open_url` (a remote
  asset of a STAC catalogue by its address, through GDAL's ``/vsicurl/``).
* The band rule, :func:`image_bands`: every band, except that the trailing alpha band of a 2- or
  4-band file is the mask, not data. :func:`is_palette`: a colour-mapped single band.
* The nodata rule: a pixel is valid when every chosen band is valid according to rasterio's
  masks (declared nodata value, internal mask band, alpha band) AND every chosen band's value is
  finite (not NaN or +-inf). :func:`valid_pixels` is the rule on pixels already read (C x H x W
  data, the H x W mask or None); :func:`declared_mask` is its rasterio half alone (None when
  every band is all valid); :func:`valid_mask` applies the whole rule to a window of a dataset;
  :func:`read_window` / :func:`read_windows` return the pixels with it and :func:`valid_rows`
  gives it for whole scene rows. :func:`needs_mask` is False only where no pixel can be
  invalid (every chosen band all valid by rasterio's flags and of an integer dtype); windows
  with no valid pixel are skipped by the scan. Inventory chips use the same rule for their
  nodata fraction.
* Window grids: :class:`Grid` (the windows of a scene, row by row; the last window of each row
  and column is flush with the right and bottom edges, so every pixel is covered) and
  :func:`starts`; :func:`read_decimated` for quick-looks.
* Scenes: :func:`inspect_scene` checks a scene from its header (size limit, bands,
  completeness, CRS) into a :class:`SceneInfo`. A scene larger than ``max_pixels`` is refused
  before anything is planned. A CRS with no transformation to WGS84 longitude/latitude (a
  local engineering grid) is not an error: the scene is scanned as one without a CRS
  (``SceneInfo.georeferenced`` is False: detections in pixel coordinates, no WGS84 copy; the
  probability map keeps the CRS and transform), with a warning.

Writing the probability map: :mod:`slidewatch.scan.mosaic`. Ground geometry:
:mod:`slidewatch.data.geometry`. Images and masks of every format: :mod:`slidewatch.data.readers`.
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

SCAN_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}
GDAL_ENV = {"GDAL_CACHEMAX": 32 * 2**20}  # bytes; the default (5% of RAM) counts towards RSS
MAX_READ_BYTES = 256 * 2**20  # a row of windows is read as one strip up to this size


def gdal_env(**options) -> rasterio.Env:
    return rasterio.Env(**{**GDAL_ENV, **options})


def one_line(exc: BaseException) -> str:
    """The innermost message of an exception chain, on one line (GDAL puts details there)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    msg = exc.args[-1] if exc.args and isinstance(exc.args[-1], str) else str(exc)
    return " ".join(msg.split())


# ---------------------------------------------------------------- opening


def open_raster(path: str | Path, mode: str = "r", **profile):
    """``rasterio.open`` without the warning for files that have no georeferencing.

    Read mode: a missing path, a broken link, a folder or another file that is not a regular
    one (a FIFO would block), a name that is not UTF-8 (rasterio cannot pass it to GDAL), and
    anything rasterio cannot open, is a one-line ``DataError("<path>: ...")``. Write modes
    (``"w"``, ``"r+"``) raise rasterio's own errors, so that a failed write is never mistaken
    for bad input; only a name that is not UTF-8 is a DataError there too.
    """
    path = Path(path)
    if mode != "r":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                return rasterio.open(path, mode, **profile)
        except UnicodeEncodeError:  # a name, not a failed write: rasterio cannot pass it on
            raise DataError(f"{path}: file name is not valid UTF-8; rename it") from None
    _check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, mode, **profile)
    except RasterioError as exc:
        raise DataError(f"{path}: not a raster that rasterio can read ({one_line(exc)})") from None
    except UnicodeEncodeError:  # rasterio passes the path to GDAL as UTF-8
        raise DataError(f"{path}: file name is not valid UTF-8; rename it") from None


def gdal_path(href: str) -> str:
    """The GDAL name of an asset address: ``http(s)://`` -> ``/vsicurl/`` (HTTP range requests),
    ``s3://`` -> ``/vsis3/``, ``gs://`` -> ``/vsigs/``, ``file://`` -> the local path; anything
    else unchanged."""
    from urllib.parse import unquote, urlparse

    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/")):
        if href.startswith(scheme):
            return vsi + href[len(scheme):]
    if href.startswith("file://"):
        return unquote(urlparse(href).path)
    return href


def open_url(href: str):
    """Open a raster by address (a remote asset of a catalogue: see :func:`gdal_path`, or a
    local path) for reading; anything GDAL cannot open or reach is one DataError naming the
    address. Remote reads take their timeouts from the GDAL options of the caller's
    :func:`gdal_env`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(gdal_path(href))
    except RasterioError as exc:
        raise DataError(f"{href}: cannot read it ({one_line(exc)})") from None


def _check_regular(path: Path) -> None:
    """A DataError unless ``path`` is an existing regular file (a FIFO would block GDAL)."""
    if not path.exists():
        what = "broken symbolic link" if path.is_symlink() else "file not found"
        raise DataError(f"{path}: {what}")
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "not a regular file"
        raise DataError(f"{path}: {what}")


def open_scene(path: Path):
    """Open a scene to scan: its type and size are checked first; one-line DataErrors."""
    _check_regular(path)
    if path.suffix.lower() not in SCAN_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(no suffix)'}; "
                        f"scan reads {' '.join(sorted(SCAN_SUFFIXES))}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    return open_raster(path)


def georef(path: str | Path) -> dict | None:
    """``{"crs", "transform"}`` of a georeferenced raster, else None (header only)."""
    with open_raster(path) as ds:
        if ds.crs is None and ds.transform.is_identity:
            return None
        return {"crs": ds.crs, "transform": ds.transform}


# ---------------------------------------------------------------- bands


def image_bands(ds) -> list[int]:
    """1-based band indexes of the image: a trailing alpha band is dropped from 2- or 4-band
    files (it is the mask, not data)."""
    bands = list(range(1, ds.count + 1))
    if ds.count in (2, 4) and ds.colorinterp[-1] == ColorInterp.alpha:
        bands = bands[:-1]
    return bands


def is_palette(ds) -> bool:
    """A colour-mapped raster: one band of indexes into a colour table."""
    return ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette


def read_image_bands(ds, what: str = "cannot decode raster") -> np.ndarray:
    """The whole image as HxWxC in its native dtype: :func:`image_bands`, colour-mapped
    indexes turned into RGB (uint8). Failures: ``DataError("<file>: <what> (...)")``."""
    try:
        arr = np.moveaxis(ds.read(image_bands(ds)), 0, -1)
        if is_palette(ds):
            cmap = ds.colormap(1)
            lut = np.zeros((max(256, max(cmap) + 1), 3), np.uint8)
            for index, rgba in cmap.items():
                lut[index] = rgba[:3]
            arr = lut[arr[:, :, 0]]
    except RasterioError as exc:
        raise DataError(f"{ds.name}: {what} ({one_line(exc)})") from None
    return arr


# ---------------------------------------------------------------- the nodata rule


def valid_pixels(data: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """H x W bool: ``mask`` (all True when None) AND every band of C x H x W ``data`` finite.

    ``mask`` is rasterio's H x W validity (every chosen band valid: nodata value, internal
    mask, alpha band); NaN and +-inf pixels are invalid whatever the masks say.
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    valid = np.ones(data.shape[-2:], bool) if mask is None else np.asarray(mask, bool).copy()
    if data.dtype.kind in "fc":
        valid &= np.isfinite(data).all(axis=0)
    return valid


def _all_valid_flags(ds, bands: list[int]) -> bool:
    return all(list(ds.mask_flag_enums[b - 1]) == [MaskFlags.all_valid] for b in set(bands))


def _floating(ds, bands: list[int]) -> bool:
    return any(np.dtype(ds.dtypes[b - 1]).kind in "fc" for b in set(bands))


def needs_mask(ds, bands: list[int]) -> bool:
    """False when no pixel of ``bands`` can be invalid (no nodata value, mask or alpha, and an
    integer dtype): masks are skipped."""
    return not _all_valid_flags(ds, bands) or _floating(ds, bands)


def declared_mask(ds, bands: list[int], win: Window | None = None,
                  what: str = "cannot read pixels") -> np.ndarray | None:
    """The rasterio half of the nodata rule: H x W bool, every band of ``bands`` valid by its
    mask (nodata value, internal mask, alpha); None when every band is all valid (nothing is
    read). Pixel values are not looked at: :func:`valid_pixels` adds the finite check."""
    if _all_valid_flags(ds, bands):
        return None
    try:
        return ds.read_masks(sorted(set(bands)), window=win).all(axis=0)
    except RasterioError as exc:
        raise DataError(f"{ds.name}: {what} ({one_line(exc)})") from None


def read_window(ds, bands: list[int], window: Window | None = None, masked: bool = True,
                what: str = "cannot read pixels") -> tuple[np.ndarray, np.ndarray | None]:
    """``(C x H x W data, H x W valid mask by the nodata rule, or None without masked)``.

    Failures: ``DataError("<file>: <what> (...)")``.
    """
    try:
        data = ds.read(bands, window=window)
    except RasterioError as exc:
        raise DataError(f"{ds.name}: {what} ({one_line(exc)})") from None
    if not masked:
        return data, None
    return data, valid_pixels(data, declared_mask(ds, bands, window, what))


def valid_mask(ds, bands: list[int], window: Window | None = None) -> np.ndarray:
    """H x W bool of a window (the whole raster by default) by the nodata rule; pixel values
    are read only for floating-point bands, a strip of up to ``MAX_READ_BYTES`` at a time."""
    if window is None:
        window = Window(0, 0, ds.width, ds.height)
    row0, height = int(window.row_off), int(window.height)
    if not _floating(ds, bands):
        mask = declared_mask(ds, bands, window)
        return np.ones((height, int(window.width)), bool) if mask is None else mask
    row_bytes = len(bands) * int(window.width) * max(np.dtype(d).itemsize for d in ds.dtypes)
    step = max(1, MAX_READ_BYTES // max(1, row_bytes))
    parts = []
    for r in range(row0, row0 + height, step):
        strip = Window(window.col_off, r, window.width, min(step, row0 + height - r))
        parts.append(read_window(ds, bands, strip)[1])
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


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
            data, valid = read_window(ds, bands, Window(c0, first.row_off, c1 - c0,
                                                        first.height), masked)
            for w in group:
                cols = slice(w.col_off - c0, w.col_off - c0 + w.width)
                yield data[:, :, cols], None if valid is None else valid[:, cols]
        else:
            for w in group:
                yield read_window(ds, bands, w, masked)
        i = j


def valid_rows(ds, bands: list[int], row0: int, row1: int) -> np.ndarray:
    """Bool mask of scene rows ``[row0, row1)`` by the nodata rule (every band valid)."""
    return valid_mask(ds, bands, Window(0, row0, ds.width, row1 - row0))


def read_decimated(ds, bands: list[int], height: int, width: int) -> np.ndarray:
    """Bands at ``height x width`` (nearest; GDAL uses overviews when the file has them)."""
    try:
        return ds.read(bands, out_shape=(len(bands), height, width),
                       resampling=Resampling.nearest)
    except RasterioError as exc:
        raise DataError(f"{ds.name}: cannot read pixels ({one_line(exc)})") from None


# ---------------------------------------------------------------- window grids


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
    lonlat: bool = True  # the CRS has a transformation to WGS84 longitude/latitude

    @property
    def georeferenced(self) -> bool:
        """Detections in map coordinates and a WGS84 copy: a CRS that maps to lon/lat."""
        return self.crs is not None and self.lonlat


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
    bands = image_bands(ds)
    if len(bands) == 1 and in_chans == 3:
        return bands * 3  # greyscale repeated to 3 bands, as read_image does
    if len(bands) != in_chans:
        raise DataError(f"{path}: has {len(bands)} bands; the model takes {in_chans}; "
                        f"choose {in_chans} with --bands (1-based, e.g. --bands 1,2,3)")
    return bands


def _crs_name(crs) -> str:
    epsg = crs.to_epsg()
    if epsg is not None:
        return f"EPSG:{epsg}"
    wkt = crs.to_wkt()
    start = wkt.find('"')
    return wkt[start + 1:wkt.find('"', start + 1)] if start >= 0 else wkt[:40]


def _lonlat_problem(ds) -> str | None:
    """Why the scene's CRS cannot be taken to WGS84 longitude/latitude, or None."""
    from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio has no public name
    from rasterio.errors import CRSError, TransformError
    from rasterio.warp import transform

    x, y = ds.transform @ (ds.width / 2, ds.height / 2)
    try:
        lon, lat = transform(ds.crs, "EPSG:4326", [x], [y])
    except (CRSError, TransformError, CPLE_BaseError) as exc:
        return one_line(exc)
    if not (math.isfinite(lon[0]) and math.isfinite(lat[0])):
        return "the scene lies outside the CRS's area of use"
    return None


def check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    """A DataError when ``width x height`` exceeds ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(f"{path}: {width}x{height} = {width * height} pixels is more than the "
                        f"scan limit of {max_pixels}; crop or tile it, or raise the limit with "
                        f"--max-pixels {width * height} (0: no limit)")


def inspect_scene(path: str | Path, in_chans: int, bands: list[int] | None = None,
                  max_pixels: int | None = None) -> SceneInfo:
    """Check a scene from its header (size limit, bands, completeness, CRS); nothing is read
    or written."""
    path = Path(path)
    with gdal_env(), open_scene(path) as ds:
        check_pixels(path, ds.width, ds.height, max_pixels)
        if is_palette(ds):
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
        problem = None if crs is None else _lonlat_problem(ds)
        if problem is not None:
            why = f" ({problem})" if len(problem) < 80 and "{" not in problem else ""
            warn.append(f"{path}: its CRS ({_crs_name(crs)}) has no transformation to WGS84 "
                        f"longitude/latitude{why}; detections are in pixel coordinates and no "
                        f"WGS84 copy is written (the probability map keeps the CRS)")
        return SceneInfo(path, ds.width, ds.height, ds.count, ds.dtypes[0], list(bands), crs,
                         ds.transform, needs_mask(ds, bands), warn, problem is None)
