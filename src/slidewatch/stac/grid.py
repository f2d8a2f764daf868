"""The one grid of an area: every image of the area is warped onto it, so before and after
images compare pixel by pixel.

A grid is a CRS, a north-up transform on a lattice of ``resolution`` (its origin a multiple of
the resolution, so two grids of one CRS and resolution share pixel edges) and a size. The CRS is
the first item's when it is projected, else the UTM zone of the area's centre
(:func:`utm_crs`); the area is a WGS84 box (:func:`grid_for_bbox`) or a square of ``radius``
metres around a point (:func:`grid_around`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slidewatch.errors import ConfigError, DataError

MAX_GRID_PIXELS = 2**28  # an area larger than this at the chosen resolution is refused


@dataclass(frozen=True)
class TargetGrid:
    crs: object  # rasterio CRS
    transform: object  # affine.Affine, north-up
    width: int
    height: int

    @property
    def resolution(self) -> float:
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f

    def to_json(self) -> dict:
        epsg = self.crs.to_epsg()
        return {"crs": f"EPSG:{epsg}" if epsg else self.crs.to_wkt(),
                "transform": list(self.transform)[:6], "width": self.width,
                "height": self.height, "resolution": self.resolution}

    def same_as(self, other: TargetGrid) -> bool:
        return (self.crs == other.crs and self.width == other.width
                and self.height == other.height
                and self.transform.almost_equals(other.transform, 1e-9))


def utm_crs(lon: float, lat: float):
    """The WGS84 UTM zone (EPSG:326xx north, 327xx south) of a point."""
    from rasterio.crs import CRS

    zone = min(60, max(1, int((lon + 180) // 6) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def choose_crs(item_crs, lon: float, lat: float):
    """The item's CRS when it is projected, else the UTM zone at (lon, lat)."""
    if item_crs is not None and item_crs.is_projected:
        return item_crs
    return utm_crs(lon, lat)


def resolution_in(crs, native_res: float, native_crs, lat: float) -> float:
    """A native pixel size (in ``native_crs`` units) as a size in ``crs`` units (metres for a
    geographic native CRS: degrees times metres per degree of latitude at ``lat``)."""
    from slidewatch.data.geometry import linear_unit_metres, metres_per_degree

    if native_crs is not None and native_crs.is_geographic:
        metres = native_res * float(metres_per_degree(lat)[1])
    elif native_crs is not None:
        metres = native_res * linear_unit_metres(native_crs, "asset")
    else:
        metres = native_res
    return metres / linear_unit_metres(crs, "grid")


def _snapped(crs, left: float, bottom: float, right: float, top: float,
             resolution: float, what: str) -> TargetGrid:
    from affine import Affine

    if not (resolution > 0 and math.isfinite(resolution)):
        raise ConfigError(f"--resolution: must be > 0, got {resolution}")
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise DataError(f"{what}: outside the area of use of {crs}")
    x0 = math.floor(left / resolution) * resolution
    y0 = math.ceil(top / resolution) * resolution
    width = max(1, math.ceil((right - x0) / resolution - 1e-9))
    height = max(1, math.ceil((y0 - bottom) / resolution - 1e-9))
    if width * height > MAX_GRID_PIXELS:
        raise ConfigError(f"{what}: {width}x{height} pixels at {resolution:g} is too large; "
                          f"use a smaller area or a coarser --resolution")
    return TargetGrid(crs, Affine(resolution, 0, x0, 0, -resolution, y0), width, height)


def grid_for_bbox(bbox, crs, resolution: float) -> TargetGrid:
    """The grid in ``crs`` that covers the WGS84 ``bbox`` (W, S, E, N)."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds("EPSG:4326", crs, *bbox, densify_pts=21)
    return _snapped(crs, left, bottom, right, top, resolution,
                    "--bbox " + ",".join(f"{v:g}" for v in bbox))


def grid_around(lon: float, lat: float, radius: float, crs, resolution: float) -> TargetGrid:
    """The grid in ``crs`` of ``2 * ceil(radius / resolution) + 1`` pixels a side whose centre
    pixel holds the point (the same shape for every point of an inventory)."""
    from affine import Affine
    from rasterio.warp import transform

    from slidewatch.data.geometry import linear_unit_metres

    if not (radius > 0 and math.isfinite(radius)):
        raise ConfigError(f"--radius: must be > 0 metres, got {radius}")
    if not (resolution > 0 and math.isfinite(resolution)):
        raise ConfigError(f"--resolution: must be > 0, got {resolution}")
    (x,), (y,) = transform("EPSG:4326", crs, [lon], [lat])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise DataError(f"point {lon:.5f},{lat:.5f}: outside the area of use of {crs}")
    half = math.ceil(radius / linear_unit_metres(crs, "grid") / resolution - 1e-9)
    col, row = math.floor(x / resolution), math.floor(y / resolution)
    side = 2 * half + 1
    if side * side > MAX_GRID_PIXELS:
        raise ConfigError(f"--radius {radius:g}: {side}x{side} pixels at {resolution:g} is too "
                          f"large; use a smaller radius or a coarser --resolution")
    return TargetGrid(crs, Affine(resolution, 0, (col - half) * resolution, 0, -resolution,
                                  (row + half + 1) * resolution), side, side)


def lonlat_box_around(lon: float, lat: float, radius: float) -> tuple[float, float, float,
                                                                      float]:
    """A WGS84 box that holds the square of ``radius`` metres around a point (for searching)."""
    from slidewatch.data.geometry import lonlat_margin

    dlon, dlat = lonlat_margin(radius, lat, lat)
    return (max(-180.0, lon - dlon), max(-90.0, lat - dlat), min(180.0, lon + dlon),
            min(90.0, lat + dlat))
