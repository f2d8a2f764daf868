"""Sliding-window scanning of whole scenes into probability maps and detection polygons.

Each window goes through the pixel path of training and prediction (``scale_to_unit`` ->
``EvalTransform`` -> ``inference.forward_logits`` -> softmax of the positive class); the window
probabilities are blended into a per-pixel map (``sum(w * p) / sum(w)``) row strip by row strip
(:mod:`slidewatch.raster`). Per scene, ``--out`` receives ``<stem>_probability.tif``,
``<stem>_detections.geojson`` (scene CRS), ``<stem>_detections_wgs84.geojson`` (EPSG:4326, only
for scenes with a CRS) and ``<stem>_quicklook.png``. Work in progress lives in
``.<stem>_probability.partial.tif`` + ``.<stem>_scan-state.json`` and is resumed on a rerun with
the same settings. :func:`score_windows` is the unit of work a distributed backend can call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slidewatch import raster
from slidewatch.checkpoint import META_FILE, WEIGHTS_FILE, ModelMeta, load_model, read_meta
from slidewatch.data.readers import scale_to_unit
from slidewatch.data.transforms import EvalTransform
from slidewatch.errors import ConfigError, ModelError, SlidewatchError, WeightsError
from slidewatch.inference import forward_logits, no_progress, resolve_device
from slidewatch.io_utils import atomic_path, atomic_write_text
from slidewatch.raster import NODATA, OUT_BLOCK, Grid, SceneInfo

QUICKLOOK_MAX = 1024
STATE_VERSION = 1


@dataclass(frozen=True)
class ScanSettings:
    tile: int
    stride: int
    batch: int = 32
    bands: tuple[int, ...] | None = None  # 1-based; None: all bands (greyscale repeated)
    blend: str = "mean"
    threshold: float = 0.5


def resolve_settings(meta: ModelMeta, *, tile: int | None = None, stride: int | None = None,
                     batch: int = 32, bands: Sequence[int] | None = None, blend: str = "mean",
                     threshold: float | None = None) -> ScanSettings:
    """Fill defaults from the model (tile = input size, stride = tile // 2, its threshold)."""
    tile = meta.input_size if tile is None else tile
    if tile < 1:
        raise ConfigError(f"--tile: must be >= 1, got {tile}")
    stride = max(1, tile // 2) if stride is None else stride
    if not 1 <= stride <= tile:
        raise ConfigError(f"--stride: must be between 1 and --tile ({tile}), got {stride}")
    if batch < 1:
        raise ConfigError(f"--batch: must be >= 1, got {batch}")
    if blend not in ("mean", "hann"):
        raise ConfigError(f"--blend: must be mean or hann, got {blend!r}")
    threshold = meta.threshold if threshold is None else threshold
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold: must be in (0, 1), got {threshold}")
    if bands is not None and (not bands or min(bands) < 1):
        raise ConfigError(f"--bands: 1-based band numbers, got {list(bands)}")
    return ScanSettings(tile, stride, batch, None if bands is None else tuple(bands), blend,
                        float(threshold))


@dataclass
class SceneResult:
    scene: Path
    status: str  # "scanned", "resumed" or "complete" (already done with these settings)
    probability: Path
    detections: Path
    detections_wgs84: Path | None
    quicklook: Path
    detections_count: int
    windows: int = 0  # windows scored in this run
    skipped_windows: int = 0  # all-nodata windows in this run
    megapixels: float = 0.0  # scene area blended in this run
    seconds: float = 0.0


@dataclass
class ScanSummary:
    scenes: list[SceneResult]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def windows(self) -> int:
        return sum(r.windows for r in self.scenes)

    @property
    def skipped_windows(self) -> int:
        return sum(r.skipped_windows for r in self.scenes)

    @property
    def megapixels(self) -> float:
        return sum(r.megapixels for r in self.scenes)

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.seconds if self.seconds > 0 else 0.0

    @property
    def megapixels_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- scoring (backend unit)


def score_windows(model: torch.nn.Module, meta: ModelMeta, scene, windows: list,
                  bands: Sequence[int], batch: int, device: torch.device) -> np.ndarray:
    """P(positive class) of each window (rasterio ``Window``s) of ``scene`` (a path or an open
    rasterio dataset), float32; NaN for windows without a valid pixel (skipped).

    Invalid pixels of partly valid windows are 0 after unit scaling. Batches never mix calls,
    so a given list of windows always gives the same numbers.
    """
    if isinstance(scene, (str, Path)):
        with raster.gdal_env(), raster.open_raster(Path(scene)) as ds:
            return score_windows(model, meta, ds, windows, bands, batch, device)
    bands = list(bands)
    transform = EvalTransform(meta.input_size, grayscale=meta.grayscale)
    probs = np.full(len(windows), np.nan, np.float32)
    index: list[int] = []
    xs: list[torch.Tensor] = []

    def flush() -> None:
        logits = forward_logits(model, torch.stack(xs), meta, device)
        p = torch.softmax(logits, dim=1)[:, meta.positive_index]
        probs[index] = p.cpu().numpy()
        index.clear()
        xs.clear()

    model.eval()
    masked = raster.needs_mask(scene, bands)
    with torch.inference_mode():
        for k, (data, valid) in enumerate(raster.read_windows(scene, windows, bands, masked)):
            if valid is not None and not valid.any():
                continue
            x = scale_to_unit(data, meta.scale)
            if valid is not None:
                x = np.where(valid, x, np.float32(0.0))
            xs.append(transform(torch.from_numpy(np.ascontiguousarray(x))))
            index.append(k)
            if len(xs) == batch:
                flush()
        if xs:
            flush()
    return probs


# ---------------------------------------------------------------- planning


@dataclass
class _Paths:
    probability: Path
    detections: Path
    wgs84: Path
    quicklook: Path
    partial: Path
    state: Path

    @classmethod
    def of(cls, out: Path, stem: str) -> _Paths:
        return cls(out / f"{stem}_probability.tif", out / f"{stem}_detections.geojson",
                   out / f"{stem}_detections_wgs84.geojson", out / f"{stem}_quicklook.png",
                   out / f".{stem}_probability.partial.tif", out / f".{stem}_scan-state.json")

    def finals(self, georeferenced: bool) -> list[Path]:
        wgs = [self.wgs84] if georeferenced else []
        return [self.probability, self.detections, *wgs, self.quicklook]


@dataclass
class _Job:
    info: SceneInfo
    paths: _Paths
    fingerprint: dict
    done: int | None  # detections of a complete earlier scan with the same settings


@dataclass
class _Ctx:
    model: torch.nn.Module
    meta: ModelMeta
    settings: ScanSettings
    device: torch.device
    progress: Callable


def model_identity(model_dir: str | Path) -> str:
    """Changes when the model folder's metadata or weights change."""
    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise WeightsError(f"{model_dir}: weights file {WEIGHTS_FILE} is missing")
    st = (model_dir / WEIGHTS_FILE).stat()
    h = hashlib.sha256((model_dir / META_FILE).read_bytes())
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _fingerprint(info: SceneInfo, s: ScanSettings, model_id: str, device: torch.device) -> dict:
    st = info.path.stat()
    fp = {"version": STATE_VERSION, "scene": str(info.path.resolve()), "bytes": st.st_size,
          "mtime_ns": st.st_mtime_ns, "model": model_id, "tile": s.tile, "stride": s.stride,
          "batch": s.batch, "bands": info.bands, "blend": s.blend, "device": device.type}
    return json.loads(json.dumps(fp))


def _earlier_result(paths: _Paths, info: SceneInfo, fp: dict, threshold: float,
                    overwrite: bool) -> int | None:
    """Detections of a complete earlier scan with the same settings, else None (scan it)."""
    finals = paths.finals(info.georeferenced)
    existing = [f for f in finals if f.exists()]
    if overwrite or not existing:
        return None
    tags = {}
    if paths.probability.is_file():
        with raster.open_raster(paths.probability) as ds:
            tags = ds.tags()
    same = (tags.get("SLIDEWATCH_SCAN") == json.dumps(fp, sort_keys=True)
            and tags.get("SLIDEWATCH_THRESHOLD") == repr(threshold))
    if not same:
        raise ConfigError(f"{existing[0]}: exists from a scan with other settings or another "
                          f"scene; pass --overwrite to replace it")
    return int(tags.get("SLIDEWATCH_DETECTIONS", 0)) if len(existing) == len(finals) else None


def _plan(scenes: Sequence, out: Path, meta: ModelMeta, s: ScanSettings, model_id: str,
          device: torch.device, overwrite: bool) -> list[_Job]:
    """Check every scene and the output folder before anything is written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not scenes:
        raise ConfigError("no scenes given")
    jobs, stems = [], {}
    for scene in map(Path, scenes):
        info = raster.inspect_scene(scene, meta.in_chans, s.bands and list(s.bands))
        if s.tile > min(info.width, info.height):
            raise ConfigError(f"{scene}: {info.width}x{info.height} pixels is smaller than the "
                              f"{s.tile}-pixel window; use a smaller --tile")
        if scene.stem in stems:
            raise ConfigError(f"{scene}: same name as {stems[scene.stem]}; outputs would collide, "
                              f"scan them into different --out folders")
        stems[scene.stem] = scene
        paths = _Paths.of(out, scene.stem)
        fp = _fingerprint(info, s, model_id, device)
        jobs.append(_Job(info, paths, fp, _earlier_result(paths, info, fp, s.threshold,
                                                          overwrite)))
    return jobs


# ---------------------------------------------------------------- public entry points


def scan(model_dir: str | Path, scenes: Sequence, out: str | Path, *, tile: int | None = None,
         stride: int | None = None, batch: int = 32, bands: Sequence[int] | None = None,
         blend: str = "mean", threshold: float | None = None, device: str = "auto",
         overwrite: bool = False, progress: Callable = no_progress) -> ScanSummary:
    """Scan ``scenes`` with the model in ``model_dir``; outputs go to ``out`` (see module doc)."""
    meta = read_meta(model_dir)
    fusion = meta.extra.get("fusion")
    if fusion and fusion.get("mode") != "image":
        raise ModelError(f"{model_dir}: a multi-modal model ({fusion.get('mode')} mode) needs "
                         f"tabular inputs; scan takes image-only models")
    settings = resolve_settings(meta, tile=tile, stride=stride, batch=batch, bands=bands,
                                blend=blend, threshold=threshold)
    dev = resolve_device(device)
    model_id = model_identity(model_dir)
    jobs = _plan(scenes, Path(out), meta, settings, model_id, dev, overwrite)
    model, meta = load_model(model_dir, dev)
    return _run(_Ctx(model, meta, settings, dev, progress), jobs, Path(out), overwrite)


def scan_with_model(model: torch.nn.Module, meta: ModelMeta, scenes: Sequence, out: str | Path,
                    settings: ScanSettings, *, model_id: str, device: str = "cpu",
                    overwrite: bool = False, progress: Callable = no_progress) -> ScanSummary:
    """:func:`scan` with a model already in memory; ``model_id`` names it in the resume state."""
    from slidewatch.inference import prepare_model

    dev = resolve_device(device)
    jobs = _plan(scenes, Path(out), meta, settings, model_id, dev, overwrite)
    model = prepare_model(model, dev).eval()
    return _run(_Ctx(model, meta, settings, dev, progress), jobs, Path(out), overwrite)


def _run(ctx: _Ctx, jobs: list[_Job], out: Path, overwrite: bool) -> ScanSummary:
    t0 = time.perf_counter()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        with raster.gdal_env():
            for job in jobs:
                results.append(_scan_scene(ctx, job, overwrite))
    except SlidewatchError:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    warnings = [w for job in jobs for w in job.info.warnings]
    return ScanSummary(results, time.perf_counter() - t0, warnings)


# ---------------------------------------------------------------- one scene


def _scan_scene(ctx: _Ctx, job: _Job, overwrite: bool) -> SceneResult:
    info, p = job.info, job.paths
    result = SceneResult(info.path, "complete", p.probability, p.detections,
                         p.wgs84 if info.georeferenced else None, p.quicklook, job.done or 0)
    if job.done is not None:
        return result
    t0 = time.perf_counter()
    state = _start_state(job, overwrite)
    start_row = state["rows_written"]
    result.status = "resumed" if state["next_row"] > 0 else "scanned"
    grid = Grid(info.height, info.width, ctx.settings.tile, ctx.settings.stride)
    try:
        with raster.open_raster(info.path) as ds:
            result.windows, result.skipped_windows = _blend_pass(ctx, ds, job, grid, state)
            result.detections_count = _finish(ctx, ds, job)
    except SlidewatchError:
        _discard(p)  # bad input: nothing to resume from
        raise
    result.megapixels = (info.height - start_row) * info.width / 1e6
    result.seconds = time.perf_counter() - t0
    return result


def _discard(p: _Paths) -> None:
    for f in (p.partial, p.state):
        if f.exists():
            f.unlink()


def _save_state(path: Path, fp: dict, rows_written: int, next_row: int, replay: dict) -> None:
    rep = {str(j): [None if math.isnan(v) else v for v in ps] for j, ps in replay.items()}
    atomic_write_text(path, json.dumps({"fingerprint": fp, "rows_written": rows_written,
                                        "next_row": next_row, "replay": rep}) + "\n")


def _start_state(job: _Job, overwrite: bool) -> dict:
    """The saved state when it is for the same settings (resume), else a fresh partial file."""
    p = job.paths
    if not overwrite and p.state.is_file() and p.partial.is_file():
        try:
            state = json.loads(p.state.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = {}
        if state.get("fingerprint") == job.fingerprint:
            state["replay"] = {int(j): [math.nan if v is None else v for v in ps]
                               for j, ps in state["replay"].items()}
            return state
    _discard(p)
    raster.create_probability(p.partial, job.info,
                              {"SLIDEWATCH_SCAN": json.dumps(job.fingerprint, sort_keys=True)})
    _save_state(p.state, job.fingerprint, 0, 0, {})
    return {"rows_written": 0, "next_row": 0, "replay": {}}


def _blend_pass(ctx: _Ctx, ds, job: _Job, grid: Grid, state: dict) -> tuple[int, int]:
    """Score window rows, blend them, and write each finished block row; returns
    (windows scored, windows skipped)."""
    s, info = ctx.settings, job.info
    weights = raster.blend_weights(s.tile, s.blend)
    acc = raster.Accumulator(info.width, s.tile, base=state["rows_written"])
    recent = dict(sorted(state["replay"].items()))
    for j, probs in recent.items():
        acc.add(grid.windows(j), probs, weights)
    scored = skipped = 0
    todo = range(state["next_row"], len(grid.rows))
    for i in ctx.progress(todo, desc=f"scan {info.path.name}", total=len(todo)):
        windows = grid.windows(i)
        probs = score_windows(ctx.model, ctx.meta, ds, windows, info.bands, s.batch, ctx.device)
        n_skip = int(np.isnan(probs).sum())
        scored, skipped = scored + len(windows) - n_skip, skipped + n_skip
        recent[i] = probs.tolist()
        acc.add(windows, recent[i], weights)
        done = grid.done_rows(i)
        whole_blocks = acc.base + (done - acc.base) // OUT_BLOCK * OUT_BLOCK
        upto = done if done == info.height else whole_blocks
        if upto <= acc.base:
            continue
        row0 = acc.base
        rows = acc.pop(upto)
        if info.has_mask:
            rows[~raster.valid_rows(ds, info.bands, row0, upto)] = NODATA
        raster.write_rows(job.paths.partial, row0, rows)
        recent = {j: v for j, v in recent.items() if grid.rows[j] + s.tile > upto}
        _save_state(job.paths.state, job.fingerprint, upto, i + 1, recent)
    return scored, skipped


# ---------------------------------------------------------------- outputs


def _finish(ctx: _Ctx, ds, job: _Job) -> int:
    """Polygons, GeoJSON(s) and quick-look from the finished map; then the final names."""
    p, info = job.paths, job.info
    with contextlib.ExitStack() as stack:
        tmp_det = stack.enter_context(atomic_path(p.detections))
        tmp_wgs = stack.enter_context(atomic_path(p.wgs84)) if info.georeferenced else None
        tmp_png = stack.enter_context(atomic_path(p.quicklook))
        canvas, draw = _quicklook(ds, info, p.partial, ctx.meta.scale)
        scale = (canvas.width / info.width, canvas.height / info.height)
        n = _write_detections(p.partial, info, ctx.settings.threshold, tmp_det, tmp_wgs,
                              lambda g: _outline(draw, g, scale))
        canvas.save(tmp_png, format="PNG")
        raster.set_tags(p.partial, SLIDEWATCH_THRESHOLD=repr(ctx.settings.threshold),
                        SLIDEWATCH_DETECTIONS=str(n))
    os.replace(p.partial, p.probability)
    p.state.unlink()
    return n


def _crs_member(crs) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    if epsg is None:
        return ""
    return json.dumps({"crs": {"type": "name",
                               "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}})[1:-1]


def _write_detections(prob_path: Path, info: SceneInfo, threshold: float, det: Path,
                      wgs: Path | None, on_region: Callable) -> int:
    """Stream one Feature per connected area into the GeoJSON file(s); returns the count."""
    from rasterio.warp import transform_geom
    from shapely.affinity import affine_transform
    from shapely.geometry import mapping

    t = info.transform
    m2 = None
    if info.crs is not None and info.crs.is_projected:
        unit, factor = info.crs.linear_units_factor
        m2 = abs(t.determinant) * factor**2 if unit in ("metre", "meter") else None
    member = _crs_member(info.crs)
    n = 0
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(f, "w", encoding="utf-8")) for f in (det, wgs) if f]
        for fh, head in zip(files, (member, "")):
            fh.write('{"type": "FeatureCollection", ' + (head + ", " if head else "")
                     + '"features": [\n')
        for region in raster.polygonize(prob_path, threshold):
            on_region(region.geometry)
            n += 1
            props = {"id": n, "area_px": region.area_px,
                     "area_m2": None if m2 is None else round(region.area_px * m2, 3),
                     "mean_prob": round(region.sum_prob / region.area_px, 6),
                     "max_prob": round(region.max_prob, 6)}
            geom = region.geometry
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
    for band in img:
        lo, hi = np.percentile(band, (2, 98))
        band[:] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    with raster.open_quiet(prob_path) as src:
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
