"""Ground geometry: the one place where pixels, map units and degrees become metres.

Public API::

    EARTH_RADIUS_M                                  # mean Earth radius (IUGG), metres
    metres_per_degree(lat) -> (lon_m, lat_m)        # WGS84, at latitude ``lat``
    linear_unit_metres(crs, where) -> float         # metres per unit of a projected CRS
    metres_per_unit(transform, crs, height, width, where) -> (x, y)   # per row of a grid
    pixel_area_m2(transform, crs, where="image", row=0.5) -> float
    metric_pixel_area_m2(transform, crs) -> float | None   # projected CRSs in metres only
    apply_affine(transform, cols, rows) -> (xs, ys)
    pixels_to_lonlat(transform, crs, cols, rows) -> (lon, lat)
    haversine_m(lon1, lat1, lon2, lat2) -> metres   # great-circle distance
    metres_per_pixel(transform, crs, width, height) -> (along columns, along rows)
    lonlat_margin(metres, south, north) -> (dlon, dlat)

Nothing here opens a file; rasterio is used for CRS arithmetic only (``rasterio.warp``).
"""

from __future__ import annotations

import math

import numpy as np

from slidewatch.errors import DataError

EARTH_RADIUS_M = 6_371_008.8


# ----------------------------------------------------------------------------- units


def metres_per_degree(lat: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``(metres per degree of longitude, of latitude)`` on WGS84 at latitude ``lat``."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lat_m = 111132.92 - 559.82 * np.cos(2 * phi) + 1.175 * np.cos(4 * phi)
    lon_m = 111412.84 * np.cos(phi) - 93.5 * np.cos(3 * phi) + 0.118 * np.cos(5 * phi)
    return lon_m, lat_m


def linear_unit_metres(crs, where: str) -> float:
    """Metres per unit of a projected CRS (1 for metres, 0.3048 for feet)."""
    from rasterio.errors import CRSError

    try:
        return float(crs.linear_units_factor[1])
    except (CRSError, TypeError, IndexError, ValueError) as exc:
        raise DataError(f"{where}: cannot tell the linear unit of {crs} ({exc})") from None


def metres_per_unit(transform, crs, height: int, width: int, where: str):
    """Metres per map unit (x, y) for each row of a grid in ``crs`` (at the middle column):
    ``height x 1`` arrays for a geographic CRS, scalars for a projected one."""
    if crs.is_geographic:
        lat = transform.f + transform.e * (np.arange(height) + 0.5) + transform.d * width / 2
        lon_m, lat_m = metres_per_degree(lat)
        return lon_m[:, None], lat_m[:, None]
    unit = linear_unit_metres(crs, where)
    return np.float64(unit), np.float64(unit)


# ----------------------------------------------------------------------------- areas


def pixel_area_m2(transform, crs, where: str = "image", row: float = 0.5) -> float:
    """Ground area of one pixel in m² from a georeference; for a geographic CRS at the
    latitude of pixel row ``row`` (e.g. the image's middle row)."""
    det = abs(transform.a * transform.e - transform.b * transform.d)
    if det == 0:
        raise DataError(f"{where}: zero pixel size in the georeference")
    if crs.is_geographic:
        lon_m, lat_m = metres_per_degree(transform.f + transform.e * row)
        return float(det * lon_m * lat_m)
    return float(det * linear_unit_metres(crs, where) ** 2)


def metric_pixel_area_m2(transform, crs) -> float | None:
    """m² per pixel for a projected CRS whose unit is the metre; None for anything else (no
    CRS, geographic, feet): the ``area_m2`` of scan detections."""
    if crs is None or not crs.is_projected:
        return None
    unit, factor = crs.linear_units_factor
    return abs(transform.determinant) * factor**2 if unit in ("metre", "meter") else None


# ----------------------------------------------------------------------------- positions


def apply_affine(transform, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates of pixel positions (float arrays; ``+ 0.5`` for pixel centres)."""
    t = transform
    cols, rows = np.asarray(cols, float), np.asarray(rows, float)
    return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f


def pixels_to_lonlat(transform, crs, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 longitude and latitude of pixel positions of a grid in ``crs``."""
    from rasterio.warp import transform as warp_points

    xs, ys = apply_affine(transform, cols, rows)
    lon, lat = warp_points(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    return np.asarray(lon), np.asarray(lat)


# ----------------------------------------------------------------------------- distances


def haversine_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in metres between WGS84 points (degrees; arrays broadcast)."""
    lon1, lat1, lon2, lat2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2
    a += np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def metres_per_pixel(transform, crs, width: int, height: int) -> tuple[float, float]:
    """Smallest ground metres per pixel along columns and rows of a ``width x height`` grid
    (great-circle distances between neighbouring pixels at 3x3 samples over the grid)."""
    grid = np.linspace(0.5, [width - 1.5, height - 1.5], 3)
    cols, rows = (a.ravel() for a in np.meshgrid(grid[:, 0], grid[:, 1]))
    lon, lat = pixels_to_lonlat(transform, crs, np.concatenate([cols, cols + 1, cols]),
                                np.concatenate([rows, rows, rows + 1]))
    lon, lat = np.split(lon, 3), np.split(lat, 3)
    return (float(haversine_m(lon[0], lat[0], lon[1], lat[1]).min()),
            float(haversine_m(lon[0], lat[0], lon[2], lat[2]).min()))


def lonlat_margin(metres: float, south: float, north: float) -> tuple[float, float]:
    """``(dlon, dlat)`` in degrees that cover at least ``metres`` on the ground (1.5 x, with
    round figures for a degree) anywhere between latitudes ``south`` and ``north``."""
    dlat = 1.5 * metres / 110_000 + 1e-6
    top = min(max(abs(south), abs(north)) + dlat, 89.0)
    dlon = 1.5 * metres / (111_320 * math.cos(math.radians(top))) + 1e-6
    return dlon, dlat
