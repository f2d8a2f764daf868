"""Terrain from a DEM (``--aux DEM.tif``): elevation, slope and aspect on an image's grid.

:class:`Grid` describes the pixels of an image, tile or scan window (shape, and transform + CRS
when georeferenced). :func:`terrain_for_grid` returns HxWx3 float32 ``(elevation, slope,
aspect)`` on that grid:

- both georeferenced: the DEM is reprojected and resampled onto the grid (plus a one-pixel
  border for the derivatives) with ``rasterio.warp.reproject`` (bilinear), read window by
  window by GDAL; slope is computed in metres, also for geographic grids (degrees converted to
  metres at each row's latitude, by :mod:`slidewatch.data.geometry`);
- either not georeferenced: the DEM must have the image's size and is used pixel for pixel,
  with the grid's window; the pixel size in metres is given (``pixel_size``) or taken from
  whichever file is georeferenced.

Slope is in degrees from horizontal; aspect in degrees clockwise from north of the direction
the slope faces (downhill), 0 on flat ground (as ``gdaldem aspect -zero_for_flat``). A DEM that
does not cover every pixel of the grid (or has nodata there) is a DataError naming both files.
:func:`check_dem` is the same rule from the headers alone (before a long job starts);
:func:`polygon_slopes` gives the mean and max slope under polygons in an image's pixels.
:func:`terrain_features` summarises a tile for the tabular route; the HxWx3 array itself is the
channel route (per-band statistics from the training data, as for any non-RGB input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidewatch.data.geometry import metres_per_unit
from slidewatch.errors import ConfigError, DataError

CHANNELS = ("elevation", "slope", "aspect")
FEATURES = ("elevation_mean", "elevation_min", "elevation_max", "relief", "slope_mean",
            "slope_max", "slope_p90", "northness", "eastness")


@dataclass(frozen=True)
class Grid:
    """Pixels of an image or a window of it.

    ``transform``/``crs``: georeference of this grid (window included), or None. ``row_off``,
    ``col_off`` and ``parent_shape`` place a window inside an un-georeferenced image (to read
    the same window of a same-size DEM). ``source`` names the image in error messages.
    """

    height: int
    width: int
    transform: object | None = None
    crs: object | None = None
    row_off: int = 0
    col_off: int = 0
    parent_shape: tuple[int, int] | None = None
    source: str = "image"

    @property
    def georeferenced(self) -> bool:
        return self.transform is not None and self.crs is not None

    @classmethod
    def of_image(cls, path: str | Path, window: tuple[int, int, int, int] | None = None
                 ) -> Grid:
        """The grid of ``path`` (header only), or of ``window = (row, col, height, width)``."""
        from rasterio.windows import Window
        from rasterio.windows import transform as window_transform

        from slidewatch.data.readers import georef, probe

        info, geo = probe(path), georef(path)
        row, col, height, width = window or (0, 0, info.height, info.width)
        if row < 0 or col < 0 or row + height > info.height or col + width > info.width:
            raise DataError(f"{path}: window {window} is outside the {info.width}x"
                            f"{info.height} image")
        transform = crs = None
        if geo is not None:
            crs = geo["crs"]
            transform = window_transform(Window(col, row, width, height), geo["transform"])
        return cls(height, width, transform, crs, row, col, (info.height, info.width), str(path))


# ----------------------------------------------------------------------------- derivatives


def _gradient(z: np.ndarray, jac: np.ndarray, scale) -> tuple[np.ndarray, np.ndarray]:
    """Map gradient ``(dz/d east, dz/d north)`` in m/m of padded elevations ``z`` ((H+2)x(W+2))
    for the inner HxW.

    ``jac`` = [[a, b], [d, e]] of the affine transform (map units per column / row);
    ``scale`` = metres per map unit in x and y (arrays broadcastable to HxW).
    """
    dz_row, dz_col = np.gradient(z.astype(np.float64))
    dz_row, dz_col = dz_row[1:-1, 1:-1], dz_col[1:-1, 1:-1]
    (a, b), (d, e) = jac
    det = a * e - b * d
    if abs(det) < 1e-30:
        raise DataError("terrain: degenerate pixel grid (zero pixel size)")
    # dz/dcol = a*zx + d*zy ; dz/drow = b*zx + e*zy  -> solve for the map gradient (zx, zy)
    zx = (e * dz_col - d * dz_row) / det / scale[0]
    zy = (a * dz_row - b * dz_col) / det / scale[1]
    return zx, zy


def _blocks(arr: np.ndarray, k: int) -> np.ndarray:
    """Mean over kxk blocks."""
    if k == 1:
        return arr
    h, w = arr.shape[0] // k, arr.shape[1] // k
    return arr.reshape(h, k, w, k).mean(axis=(1, 3))


def _terrain(z: np.ndarray, zx: np.ndarray, zy: np.ndarray, k: int) -> np.ndarray:
    """HxWx3 from the inner fine elevations and gradients, aggregated over kxk blocks:
    mean elevation, mean slope, aspect of the mean gradient."""
    slope = _blocks(np.degrees(np.arctan(np.hypot(zx, zy))), k)
    gx, gy = _blocks(zx, k), _blocks(zy, k)
    aspect = np.degrees(np.arctan2(-gx, -gy)) % 360.0
    aspect = np.where(np.hypot(gx, gy) < 1e-12, 0.0, aspect)
    return np.stack([_blocks(z.astype(np.float64), k), slope, aspect], -1).astype(np.float32)


def _jacobian(transform) -> np.ndarray:
    return np.array([[transform.a, transform.b], [transform.d, transform.e]], dtype=np.float64)


# ----------------------------------------------------------------------------- DEM on a grid


def _open_dem(dem: Path):
    from slidewatch.data.raster import open_raster

    if not dem.is_file():
        raise DataError(f"{dem}: DEM file not found")
    return open_raster(dem)


MAX_SUPERSAMPLE = 8


def _supersample(ds, grid: Grid) -> int:
    """How many fine pixels per grid pixel (per side) make the fine grid at least as fine as
    the DEM (at most :data:`MAX_SUPERSAMPLE`), so that resampling never averages DEM pixels
    with GDAL's scaled kernel and slopes are taken at the DEM's own resolution."""
    from rasterio.warp import transform as warp_points

    col, row = ds.width / 2, ds.height / 2
    pts = [ds.transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (0, 1))]
    xs, ys = warp_points(ds.crs, grid.crs, [p[0] for p in pts], [p[1] for p in pts])
    dem_px = min(np.hypot(xs[1] - xs[0], ys[1] - ys[0]), np.hypot(xs[2] - xs[0], ys[2] - ys[0]))
    t = grid.transform
    grid_px = max(np.hypot(t.a, t.d), np.hypot(t.b, t.e))
    if not dem_px > 0:
        return 1
    return int(min(MAX_SUPERSAMPLE, max(1, math.ceil(grid_px / dem_px - 1e-6))))


def _reprojected(ds, grid: Grid, k: int) -> tuple[np.ndarray, object]:
    """The DEM bilinearly resampled onto ``grid`` at ``k`` fine pixels per pixel and side, plus
    a one-fine-pixel border (NaN = no data); and the fine grid's (unpadded) transform."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.warp import reproject

    fine = grid.transform @ Affine.scale(1 / k)
    out = np.full((grid.height * k + 2, grid.width * k + 2), np.nan, np.float32)
    reproject(source=rasterio.band(ds, 1), destination=out,
              src_nodata=ds.nodata, dst_transform=fine @ Affine.translation(-1, -1),
              dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.bilinear,
              tolerance=0.0)  # exact transformer: GDAL's default 1/8-pixel error bends slopes
    return out, fine


def _pixel_pair(ds, grid: Grid, dem: Path) -> np.ndarray:
    """The DEM window of an un-georeferenced same-size pair, padded by edge values."""
    from rasterio.windows import Window

    _pixel_pair_shape(ds, grid, dem)
    r0, c0 = max(grid.row_off - 1, 0), max(grid.col_off - 1, 0)
    r1 = min(grid.row_off + grid.height + 1, ds.height)
    c1 = min(grid.col_off + grid.width + 1, ds.width)
    arr = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
    if ds.nodata is not None and not math.isnan(ds.nodata):
        arr[arr == ds.nodata] = np.nan
    top, left = 1 - (grid.row_off - r0), 1 - (grid.col_off - c0)
    bottom = 1 - (r1 - grid.row_off - grid.height)
    right = 1 - (c1 - grid.col_off - grid.width)
    return np.pad(arr, ((top, bottom), (left, right)), constant_values=np.nan)


def _check_cover(z: np.ndarray, dem: Path, grid: Grid) -> np.ndarray:
    """Error if any pixel of the grid has no DEM value; fill the border by extrapolation."""
    missing = float(np.isnan(z[1:-1, 1:-1]).mean())
    if missing > 0:
        raise DataError(f"{dem}: does not cover {grid.source} ({missing:.1%} of its pixels "
                        "outside the DEM or nodata); use a DEM that covers the image")
    return _fill_border(z)


def _fill_border(z: np.ndarray) -> np.ndarray:
    """Missing values of the one-pixel border, linearly extrapolated from the two pixels
    inside (so edge derivatives keep their value); edge values for grids under 2 pixels."""
    z = z.copy()
    for axis in (0, 1):
        view = np.moveaxis(z, axis, 0)
        if view.shape[0] < 4:
            continue
        for edge, a, b in ((0, 1, 2), (-1, -2, -3)):
            gap = np.isnan(view[edge])
            view[edge][gap] = (2 * view[a] - view[b])[gap]
    if np.isnan(z).any():
        z = np.where(np.isnan(z), np.pad(z[1:-1, 1:-1], 1, mode="edge"), z)
    return z


def _pair_geometry(ds, grid: Grid, dem: Path, pixel_size: float | None):
    """(jacobian, metre scales) for an un-georeferenced pair."""
    if pixel_size is not None:
        if not pixel_size > 0:
            raise ConfigError(f"--aux-pixel-size: must be > 0 metres, got {pixel_size}")
        return np.array([[pixel_size, 0.0], [0.0, -pixel_size]]), (1.0, 1.0)
    from rasterio.windows import Window

    window = Window(grid.col_off, grid.row_off, grid.width, grid.height)
    for transform, crs in ((grid.transform, grid.crs), (ds.window_transform(window), ds.crs)):
        if transform is not None and crs is not None and not transform.is_identity:
            scale = metres_per_unit(transform, crs, grid.height, grid.width, str(dem))
            return _jacobian(transform), scale
    raise ConfigError(f"{dem}: neither the DEM nor {grid.source} is georeferenced; give the "
                      "pixel size in metres (--aux-pixel-size)")


def terrain_for_grid(dem: str | Path, grid: Grid, pixel_size: float | None = None
                     ) -> np.ndarray:
    """HxWx3 float32 (elevation, slope in degrees, aspect in degrees from north) on ``grid``.

    ``pixel_size`` (metres) is used only for an un-georeferenced pair.
    """
    dem = Path(dem)
    k = 1
    with _open_dem(dem) as ds:
        dem_geo = ds.crs is not None and not ds.transform.is_identity
        if grid.georeferenced and dem_geo:
            k = _supersample(ds, grid)
            z, fine = _reprojected(ds, grid, k)
            jac = _jacobian(fine)
            scale = metres_per_unit(fine, grid.crs, grid.height * k, grid.width * k, grid.source)
        else:
            z = _pixel_pair(ds, grid, dem)
            jac, scale = _pair_geometry(ds, grid, dem, pixel_size)
    z = _check_cover(z, dem, grid)
    zx, zy = _gradient(z, jac, scale)
    return _terrain(z[1:-1, 1:-1], zx, zy, k)


def terrain_for_image(dem: str | Path, image: str | Path,
                      window: tuple[int, int, int, int] | None = None,
                      pixel_size: float | None = None) -> np.ndarray:
    """:func:`terrain_for_grid` for an image file (or a ``(row, col, height, width)`` window)."""
    return terrain_for_grid(dem, Grid.of_image(image, window), pixel_size)


def check_dem(dem: str | Path, image: str | Path, pixel_size: float | None = None) -> None:
    """From the headers only: ``dem`` is a readable raster that covers ``image``'s extent
    (georeferenced pair: the image's bounds, in the DEM's CRS, lie inside the DEM's), or has the
    image's size (pair without georeference, which also needs a pixel size from ``pixel_size``
    or from either file). DataError (ConfigError for a missing pixel size) otherwise. Nodata
    inside the DEM is found only when the terrain is computed."""
    from rasterio.warp import transform_bounds

    dem = Path(dem)
    grid = Grid.of_image(image)
    with _open_dem(dem) as ds:
        if ds.count < 1:
            raise DataError(f"{dem}: DEM has no bands")
        dem_geo = ds.crs is not None and not ds.transform.is_identity
        if not (grid.georeferenced and dem_geo):
            _pixel_pair_shape(ds, grid, dem)
            _pair_geometry(ds, grid, dem, pixel_size)
            return
        b = ds.bounds
        t = grid.transform
        corners = [t @ (c, r) for c in (0, grid.width) for r in (0, grid.height)]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        try:
            x0, y0, x1, y1 = transform_bounds(grid.crs, ds.crs, min(xs), min(ys), max(xs),
                                              max(ys), densify_pts=21)
        except Exception as exc:  # noqa: BLE001 - rasterio/PROJ errors: no common ground
            raise DataError(f"{dem}: cannot place {grid.source} in the DEM's CRS "
                            f"({exc})") from None
        eps = 1e-6 * max(abs(ds.transform.a), abs(ds.transform.e), 1e-12)
        if not (x0 >= b.left - eps and x1 <= b.right + eps and y0 >= b.bottom - eps
                and y1 <= b.top + eps):
            raise DataError(f"{dem}: does not cover {grid.source} (the image reaches outside "
                            "the DEM's extent); use a DEM that covers the image")


def _pixel_pair_shape(ds, grid: Grid, dem: Path) -> None:
    parent = grid.parent_shape or (grid.height, grid.width)
    if (ds.height, ds.width) != tuple(parent):
        raise DataError(f"{dem}: DEM is {ds.width}x{ds.height} but {grid.source} is "
                        f"{parent[1]}x{parent[0]}; without georeference on both, the DEM must "
                        "have the image's size")


def polygon_slopes(dem: str | Path, image: str | Path, polygons: list,
                   pixel_size: float | None = None) -> list[tuple[float, float] | None]:
    """(mean, max) slope in degrees under each polygon (shapely, in ``image``'s pixel
    coordinates: column, row), None for one outside the image.

    Per polygon: its bounding box in pixels, padded by one pixel and clipped to the image, is a
    window of the image; :func:`terrain_for_grid` gives the slope there, averaged over the
    pixels whose centre is inside the polygon (the pixels it touches, for a polygon too thin to
    hold a pixel centre). DataError when the DEM has no data under a polygon."""
    from affine import Affine
    from rasterio.features import geometry_mask

    whole = Grid.of_image(image)
    height, width = whole.height, whole.width
    out: list[tuple[float, float] | None] = []
    for geom in polygons:
        if geom is None or geom.is_empty:
            out.append(None)
            continue
        x0, y0, x1, y1 = geom.bounds
        c0, r0 = max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1)
        c1, r1 = min(width, math.ceil(x1) + 1), min(height, math.ceil(y1) + 1)
        if c1 <= c0 or r1 <= r0:
            out.append(None)
            continue
        grid = Grid.of_image(image, (r0, c0, r1 - r0, c1 - c0))
        slope = terrain_for_grid(dem, grid, pixel_size)[..., 1]
        shift = Affine.translation(c0, r0)
        inside = geometry_mask([geom], out_shape=slope.shape, transform=shift, invert=True)
        if not inside.any():
            inside = geometry_mask([geom], out_shape=slope.shape, transform=shift, invert=True,
                                   all_touched=True)
        values = slope[inside].astype(np.float64)
        out.append((float(values.mean()), float(values.max())) if values.size else None)
    return out


# ----------------------------------------------------------------------------- summaries


def terrain_features(terrain: np.ndarray) -> dict[str, float]:
    """Summary of an HxWx3 terrain array for the tabular route (names in :data:`FEATURES`).

    ``northness``/``eastness``: mean cosine/sine of the aspect, weighted by the sine of the
    slope (flat ground counts for nothing).
    """
    if terrain.ndim != 3 or terrain.shape[2] != 3:
        raise ValueError(f"terrain: expected HxWx3, got shape {terrain.shape}")
    elev, slope, aspect = (terrain[..., i].astype(np.float64) for i in range(3))
    weight = np.sin(np.radians(slope))
    rad = np.radians(aspect)
    return {
        "elevation_mean": float(elev.mean()), "elevation_min": float(elev.min()),
        "elevation_max": float(elev.max()), "relief": float(elev.max() - elev.min()),
        "slope_mean": float(slope.mean()), "slope_max": float(slope.max()),
        "slope_p90": float(np.percentile(slope, 90)),
        "northness": float((np.cos(rad) * weight).mean()),
        "eastness": float((np.sin(rad) * weight).mean()),
    }


def terrain_rows(dem: str | Path, grids: list[Grid], pixel_size: float | None = None
                 ) -> list[dict[str, float]]:
    """One :func:`terrain_features` row per grid (e.g. per sample), for :class:`TabularEncoder`
    (merge with CSV rows through :func:`slidewatch.tabular.merge_rows`)."""
    return [terrain_features(terrain_for_grid(dem, g, pixel_size)) for g in grids]
