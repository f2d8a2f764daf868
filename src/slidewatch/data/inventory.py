"""Chips around the points of a landslide inventory (e.g. the NASA Global Landslide Catalog).

Landslide chips: one ``size`` x ``size`` chip per inventory point inside a georeferenced scene,
the point's pixel at chip pixel ``(size // 2, size // 2)``. A chip that would cross the scene
edge is skipped and counted; so is one that is mostly nodata (the nodata rule of
:mod:`slidewatch.data.raster`: rasterio's masks of every band, and finite values), and one at
the very pixel position of a chip already written (a repeated point). Landslide-free chips lie
on a seeded grid, never overlap each other or a landslide chip, and their footprint stays at
least ``min_distance`` metres on the ground from every valid inventory point (also points
outside the scenes); ground distances: :mod:`slidewatch.data.geometry`.
Chips are GeoTIFFs with the scene's CRS and their own transform; ``tiles.csv`` has the standard
columns plus the inventory's attributes and the chip centre's longitude and latitude.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidewatch.data.geometry import (
    apply_affine,
    lonlat_margin,
    metres_per_pixel,
    pixels_to_lonlat,
)
from slidewatch.data.inventory_csv import Inventory, InventoryColumns, read_inventory  # noqa: F401  (re-exported)
from slidewatch.data.raster import image_bands, one_line, open_raster, read_window
from slidewatch.data.readers import georef, probe, tile_suffix, write_tile
from slidewatch.data.tiling import CSV_COLUMNS, RASTER_WRITE_ERRORS, TILES_CSV, validate_classes
from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_dir, open_output, quiet_writing

DEFAULT_SIZE = 224
DEFAULT_MIN_DISTANCE = 500.0  # metres on the ground, chip footprint to inventory point
DEFAULT_NEGATIVE_RATIO = 1.0  # landslide-free chips per landslide chip, per scene
DEFAULT_MAX_NODATA = 0.5  # chips with a larger nodata fraction are skipped
EXTRA_COLUMNS = ("inventory_id", "inventory_date", "inventory_size", "inventory_trigger",
                 "inventory_row", "center_lon", "center_lat")
INVENTORY_CSV_COLUMNS = CSV_COLUMNS + EXTRA_COLUMNS


# ---------------------------------------------------------------- scenes and geometry


@dataclass(frozen=True)
class _Scene:
    path: Path
    region: str
    width: int
    height: int
    crs: object
    transform: object
    bounds: tuple[float, float, float, float]  # WGS84 west, south, east, north

    @property
    def source(self) -> str:
        return f"{self.region}/{self.path.stem}"


def _geo_errors() -> tuple[type[Exception], ...]:
    """What rasterio raises for CRSs it cannot relate or points outside a projection's domain."""
    from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio has no public name
    from rasterio.errors import CRSError, TransformError

    return CRSError, TransformError, CPLE_BaseError


def _to_lonlat(scene: _Scene, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    return pixels_to_lonlat(scene.transform, scene.crs, cols, rows)


def _open_scene(path: Path, region: str | None, size: int) -> _Scene:
    from rasterio.warp import transform_bounds

    info = probe(path)
    geo = georef(path)
    if geo is None or geo["crs"] is None:
        raise DataError(f"{path}: not georeferenced (no CRS); from-inventory needs GeoTIFF "
                        "scenes with a CRS and transform")
    if info.width < size or info.height < size:
        raise ConfigError(f"--size {size}: larger than the scene {path} "
                          f"({info.width}x{info.height} px)")
    xs, ys = apply_affine(geo["transform"], [0, info.width, 0, info.width],
                          [0, 0, info.height, info.height])
    try:
        bounds = transform_bounds(geo["crs"], "EPSG:4326", xs.min(), ys.min(), xs.max(),
                                  ys.max(), densify_pts=21)
    except _geo_errors() as exc:
        raise DataError(f"{path}: cannot relate its CRS to longitude/latitude "
                        f"({one_line(exc)})") from None
    name = region if region is not None else path.stem
    return _Scene(path, name, info.width, info.height, geo["crs"], geo["transform"], bounds)


def _near_points(inv: Inventory, scene: _Scene, margin_m: float):
    """Indexes and pixel (col, row) of the valid points near the scene's WGS84 box."""
    from rasterio.warp import transform

    west, south, east, north = scene.bounds
    dlon, dlat = lonlat_margin(margin_m, south, north)
    width = (east - west) % 360 if east != west + 360 else 360.0
    keep = (inv.lat >= south - dlat) & (inv.lat <= north + dlat)
    keep &= ((inv.lon - (west - dlon)) % 360 <= width + 2 * dlon) | (width + 2 * dlon >= 360)
    idx = np.flatnonzero(keep)
    try:
        xs, ys = transform("EPSG:4326", scene.crs, inv.lon[idx].tolist(), inv.lat[idx].tolist())
    except _geo_errors():  # some point outside the CRS's domain: one by one, those become NaN
        xs, ys = np.array([_one_point(scene.crs, inv.lon[i], inv.lat[i]) for i in idx]).T
    cols, rows = apply_affine(~scene.transform, xs, ys)
    finite = np.isfinite(cols) & np.isfinite(rows)
    return idx[finite], cols[finite], rows[finite]


def _one_point(crs, lon: float, lat: float) -> tuple[float, float]:
    from rasterio.warp import transform

    try:
        (x,), (y,) = transform("EPSG:4326", crs, [lon], [lat])
        return x, y
    except _geo_errors():
        return math.nan, math.nan


def _far_enough(r0, c0, pc, pr, size: int, scale, min_distance: float) -> np.ndarray:
    """Which chips (top-left r0, c0) lie at least min_distance metres from every point."""
    ok = np.ones(len(r0), bool)
    step = max(1, 2_000_000 // max(1, len(pc)))
    for s in range(0, len(r0), step):
        r, c = r0[s:s + step, None], c0[s:s + step, None]
        gx = np.maximum(np.maximum(c - pc[None], pc[None] - (c + size)), 0) * scale[0]
        gy = np.maximum(np.maximum(r - pr[None], pr[None] - (r + size)), 0) * scale[1]
        far = (gx**2 + gy**2 >= min_distance**2) & ((gx > 0) | (gy > 0))
        ok[s:s + step] = far.all(axis=1)
    return ok


# ---------------------------------------------------------------- chips


@dataclass
class SceneStats:
    """What one scene gave."""

    scene: str  # region/stem, the group of its chips
    points_inside: int = 0
    positives: int = 0
    skipped_edge: int = 0  # points whose chip would cross the scene edge
    skipped_nodata: int = 0  # landslide chips mostly nodata
    skipped_duplicate: int = 0  # points on the pixel position of a chip already written
    negatives_wanted: int = 0
    negatives: int = 0
    negatives_nodata: int = 0  # landslide-free candidates mostly nodata


@dataclass(frozen=True)
class _Options:
    size: int
    min_distance: float
    negatives: int | None
    negative_ratio: float
    max_nodata: float
    classes: tuple[str, ...]


def _read_chip(ds, scene: _Scene, r0: int, c0: int, size: int) -> tuple[np.ndarray, float]:
    """The chip's pixels (HxWxC, alpha dropped) and its nodata fraction (the nodata rule of
    :mod:`slidewatch.data.raster`: rasterio's masks of every band, and finite values)."""
    from rasterio.windows import Window

    data, valid = read_window(ds, image_bands(ds), Window(c0, r0, size, size),
                              what="cannot decode raster")
    return np.moveaxis(data, 0, -1), float((~valid).mean())


def _write_chip(out: Path, label: str, scene: _Scene, r0: int, c0: int, arr, attrs) -> list:
    from rasterio.transform import Affine

    profile = {"crs": scene.crs, "transform": scene.transform @ Affine.translation(c0, r0)}
    name = f"{scene.region}__{scene.path.stem}__r{r0}_c{c0}"
    target = (out / label / name).with_suffix(tile_suffix(arr, profile))
    with quiet_writing(target, RASTER_WRITE_ERRORS):  # a full disk: one line naming it
        path = write_tile(out / label / name, arr, profile)
    return [path.relative_to(out).as_posix(), label, scene.source, r0, c0, "", scene.region,
            *attrs]


def _positives(ds, scene, inv, near, opts, out, stats, only=None) -> tuple[list, set]:
    """Landslide chips centred on the points inside the scene, in inventory order (only the
    points whose index is in ``only``, when given)."""
    idx, pc, pr = near
    inside = (pc >= 0) & (pc < scene.width) & (pr >= 0) & (pr < scene.height)
    if only is not None:
        inside &= np.isin(idx, list(only))
    stats.points_inside = int(inside.sum())
    rows, taken, half = [], set(), opts.size // 2
    for i, c, r in zip(idx[inside], pc[inside], pr[inside], strict=True):
        r0, c0 = math.floor(r) - half, math.floor(c) - half
        if r0 < 0 or c0 < 0 or r0 + opts.size > scene.height or c0 + opts.size > scene.width:
            stats.skipped_edge += 1
            continue
        if (r0, c0) in taken:
            stats.skipped_duplicate += 1
            continue
        arr, nodata = _read_chip(ds, scene, r0, c0, opts.size)
        if nodata > opts.max_nodata:
            stats.skipped_nodata += 1
            continue
        taken.add((r0, c0))
        rows.append(_write_chip(out, opts.classes[0], scene, r0, c0, arr, inv.attrs[i]))
    stats.positives = len(rows)
    return rows, taken


def _candidates(scene, near, taken, opts, rng) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of a seeded grid of chips far from every point and clear of positives."""
    size = opts.size
    oy = int(rng.integers(0, min(size - 1, scene.height - size) + 1))
    ox = int(rng.integers(0, min(size - 1, scene.width - size) + 1))
    rr, cc = np.meshgrid(np.arange(oy, scene.height - size + 1, size),
                         np.arange(ox, scene.width - size + 1, size), indexing="ij")
    r0, c0 = rr.ravel(), cc.ravel()
    _, pc, pr = near
    scale = metres_per_pixel(scene.transform, scene.crs, scene.width, scene.height)
    ok = _far_enough(r0, c0, pc, pr, size, scale, opts.min_distance)
    for tr, tc in sorted(taken):
        ok &= (np.abs(r0 - tr) >= size) | (np.abs(c0 - tc) >= size)
    order = rng.permutation(np.flatnonzero(ok))
    return r0[order], c0[order]


def _negatives(ds, scene, near, taken, opts, out, stats, rng) -> list:
    stats.negatives_wanted = (opts.negatives if opts.negatives is not None
                              else round(opts.negative_ratio * stats.positives))
    rows = []
    if stats.negatives_wanted == 0:
        return rows
    for r0, c0 in zip(*_candidates(scene, near, taken, opts, rng), strict=True):
        arr, nodata = _read_chip(ds, scene, int(r0), int(c0), opts.size)
        if nodata > opts.max_nodata:
            stats.negatives_nodata += 1
            continue
        rows.append(_write_chip(out, opts.classes[1], scene, int(r0), int(c0), arr, [""] * 5))
        if len(rows) == stats.negatives_wanted:
            break
    stats.negatives = len(rows)
    return rows


def _chip_scene(scene, inv, near, opts, out, writer, rng, only=None) -> SceneStats:
    stats = SceneStats(scene.source)
    with open_raster(scene.path) as ds:
        rows, taken = _positives(ds, scene, inv, near, opts, out, stats, only)
        rows += _negatives(ds, scene, near, taken, opts, out, stats, rng)
    if rows:
        half = opts.size / 2
        lon, lat = _to_lonlat(scene, [r[4] + half for r in rows], [r[3] + half for r in rows])
        for row, x, y in zip(rows, lon, lat, strict=True):
            writer.writerow([*row, f"{x:.7f}", f"{y:.7f}"])
    return stats


# ---------------------------------------------------------------- public entry


@dataclass
class InventorySummary:
    """What ``chips_from_inventory`` read and wrote."""

    out_dir: Path
    tiles_csv: Path
    inventory: Path
    encoding: str
    classes: tuple[str, ...]
    rows_read: int
    skipped_rows: dict[str, int]  # reason -> rows
    valid_points: int
    missing_columns: list[str]  # default attribute columns the inventory lacks (left empty)
    points_inside: int  # distinct points inside at least one scene
    scenes: list[SceneStats] = field(default_factory=list)

    def total(self, name: str) -> int:
        """Sum of one ``SceneStats`` count over the scenes, e.g. ``total("positives")``."""
        return sum(getattr(s, name) for s in self.scenes)


def _options(size, min_distance, negatives, negative_ratio, max_nodata, classes, seed):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ConfigError(f"--size: must be a positive whole number of pixels, got {size}")
    if not (math.isfinite(min_distance) and min_distance >= 0):
        raise ConfigError(f"--min-distance: must be >= 0 metres, got {min_distance}")
    if negatives is not None and negative_ratio is not None:
        raise ConfigError("--negatives, --negative-ratio: give one or the other")
    if negatives is not None and (isinstance(negatives, bool) or negatives < 0
                                  or int(negatives) != negatives):
        raise ConfigError(f"--negatives: must be a whole number >= 0, got {negatives}")
    ratio = DEFAULT_NEGATIVE_RATIO if negative_ratio is None else negative_ratio
    if not (math.isfinite(ratio) and ratio >= 0):
        raise ConfigError(f"--negative-ratio: must be >= 0, got {negative_ratio}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"--seed: must be a whole number >= 0, got {seed}")
    if not 0 <= max_nodata <= 1:
        raise ConfigError(f"--max-nodata: must be between 0 and 1, got {max_nodata}")
    return _Options(int(size), float(min_distance), None if negatives is None else int(negatives),
                    float(ratio), float(max_nodata), validate_classes(classes))


def check_options(size: int = DEFAULT_SIZE, min_distance: float = DEFAULT_MIN_DISTANCE,
                  negatives: int | None = None, negative_ratio: float | None = None,
                  max_nodata: float = DEFAULT_MAX_NODATA,
                  classes: Sequence[str] = ("landslide", "non_landslide"), seed: int = 0) -> None:
    """The checks of :func:`chips_from_inventory`'s options alone (one-line ConfigErrors), for
    callers that do slow work before cutting chips."""
    _options(size, min_distance, negatives, negative_ratio, max_nodata, classes, seed)


def _open_scenes(paths: Sequence[Path], out_dir: Path, inventory: Path, region, size):
    if not paths:
        raise ConfigError("no scenes given")
    out = out_dir.resolve()
    for p in (inventory, *paths):
        if out == p.resolve() or out in p.resolve().parents:
            raise ConfigError(f"{out_dir}: the output folder must not hold the input {p}")
    if region is not None and (not region or "/" in region or region.startswith(".")):
        raise ConfigError(f"--region: '{region}' is not a valid name")
    scenes, seen = [], {}
    for path in paths:
        scene = _open_scene(path, region, size)
        if scene.source in seen:
            raise DataError(f"{path}: same scene name '{scene.source}' as {seen[scene.source]}")
        seen[scene.source] = path
        scenes.append(scene)
    return scenes


def _miss_message(inv: Inventory, scenes: list[_Scene]) -> str:
    boxes = "; ".join(f"{s.path.name} lon {s.bounds[0]:.4f}..{s.bounds[2]:.4f} "
                      f"lat {s.bounds[1]:.4f}..{s.bounds[3]:.4f}" for s in scenes[:5])
    more = f"; and {len(scenes) - 5} more" if len(scenes) > 5 else ""
    return (f"{inv.path}: none of its {len(inv.lon)} valid points (of {inv.rows} rows) falls "
            f"inside the scenes (WGS84 bounds: {boxes}{more})")


def chips_from_inventory(
    inventory: str | Path,
    scenes: Sequence[str | Path],
    out_dir: str | Path,
    *,
    size: int = DEFAULT_SIZE,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    negatives: int | None = None,
    negative_ratio: float | None = None,
    seed: int = 0,
    classes: Sequence[str] = ("landslide", "non_landslide"),
    region: str | None = None,
    columns: InventoryColumns = InventoryColumns(),
    max_nodata: float = DEFAULT_MAX_NODATA,
    overwrite: bool = False,
    positives_from: Sequence[Sequence[int]] | None = None,
) -> InventorySummary:
    """Landslide chips around the inventory's points in ``scenes`` and landslide-free chips.

    ``negatives`` per scene, or ``negative_ratio`` x that scene's landslide chips (default 1.0).
    Writes ``<out>/<class>/<region>__<stem>__r<row>_c<col>.tif`` and ``<out>/tiles.csv``
    (``INVENTORY_CSV_COLUMNS``), all or nothing. Region: ``region`` or each scene's stem.
    ``positives_from``: per scene, the indexes of the valid points (inventory order) that may
    give its landslide chips (e.g. the event an image was chosen for); every point still keeps
    landslide-free chips away.
    """
    opts = _options(size, min_distance, negatives, negative_ratio, max_nodata, classes, seed)
    inventory, out_dir = Path(inventory), Path(out_dir)
    opened = _open_scenes([Path(s) for s in scenes], out_dir, inventory, region, opts.size)
    inv = read_inventory(inventory, columns)
    margin = opts.min_distance + 1000.0
    near = [_near_points(inv, s, margin) for s in opened]
    inside = set()
    if positives_from is not None and len(positives_from) != len(opened):
        raise ValueError("positives_from: one collection of point indexes per scene")
    allowed = [None] * len(opened) if positives_from is None else [set(p) for p in positives_from]
    for scene, (idx, pc, pr), only in zip(opened, near, allowed, strict=True):
        hit = (pc >= 0) & (pc < scene.width) & (pr >= 0) & (pr < scene.height)
        if only is not None:
            hit &= np.isin(idx, list(only))
        inside.update(idx[hit])
    if not inside:
        raise DataError(_miss_message(inv, opened))
    summary = InventorySummary(out_dir, out_dir / TILES_CSV, inventory, inv.encoding,
                               opts.classes, inv.rows, dict(sorted(inv.skipped.items())),
                               len(inv.lon), inv.missing_columns, len(inside))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for name in opts.classes:
            (tmp / name).mkdir()
        with open_output(tmp / TILES_CSV, newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(INVENTORY_CSV_COLUMNS)
            for i, (scene, pts) in enumerate(zip(opened, near, strict=True)):
                rng = np.random.default_rng([seed, i])
                summary.scenes.append(_chip_scene(scene, inv, pts, opts, tmp, writer, rng,
                                                  allowed[i]))
    return summary
