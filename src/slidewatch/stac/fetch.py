"""``slidewatch imagery search|fetch``: catalogue items over areas and dates, their bands read
window by window onto one grid per area, written as Cloud-Optimised GeoTIFFs with their
acquisition time in the tags, and ``items.json`` (what was used).

* Areas (:class:`Area`): one WGS84 box (``--bbox``; files go straight into ``--out``), or a
  square of ``radius`` metres around each point of an inventory (``--around``; files go into
  ``--out/<point id>/``).
* Bands (:func:`band_sources`): ``--bands`` names asset keys (``B04``, ``visual``: all bands of
  that asset) or band names / common names of an asset's ``eo:bands`` (``red``: that band of
  the asset that holds it). Default: the ``visual`` asset, else every GeoTIFF data asset. An
  item that lacks one is a DataError before anything is read.
* The grid (:mod:`slidewatch.stac.grid`): the first item's CRS (or the area's UTM zone when it
  is geographic) at ``resolution`` (default: the first item's first band), snapped to the
  resolution's lattice. Every item of the area is warped onto it, so the images of one area
  share CRS, transform and shape.
* Reading (:func:`read_onto_grid`): only the window of the asset that covers the grid (plus two
  pixels), decimated by GDAL (overviews of a COG) to about the grid's resolution when that is
  coarser, then ``rasterio.warp.reproject`` onto the grid. Remote assets go through GDAL's
  ``/vsicurl/`` (HTTP range requests) with the catalogue's timeout and headers.
* Nodata: a pixel is valid when every band is (the sources' masks and nodata, finite); invalid
  pixels are the first asset's nodata value, or masked by an internal mask when it declares
  none. An item with no valid pixel on the grid is left out (items.json says so).
* Clouds (``--cloud-mask``, :func:`parse_cloud_mask`): ``scl`` (Sentinel-2's scene
  classification asset: cloud shadow 3, cloud medium 8 and high probability 9, thin cirrus
  10) or ``ASSET:V1,V2,...`` (any class-valued asset). The mask asset is read onto the grid
  with nearest (decimated by the mode), and pixels whose class is listed become nodata, so a
  scan gives them no weight. An item without that asset is a DataError before anything is
  read; an item whose every valid pixel is cloud is left out (items.json says so); the share
  of each item's valid pixels masked is in items.json (``masked``).
* Files: ``<YYYYMMDD>_<item id>.tif`` (COG through GDAL's COG driver, deflate, 256 px blocks,
  overviews; a tiled GeoTIFF with overviews where the driver is missing), tags of
  :mod:`slidewatch.stac.tags`, band descriptions = band names. The folder is built whole or
  not at all (``atomic_dir``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidewatch.data import raster
from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_dir, atomic_path, atomic_write_text
from slidewatch.stac import tags as tag_names
from slidewatch.stac.catalog import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_TIMEOUT,
    Catalog,
    DateRange,
    check_collection,
    check_max_cloud,
    cloud_cover,
    item_time,
    open_catalog,
    search,
)
from slidewatch.stac.grid import (
    TargetGrid,
    choose_crs,
    grid_around,
    grid_for_bbox,
    lonlat_box_around,
    resolution_in,
)

ITEMS_JSON = "items.json"
FORMAT = "slidewatch-imagery"
DEFAULT_RADIUS = 500.0  # metres around an inventory point
RESAMPLING = ("nearest", "bilinear", "cubic", "average")
DEFAULT_RESAMPLING = "bilinear"
COG_OPTIONS = {"compress": "deflate", "blocksize": 256, "overview_resampling": "average"}
# Sentinel-2 L2A scene classification: 3 cloud shadow, 8 / 9 cloud medium / high probability,
# 10 thin cirrus
SCL_CLOUDS = (3, 8, 9, 10)
CLOUD_MASK_PRESETS = {"scl": ("SCL", SCL_CLOUDS)}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def no_progress(iterable, **_):
    """The default progress: none (runtime's, without importing torch)."""
    return iterable


# ---------------------------------------------------------------- areas


@dataclass(frozen=True)
class Area:
    """Where to look: a WGS84 box, or a point with a radius (``name``: its folder, ``""`` for
    the one box of ``--bbox``)."""

    name: str
    bbox: tuple[float, float, float, float]  # WGS84, for the search
    point: tuple[float, float] | None = None  # lon, lat
    radius: float | None = None  # metres
    attrs: dict = field(default_factory=dict)  # the inventory row: id, date, row

    def grid(self, crs, resolution: float) -> TargetGrid:
        if self.point is None:
            return grid_for_bbox(self.bbox, crs, resolution)
        return grid_around(*self.point, self.radius, crs, resolution)

    @property
    def centre(self) -> tuple[float, float]:
        if self.point is not None:
            return self.point
        w, s, e, n = self.bbox
        return (w + e) / 2, (s + n) / 2


def safe_name(text: str) -> str:
    return _SAFE.sub("_", str(text)).strip("._") or "_"


def bbox_area(bbox) -> Area:
    return Area("", tuple(float(v) for v in bbox))


def inventory_areas(path: str | Path, radius: float = DEFAULT_RADIUS, columns=None) -> list[Area]:
    """One area per valid point of an inventory CSV (``data.inventory_csv``): a square of
    ``radius`` metres around it, named by the inventory id (else ``row<N>``)."""
    from slidewatch.data.inventory_csv import InventoryColumns, read_inventory

    if not (radius > 0 and math.isfinite(radius)):
        raise ConfigError(f"--radius: must be > 0 metres, got {radius}")
    inv = read_inventory(Path(path), columns or InventoryColumns())
    areas, seen = [], set()
    for lon, lat, attrs in zip(inv.lon.tolist(), inv.lat.tolist(), inv.attrs, strict=True):
        ident, date, _size, _trigger, row = attrs
        name = safe_name(ident) if str(ident).strip() else f"row{row}"
        if name in seen:
            name = f"{name}-row{row}"
        seen.add(name)
        areas.append(Area(name, lonlat_box_around(lon, lat, radius), (lon, lat), radius,
                          {"id": ident, "date": date, "row": row}))
    if not areas:
        raise DataError(f"{path}: no valid point in the inventory")
    return areas


# ---------------------------------------------------------------- bands


@dataclass(frozen=True)
class BandSource:
    """Where one requested band is: an asset and its 1-based band numbers in it."""

    name: str
    asset: str
    href: str
    indexes: tuple[int, ...] | None  # None: every band of the asset (known once opened)


def _asset_bands(asset) -> list[dict]:
    extra = asset.extra_fields
    return list(extra.get("eo:bands") or extra.get("bands") or [])


def _band_names(b: dict) -> set[str]:
    names = {b.get("name"), b.get("common_name"), b.get("eo:common_name")}
    return {str(n).lower() for n in names if n}


def _is_image(asset) -> bool:
    kind = (asset.media_type or "").lower()
    return "tiff" in kind or (not kind and asset.href.lower().split("?")[0].endswith(
        (".tif", ".tiff")))


def band_sources(item, bands: Sequence[str] | None) -> list[BandSource]:
    """The sources of ``bands`` in ``item`` (see the module doc); a DataError naming the item
    and what it has when one is missing."""
    assets = item.assets
    if not bands:
        if "visual" in assets:
            return [BandSource("visual", "visual", assets["visual"].get_absolute_href(), None)]
        data = [k for k, a in assets.items() if _is_image(a) and "data" in (a.roles or [])]
        if not data:
            raise DataError(f"item {item.id}: no visual or GeoTIFF data asset; name the bands "
                            f"with --bands (assets: {', '.join(assets) or 'none'})")
        return [BandSource(k, k, assets[k].get_absolute_href(), None) for k in data]
    found, missing = [], []
    by_key = {k.lower(): k for k in assets}
    for name in bands:
        key = by_key.get(name.lower())
        if key is not None:
            found.append(BandSource(name, key, assets[key].get_absolute_href(), None))
            continue
        hit = None
        for k, a in assets.items():
            for i, b in enumerate(_asset_bands(a)):
                if name.lower() in _band_names(b):
                    hit = BandSource(name, k, a.get_absolute_href(), (i + 1,))
                    break
            if hit:
                break
        if hit is None:
            missing.append(name)
        else:
            found.append(hit)
    if missing:
        names = sorted({n for a in assets.values() for b in _asset_bands(a)
                        for n in _band_names(b)})
        have = f"; band names: {', '.join(names)}" if names else ""
        raise DataError(f"item {item.id} of {item.collection_id}: no band "
                        f"{', '.join(missing)} (--bands; assets: {', '.join(assets)}{have})")
    return found


@dataclass(frozen=True)
class CloudMask:
    """Pixels whose value in the class-valued asset ``asset`` is one of ``values`` become
    nodata."""

    asset: str
    values: tuple[int, ...]

    @property
    def text(self) -> str:
        return f"{self.asset}:{','.join(map(str, self.values))}"


def parse_cloud_mask(text: str | CloudMask | None) -> CloudMask | None:
    """``scl`` or ``ASSET:V1,V2,...`` (see the module doc); None and a CloudMask stay as
    they are."""
    if text is None or isinstance(text, CloudMask):
        return text
    raw = str(text).strip()
    if raw.lower() in CLOUD_MASK_PRESETS:
        return CloudMask(*CLOUD_MASK_PRESETS[raw.lower()])
    asset, sep, values = raw.partition(":")
    hint = ("give scl (Sentinel-2's SCL classes 3, 8, 9, 10) or ASSET:V1,V2,... (the class "
            "values of that asset to drop, e.g. SCL:3,8,9,10)")
    if not sep or not asset.strip() or not values.strip():
        raise ConfigError(f"--cloud-mask {text}: {hint}")
    try:
        classes = tuple(sorted({int(v) for v in values.split(",")}))
    except ValueError:
        raise ConfigError(f"--cloud-mask {text}: class values must be integers; {hint}") \
            from None
    return CloudMask(asset.strip(), classes)


def mask_href(item, mask: CloudMask) -> str:
    """The address of ``item``'s mask asset (its key matched without regard to case: Earth
    Search says ``scl``, Planetary Computer ``SCL``); a DataError naming the item if none."""
    for key, asset in item.assets.items():
        if key.lower() == mask.asset.lower():
            return asset.href
    raise DataError(f"item {item.id}: no asset {mask.asset} for --cloud-mask (assets: "
                    f"{', '.join(sorted(item.assets)) or 'none'})")


def parse_bands(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise ConfigError(f"--bands: give band or asset names, e.g. B04,B03,B02 (got {text!r})")
    return names


# ---------------------------------------------------------------- reading onto the grid


def remote_env(timeout: float = DEFAULT_TIMEOUT, headers: dict[str, str] | None = None):
    """GDAL options for remote assets: the catalogue's timeout, a few retries of a busy server,
    no directory listings, the request headers."""
    secs = str(max(1, math.ceil(timeout)))
    opts = {"GDAL_HTTP_TIMEOUT": secs, "GDAL_HTTP_CONNECTTIMEOUT": secs,
            "GDAL_HTTP_MAX_RETRY": "2", "GDAL_HTTP_RETRY_DELAY": "0.5",
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "VSI_CACHE": "TRUE",
            "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 2**20)}
    if headers:
        opts["GDAL_HTTP_HEADERS"] = "\r\n".join(f"{k}: {v}" for k, v in headers.items())
    return raster.gdal_env(**opts)


def _resampling(name: str):
    from rasterio.enums import Resampling

    if name not in RESAMPLING:
        raise ConfigError(f"--resampling: must be one of {', '.join(RESAMPLING)}, got {name!r}")
    return Resampling[name]


def read_onto_grid(ds, indexes: Sequence[int], grid: TargetGrid, resampling: str = "bilinear",
                   *, categorical: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """The bands ``indexes`` of an open raster on ``grid``: ``(C x H x W float64 with NaN where
    invalid, H x W valid)``; None when the raster does not reach the grid. Reads only the
    window that covers the grid, decimated towards the grid's resolution. ``categorical``
    (class values, e.g. a cloud mask): decimated by the mode and warped by nearest, so no
    value is invented."""
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window, from_bounds

    if ds.crs is None:
        raise DataError(f"{ds.name}: the asset has no CRS")
    left, bottom, right, top = transform_bounds(grid.crs, ds.crs, *grid.bounds, densify_pts=21)
    win = from_bounds(left, bottom, right, top, ds.transform)
    col0 = max(0, math.floor(win.col_off) - 2)
    row0 = max(0, math.floor(win.row_off) - 2)
    col1 = min(ds.width, math.ceil(win.col_off + win.width) + 2)
    row1 = min(ds.height, math.ceil(win.row_off + win.height) + 2)
    if col1 <= col0 or row1 <= row0:
        return None
    win = Window(col0, row0, col1 - col0, row1 - row0)
    src_x, src_y = abs(ds.transform.a), abs(ds.transform.e)
    factor = min((right - left) / grid.width / src_x, (top - bottom) / grid.height / src_y)
    factor = max(1, int(factor + 1e-6))
    shape = (len(indexes), math.ceil(win.height / factor), math.ceil(win.width / factor))
    coarse = Resampling.mode if categorical else Resampling.average
    data = ds.read(list(indexes), window=win, out_shape=shape, masked=True,
                   resampling=coarse if factor > 1 else Resampling.nearest)
    src = np.ma.filled(data.astype(np.float64), np.nan)
    src[:, ~np.isfinite(src).all(axis=0)] = np.nan
    src_t = ds.window_transform(win) @ Affine.scale(win.width / shape[2],
                                                    win.height / shape[1])
    out = np.full((len(indexes), grid.height, grid.width), np.nan, np.float64)
    reproject(src, out, src_transform=src_t, src_crs=ds.crs, src_nodata=np.nan,
              dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan,
              resampling=_resampling("nearest" if categorical else resampling))
    valid = np.isfinite(out).all(axis=0)
    if not valid.any():
        return None
    return out, valid


@dataclass
class Image:
    """One item's bands on an area's grid."""

    data: np.ndarray  # C x H x W, native dtype, invalid = nodata (or masked)
    valid: np.ndarray  # H x W
    dtype: str
    nodata: float | None  # None: an internal mask marks the invalid pixels
    bands: list[str]  # one name per output band
    masked: float = 0.0  # share of the bands' valid pixels made nodata by the cloud mask

    @property
    def coverage(self) -> float:
        return float(self.valid.mean())


def _read_asset(ds, href: str, indexes: Sequence[int], grid: TargetGrid, resampling: str,
                what: str = "it", *, categorical: bool = False):
    """:func:`read_onto_grid` with GDAL's errors as one DataError naming the asset."""
    try:
        return read_onto_grid(ds, indexes, grid, resampling, categorical=categorical)
    except raster_errors() as exc:
        raise DataError(f"{href}: cannot read {what} ({raster.one_line(exc)})") from None


def _cloud_pixels(href: str, values: Sequence[int], grid: TargetGrid) -> np.ndarray:
    """H x W: the grid's pixels whose class in the mask asset ``href`` is one of ``values``
    (pixels the mask does not cover or marks nodata are not cloud)."""
    with raster.open_url(href) as ds:
        got = _read_asset(ds, href, [1], grid, "nearest", "the cloud mask", categorical=True)
    if got is None:
        return np.zeros((grid.height, grid.width), bool)
    classes, known = got
    return known & np.isin(classes[0], list(values))


def read_item(sources: list[BandSource], grid: TargetGrid, resampling: str,
              cloud: tuple[str, Sequence[int]] | None = None) -> Image | None:
    """Every band of ``sources`` on ``grid``; None when the item has no valid pixel there.
    ``cloud``: (address of a class-valued mask asset, the values that make a pixel nodata);
    an image whose every valid pixel is masked comes back with no valid pixel."""
    arrays, names, dtypes, nodata = [], [], [], None
    valid = np.ones((grid.height, grid.width), bool)
    for k, s in enumerate(sources):
        with raster.open_url(s.href) as ds:
            indexes = list(s.indexes or raster.image_bands(ds))
            bad = [i for i in indexes if not 1 <= i <= ds.count]
            if bad:
                raise DataError(f"{s.href}: band {bad[0]} of asset {s.asset} does not exist "
                                f"(bands 1..{ds.count})")
            got = _read_asset(ds, s.href, indexes, grid, resampling)
            if k == 0:
                nodata = ds.nodata
            dtypes += [ds.dtypes[i - 1] for i in indexes]
            descriptions = [ds.descriptions[i - 1] for i in indexes]
        if got is None:
            return None
        arr, ok = got
        valid &= ok
        arrays.append(arr)
        if len(indexes) == 1:
            names.append(s.name)
        else:
            names += [d or f"{s.name}_{i}" for d, i in zip(descriptions, indexes, strict=True)]
    if not valid.any():
        return None
    masked = 0.0
    if cloud is not None:
        cloudy = valid & _cloud_pixels(*cloud, grid)
        masked = float(cloudy.sum() / valid.sum())
        valid &= ~cloudy
    dtype = np.result_type(*dtypes)
    data = np.concatenate(arrays)
    if nodata is not None and np.isnan(nodata) and dtype.kind != "f":
        nodata = None
    fill = nodata if nodata is not None else 0
    data[:, ~valid] = fill
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    return Image(data.astype(dtype), valid, dtype.name, nodata, names, masked)


def raster_errors() -> tuple[type[BaseException], ...]:
    from rasterio.errors import RasterioError

    try:
        from rasterio._err import CPLE_BaseError
    except ImportError:  # pragma: no cover - rasterio moved it
        CPLE_BaseError = RasterioError
    return (RasterioError, CPLE_BaseError)


def write_cog(path: Path, image: Image, grid: TargetGrid, tags: dict[str, str]) -> None:
    """``image`` as a COG (a tiled GeoTIFF with overviews where GDAL has no COG driver),
    atomically."""
    import rasterio
    import rasterio.shutil
    from rasterio.io import MemoryFile

    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height,
               "count": len(image.data), "dtype": image.dtype, "crs": grid.crs,
               "transform": grid.transform, "nodata": image.nodata}
    with rasterio.Env() as env:
        has_cog = "COG" in env.drivers()
    with atomic_path(path) as tmp, MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(image.data)
            if image.nodata is None and not image.valid.all():
                dst.write_mask(np.where(image.valid, 255, 0).astype(np.uint8))
            dst.update_tags(**tags)
            dst.descriptions = tuple(image.bands)
            if not has_cog:
                factors = [f for f in (2, 4, 8, 16) if min(grid.width, grid.height) // f >= 64]
                if factors:
                    from rasterio.enums import Resampling

                    dst.build_overviews(factors, Resampling.average)
        with mem.open() as src:
            if has_cog:
                rasterio.shutil.copy(src, tmp, driver="COG", **COG_OPTIONS)
            else:  # pragma: no cover - GDAL < 3.1
                rasterio.shutil.copy(src, tmp, driver="GTiff", tiled=True, blockxsize=256,
                                     blockysize=256, compress="deflate", copy_src_overviews=True)


# ---------------------------------------------------------------- search and fetch


@dataclass
class Found:
    """One item chosen for an area."""

    item: object  # pystac Item
    time: dt.datetime
    cloud: float | None
    file: str | None = None  # relative to the output folder, once written
    coverage: float | None = None
    note: str | None = None  # why it was left out
    masked: float | None = None  # share of its valid pixels made nodata by --cloud-mask


@dataclass
class AreaResult:
    area: Area
    found: list[Found] = field(default_factory=list)
    grid: TargetGrid | None = None
    error: str | None = None  # why the area has no item

    @property
    def written(self) -> list[Found]:
        return [f for f in self.found if f.file]


@dataclass
class ImagerySummary:
    out: Path | None
    items_json: Path | None
    areas: list[AreaResult]
    warnings: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(len(a.written) for a in self.areas)


def _strip_query(href: str) -> str:
    """An address without its query string (a signed URL's token stays out of items.json)."""
    return href.split("?", 1)[0]


def _search_areas(catalog: Catalog, collection: str, areas: Sequence[Area], dates: DateRange,
                  max_cloud: float | None, max_items: int, progress: Callable
                  ) -> list[AreaResult]:
    check_collection(catalog, collection)
    results = []
    for area in progress(areas, desc="search", total=len(areas)):
        result = AreaResult(area)
        try:
            found = search(catalog, collection, area.bbox, dates, max_cloud=max_cloud,
                           max_items=max_items, check=False)
        except DataError as exc:
            if len(areas) == 1 or "failed (" in str(exc):  # one area, or the catalogue broke
                raise
            result.error = str(exc)
        else:
            result.found = [Found(i, item_time(i), cloud_cover(i)) for i in found.items]
        results.append(result)
    if not any(r.found for r in results):
        raise DataError(f"{results[0].error} (and the same for every one of the "
                        f"{len(results)} points)")
    return results


def _area_grid(result: AreaResult, sources: list[BandSource], resolution: float | None
               ) -> TargetGrid:
    """The grid of an area from its first item's first band (CRS, and resolution unless
    given)."""
    lon, lat = result.area.centre
    with raster.open_url(sources[0].href) as ds:
        crs = choose_crs(ds.crs, lon, lat)
        if resolution is None:
            resolution = resolution_in(crs, abs(ds.transform.a), ds.crs, lat)
    return result.area.grid(crs, resolution)


def _items_json(url: str, collection: str, dates: DateRange, max_cloud, bands, resampling,
                results: list[AreaResult], fetched: bool,
                cloud_mask: CloudMask | None = None) -> dict:
    areas = []
    for r in results:
        entry = {"name": r.area.name, "bbox": list(r.area.bbox),
                 "point": list(r.area.point) if r.area.point else None,
                 "radius_m": r.area.radius, "inventory": r.area.attrs or None,
                 "grid": r.grid.to_json() if r.grid else None, "error": r.error, "items": []}
        for f in r.found:
            item = f.item
            entry["items"].append({
                "id": item.id, "collection": item.collection_id,
                "datetime": tag_names.iso(f.time), "cloud_cover": f.cloud,
                "self": _strip_query(item.get_self_href() or ""),
                "assets": {k: _strip_query(a.href) for k, a in item.assets.items()},
                "file": f.file, "coverage": f.coverage, "masked": f.masked,
                "note": f.note})
        areas.append(entry)
    return {"format": FORMAT, "format_version": 1, "stac": url, "collection": collection,
            "dates": dates.text, "max_cloud": max_cloud, "bands": list(bands) if bands else None,
            "resampling": resampling if fetched else None, "fetched": fetched,
            "cloud_mask": cloud_mask.text if cloud_mask else None,
            "created": tag_names.iso(dt.datetime.now(dt.timezone.utc)), "areas": areas}


def search_imagery(url: str, collection: str, areas: Sequence[Area], dates: DateRange, *,
                   max_cloud: float | None = None, bands: Sequence[str] | None = None,
                   out: str | Path | None = None, signer=None,
                   headers: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                   max_items: int = DEFAULT_MAX_ITEMS, overwrite: bool = False,
                   progress: Callable = no_progress) -> ImagerySummary:
    """The items per area (nothing read); ``out``: write ``items.json`` there. Items that lack
    ``bands`` are an error, as for :func:`fetch_imagery`."""
    check_max_cloud(max_cloud)
    catalog = open_catalog(url, signer=signer, headers=headers, timeout=timeout)
    results = _search_areas(catalog, collection, areas, dates, max_cloud, max_items, progress)
    for r in results:
        for f in r.found:
            band_sources(f.item, bands)
    summary = ImagerySummary(None, None, results)
    if out is not None:
        doc = _items_json(url, collection, dates, max_cloud, bands, None, results, False)
        target = Path(out) / ITEMS_JSON
        if target.exists() and not overwrite:
            raise ConfigError(f"{target}: exists; pass --overwrite to replace it")
        atomic_write_text(target, json.dumps(doc, indent=2) + "\n")
        summary.out, summary.items_json = Path(out), target
    return summary


def fetch_imagery(url: str, collection: str, areas: Sequence[Area], dates: DateRange,
                  out: str | Path, *, max_cloud: float | None = None,
                  bands: Sequence[str] | None = None, resolution: float | None = None,
                  resampling: str = DEFAULT_RESAMPLING, signer=None,
                  headers: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                  max_items: int = DEFAULT_MAX_ITEMS, overwrite: bool = False,
                  cloud_mask: str | CloudMask | None = None,
                  progress: Callable = no_progress) -> ImagerySummary:
    """Search, then read every item's bands onto its area's grid and write them (see the
    module doc). All or nothing: an error leaves no output folder."""
    _resampling(resampling)
    cloud_mask = parse_cloud_mask(cloud_mask)
    check_max_cloud(max_cloud)
    if resolution is not None and not (resolution > 0 and math.isfinite(resolution)):
        raise ConfigError(f"--resolution: must be > 0, got {resolution}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    catalog = open_catalog(url, signer=signer, headers=headers, timeout=timeout)
    results = _search_areas(catalog, collection, areas, dates, max_cloud, max_items, progress)
    for r in results:  # every item has the bands (and the mask) before anything is read
        for f in r.found:
            band_sources(f.item, bands)
            if cloud_mask is not None:
                mask_href(f.item, cloud_mask)
    warnings = []
    total = sum(len(r.found) for r in results)
    with remote_env(timeout, headers), atomic_dir(out, overwrite=overwrite) as tmp:
        steps = iter(progress(range(total), desc="fetch", total=total))
        for r in results:
            if not r.found:
                warnings.append(f"area {r.area.name}: {r.error}")
                continue
            folder = tmp / r.area.name if r.area.name else tmp
            folder.mkdir(exist_ok=True)
            for f in r.found:
                next(steps, None)
                signed = catalog.sign(f.item)  # signed just in time
                sources = band_sources(signed, bands)
                if r.grid is None:
                    r.grid = _area_grid(r, sources, resolution)
                cloud = (None if cloud_mask is None
                         else (mask_href(signed, cloud_mask), cloud_mask.values))
                image = read_item(sources, r.grid, resampling, cloud)
                if image is None:
                    f.note = "no valid pixel on the area's grid"
                    warnings.append(f"item {f.item.id}: no valid pixel over area "
                                    f"{r.area.name or 'bbox'}; left out")
                    continue
                f.masked = round(image.masked, 6) if cloud_mask is not None else None
                if not image.valid.any():
                    f.note = f"every valid pixel is cloud (--cloud-mask {cloud_mask.text})"
                    warnings.append(f"item {f.item.id}: every valid pixel over area "
                                    f"{r.area.name or 'bbox'} is cloud; left out")
                    continue
                name = f"{f.time:%Y%m%d}_{safe_name(f.item.id)}.tif"
                tags = tag_names.image_tags(f.time, f.item.collection_id or collection,
                                            f.item.id, f.cloud, url, image.bands,
                                            image.coverage)
                write_cog(folder / name, image, r.grid, tags)
                f.file = f"{r.area.name}/{name}" if r.area.name else name
                f.coverage = round(image.coverage, 6)
        if not any(r.written for r in results):
            raise DataError(f"{url}: none of the {total} item(s) found has valid pixels over "
                            f"the area(s)")
        doc = _items_json(url, collection, dates, max_cloud, bands, resampling, results, True,
                          cloud_mask)
        atomic_write_text(tmp / ITEMS_JSON, json.dumps(doc, indent=2) + "\n")
    return ImagerySummary(out, out / ITEMS_JSON, results, warnings)
