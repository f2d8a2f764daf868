"""Read images and masks into numpy arrays, one rule for every format.

``read_image`` returns HxWxC in the file's native dtype: greyscale becomes 3 channels
(repeated), alpha is dropped, multi-band GeoTIFF and HDF5 (key ``img``) keep all bands.
``scale_to_unit`` is the only place pixel values are scaled. Every failure is a one-line
``DataError("<path>: <what>")``. TIFFs are opened, read and written through
:mod:`slidewatch.data.raster` (imported on use: rasterio loads only when a TIFF is touched).

What counts as a file to read (:func:`file_problem`, also the dataset scanner's rule): a regular
file (not a folder, named pipe, socket or device; a symbolic link is followed, a broken one is
an error) whose path is valid UTF-8. File names that are not UTF-8 are refused, not handled:
slidewatch writes paths into UTF-8 CSV and JSON files and rasterio cannot open them; the error
line shows such a name with ``\\xNN`` escapes (``cli/main.py``).
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".h5", ".hdf5"}
PIL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
H5_SUFFIXES = {".h5", ".hdf5"}
DEFAULT_MAX_PIXELS = 2**28
H5_KEY = "img"


@dataclass(frozen=True)
class ImageInfo:
    """What ``read_image`` will return, read from the header only."""

    width: int
    height: int
    bands: int
    dtype: str


NOT_UTF8 = "file name is not valid UTF-8; rename it"


def utf8_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is valid UTF-8 (bytes that are not reach Python as surrogate escapes)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a file slidewatch can read, or None: a name that is not UTF-8, a
    missing file, a broken symbolic link, a folder, or anything else that is not a regular
    file (named pipe, socket, device)."""
    if not utf8_name(path):
        return NOT_UTF8
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return "file not found"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = ("named pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
    return f"not a regular file (a {kind})"


def _check_file(path: Path) -> str:
    """Return the lower-case suffix, or raise if the file cannot be an image we read."""
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no suffix)'}; "
            f"expected one of {' '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return suffix


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(
            f"{path}: {width}x{height} = {width * height} pixels is more than the limit of "
            f"{max_pixels}; tile or crop it first"
        )


def _as_three(arr: np.ndarray) -> np.ndarray:
    """HxW or HxWx1 -> HxWx3 (repeated); other shapes unchanged."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def _one_line(exc: BaseException) -> str:
    """:func:`slidewatch.data.raster.one_line`, the wording of every error's detail."""
    from slidewatch.data.raster import one_line

    return one_line(exc)


# ---------------------------------------------------------------- Pillow (PNG, JPEG, BMP)


def _pil_open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image that Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot open image ({exc})") from None


def _pil_target(im) -> tuple[int, str]:
    """(bands, numpy dtype) that ``_pil_to_array`` produces for this image."""
    mode = im.mode
    if mode.startswith("I;16"):
        return 3, "uint16"
    if mode == "I":
        return 3, "uint16" if im.format == "PNG" else "int32"
    if mode == "F":
        return 3, "float32"
    return 3, "uint8"


def _pil_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)
    elif mode == "I":
        arr = np.asarray(im)
        # Pillow opens 16-bit greyscale PNG as 32-bit "I" in some versions; PNG has no 32-bit.
        arr = arr.astype(np.uint16) if im.format == "PNG" else arr.astype(np.int32)
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float32)
    elif mode in ("L", "1"):
        arr = np.asarray(im.convert("L"))
    elif mode == "RGB":
        arr = np.asarray(im)
    else:  # P, PA, RGBA, LA, CMYK, YCbCr, RGBX, ...: colours kept, alpha dropped
        arr = np.asarray(im.convert("RGB"))
    return _as_three(arr)


def _read_pil(path: Path, max_pixels: int | None) -> np.ndarray:
    im = _pil_open(path)
    with im:
        _check_pixels(path, im.width, im.height, max_pixels)
        try:
            im.load()  # full decode: a truncated file fails here
            return np.ascontiguousarray(_pil_to_array(im))
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from None


# ---------------------------------------------------------------- rasterio (TIFF, GeoTIFF)


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    from slidewatch.data import raster

    with raster.open_raster(path) as ds:
        _check_pixels(path, ds.width, ds.height, max_pixels)
        arr = raster.read_image_bands(ds, "cannot decode raster")
    return np.ascontiguousarray(_as_three(arr))


def georef(path: str | Path) -> dict | None:
    """``{"crs", "transform"}`` of a georeferenced TIFF, else None (header only)."""
    path = Path(path)
    if _check_file(path) not in TIFF_SUFFIXES:
        return None
    from slidewatch.data import raster

    return raster.georef(path)


# ---------------------------------------------------------------- HDF5 (Landslide4Sense)


def _h5_dataset(path: Path, fh, key: str):
    if key not in fh:
        keys = ", ".join(sorted(fh.keys())) or "none"
        raise DataError(f"{path}: no dataset '{key}' in the HDF5 file (keys present: {keys})")
    ds = fh[key]
    if not hasattr(ds, "shape") or len(ds.shape) not in (2, 3):
        raise DataError(f"{path}: '{key}' must be an HxW or HxWxC array, got {ds}")
    return ds


def _read_h5(path: Path, max_pixels: int | None, key: str = H5_KEY) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            ds = _h5_dataset(path, fh, key)
            _check_pixels(path, ds.shape[1], ds.shape[0], max_pixels)
            arr = ds[()]
    except OSError as exc:
        raise DataError(f"{path}: cannot read HDF5 file ({_one_line(exc)})") from None
    return np.ascontiguousarray(_as_three(arr))


# ---------------------------------------------------------------- public API


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as HxWxC in its native dtype (greyscale -> 3 bands, alpha dropped)."""
    path = Path(path)
    suffix = _check_file(path)
    if suffix in PIL_SUFFIXES:
        return _read_pil(path, max_pixels)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, max_pixels)
    return _read_h5(path, max_pixels)


def read_mask(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a mask as bool HxW: landslide where any channel > 127.

    Masks whose values are all 0 or 1 (label masks such as Landslide4Sense) count 1 as
    landslide. HDF5 masks are read from key ``mask`` when present, else ``img``.
    """
    path = Path(path)
    if _check_file(path) in H5_SUFFIXES:
        arr = _read_h5(path, max_pixels, key=_h5_mask_key(path))
    else:
        arr = read_image(path, max_pixels)
    if arr.dtype == bool:
        return arr.any(axis=2)
    if arr.size and arr.max() <= 1 and arr.min() >= 0 and np.isin(arr, (0, 1)).all():
        return (arr > 0).any(axis=2)
    return (arr > 127).any(axis=2)


def _h5_mask_key(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return "mask" if "mask" in fh else H5_KEY
    except OSError as exc:
        raise DataError(f"{path}: cannot read HDF5 file ({_one_line(exc)})") from None


def scale_to_unit(arr: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Pixel values to float32: uint8/255, uint16/65535, other ints by dtype max, floats as is.

    An explicit ``scale`` (e.g. 10000 for Sentinel-2 reflectance) divides instead.
    """
    arr = np.asarray(arr)
    if scale is not None:
        if not scale > 0:
            raise ConfigError(f"--scale: must be > 0, got {scale}")
        return (arr.astype(np.float32) / np.float32(scale)).astype(np.float32)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False)
    raise DataError(f"cannot scale pixel values of dtype {arr.dtype}")


def dtype_unit(dtype) -> float:
    """What :func:`scale_to_unit` divides pixels of ``dtype`` by without an explicit scale:
    the integer maximum, 1 for floats and booleans (values in unit scale times this are in
    the dtype's own units)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":  # integers (not bool)
        return float(np.iinfo(dtype).max)
    return 1.0


def probe(path: str | Path) -> ImageInfo:
    """Width, height, bands and dtype that ``read_image`` returns, from the header only."""
    path = Path(path)
    suffix = _check_file(path)
    if suffix in PIL_SUFFIXES:
        with _pil_open(path) as im:
            bands, dtype = _pil_target(im)
            return ImageInfo(im.width, im.height, bands, dtype)
    if suffix in TIFF_SUFFIXES:
        from slidewatch.data import raster

        with raster.open_raster(path) as ds:
            bands = len(raster.image_bands(ds))
            dtype = "uint8" if raster.is_palette(ds) else ds.dtypes[0]
            return ImageInfo(ds.width, ds.height, 3 if bands == 1 else bands, dtype)
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            ds = _h5_dataset(path, fh, H5_KEY)
            bands = 1 if len(ds.shape) == 2 else ds.shape[2]
            return ImageInfo(ds.shape[1], ds.shape[0], 3 if bands == 1 else bands, str(ds.dtype))
    except OSError as exc:
        raise DataError(f"{path}: cannot read HDF5 file ({_one_line(exc)})") from None


# ---------------------------------------------------------------- writing tiles


def tile_suffix(arr: np.ndarray, profile: dict | None = None) -> str:
    """".png" for plain uint8 3-band arrays, ".tif" (GeoTIFF) for anything else."""
    geo = bool(profile) and (profile.get("crs") is not None or profile.get("transform") is not None)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and not geo:
        return ".png"
    return ".tif"


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write an H x W mask atomically as a single-band 0 / 255 PNG (any value > 0 is 255)."""
    from PIL import Image

    with atomic_path(Path(path)) as tmp:
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), "L").save(
            tmp, format="PNG", compress_level=1)


def write_tile(path: str | Path, arr: np.ndarray, profile: dict | None = None) -> Path:
    """Write an HxWxC tile atomically; the suffix of ``path`` is set by ``tile_suffix``.

    ``profile`` may give ``crs`` and ``transform`` (kept in the GeoTIFF). Returns the path.
    """
    path = Path(path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    path = path.with_suffix(tile_suffix(arr, profile))
    with atomic_path(path) as tmp:
        if path.suffix == ".png":
            from PIL import Image

            # level 1: half the time of the default 6 for a few per cent more bytes on imagery
            image = Image.fromarray(np.ascontiguousarray(arr), "RGB")
            image.save(tmp, format="PNG", compress_level=1)
        else:
            _write_geotiff(tmp, arr, profile or {})
    return path


def _write_geotiff(path: Path, arr: np.ndarray, profile: dict) -> None:
    from slidewatch.data import raster

    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    meta = {
        "driver": "GTiff",
        "height": arr.shape[0],
        "width": arr.shape[1],
        "count": arr.shape[2],
        "dtype": arr.dtype.name,
        "compress": "deflate",
    }
    if profile.get("crs") is not None:
        meta["crs"] = profile["crs"]
    if profile.get("transform") is not None:
        meta["transform"] = profile["transform"]
    with raster.open_raster(path, "w", **meta) as dst:
        dst.write(np.moveaxis(arr, -1, 0))
