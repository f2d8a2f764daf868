"""Map tiles, image chips and the probability colour ramp, through rio-tiler.

* A scene with a CRS that maps to longitude/latitude is served as Web Mercator tiles
  (``rio_tiler.io.Reader.tile``: any CRS, reprojected on the fly; overviews used when the file
  has them). A scene without one (or whose CRS has no way to WGS84) is served in pixel space
  (``rio_tiler.io.ImageReader``: zoom ``maxzoom`` is one image pixel per screen pixel, tile
  ``(0, 0)`` at the top-left corner), which the page shows as a plain image (Leaflet
  ``CRS.Simple`` with ``zoomOffset = maxzoom``).
* Scene pixels: the first three image bands (the band rule: a trailing alpha band is the mask),
  or the first band as grey; 8-bit bands as they are, others stretched from their 2nd to 98th
  percentile (rio-tiler statistics on a decimated read, once per file and modification time).
* Probabilities: 0..1 through :data:`RAMP` (yellow -> red), fading out below
  :data:`OPAQUE_FROM`, nodata (-1) transparent. The page's legend and the detection colours come
  from the same ramp (:func:`legend`).
* Outside the data: a transparent 256 x 256 PNG.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidewatch.data import raster
from slidewatch.errors import DataError

TILE = 256
MAX_ZOOM = 24  # Web Mercator zooms served
OVERZOOM = 4  # plain-image zooms served beyond one image pixel per screen pixel
RAMP = ((0.0, (255, 255, 178)), (0.25, (254, 204, 92)), (0.5, (253, 141, 60)),
        (0.75, (240, 59, 32)), (1.0, (189, 0, 38)))  # ColorBrewer YlOrRd, 5 classes
CHIP_MAX = 256
OPAQUE_FROM = 0.5  # probabilities below fade out (alpha p / 0.5), so the scene shows through


def ramp_rgb(p: float) -> tuple[int, int, int]:
    """The colour of probability ``p`` (clipped to 0..1) on :data:`RAMP`."""
    p = min(1.0, max(0.0, float(p)))
    for (p0, c0), (p1, c1) in zip(RAMP, RAMP[1:]):
        if p <= p1:
            t = 0.0 if p1 == p0 else (p - p0) / (p1 - p0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
    return RAMP[-1][1]


@functools.lru_cache(maxsize=1)
def colormap() -> dict[int, tuple[int, int, int, int]]:
    """rio-tiler colour map of the 8-bit rescaled probability (0 = 0.0, 255 = 1.0)."""
    return {i: (*ramp_rgb(i / 255), alpha(i / 255)) for i in range(256)}


def alpha(p: float) -> int:
    return round(255 * min(1.0, max(0.0, p) / OPAQUE_FROM))


def legend() -> dict:
    """The ramp as the page draws it (CSS colours and alpha at probabilities)."""
    return {"stops": [{"value": p, "color": "#%02x%02x%02x" % c, "alpha": alpha(p) / 255}
                      for p, c in RAMP], "nodata": "transparent"}


@functools.lru_cache(maxsize=1)
def empty_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (TILE, TILE), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- what a file is


@dataclass(frozen=True)
class View:
    """How a raster is shown: Web Mercator (``bounds``: WGS84 west, south, east, north) or a
    plain image (``width``, ``height``, ``maxzoom``)."""

    georeferenced: bool
    width: int
    height: int
    bands: tuple[int, ...]
    dtype: str
    bounds: tuple[float, float, float, float] | None
    maxzoom: int
    minzoom: int
    ranges: tuple[tuple[float, float], ...] | None  # stretch per shown band; None: 8-bit as is

    def to_json(self) -> dict:
        return {"georeferenced": self.georeferenced, "width": self.width, "height": self.height,
                "bounds": self.bounds, "maxzoom": self.maxzoom, "minzoom": self.minzoom,
                "bands": list(self.bands), "dtype": self.dtype}


_views: dict[tuple, View] = {}
_views_lock = threading.Lock()


def _key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size)


def _reader(view: View):
    from rio_tiler.io import ImageReader, Reader

    return Reader if view.georeferenced else ImageReader


def view_of(path: str | Path, *, stretch: bool = True, georeferenced: bool | None = None) -> View:
    """The :class:`View` of a raster (cached per file version). ``georeferenced``: force the
    scene's decision onto its probability map (both are shown the same way)."""
    path = Path(path)
    key = (*_key(path), stretch, georeferenced)
    with _views_lock:
        if key in _views:
            return _views[key]
    view = _inspect(path, stretch, georeferenced)
    with _views_lock:
        if len(_views) > 256:
            _views.clear()
        _views[key] = view
    return view


def _inspect(path: Path, stretch: bool, georeferenced: bool | None) -> View:
    from rio_tiler.io import ImageReader, Reader

    with raster.open_raster(path) as ds:
        bands = raster.image_bands(ds)
        width, height, dtype, crs = ds.width, ds.height, ds.dtypes[0], ds.crs
    shown = tuple(bands[:3]) if len(bands) >= 3 else tuple(bands[:1])
    bounds = None
    if georeferenced is None:
        georeferenced = crs is not None and _lonlat_bounds(path) is not None
    if georeferenced:
        bounds = _lonlat_bounds(path)
        with Reader(str(path)) as r:
            minzoom, maxzoom = r.minzoom, r.maxzoom
    else:
        with ImageReader(str(path)) as r:
            minzoom, maxzoom = r.minzoom, r.maxzoom
    ranges = None
    if stretch and dtype != "uint8":
        ranges = _percentiles(path, shown, georeferenced)
    return View(bool(georeferenced), width, height, shown, dtype, bounds, maxzoom, minzoom,
                ranges)


def _lonlat_bounds(path: Path) -> tuple[float, float, float, float] | None:
    from rio_tiler.io import Reader

    try:
        with Reader(str(path)) as r:
            b = r.get_geographic_bounds(r.tms.rasterio_geographic_crs)
    except Exception:  # noqa: BLE001 - any failure means "no way to lon/lat": plain view
        return None
    if not all(math.isfinite(v) for v in b) or b[0] >= b[2] or b[1] >= b[3]:
        return None
    return tuple(float(v) for v in b)


def _percentiles(path: Path, bands: tuple[int, ...], georeferenced: bool):
    from rio_tiler.io import ImageReader, Reader

    cls = Reader if georeferenced else ImageReader
    with cls(str(path)) as r:
        stats = r.statistics(indexes=bands, percentiles=[2, 98], max_size=1024)
    out = []
    for s in stats.values():
        lo, hi = float(s.percentile_2), float(s.percentile_98)
        out.append((lo, hi if hi > lo else lo + 1.0))
    return tuple(out)


# ---------------------------------------------------------------- tiles


def check_zoom(view: View, z: int) -> None:
    top = MAX_ZOOM if view.georeferenced else view.maxzoom + OVERZOOM
    if not 0 <= z <= top:
        raise DataError(f"zoom {z}: this map has zooms 0..{top}")


def scene_tile(path: Path, z: int, x: int, y: int, georeferenced: bool | None = None) -> bytes:
    """A 256 x 256 PNG of scene ``path`` at tile ``z/x/y`` (see the module doc);
    ``georeferenced``: as its scan decided (None: from the file)."""
    from rio_tiler.errors import TileOutsideBounds

    view = view_of(path, georeferenced=georeferenced)
    check_zoom(view, z)
    try:
        with _reader(view)(str(path)) as r:
            img = r.tile(x, y, z, indexes=view.bands)
    except TileOutsideBounds:
        return empty_png()
    if view.ranges is not None:
        img.rescale(in_range=view.ranges)
    return img.render(img_format="PNG")


def probability_tile(path: Path, georeferenced: bool, z: int, x: int, y: int) -> bytes:
    """A 256 x 256 PNG of a probability map at ``z/x/y``, coloured by :data:`RAMP`."""
    from rio_tiler.errors import TileOutsideBounds

    view = view_of(path, stretch=False, georeferenced=georeferenced)
    check_zoom(view, z)
    try:
        with _reader(view)(str(path)) as r:
            img = r.tile(x, y, z, indexes=1)
    except TileOutsideBounds:
        return empty_png()
    img.rescale(in_range=((0.0, 1.0),))
    return img.render(img_format="PNG", colormap=colormap())


# ---------------------------------------------------------------- chips


def chip(path: Path, geometry, georeferenced: bool, margin: float = 0.5) -> bytes:
    """A PNG of the scene around ``geometry`` (shapely, in the scene's CRS, or pixel
    coordinates col/row for a plain image) with ``margin`` x its size around it on each side
    (at least 16 pixels), at most :data:`CHIP_MAX` pixels on a side, the outline in cyan."""
    from PIL import Image, ImageDraw

    view = view_of(path, georeferenced=georeferenced)
    x0, y0, x1, y1 = geometry.bounds
    with _reader(view)(str(path)) as r:
        if georeferenced:
            res = abs(r.transform.a)
            pad = max(margin * max(x1 - x0, y1 - y0), 16 * res)
            left, bottom, right, top = r.bounds  # the scene's, in its CRS
            box = (max(left, x0 - pad), max(bottom, y0 - pad), min(right, x1 + pad),
                   min(top, y1 + pad))
            img = r.part(box, dst_crs=r.crs, bounds_crs=r.crs, indexes=view.bands,
                         max_size=CHIP_MAX)
        else:
            pad = max(margin * max(x1 - x0, y1 - y0), 16)
            box = (max(0, x0 - pad), max(0, y0 - pad), min(view.width, x1 + pad),
                   min(view.height, y1 + pad))
            img = r.part((box[0], box[3], box[2], box[1]), indexes=view.bands,
                         max_size=CHIP_MAX)
    if view.ranges is not None:
        img.rescale(in_range=view.ranges)
    arr = np.moveaxis(img.data.astype(np.uint8), 0, -1)
    pic = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
    h, w = arr.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]

    def to_px(coords):
        if georeferenced:  # y up in map coordinates
            return [((cx - box[0]) / bw * w, (box[3] - cy) / bh * h) for cx, cy in coords]
        return [((cx - box[0]) / bw * w, (cy - box[1]) / bh * h) for cx, cy in coords]

    draw = ImageDraw.Draw(pic)
    for poly in getattr(geometry, "geoms", [geometry]):
        for ring in (poly.exterior, *poly.interiors):
            draw.line(to_px(ring.coords), fill=(0, 255, 255), width=2)
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()
