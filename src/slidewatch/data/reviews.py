"""Reviews of detections in a GeoPackage, and training tiles made from them.

The store (one GeoPackage per scanned scene, :mod:`slidewatch.data.gpkg`): feature table
``reviews`` (MULTIPOLYGON in the scene's CRS, or pixel column/row with srs id -1 for a scene
shown without one) with one row per scan detection (``origin`` ``scan``, ``detection_id`` the
scan's id) and per polygon an analyst drew (``origin`` ``drawn``), and the columns
``status`` (``pending``, ``accepted``, ``rejected``, ``redrawn``, ``added``, ``deleted``),
``note``, ``reviewer``, ``reviewed_at`` (UTC), ``version`` (1 when made, +1 per change),
``area_m2``, ``area_px``, ``mean_prob``, ``max_prob``, ``slope_mean_deg``, ``slope_max_deg``
(slope in degrees under the polygon when the scan had a DEM, else null; a store made before
these two columns existed reads them as null and is not given them); ``review_log``
(attributes: every change with its version, reviewer, time, status, note and geometry as WKT);
``slidewatch_info`` (attributes: scene, job, model, threshold).

Edits are compare-and-set: :func:`update` takes the version the reviewer saw and refuses a
stale one with :class:`ReviewConflict` (inside one ``BEGIN IMMEDIATE`` transaction), so two
reviewers of the same detection never overwrite each other silently.

:func:`tiles_from_reviews` (``slidewatch data from-reviews``): accepted, redrawn and added
polygons become landslide tiles with masks, rejected scan detections landslide-free tiles
(hard negatives), in the class-folder layout training reads.
"""

from __future__ import annotations

import csv
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidewatch.data import gpkg
from slidewatch.errors import ConfigError, DataError, SlidewatchError
from slidewatch.io_utils import atomic_dir, atomic_path

TABLE, LOG_TABLE, INFO_TABLE = "reviews", "review_log", "slidewatch_info"
COLUMNS = (("detection_id", "INTEGER"), ("origin", "TEXT"), ("status", "TEXT"),
           ("note", "TEXT"), ("reviewer", "TEXT"), ("reviewed_at", "DATETIME"),
           ("version", "INTEGER"), ("area_m2", "REAL"), ("area_px", "REAL"),
           ("mean_prob", "REAL"), ("max_prob", "REAL"), ("slope_mean_deg", "REAL"),
           ("slope_max_deg", "REAL"))
SLOPE_COLUMNS = ("slope_mean_deg", "slope_max_deg")
STAT_COLUMNS = ("area_m2", "area_px", "mean_prob", "max_prob") + SLOPE_COLUMNS
LOG_COLUMNS = (("fid", "INTEGER"), ("version", "INTEGER"), ("status", "TEXT"), ("note", "TEXT"),
               ("reviewer", "TEXT"), ("reviewed_at", "DATETIME"), ("wkt", "TEXT"))
STATUSES = ("pending", "accepted", "rejected", "redrawn", "added", "deleted")
POSITIVE = ("accepted", "redrawn", "added")
NEGATIVE = ("rejected",)
MAX_NOTE = 2000
MAX_REVIEWER = 100


class ReviewConflict(SlidewatchError):
    """The row changed since the reviewer read it (or is gone): reload and review again."""

    def __init__(self, message: str, current: dict | None = None):
        super().__init__(message)
        self.current = current


@dataclass
class Feature:
    """A row of the store: its geometry (shapely) and its columns."""

    fid: int
    geometry: object
    props: dict


# ---------------------------------------------------------------- the store


def create_store(path: str | Path, crs, features: Iterable[tuple[object, dict]],
                 info: dict[str, str]) -> Path:
    """A new store at ``path`` (atomically: built beside it, then renamed) holding
    ``features``: (shapely geometry in ``crs``'s coordinates, scan properties ``id``,
    ``area_px``, ``area_m2``, ``mean_prob``, ``max_prob``, and optionally ``slope_mean_deg``,
    ``slope_max_deg``), each ``pending`` at version 1.
    ``crs`` None: pixel coordinates (srs id -1)."""
    path = Path(path)
    srs = gpkg.srs_for(crs)
    with atomic_path(path) as tmp:
        conn = gpkg.connect(tmp, must_exist=False)
        try:
            gpkg.create(conn, TABLE, COLUMNS, srs, "MULTIPOLYGON",
                        f"slidewatch reviews of {info.get('scene', 'a scene')}")
            gpkg.create_attributes(conn, LOG_TABLE, LOG_COLUMNS, "every review change")
            gpkg.create_attributes(conn, INFO_TABLE, (("key", "TEXT"), ("value", "TEXT")),
                                   "what was scanned")
            with gpkg.transaction(conn):
                conn.executemany(f"INSERT INTO {INFO_TABLE} (key, value) VALUES (?, ?)",
                                 sorted((str(k), str(v)) for k, v in info.items()))
                for geom, p in features:
                    conn.execute(
                        f"INSERT INTO {TABLE} (geom, detection_id, origin, status, version, "
                        f"{', '.join(STAT_COLUMNS)}) "
                        f"VALUES (?, ?, 'scan', 'pending', 1{', ?' * len(STAT_COLUMNS)})",
                        (gpkg.encode(multi(geom), srs.srs_id), p.get("id"),
                         *(p.get(k) for k in STAT_COLUMNS)))
                gpkg.update_extent(conn, TABLE)
        finally:
            conn.close()
    return path


def multi(geom):
    """Polygons as MultiPolygons (the layer's type)."""
    from shapely.geometry import MultiPolygon

    return MultiPolygon([geom]) if geom.geom_type == "Polygon" else geom


def open_store(path: str | Path) -> sqlite3.Connection:
    conn = gpkg.connect(path)
    kinds = gpkg.tables(conn)
    if kinds.get(TABLE) != "features":
        conn.close()
        raise DataError(f"{path}: GeoPackage has no '{TABLE}' feature table (not a slidewatch "
                        f"review store)")
    return conn


def _feature(row: sqlite3.Row) -> Feature:
    props = {k: row[k] for k in row.keys() if k not in ("fid", "geom")}
    for k in SLOPE_COLUMNS:  # a store made before the slope columns: null
        props.setdefault(k, None)
    return Feature(int(row["fid"]), gpkg.decode(row["geom"]), props)


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")}


def read_store(path: str | Path) -> tuple[gpkg.Srs, list[Feature], dict[str, str]]:
    """The store's spatial reference, its rows (by fid) and its info."""
    conn = open_store(path)
    try:
        srs = gpkg.table_srs(conn, TABLE)
        rows = [_feature(r) for r in conn.execute(f"SELECT * FROM {TABLE} ORDER BY fid")]
        info = {}
        if gpkg.tables(conn).get(INFO_TABLE) == "attributes":
            info = {r[0]: r[1] for r in conn.execute(f"SELECT key, value FROM {INFO_TABLE}")}
    finally:
        conn.close()
    return srs, rows, info


def read_feature(path: str | Path, fid: int) -> Feature | None:
    conn = open_store(path)
    try:
        row = conn.execute(f"SELECT * FROM {TABLE} WHERE fid = ?", (fid,)).fetchone()
    finally:
        conn.close()
    return None if row is None else _feature(row)


def _clean(text: str | None, limit: int, what: str) -> str | None:
    if text is None:
        return None
    text = str(text).strip()
    if len(text) > limit:
        raise ConfigError(f"{what}: at most {limit} characters, got {len(text)}")
    return text or None


def _log(conn: sqlite3.Connection, fid: int, row: dict, geom) -> None:
    conn.execute(f"INSERT INTO {LOG_TABLE} (fid, version, status, note, reviewer, reviewed_at, "
                 f"wkt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (fid, row["version"], row["status"], row["note"], row["reviewer"],
                  row["reviewed_at"], None if geom is None else geom.wkt))


def update(path: str | Path, fid: int, *, version: int, status: str, reviewer: str,
           note: str | None = None, geometry=None, stats: dict | None = None) -> Feature:
    """Set a row's status (and note; and geometry with ``stats`` for ``redrawn``) if its
    version is still ``version``; the version goes up by one. :class:`ReviewConflict` when
    another review came first."""
    if status not in STATUSES:
        raise ConfigError(f"status: one of {', '.join(STATUSES)}, got {status!r}")
    reviewer = _clean(reviewer, MAX_REVIEWER, "reviewer")
    if not reviewer:
        raise ConfigError("reviewer: give a name")
    note = _clean(note, MAX_NOTE, "note")
    if status == "redrawn" and geometry is None:
        raise ConfigError("status redrawn: give the new geometry")
    conn = open_store(path)
    try:
        srs = gpkg.table_srs(conn, TABLE)
        with gpkg.transaction(conn):
            row = conn.execute(f"SELECT * FROM {TABLE} WHERE fid = ?", (fid,)).fetchone()
            if row is None:
                raise ReviewConflict(f"detection {fid}: no such detection (deleted?)")
            current = _feature(row)
            if row["origin"] == "scan" and status in ("added", "deleted"):
                raise ConfigError(f"status {status}: only for polygons drawn by a reviewer")
            if row["origin"] == "drawn" and status in ("redrawn",):
                status = "added"  # a drawn polygon redrawn is still an added one
            if row["version"] != version:
                who = current.props.get("reviewer") or "someone"
                raise ReviewConflict(
                    f"detection {fid} was changed by {who} at "
                    f"{current.props.get('reviewed_at')} (now version {row['version']}, "
                    f"status {row['status']}); you edited version {version}: reload it and "
                    f"review again", {"fid": fid, **current.props})
            sets = {"status": status, "note": note, "reviewer": reviewer,
                    "reviewed_at": gpkg.timestamp(), "version": row["version"] + 1}
            if geometry is not None:
                sets["geom"] = gpkg.encode(multi(geometry), srs.srs_id)
                have = _columns(conn)
                sets.update({k: v for k, v in (stats or {}).items()
                             if k in STAT_COLUMNS and k in have})
            cols = ", ".join(f"{k} = ?" for k in sets)
            conn.execute(f"UPDATE {TABLE} SET {cols} WHERE fid = ?", (*sets.values(), fid))
            _log(conn, fid, sets, geometry)
            if geometry is not None:
                gpkg.update_extent(conn, TABLE)
            new = conn.execute(f"SELECT * FROM {TABLE} WHERE fid = ?", (fid,)).fetchone()
    finally:
        conn.close()
    return _feature(new)


def add(path: str | Path, geometry, *, reviewer: str, note: str | None = None,
        stats: dict | None = None) -> Feature:
    """A polygon the scan missed, drawn by ``reviewer``: status ``added``, version 1."""
    reviewer = _clean(reviewer, MAX_REVIEWER, "reviewer")
    if not reviewer:
        raise ConfigError("reviewer: give a name")
    note = _clean(note, MAX_NOTE, "note")
    stats = stats or {}
    conn = open_store(path)
    try:
        srs = gpkg.table_srs(conn, TABLE)
        with gpkg.transaction(conn):
            when = gpkg.timestamp()
            have = _columns(conn)
            cols = [k for k in STAT_COLUMNS if k in have]
            cur = conn.execute(
                f"INSERT INTO {TABLE} (geom, detection_id, origin, status, note, reviewer, "
                f"reviewed_at, version{''.join(', ' + k for k in cols)}) "
                f"VALUES (?, NULL, 'drawn', 'added', ?, ?, ?, 1{', ?' * len(cols)})",
                (gpkg.encode(multi(geometry), srs.srs_id), note, reviewer, when,
                 *(stats.get(k) for k in cols)))
            fid = int(cur.lastrowid)
            _log(conn, fid, {"version": 1, "status": "added", "note": note,
                             "reviewer": reviewer, "reviewed_at": when}, geometry)
            gpkg.update_extent(conn, TABLE)
            new = conn.execute(f"SELECT * FROM {TABLE} WHERE fid = ?", (fid,)).fetchone()
    finally:
        conn.close()
    return _feature(new)


# ---------------------------------------------------------------- training tiles

TILES_CSV = "tiles.csv"  # the class-folder layout's table (data/tiling.py)
BASE_COLUMNS = ("path", "label", "source_image", "row", "col", "landslide_fraction", "region")
REVIEW_COLUMNS = ("review_fid", "review_status", "reviewer", "review_note")
MASKS = "masks"


@dataclass
class ReviewTiles:
    out_dir: Path
    positives: int = 0
    negatives: int = 0
    skipped: list[str] = field(default_factory=list)  # why a reviewed polygon gave no tile

    def summary(self) -> str:
        lines = [f"{self.positives} landslide tiles (with masks), {self.negatives} landslide-free "
                 f"tiles (rejected detections) -> {self.out_dir / TILES_CSV}"]
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def _to_pixels(geom, srs: gpkg.Srs, ds):
    """A store geometry in the scene's pixel coordinates (col, row)."""
    from rasterio.warp import transform_geom
    from shapely.affinity import affine_transform
    from shapely.geometry import mapping, shape

    if srs.srs_id in (-1, 0):
        return geom
    if ds.crs is None:
        raise DataError(f"{ds.name}: has no CRS but the reviews are in {srs.name}; give the "
                        f"scene that was scanned")
    crs = srs.crs
    if crs != ds.crs:
        geom = shape(transform_geom(crs, ds.crs, mapping(geom)))
    inv = ~ds.transform
    return affine_transform(geom, (inv.a, inv.b, inv.d, inv.e, inv.c, inv.f))


def _window(geom, size: int, width: int, height: int, grow: float = 1.25):
    """Square window (col0, row0, side) around a pixel-space geometry, inside the scene."""
    x0, y0, x1, y1 = geom.bounds
    side = max(size, int(math.ceil(max(x1 - x0, y1 - y0) * grow)))
    side = min(side, width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    c0 = int(min(max(round(cx - side / 2), 0), width - side))
    r0 = int(min(max(round(cy - side / 2), 0), height - side))
    return c0, r0, side


def tiles_from_reviews(store: str | Path, scene: str | Path, out: str | Path, *,
                       size: int = 128, region: str | None = None,
                       overwrite: bool = False, min_valid: float = 0.5) -> ReviewTiles:
    """Class folders from reviews (see the module doc): ``landslide/`` tiles around each
    accepted, redrawn or added polygon with ``masks/<stem>.png`` (every positive polygon in the
    tile, 255 inside), ``non_landslide/`` tiles around each rejected scan detection that do not
    touch any positive polygon, and ``tiles.csv`` (the tiling columns + the review's fid,
    status, reviewer and note). Tiles are ``size`` pixels square, larger for a polygon that
    does not fit (1.25 x its extent), moved inside the scene, in the scene's CRS and dtype
    (GeoTIFF; plain 8-bit RGB without a CRS: PNG). Pending and deleted rows are left out; a
    tile with less than ``min_valid`` valid pixels (the nodata rule) is skipped."""
    from rasterio.features import rasterize
    from rasterio.transform import Affine
    from rasterio.windows import Window
    from shapely.geometry import box

    from slidewatch.data import raster
    from slidewatch.data.readers import write_mask, write_tile

    if size < 8:
        raise ConfigError(f"--size: at least 8 pixels, got {size}")
    store, scene, out = Path(store), Path(scene), Path(out)
    srs, rows, _ = read_store(store)
    reviewed = [f for f in rows if f.props["status"] in POSITIVE + NEGATIVE]
    if not reviewed:
        raise DataError(f"{store}: no accepted, redrawn, added or rejected polygons yet")
    region = region or scene.stem
    result = ReviewTiles(out)
    with raster.open_scene(scene) as ds:
        bands = raster.image_bands(ds)
        pix = [(f, _to_pixels(f.geometry, srs, ds)) for f in reviewed]
        positives = [g for f, g in pix if f.props["status"] in POSITIVE]
        scene_box = box(0, 0, ds.width, ds.height)
        if not any(g.intersects(scene_box) for _, g in pix):
            raise DataError(f"{store}: no reviewed polygon lies on {scene}; give the scene that "
                            f"was scanned")
        if size > min(ds.width, ds.height):
            raise ConfigError(f"--size {size}: larger than {scene} "
                              f"({ds.width}x{ds.height} pixels)")
        seen: set[tuple[str, int, int]] = set()
        with atomic_dir(out, overwrite) as tmp:
            with open(tmp / TILES_CSV, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(BASE_COLUMNS + REVIEW_COLUMNS)
                for f, geom in pix:
                    positive = f.props["status"] in POSITIVE
                    label = "landslide" if positive else "non_landslide"
                    what = f"fid {f.fid} ({f.props['status']})"
                    if not geom.intersects(scene_box):
                        result.skipped.append(f"{what}: outside the scene")
                        continue
                    c0, r0, side = _window(geom, size, ds.width, ds.height)
                    tile_box = box(c0, r0, c0 + side, r0 + side)
                    if not positive and any(p.intersects(tile_box) for p in positives):
                        result.skipped.append(f"{what}: its tile touches a landslide")
                        continue
                    if (label, r0, c0) in seen:
                        result.skipped.append(f"{what}: same tile as another polygon")
                        continue
                    win = Window(c0, r0, side, side)
                    data, ok = raster.read_window(ds, bands, win)
                    if ok is not None and ok.mean() < min_valid:
                        result.skipped.append(f"{what}: mostly nodata")
                        continue
                    seen.add((label, r0, c0))
                    name = f"{region}__{scene.stem}__r{r0}_c{c0}"
                    profile = None
                    if ds.crs is not None:
                        profile = {"crs": ds.crs,
                                   "transform": ds.transform @ Affine.translation(c0, r0)}
                    written = write_tile(tmp / label / name, np.moveaxis(data, 0, -1), profile)
                    fraction = 0.0
                    if positive:
                        shift = Affine.translation(c0, r0)
                        inside = [p for p in positives if p.intersects(tile_box)]
                        mask = rasterize([(p, 255) for p in inside], out_shape=(side, side),
                                         transform=shift, dtype="uint8")
                        write_mask(tmp / MASKS / f"{name}.png", mask)
                        fraction = float((mask > 0).mean())
                        result.positives += 1
                    else:
                        result.negatives += 1
                    writer.writerow([written.relative_to(tmp).as_posix(), label,
                                     f"{region}/{scene.stem}", r0, c0, f"{fraction:.6f}",
                                     region, f.fid, f.props["status"],
                                     f.props.get("reviewer") or "", f.props.get("note") or ""])
                if result.positives + result.negatives == 0:
                    raise DataError(f"{store}: no tile could be cut: "
                                    + "; ".join(result.skipped))
    return result
