"""``slidewatch changes BEFORE AFTER``: two scans of one area on one grid, and every detection
labelled ``new``, ``persisting`` or ``gone`` with its probability before and after.

* Inputs (:func:`resolve_inputs`): a scene (GeoTIFF; scanned with ``--model`` by
  :func:`slidewatch.scan.run.scan` into ``OUT/<label>/``, resumable as every scan) or the
  output folder of a finished scan (its one ``*_probability.tif``; its scene, named in the
  map's ``SLIDEWATCH_SCAN`` tag, is used for the co-registration check when it still exists).
  Scenes that do not overlap are an error before anything is scanned.
* One grid (:func:`map_on_grid`): the AFTER map's; the BEFORE map is warped onto it (bilinear)
  when its CRS, transform or shape differ. Nodata (-1) and pixels outside either map are NaN
  and take no part.
* Co-registration (:func:`phase_shift`): phase correlation (numpy FFT, Hann window, parabolic
  sub-pixel peak) of the two scenes' mean band on a central crop of at most
  :data:`SHIFT_CROP` pixels of the grid (the probability maps when a scene is unknown). A
  clear peak (:data:`MIN_PEAK_RATIO` times the surface's RMS) farther than
  :data:`MAX_SHIFT_PX` pixels is a warning: the images are not co-registered, and so a
  landslide may look new and gone at once.
* Labels (:func:`classify_changes`): detections are the 4-connected areas at or above the
  threshold in each map (the scans' threshold, or ``--threshold``), on pixels valid in both.
  An AFTER detection that shares a pixel with a BEFORE detection is ``persisting``, one that
  shares none is ``new``; a BEFORE detection that shares none with an AFTER detection is
  ``gone``. Geometry: the AFTER detection (new, persisting) or the BEFORE one (gone). Both maps
  are read whole: 8 bytes per pixel of the grid.
* Outputs in ``OUT``: ``changes.geojson`` (the grid's CRS, with a legacy ``crs`` member),
  ``changes_wgs84.geojson`` (RFC 7946; only with a CRS), ``changes.gpkg`` (layer ``changes``,
  the grid's CRS, through :mod:`slidewatch.data.gpkg`), ``changes.json`` (inputs, dates,
  threshold, grid, the shift estimate, counts), each written atomically. Feature properties:
  ``id``, ``change``, ``area_px``, ``area_m2`` (projected CRS in metres, else null),
  ``before_mean_prob``, ``before_max_prob``, ``after_mean_prob``, ``after_max_prob`` (over the
  feature's pixels).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidewatch.data import raster
from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_path, atomic_write_text
from slidewatch.stac import tags as tag_names
from slidewatch.stac.grid import TargetGrid

NODATA = -1.0  # the scan's probability-map nodata (slidewatch.scan.mosaic.NODATA)
PROBABILITY_SUFFIX = "_probability.tif"
SHIFT_CROP = 1024  # pixels a side of the central crop that the shift is estimated on
MAX_SHIFT_PX = 1.0  # a larger co-registration shift is a warning
MIN_PEAK_RATIO = 8.0  # a phase-correlation peak this many times the surface RMS is clear
CHANGES_GEOJSON, CHANGES_WGS84, CHANGES_JSON, CHANGES_GPKG = (
    "changes.geojson", "changes_wgs84.geojson", "changes.json", "changes.gpkg")
CHANGE_COLUMNS = (("id", "INTEGER"), ("change", "TEXT"), ("area_px", "INTEGER"),
                  ("area_m2", "REAL"), ("before_mean_prob", "REAL"), ("before_max_prob", "REAL"),
                  ("after_mean_prob", "REAL"), ("after_max_prob", "REAL"))


def _no_progress(iterable, **_):
    return iterable


# ---------------------------------------------------------------- inputs


@dataclass
class ScanMap:
    """A finished scan of one scene."""

    label: str  # what the user called it: "BEFORE", "AFTER", or the path given
    given: Path  # the scene or the scan folder given
    probability: Path
    scene: Path | None  # the scene scanned, when known and still there
    threshold: float | None  # SLIDEWATCH_THRESHOLD of the map
    time: dt.datetime | None = None  # acquisition time, when known
    time_source: str | None = None  # the tag (or option) it came from
    scanned: bool = False  # scanned by this run


def _scan_folder(path: Path, label: str) -> tuple[Path, Path | None, float | None]:
    """The probability map of a scan output folder, its scene (from the map's SLIDEWATCH_SCAN
    tag, when the file is still there) and its threshold."""
    maps = sorted(p for p in path.iterdir() if p.name.endswith(PROBABILITY_SUFFIX)
                  and not p.name.startswith("."))
    if len(maps) != 1:
        what = "no" if not maps else f"{len(maps)}"
        raise DataError(f"{path}: {what} *{PROBABILITY_SUFFIX} in the folder ({label}); give a "
                        f"scene, or the output folder of a scan of one scene")
    with raster.open_raster(maps[0]) as ds:
        tags = ds.tags()
    scene = None
    try:
        scene = Path(json.loads(tags.get("SLIDEWATCH_SCAN", "{}")).get("scene") or "")
    except (ValueError, AttributeError):
        scene = None
    if scene is not None and (not str(scene) or str(scene) == "." or not scene.is_file()):
        scene = None
    threshold = None
    try:
        threshold = float(tags["SLIDEWATCH_THRESHOLD"])
    except (KeyError, ValueError):
        pass
    return maps[0], scene, threshold


def scan_folder_scene(path: str | Path, label: str | None = None) -> Path | None:
    """The scene that the scan in folder ``path`` scanned, when it is still there."""
    return _scan_folder(Path(path), label or str(path))[1]


def _bounds_in(path: Path, crs) -> tuple[object, tuple[float, float, float, float]]:
    """The raster's CRS and its bounds in ``crs`` (its own when ``crs`` is None)."""
    from rasterio.warp import transform_bounds

    with raster.open_raster(path) as ds:
        own, b = ds.crs, ds.bounds
        if crs is None or own is None or own == crs:
            return own, tuple(b)
        return own, tuple(transform_bounds(own, crs, *b, densify_pts=21))


def check_overlap(paths: Sequence[Path], names: Sequence[str]) -> None:
    """A DataError when a raster does not overlap the last one (or one has a CRS and the other
    not, or two without CRS differ in size)."""
    ref, ref_name = paths[-1], names[-1]
    with raster.open_raster(ref) as ds:
        crs, shape = ds.crs, (ds.height, ds.width)
    _, (l0, b0, r0, t0) = _bounds_in(ref, crs)
    for p, name in zip(paths[:-1], names[:-1], strict=True):
        own, (l1, b1, r1, t1) = _bounds_in(p, crs)
        if (own is None) != (crs is None):
            raise DataError(f"{p}: {name} has {'no' if own is None else 'a'} CRS and {ref_name} "
                            f"{'has one' if own is None else 'has none'}; both need one, or "
                            f"neither with the same size")
        if own is None:
            with raster.open_raster(p) as ds:
                if (ds.height, ds.width) != shape:
                    raise DataError(f"{p}: {name} ({ds.width}x{ds.height}) and {ref_name} "
                                    f"({shape[1]}x{shape[0]}) have no CRS and differ in size: "
                                    f"cannot put them on one grid")
            continue
        if min(r0, r1) <= max(l0, l1) or min(t0, t1) <= max(b0, b1):
            raise DataError(f"{p}: {name} does not overlap {ref_name} ({ref}); they must show "
                            f"the same area")


def resolve_inputs(given: Sequence[str | Path], labels: Sequence[str], model_dir, out: Path,
                   scan_options: dict, *, subfolders: Sequence[str] | None = None,
                   progress: Callable = _no_progress) -> tuple[list[ScanMap], list[str]]:
    """Every input as a finished scan: scan folders as they are, scenes scanned with
    ``model_dir`` into ``out/<subfolder>`` (``scan_options``: the scan's keyword arguments).
    Overlap is checked before anything is scanned. Returns the maps and the scans' warnings."""
    paths = [Path(p) for p in given]
    for p, label in zip(paths, labels, strict=True):
        if not p.exists():
            raise DataError(f"{p}: {label}: no such file or folder")
    folders = [_scan_folder(p, label) if p.is_dir() else None
               for p, label in zip(paths, labels, strict=True)]
    scenes = [p for p, f in zip(paths, folders, strict=True) if f is None]
    if scenes and model_dir is None:
        raise ConfigError(f"--model: needed to scan {scenes[0]} (or give the output folder of "
                          f"a finished scan)")
    check_overlap([f[0] if f else p for p, f in zip(paths, folders, strict=True)], labels)
    maps, warnings = [], []
    subs = list(subfolders or [str(k) for k in range(len(paths))])
    for p, label, f, sub in zip(paths, labels, folders, subs, strict=True):
        if f is not None:
            maps.append(ScanMap(label, p, f[0], f[1], f[2]))
            continue
        from slidewatch.scan.run import scan

        summary = scan(model_dir, [p], out / sub, progress=progress, **scan_options)
        warnings += summary.warnings
        r = summary.scenes[0]
        threshold = _threshold_tag(r.probability)
        maps.append(ScanMap(label, p, r.probability, p, threshold, scanned=True))
    return maps, warnings


def _threshold_tag(path: Path) -> float | None:
    with raster.open_raster(path) as ds:
        value = ds.tags().get("SLIDEWATCH_THRESHOLD")
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"--threshold: must be between 0 and 1, got {threshold}")


def choose_threshold(maps: Sequence[ScanMap], threshold: float | None) -> tuple[float,
                                                                                   list[str]]:
    """``threshold``, else the scans' (the last map's when they differ, with a warning)."""
    if threshold is not None:
        check_threshold(threshold)
        return float(threshold), []
    known = [(m.label, m.threshold) for m in maps if m.threshold is not None]
    if not known:
        raise DataError(f"{maps[-1].probability}: no SLIDEWATCH_THRESHOLD tag; give --threshold")
    values = {t for _, t in known}
    warnings = []
    if len(values) > 1:
        listed = ", ".join(f"{label} {t:g}" for label, t in known)
        warnings.append(f"the scans have different thresholds ({listed}); using "
                        f"{known[-1][1]:g} (--threshold to choose)")
    return float(known[-1][1]), warnings


# ---------------------------------------------------------------- one grid


def raster_grid(path: Path) -> TargetGrid:
    with raster.open_raster(path) as ds:
        return TargetGrid(ds.crs, ds.transform, ds.width, ds.height)


def map_on_grid(path: Path, grid: TargetGrid) -> np.ndarray:
    """A probability map on ``grid`` as float32, NaN where it has no data (warped bilinearly
    when its grid differs)."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    with raster.gdal_env(), raster.open_raster(path) as ds:
        own = TargetGrid(ds.crs, ds.transform, ds.width, ds.height)
        if own.same_as(grid) or (ds.crs is None and grid.crs is None
                                 and (ds.height, ds.width) == (grid.height, grid.width)):
            data = ds.read(1, masked=True).astype(np.float32)
            out = np.ma.filled(data, np.nan)
            out[out == NODATA] = np.nan
            return out
        out = np.full((grid.height, grid.width), np.nan, np.float32)
        src = np.ma.filled(ds.read(1, masked=True).astype(np.float32), np.nan)
        src[src == NODATA] = np.nan
        reproject(src, out, src_transform=ds.transform, src_crs=ds.crs, src_nodata=np.nan,
                  dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan,
                  resampling=Resampling.bilinear)
        return out


def crop_grid(grid: TargetGrid, size: int = SHIFT_CROP) -> TargetGrid:
    """The central ``size x size`` (at most) part of ``grid``."""
    from affine import Affine

    h, w = min(size, grid.height), min(size, grid.width)
    r0, c0 = (grid.height - h) // 2, (grid.width - w) // 2
    return TargetGrid(grid.crs, grid.transform @ Affine.translation(c0, r0), w, h)


def grey_on_grid(path: Path, grid: TargetGrid) -> np.ndarray:
    """The mean of a scene's first three image bands on ``grid`` (float32, NaN = nodata)."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    with raster.gdal_env(), raster.open_raster(path) as ds:
        bands = raster.image_bands(ds)[:3]
        out = np.full((len(bands), grid.height, grid.width), np.nan, np.float32)
        if ds.crs is None or grid.crs is None:
            win = raster.Window(0, 0, min(ds.width, grid.width), min(ds.height, grid.height))
            data = ds.read(bands, window=win, masked=True).astype(np.float32)
            out[:, :data.shape[1], :data.shape[2]] = np.ma.filled(data, np.nan)
        else:
            for k, b in enumerate(bands):
                src = np.ma.filled(ds.read(b, masked=True).astype(np.float32), np.nan)
                reproject(src, out[k], src_transform=ds.transform, src_crs=ds.crs,
                          src_nodata=np.nan, dst_transform=grid.transform, dst_crs=grid.crs,
                          dst_nodata=np.nan, resampling=Resampling.bilinear)
    return out.mean(axis=0)


# ---------------------------------------------------------------- co-registration


@dataclass(frozen=True)
class Shift:
    """How far ``moving`` lies from ``fixed`` in pixels (rows down, columns right): a feature
    at (r, c) in ``fixed`` is at (r + dy, c + dx) in ``moving``."""

    dy: float
    dx: float
    peak: float  # the correlation peak (1: a pure translation)
    ratio: float  # the peak over the surface's RMS
    source: str  # "scenes" or "probability maps"

    @property
    def pixels(self) -> float:
        return math.hypot(self.dy, self.dx)

    @property
    def clear(self) -> bool:
        return self.ratio >= MIN_PEAK_RATIO

    def to_json(self, resolution: float | None = None) -> dict:
        out = {"dy_px": round(self.dy, 3), "dx_px": round(self.dx, 3),
               "shift_px": round(self.pixels, 3), "peak": round(self.peak, 4),
               "peak_ratio": round(self.ratio, 2), "clear": self.clear, "source": self.source}
        if resolution is not None:
            out["shift_m"] = round(self.pixels * resolution, 3)
        return out


def _subpixel(values: np.ndarray, i: int) -> float:
    """Parabolic refinement of a peak at ``i`` of a 1-D cyclic profile."""
    a, b, c = values[i - 1], values[i], values[(i + 1) % len(values)]
    den = a - 2 * b + c
    return float(0.5 * (a - c) / den) if den < 0 else 0.0


def phase_shift(fixed: np.ndarray, moving: np.ndarray, source: str = "scenes") -> Shift | None:
    """The translation of ``moving`` against ``fixed`` by phase correlation (NaN = no data,
    filled with the image mean); None when either image is flat or has no data."""
    if fixed.shape != moving.shape or min(fixed.shape) < 8:
        return None
    ims = []
    for im in (fixed, moving):
        ok = np.isfinite(im)
        if ok.sum() < 64:
            return None
        im = np.where(ok, im, np.nanmean(im[ok])).astype(np.float64)
        im -= im.mean()
        if not np.any(im):
            return None
        ims.append(im * np.outer(np.hanning(im.shape[0]), np.hanning(im.shape[1])))
    f0, f1 = np.fft.fft2(ims[0]), np.fft.fft2(ims[1])
    cross = f1 * np.conj(f0)
    cross /= np.maximum(np.abs(cross), 1e-12)
    surface = np.real(np.fft.ifft2(cross))
    r, c = np.unravel_index(int(np.argmax(surface)), surface.shape)
    peak = float(surface[r, c])
    rms = float(np.sqrt(np.mean(surface ** 2)))
    dy = r + _subpixel(surface[:, c], r)
    dx = c + _subpixel(surface[r, :], c)
    h, w = surface.shape
    dy = dy - h if dy > h / 2 else dy
    dx = dx - w if dx > w / 2 else dx
    return Shift(float(dy), float(dx), peak, peak / rms if rms > 0 else 0.0, source)


def estimate_shift(fixed: ScanMap, moving: ScanMap, grid: TargetGrid) -> Shift | None:
    """The shift of ``moving`` against ``fixed`` on the central crop of ``grid``: from the
    scenes when both are known, else from the probability maps."""
    crop = crop_grid(grid)
    if fixed.scene is not None and moving.scene is not None:
        return phase_shift(grey_on_grid(fixed.scene, crop), grey_on_grid(moving.scene, crop))
    return phase_shift(map_on_grid(fixed.probability, crop),
                       map_on_grid(moving.probability, crop), "probability maps")


def shift_warning(shift: Shift | None, fixed: ScanMap, moving: ScanMap,
                  resolution: float | None) -> str | None:
    if shift is None or not shift.clear or shift.pixels <= MAX_SHIFT_PX:
        return None
    metres = f", {shift.pixels * resolution:.3g} m" if resolution else ""
    return (f"{moving.given}: {moving.label} is shifted by {shift.pixels:.1f} px{metres} "
            f"(rows {shift.dy:+.1f}, columns {shift.dx:+.1f}) against {fixed.label} (phase "
            f"correlation of the {shift.source}): the images are not co-registered, so a "
            f"landslide can look new and gone at once; co-register them first")


# ---------------------------------------------------------------- detections and labels


def label_detections(prob: np.ndarray, threshold: float, valid: np.ndarray
                     ) -> tuple[np.ndarray, int]:
    """4-connected areas at or above ``threshold`` on ``valid`` pixels: (labels, count)."""
    from scipy import ndimage

    hit = valid & (prob >= threshold)
    labels, n = ndimage.label(hit, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    return labels.astype(np.int32), int(n)


def region_stats(labels: np.ndarray, n: int, prob: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per label 1..n: pixel count, mean and max of ``prob`` over its finite pixels (NaN when
    none), and the count of finite pixels."""
    flat = labels.ravel()
    p = prob.ravel()
    ok = np.isfinite(p) & (flat > 0)
    count = np.bincount(flat, minlength=n + 1)[1:]
    seen = np.bincount(flat[ok], minlength=n + 1)[1:]
    total = np.bincount(flat[ok], weights=p[ok].astype(np.float64), minlength=n + 1)[1:]
    top = np.full(n + 1, -np.inf)
    np.maximum.at(top, flat[ok], p[ok])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(seen > 0, total / np.maximum(seen, 1), np.nan)
    return count, mean, np.where(seen > 0, top[1:], np.nan), seen


def polygons(labels: np.ndarray, transform=None) -> dict[int, object]:
    """The shapely geometry of each label (pixel coordinates, or map ones with ``transform``)."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely import union_all
    from shapely.geometry import shape

    t = transform if transform is not None else Affine.identity()
    parts: dict[int, list] = {}
    for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=t):
        parts.setdefault(int(value), []).append(shape(geom))
    return {k: v[0] if len(v) == 1 else union_all(v) for k, v in parts.items()}


@dataclass
class Change:
    change: str  # "new", "persisting" or "gone"
    geometry: object  # shapely, in the grid's coordinates
    area_px: int
    before_mean: float | None
    before_max: float | None
    after_mean: float | None
    after_max: float | None


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def classify_changes(before: np.ndarray, after: np.ndarray, threshold: float,
                     transform=None) -> list[Change]:
    """Detections new, persisting or gone between two probability maps on one grid (NaN = no
    data; see the module doc). Geometries in map coordinates with ``transform``."""
    if before.shape != after.shape:
        raise ValueError(f"maps of different shapes {before.shape} and {after.shape}")
    valid = np.isfinite(before) & np.isfinite(after)
    lb, nb = label_detections(before, threshold, valid)
    la, na = label_detections(after, threshold, valid)
    both = (lb > 0) & (la > 0)
    pairs = np.unique(np.stack([la[both], lb[both]]), axis=1) if both.any() else np.zeros((2, 0),
                                                                                       int)
    after_linked = set(pairs[0].tolist())
    before_linked = set(pairs[1].tolist())
    changes = []
    geoms_a, geoms_b = polygons(la, transform), polygons(lb, transform)
    for labels, n, geoms, linked, kind in ((la, na, geoms_a, after_linked, None),
                                           (lb, nb, geoms_b, before_linked, "gone")):
        count, _, _, _ = region_stats(labels, n, after)
        _, b_mean, b_max, _ = region_stats(labels, n, before)
        _, a_mean, a_max, _ = region_stats(labels, n, after)
        for k in range(1, n + 1):
            if kind == "gone" and k in linked:
                continue  # already reported as persisting
            label = kind or ("persisting" if k in linked else "new")
            changes.append(Change(label, geoms[k], int(count[k - 1]), _num(b_mean[k - 1]),
                                  _num(b_max[k - 1]), _num(a_mean[k - 1]), _num(a_max[k - 1])))
    return changes


# ---------------------------------------------------------------- files


def crs_member(crs) -> dict:
    epsg = crs.to_epsg() if crs is not None else None
    if epsg is None:
        return {}
    return {"crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}}


def write_features(out: Path, name: str, wgs84_name: str, grid: TargetGrid,
                   features: list[tuple[object, dict]]) -> list[Path]:
    """``features`` ((shapely geometry in the grid's coordinates, properties)) as GeoJSON in
    the grid's CRS and, when it has one that reaches WGS84, as RFC 7946 lon/lat; atomically."""
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping

    def collection(feats, head):
        body = [{"type": "Feature", "id": props["id"], "properties": props, "geometry": g}
                for g, props in feats]
        return json.dumps({"type": "FeatureCollection", **head, "features": body}) + "\n"

    native = [(mapping(g), p) for g, p in features]
    written = [out / name]
    atomic_write_text(out / name, collection(native, crs_member(grid.crs)))
    if grid.crs is not None:
        try:
            wgs = [(transform_geom(grid.crs, "EPSG:4326", g), p) for g, p in native]
        except Exception as exc:  # noqa: BLE001 - rasterio/GDAL raise several types here
            raise DataError(f"{out / wgs84_name}: cannot take the detections to WGS84 "
                            f"({raster.one_line(exc)})") from None
        atomic_write_text(out / wgs84_name, collection(wgs, {}))
        written.append(out / wgs84_name)
    return written


def write_gpkg(path: Path, table: str, grid: TargetGrid, features: list[tuple[object, dict]],
               columns: Sequence[tuple[str, str]], description: str) -> Path:
    """``features`` as one MultiPolygon layer of a GeoPackage in the grid's CRS (pixel
    coordinates: srs id -1), through :mod:`slidewatch.data.gpkg`; values that are lists or
    dicts are stored as JSON text. Atomic."""
    from slidewatch.data import gpkg
    from slidewatch.data.reviews import multi

    srs = gpkg.srs_for(grid.crs)
    names = [n for n, _ in columns]
    with atomic_path(path) as tmp:
        conn = gpkg.connect(tmp, must_exist=False)
        try:
            gpkg.create(conn, table, columns, srs, "MULTIPOLYGON", description)
            cols = ", ".join(f'"{n}"' for n in names)
            marks = ", ".join("?" * (len(names) + 1))
            with gpkg.transaction(conn):
                for geom, props in features:
                    values = [json.dumps(v) if isinstance(v, (list, dict)) else v
                              for v in (props.get(n) for n in names)]
                    conn.execute(f'INSERT INTO "{table}" (geom, {cols}) VALUES ({marks})',
                                 (gpkg.encode(multi(geom), srs.srs_id), *values))
                gpkg.update_extent(conn, table)
        finally:
            conn.close()
    return path


def area_m2(grid: TargetGrid) -> float | None:
    from slidewatch.data.geometry import metric_pixel_area_m2

    return None if grid.crs is None else metric_pixel_area_m2(grid.transform, grid.crs)


def describe_time(m: ScanMap) -> dict:
    return {"path": str(m.given), "probability": str(m.probability),
            "scene": str(m.scene) if m.scene else None, "scanned": m.scanned,
            "time": tag_names.iso(m.time) if m.time else None, "time_source": m.time_source,
            "threshold": m.threshold}


def map_time(m: ScanMap) -> None:
    """Fill ``m.time`` from its scene's tags (when the scene is known)."""
    if m.time is None and m.scene is not None:
        m.time, m.time_source = tag_names.acquisition_time(m.scene)


@dataclass
class ChangeSummary:
    out: Path
    before: ScanMap
    after: ScanMap
    threshold: float
    grid: TargetGrid
    counts: dict[str, int]
    shift: Shift | None
    files: list[Path]
    warnings: list[str] = field(default_factory=list)


def changes(before: str | Path, after: str | Path, out: str | Path, *, model_dir=None,
            threshold: float | None = None, scan_options: dict | None = None,
            progress: Callable = _no_progress) -> ChangeSummary:
    """Compare two scans of one area (see the module doc); scenes are scanned first."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    check_threshold(threshold)
    maps, warnings = resolve_inputs([before, after], ["BEFORE", "AFTER"], model_dir, out,
                                    dict(scan_options or {}), subfolders=["before", "after"],
                                    progress=progress)
    mb, ma = maps
    t, more = choose_threshold(maps, threshold)
    warnings += more
    for m in maps:
        map_time(m)
    if mb.time and ma.time and mb.time > ma.time:
        warnings.append(f"BEFORE ({mb.time:%Y-%m-%d}) is later than AFTER ({ma.time:%Y-%m-%d}):"
                        f" new and gone are swapped")
    grid = raster_grid(ma.probability)
    pa = map_on_grid(ma.probability, grid)
    pb = map_on_grid(mb.probability, grid)
    if not (np.isfinite(pa) & np.isfinite(pb)).any():
        raise DataError(f"{mb.given}: BEFORE and AFTER share no pixel with data on one grid; "
                        f"they do not overlap")
    shift = estimate_shift(mb, ma, grid)
    res = None if grid.crs is None or grid.crs.is_geographic else grid.resolution
    w = shift_warning(shift, mb, ma, res)
    if w:
        warnings.append(w)
    found = classify_changes(pb, pa, t, None if grid.crs is None and grid.transform.is_identity
                             else grid.transform)
    order = {"new": 0, "persisting": 1, "gone": 2}
    found.sort(key=lambda c: (order[c.change], -c.area_px))
    m2 = area_m2(grid)
    feats = []
    for i, c in enumerate(found, start=1):
        feats.append((c.geometry, {
            "id": i, "change": c.change, "area_px": c.area_px,
            "area_m2": None if m2 is None else round(c.area_px * m2, 3),
            "before_mean_prob": c.before_mean, "before_max_prob": c.before_max,
            "after_mean_prob": c.after_mean, "after_max_prob": c.after_max}))
    out.mkdir(parents=True, exist_ok=True)
    files = write_features(out, CHANGES_GEOJSON, CHANGES_WGS84, grid, feats)
    files.append(write_gpkg(out / CHANGES_GPKG, "changes", grid, feats, CHANGE_COLUMNS,
                            f"slidewatch changes {mb.given.name} -> {ma.given.name}"))
    counts = {k: sum(c.change == k for c in found) for k in order}
    doc = {"before": describe_time(mb), "after": describe_time(ma), "threshold": t,
           "grid": grid.to_json() if grid.crs is not None else {
               "crs": None, "width": grid.width, "height": grid.height},
           "shift": shift.to_json(res) if shift else None, "counts": counts,
           "warnings": warnings, "files": [p.name for p in files]}
    atomic_write_text(out / CHANGES_JSON, json.dumps(doc, indent=2) + "\n")
    return ChangeSummary(out, mb, ma, t, grid, counts, shift, [*files, out / CHANGES_JSON],
                         warnings)
