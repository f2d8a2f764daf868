"""Outputs of a finished scan: detection polygons, GeoJSON files and the quick-look PNG.

* :func:`polygonize`: connected areas above a threshold of a probability GeoTIFF, a block row at
  a time; pieces that touch across block rows are joined (union-find), so memory is bounded by
  the areas still open at the current block row.
* :func:`finish`: streams one GeoJSON Feature per area into ``<stem>_detections.geojson`` (scene
  CRS) and ``<stem>_detections_wgs84.geojson`` (EPSG:4326), draws the quick-look, tags the
  probability GeoTIFF, writes it as a Cloud-Optimized GeoTIFF (:func:`mosaic.write_cog`) and
  moves every file to its final name.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from slidewatch.data import raster
from slidewatch.data.geometry import metric_pixel_area_m2
from slidewatch.data.raster import SceneInfo
from slidewatch.data.readers import scale_to_unit
from slidewatch.io_utils import atomic_path, open_output, writing
from slidewatch.scan import mosaic
from slidewatch.scan.mosaic import NODATA, OUT_BLOCK

if TYPE_CHECKING:
    from slidewatch.scan.plan import Paths

QUICKLOOK_MAX = 1024


# ---------------------------------------------------------------- polygons


@dataclass
class Region:
    """One connected (4-neighbour) area, geometry in pixel coordinates (col, row)."""

    geometry: object  # shapely Polygon
    area_px: int
    sum_prob: float
    max_prob: float


class _Groups:
    """Union-find over piece ids; each root keeps its member ids."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}

    def add(self, i: int) -> None:
        self.parent[i] = i
        self.members[i] = [i]

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = sorted((self.find(a), self.find(b)))
        if ra != rb:
            self.parent[rb] = ra
            self.members[ra] += self.members.pop(rb)


def _pieces(hit: np.ndarray, prob: np.ndarray, y0: int):
    """Components of one block row: (geometries, local label raster, count, sum, max)."""
    from affine import Affine
    from rasterio.features import rasterize, shapes
    from shapely.geometry import shape

    at = Affine.translation(0, y0)
    geoms = [shape(g) for g, _ in shapes(hit.view(np.uint8), mask=hit, connectivity=4,
                                          transform=at)]
    if not geoms:
        return [], np.zeros(hit.shape, np.int32), None, None, None
    labels = rasterize(((g, k + 1) for k, g in enumerate(geoms)), out_shape=hit.shape,
                       transform=at, dtype="int32")
    n = len(geoms) + 1
    sel, p = labels[hit], prob[hit]  # only the pixels above the threshold (memory)
    count = np.bincount(sel, minlength=n)
    total = np.bincount(sel, weights=p.astype(np.float64), minlength=n)
    order = np.argsort(sel, kind="stable")
    first = np.searchsorted(sel[order], np.arange(1, n))  # every label has >= 1 pixel
    top = np.concatenate([[-np.inf], np.maximum.reduceat(p[order], first)])
    return geoms, labels, count, total, top


def polygonize(path: Path, threshold: float, chunk_rows: int = OUT_BLOCK) -> Iterator[Region]:
    """Connected areas with probability >= ``threshold`` of a probability GeoTIFF.

    Reads ``chunk_rows`` rows at a time; areas are yielded once no later row can extend them.
    """
    from shapely import union_all

    groups, pieces, prev, next_id = _Groups(), {}, None, 1
    with raster.open_raster(path) as ds:
        for y0 in range(0, ds.height, chunk_rows):
            h = min(chunk_rows, ds.height - y0)
            prob = ds.read(1, window=Window(0, y0, ds.width, h))
            hit = (prob >= threshold) & (prob != NODATA)
            geoms, labels, count, total, top = _pieces(hit, prob, y0)
            ids = np.where(labels > 0, labels + (next_id - 1), 0)
            for k, g in enumerate(geoms, start=1):
                pieces[next_id + k - 1] = (g, int(count[k]), float(total[k]), float(top[k]))
                groups.add(next_id + k - 1)
            next_id += len(geoms)
            if prev is not None:
                both = (prev > 0) & (ids[0] > 0)
                for a, b in set(zip(prev[both].tolist(), ids[0][both].tolist())):
                    groups.union(a, b)
            prev = ids[-1]
            last = y0 + h >= ds.height
            still_open = set() if last else {groups.find(i) for i in np.unique(prev[prev > 0])}
            for root in sorted(r for r in groups.members if r not in still_open):
                members = sorted(groups.members.pop(root))
                parts = [pieces.pop(i) for i in members]
                for i in members:
                    del groups.parent[i]
                geom = parts[0][0] if len(parts) == 1 else \
                    union_all([p[0] for p in parts]).simplify(0)  # drop seam vertices
                yield Region(geom, sum(p[1] for p in parts), sum(p[2] for p in parts),
                             max(p[3] for p in parts))


# ---------------------------------------------------------------- files


def finish(ds, info: SceneInfo, p: Paths, scale: float | None, threshold: float) -> int:
    """Polygons, GeoJSON(s) and quick-look from the finished map in ``p.partial``; then the
    final names (the state file goes). Returns the number of detections."""
    with contextlib.ExitStack() as stack:
        tmp_det = stack.enter_context(atomic_path(p.detections))
        tmp_wgs = stack.enter_context(atomic_path(p.wgs84)) if info.georeferenced else None
        tmp_png = stack.enter_context(atomic_path(p.quicklook))
        canvas, draw = _quicklook(ds, info, p.partial, scale)
        fit = (canvas.width / info.width, canvas.height / info.height)
        outputs = [(tmp_det, p.detections)] + ([(tmp_wgs, p.wgs84)] if tmp_wgs else [])
        n = _write_detections(p.partial, info, threshold, outputs,
                              lambda g: _outline(draw, g, fit))
        with writing(p.quicklook, tmp_png):
            canvas.save(tmp_png, format="PNG")
        mosaic.set_tags(p.partial, SLIDEWATCH_THRESHOLD=repr(threshold),
                        SLIDEWATCH_DETECTIONS=str(n))
    with atomic_path(p.probability) as tmp_cog:  # the final map: a Cloud-Optimized GeoTIFF
        mosaic.write_cog(p.partial, tmp_cog, p.probability)
    with writing(p.partial):
        p.partial.unlink()
    p.state.unlink()
    return n


def _crs_member(crs) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    if epsg is None:
        return ""
    return json.dumps({"crs": {"type": "name",
                               "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}})[1:-1]


def _write_detections(prob_path: Path, info: SceneInfo, threshold: float,
                      outputs: list[tuple[Path, Path]], on_region: Callable) -> int:
    """Stream one Feature per connected area into the GeoJSON file(s) (``outputs``: temporary
    and final name of the scene-CRS file, then of the WGS84 one); returns the count. A failed
    write names the file's final name."""
    from rasterio.warp import transform_geom
    from shapely.affinity import affine_transform
    from shapely.geometry import mapping

    t = info.transform
    m2 = metric_pixel_area_m2(t, info.crs)
    member = _crs_member(info.crs)
    n = 0
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open_output(tmp, final, encoding="utf-8"))
                 for tmp, final in outputs]
        wgs = len(files) > 1
        for fh, head in zip(files, (member, "")):
            fh.write('{"type": "FeatureCollection", ' + (head + ", " if head else "")
                     + '"features": [\n')
        for region in polygonize(prob_path, threshold):
            on_region(region.geometry)
            n += 1
            props = {"id": n, "area_px": region.area_px,
                     "area_m2": None if m2 is None else round(region.area_px * m2, 3),
                     "mean_prob": round(region.sum_prob / region.area_px, 6),
                     "max_prob": round(region.max_prob, 6)}
            # outlines traced along pixel edges, simplified to the pixel size: staircase
            # vertices within one pixel of the outline go (topology kept, area_px unchanged)
            geom = region.geometry.simplify(1.0, preserve_topology=True)
            if info.georeferenced:
                geom = affine_transform(geom, (t.a, t.b, t.d, t.e, t.c, t.f))
            geoms = [mapping(geom)]
            if wgs:
                geoms.append(transform_geom(info.crs, "EPSG:4326", geoms[0]))
            for fh, g in zip(files, geoms):
                feature = {"type": "Feature", "id": n, "properties": props, "geometry": g}
                fh.write((",\n" if n > 1 else "") + json.dumps(feature))
        for fh in files:
            fh.write("\n]}\n")
    return n


def _quicklook(ds, info: SceneInfo, prob_path: Path, scale: float | None):
    """The scene (decimated, 2-98% stretch) under the probability map (yellow -> red)."""
    from PIL import Image, ImageDraw

    f = min(1.0, QUICKLOOK_MAX / max(info.width, info.height))
    h, w = max(1, round(info.height * f)), max(1, round(info.width * f))
    show = info.bands[:3] if len(info.bands) >= 3 else info.bands[:1] * 3
    img = scale_to_unit(raster.read_decimated(ds, show, h, w), scale).astype(np.float32)
    img[:, ~np.isfinite(img).all(axis=0)] = 0.0  # the nodata rule's non-finite pixels
    for band in img:
        lo, hi = np.percentile(band, (2, 98))
        band[:] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    with raster.open_raster(prob_path) as src:
        prob = raster.read_decimated(src, [1], h, w)[0]
    alpha = np.where(prob >= 0, 0.6 * np.clip(prob, 0, 1), 0.0)
    colour = np.stack([np.ones_like(prob), 1.0 - np.clip(prob, 0, 1), np.zeros_like(prob)])
    rgb = (1 - alpha) * img + alpha * colour
    canvas = Image.fromarray((np.moveaxis(rgb, 0, -1) * 255).round().astype(np.uint8), "RGB")
    return canvas, ImageDraw.Draw(canvas)


def _outline(draw, geom, scale: tuple[float, float]) -> None:
    for poly in getattr(geom, "geoms", [geom]):
        for ring in (poly.exterior, *poly.interiors):
            draw.line([(x * scale[0], y * scale[1]) for x, y in ring.coords],
                      fill=(0, 255, 255), width=1)
