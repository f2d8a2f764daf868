"""Reviews of a finished scan job as the page sees them.

The store is ``<job out>/<stem>_reviews.gpkg`` (:mod:`slidewatch.data.reviews`), made from the
scan's ``<stem>_detections.geojson`` the first time the job's detections are asked for. The
page speaks GeoJSON in WGS84 longitude/latitude for a georeferenced scene and in pixel
coordinates (column, row) for a plain image; the store keeps the scene's CRS (or pixels).
Statistics of a drawn or redrawn polygon (area, mean and max probability) come from the job's
probability map. A job with a DEM (``dem_path``) also gets each polygon's mean and max slope in
degrees (``slope_mean_deg``, ``slope_max_deg``; :func:`slidewatch.data.terrain.polygon_slopes`
on the scene's pixel grid): the scan's detections when the store is made (a DEM without data
under one is an error), drawn and redrawn polygons when they are saved (null where the DEM has
no data under them, or where the polygon lies outside the scene). Without a DEM both are null.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from slidewatch.data import reviews as store
from slidewatch.errors import ConfigError, DataError
from slidewatch.scan.mosaic import NODATA
from slidewatch.scan.plan import Paths

MAX_VERTICES = 10000
_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(key, threading.Lock())


def paths(out: Path, scene_path: str) -> Paths:
    return Paths.of(out, Path(scene_path).stem)


def store_path(out: Path, scene_path: str) -> Path:
    return out / f"{Path(scene_path).stem}_reviews.gpkg"


def _scene_crs(prob: Path, georeferenced: bool):
    from slidewatch.data import raster

    if not georeferenced:
        return None, None
    with raster.open_raster(prob) as ds:
        return ds.crs, ds.transform


def ensure_store(out: Path, job: dict) -> Path:
    """The job's review store, made from its detections on first use."""
    path = store_path(out, job["scene_path"])
    if path.is_file():
        return path
    with _lock(str(path)):
        if path.is_file():
            return path
        p = paths(out, job["scene_path"])
        if not p.detections.is_file():
            raise DataError(f"job {job['id']}: the scan has no detections file")
        from shapely.geometry import shape

        crs, t = _scene_crs(p.probability, bool(job.get("georeferenced")))
        collection = json.loads(p.detections.read_text(encoding="utf-8"))
        feats = [(shape(f["geometry"]), dict(f.get("properties") or {}))
                 for f in collection.get("features", [])]
        if job.get("dem_path"):
            from slidewatch.data.terrain import polygon_slopes

            slopes = polygon_slopes(job["dem_path"], job["scene_path"],
                                    [_pixels(g, crs, t) for g, _ in feats])
            for (_, props), s in zip(feats, slopes, strict=True):
                props.update(_slope_props(s))
        store.create_store(path, crs, feats, {
            "scene": job.get("scene_label") or job["scene"], "job": job["id"],
            "model": job["model"], "created": job.get("finished") or ""})
    return path


def _pixels(geom, crs, transform):
    """A store geometry in the scene's pixels (unchanged for a store in pixels)."""
    from shapely.affinity import affine_transform

    if crs is None:
        return geom
    inv = ~transform
    return affine_transform(geom, (inv.a, inv.b, inv.d, inv.e, inv.c, inv.f))


def _slope_props(slope: tuple[float, float] | None) -> dict:
    if slope is None:
        return {"slope_mean_deg": None, "slope_max_deg": None}
    return {"slope_mean_deg": round(slope[0], 3), "slope_max_deg": round(slope[1], 3)}


def _slope_stats(geom, job: dict, prob: Path, crs) -> dict:
    """Slope columns of a drawn or redrawn polygon: from the job's DEM, null without one or
    where the DEM has no data under it."""
    if not job.get("dem_path"):
        return {}
    from slidewatch.data.terrain import polygon_slopes

    _, t = _scene_crs(prob, crs is not None)
    try:
        (slope,) = polygon_slopes(job["dem_path"], job["scene_path"], [_pixels(geom, crs, t)])
    except DataError:
        slope = None
    return _slope_props(slope)


# ---------------------------------------------------------------- coordinates


def _to_page(geom, crs):
    """Store coordinates -> page coordinates (WGS84 lon/lat, or pixels unchanged)."""
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping

    if crs is None:
        return mapping(geom)
    return transform_geom(crs, "EPSG:4326", mapping(geom))


def _from_page(geojson: dict, crs):
    """A GeoJSON Polygon/MultiPolygon from the page -> a valid shapely geometry in store
    coordinates; ConfigError when it is not a usable polygon."""
    from rasterio.warp import transform_geom
    from shapely.geometry import shape
    from shapely.validation import make_valid

    if not isinstance(geojson, dict) or geojson.get("type") not in ("Polygon", "MultiPolygon"):
        raise ConfigError("geometry: a GeoJSON Polygon or MultiPolygon")
    try:
        raw = shape(geojson)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ConfigError(f"geometry: not a valid GeoJSON polygon ({exc})") from None
    n = sum(len(p.exterior.coords) for p in getattr(raw, "geoms", [raw]))
    if n > MAX_VERTICES:
        raise ConfigError(f"geometry: at most {MAX_VERTICES} vertices, got {n}")
    coords = np.array([c for p in getattr(raw, "geoms", [raw]) for c in p.exterior.coords])
    if not np.isfinite(coords).all():
        raise ConfigError("geometry: coordinates must be finite numbers")
    if crs is not None:
        if (np.abs(coords[:, 0]) > 180).any() or (np.abs(coords[:, 1]) > 90).any():
            raise ConfigError("geometry: longitude/latitude out of range")
        raw = shape(transform_geom("EPSG:4326", crs, geojson))
    geom = make_valid(raw)
    if geom.geom_type == "GeometryCollection":
        from shapely.geometry import MultiPolygon

        polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        geom = MultiPolygon([p for g in polys for p in getattr(g, "geoms", [g])])
    if geom.is_empty or geom.area <= 0 or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise ConfigError("geometry: the polygon has no area")
    return geom


def _stats(geom, prob: Path, crs) -> dict:
    """area_px, area_m2 (projected CRS in metres only), mean_prob and max_prob of a store
    geometry over the probability map."""
    from rasterio.features import geometry_mask
    from rasterio.windows import Window
    from shapely.affinity import affine_transform

    from slidewatch.data import raster
    from slidewatch.data.geometry import metric_pixel_area_m2

    with raster.open_raster(prob) as ds:
        t = ds.transform
        px = geom
        if crs is not None:
            inv = ~t
            px = affine_transform(geom, (inv.a, inv.b, inv.d, inv.e, inv.c, inv.f))
        x0, y0, x1, y1 = px.bounds
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(ds.width, int(np.ceil(x1))), min(ds.height, int(np.ceil(y1)))
        out = {"area_px": round(float(px.area), 3), "area_m2": None, "mean_prob": None,
               "max_prob": None}
        m2 = metric_pixel_area_m2(t, ds.crs) if crs is not None else None
        if m2 is not None:
            out["area_m2"] = round(float(px.area) * m2, 3)
        if c1 <= c0 or r1 <= r0:
            return out
        win = Window(c0, r0, c1 - c0, r1 - r0)
        values = ds.read(1, window=win)
        from affine import Affine

        inside = geometry_mask([px], out_shape=values.shape, transform=Affine.translation(c0, r0),
                               invert=True, all_touched=False)
        sel = values[inside & (values != NODATA)]
        if sel.size:
            out["mean_prob"] = round(float(sel.mean()), 6)
            out["max_prob"] = round(float(sel.max()), 6)
    return out


# ---------------------------------------------------------------- the page's view


def _props(f: store.Feature) -> dict:
    return {"fid": f.fid, **f.props}


def feature_collection(out: Path, job: dict) -> dict:
    """Every row of the job's store as GeoJSON for the page (``id`` = fid)."""
    path = ensure_store(out, job)
    srs, rows, _ = store.read_store(path)
    crs = srs.crs
    feats = [{"type": "Feature", "id": f.fid, "properties": _props(f),
              "geometry": _to_page(f.geometry, crs)} for f in rows]
    return {"type": "FeatureCollection", "features": feats,
            "coordinates": "lonlat" if crs is not None else "pixels"}


def review(out: Path, job: dict, fid: int, body: dict) -> dict:
    path = ensure_store(out, job)
    srs, _, _ = store.read_store(path)
    crs = srs.crs
    prob = paths(out, job["scene_path"]).probability
    geom, stats = None, None
    if body.get("geometry") is not None:
        geom = _from_page(body["geometry"], crs)
        stats = {**_stats(geom, prob, crs), **_slope_stats(geom, job, prob, crs)}
    status = body.get("status")
    if geom is not None and status in (None, "accepted", "pending"):
        status = "redrawn"
    f = store.update(path, fid, version=int(body["version"]), status=status,
                     reviewer=body.get("reviewer") or "", note=body.get("note"),
                     geometry=geom, stats=stats)
    return {"type": "Feature", "id": f.fid, "properties": _props(f),
            "geometry": _to_page(f.geometry, crs)}


def add(out: Path, job: dict, body: dict) -> dict:
    path = ensure_store(out, job)
    srs, _, _ = store.read_store(path)
    crs = srs.crs
    prob = paths(out, job["scene_path"]).probability
    geom = _from_page(body.get("geometry"), crs)
    f = store.add(path, geom, reviewer=body.get("reviewer") or "", note=body.get("note"),
                  stats={**_stats(geom, prob, crs), **_slope_stats(geom, job, prob, crs)})
    return {"type": "Feature", "id": f.fid, "properties": _props(f),
            "geometry": _to_page(f.geometry, crs)}


def export_geojson(out: Path, job: dict) -> dict:
    """The reviews as a GeoJSON download: RFC 7946 (WGS84) for a georeferenced scene, pixel
    coordinates otherwise; every column as a property."""
    fc = feature_collection(out, job)
    fc["name"] = f"{Path(job['scene_path']).stem}_reviews"
    return fc


def feature_geometry(out: Path, job: dict, fid: int):
    """(store geometry, georeferenced) of one row, or None."""
    path = ensure_store(out, job)
    f = store.read_feature(path, fid)
    if f is None:
        return None
    srs, _, _ = store.read_store(path)
    return f.geometry, srs.crs is not None


def feature_pixels(out: Path, job: dict, fid: int):
    """One row's geometry in the scene's pixel coordinates (col, row), or None."""
    found = feature_geometry(out, job, fid)
    if found is None:
        return None
    geom, georeferenced = found
    if not georeferenced:
        return geom
    crs, t = _scene_crs(paths(out, job["scene_path"]).probability, True)
    return _pixels(geom, crs, t)
