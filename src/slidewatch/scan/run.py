"""Sliding-window scanning of whole scenes into probability maps and detection polygons.

Each window goes through the pixel path of training and prediction (``scale_to_unit`` ->
``EvalTransform`` -> ``inference.forward_logits`` -> softmax of the positive class); the window
probabilities are blended into a per-pixel map (``sum(w * p) / sum(w)``) row strip by row strip
(:mod:`slidewatch.raster`). A model with the ``image`` standardisation rule takes every window
standardised with the whole scene's band statistics, computed once per scene (strip by strip,
:func:`slidewatch.scan.score.scene_statistics`) before its windows are scored. Per scene,
``--out`` receives ``<stem>_probability.tif``, ``<stem>_detections.geojson`` (scene CRS),
``<stem>_detections_wgs84.geojson`` (EPSG:4326, only for scenes with a CRS) and
``<stem>_quicklook.png`` (:mod:`slidewatch.scan_outputs`). Work in
progress lives in ``.<stem>_probability.partial.tif`` + ``.<stem>_scan-state.json`` and is
resumed on a rerun with the same settings (:mod:`slidewatch.scan_plan`).

Backends score chunks of windows (:class:`slidewatch.scan_score.ChunkPlan`: whole batches,
about a window row each): ``local`` in this process (the next batches are read and prepared in
a thread while the model runs), ``ray`` on Ray workers (:mod:`slidewatch.scan_ray`). Both score
a chunk as :func:`slidewatch.scan_score.score_windows` does, so they give the same numbers;
blending and writing always happen here, in row order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slidewatch.data import raster
from slidewatch.data.raster import Grid
from slidewatch.errors import ConfigError, ModelError, SlidewatchError
from slidewatch.inference.ensemble import describe, ensemble_meta, load_models, runtime_label
from slidewatch.io_utils import remove_stale_temporaries, writing
from slidewatch.meta import ModelMeta
from slidewatch.runtime import no_progress, prepare_model, resolve_device
from slidewatch.scan import mosaic
from slidewatch.scan import outputs as scan_outputs
from slidewatch.scan import plan as scan_plan
from slidewatch.scan.mosaic import NODATA, OUT_BLOCK
from slidewatch.scan.plan import Job, ScanSettings, resolve_settings
from slidewatch.scan.score import ChunkPlan, LocalScorer, scene_statistics, score_windows

__all__ = ["Backend", "ScanSettings", "ScanSummary", "SceneResult", "resolve_settings", "scan",
           "scan_with_model", "score_windows"]

BACKENDS = ("local", "ray")
# Windows per forward pass when --batch is not given. On CPU 16 scores as fast as 32 and peaks
# ~200 MiB lower (benchmarks/scan_memory.py); a GPU wants larger batches.
CPU_BATCH, GPU_BATCH = 16, 32


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


@dataclass(frozen=True)
class Backend:
    """Where windows are scored: ``local`` (this process) or ``ray`` (Ray workers).

    ``address``: a Ray cluster (``ray.init(address=...)``); None starts a local instance, or
    joins ``auto`` when ``RAY_ADDRESS`` is set. ``workers``: model replicas (Ray actors);
    ``worker_cpus``: CPUs (torch threads) each reserves. Defaults in :mod:`slidewatch.scan_ray`.
    """

    name: str = "local"
    address: str | None = None
    workers: int | None = None
    worker_cpus: int | None = None

    def __post_init__(self):
        if self.name not in BACKENDS:
            raise ConfigError(f"--backend: must be local or ray, got {self.name!r}")
        for flag, value in (("--workers", self.workers), ("--worker-cpus", self.worker_cpus)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag}: must be >= 1, got {value}")
        ray_only = self.address is not None or self.workers or self.worker_cpus
        if self.name == "local" and ray_only:
            raise ConfigError("--ray-address, --workers and --worker-cpus need --backend ray")


@dataclass
class _Ctx:
    scorer: LocalScorer  # or scan_ray.RayScorer: the same scores() interface
    meta: ModelMeta
    settings: ScanSettings
    progress: Callable


# ---------------------------------------------------------------- public entry points


def _device(name: str, backend: Backend) -> torch.device:
    """The scoring device; for Ray it is the workers' (``cuda`` needs no GPU on the driver).
    The name is checked as every command checks ``--device`` (:func:`check_device_name`)."""
    from slidewatch.runtime import check_device_name

    if backend.name == "ray" and check_device_name(name).startswith("cuda"):
        return torch.device(name)
    return resolve_device(name)


def _backend(backend: str | Backend) -> Backend:
    """The backend, checked before anything is read (Ray installed for ``ray``)."""
    backend = backend if isinstance(backend, Backend) else Backend(backend)
    if backend.name == "ray":
        _ray_scorer()
    return backend


def _ray_scorer():
    try:
        from slidewatch.scan.ray_backend import RayScorer
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise ConfigError("--backend ray: Ray is not installed; install slidewatch[ray] "
                          "(pip install 'slidewatch[ray]')") from None
    return RayScorer


def scan(model_dir: str | Path, scenes: Sequence, out: str | Path, *, tile: int | None = None,
         stride: int | None = None, batch: int | None = None,
         bands: Sequence[int] | None = None, blend: str = "mean",
         threshold: float | None = None, device: str = "auto",
         overwrite: bool = False, progress: Callable = no_progress,
         backend: str | Backend = "local",
         max_pixels: int | None = scan_plan.MAX_PIXELS, tta: bool = False,
         ensemble: Sequence[str | Path] = (), runtime: str | None = None) -> ScanSummary:
    """Scan ``scenes`` with the model in ``model_dir``; outputs go to ``out`` (see module doc).
    ``max_pixels``: scenes with more pixels are refused before anything is written (None or
    0: no limit). ``tta``: each window the mean over its flips and 90-degree rotations. A
    segmentation model's pixel maps are blended as window probabilities are. ``ensemble``:
    more model folders whose probabilities are averaged with the model's
    (:mod:`slidewatch.inference.ensemble`); the folders and their contents are part of the
    resume fingerprint. Ray workers receive the whole ensemble as they receive one model.
    ``model_dir`` may be an ONNX file (``slidewatch export``); ``runtime`` ``torch`` or
    ``onnx`` (default: torch for a folder, onnx for an ONNX file) scores the windows, with the
    same batches, memory bounds and resume."""
    backend = _backend(backend)
    dirs = [model_dir, *ensemble]
    meta = ensemble_meta(dirs, runtime)
    fusion = meta.inputs.fusion
    if fusion is not None and fusion.mode != "image":
        raise ModelError(f"{model_dir}: a multi-modal model ({fusion.mode} mode) needs "
                         f"tabular inputs; scan takes image-only models")
    dev = _device(device, backend)
    if batch is None:
        batch = CPU_BATCH if dev.type == "cpu" else GPU_BATCH
    settings = resolve_settings(meta, tile=tile, stride=stride, batch=batch, bands=bands,
                                blend=blend, threshold=threshold, max_pixels=max_pixels,
                                tta=tta, runtime=runtime_label(dirs, runtime))
    model_id = scan_plan.models_identity(dirs)
    jobs = scan_plan.plan(scenes, Path(out), meta, settings, model_id, dev, overwrite)
    model, meta = load_models(dirs, dev if backend.name == "local" else "cpu", runtime)
    return _run(model, meta, settings, dev, backend, jobs, Path(out), overwrite, progress,
                source=model_dir if not ensemble else describe(dirs))


def scan_with_model(model: torch.nn.Module, meta: ModelMeta, scenes: Sequence, out: str | Path,
                    settings: ScanSettings, *, model_id: str, device: str = "cpu",
                    overwrite: bool = False, progress: Callable = no_progress,
                    backend: str | Backend = "local") -> ScanSummary:
    """:func:`scan` with a model already in memory; ``model_id`` names it in the resume state.
    With ``backend="ray"`` the model goes to the workers through Ray's object store (pickled:
    its class must be importable there)."""
    backend = _backend(backend)
    dev = _device(device, backend)
    jobs = scan_plan.plan(scenes, Path(out), meta, settings, model_id, dev, overwrite)
    if backend.name == "local":
        model = prepare_model(model, dev)
    return _run(model.eval(), meta, settings, dev, backend, jobs, Path(out), overwrite, progress)


def _scorer(model: torch.nn.Module, meta: ModelMeta, settings: ScanSettings, dev: torch.device,
            backend: Backend, source: str | Path | None):
    """``source``: the model folder, named when the model gives probabilities that are not
    finite (None: the architecture is named)."""
    if backend.name == "local":
        return LocalScorer(model, meta, dev, settings.batch, source, tta=settings.tta)
    return _ray_scorer()(model, meta, dev, settings.batch, address=backend.address,
                         workers=backend.workers, worker_cpus=backend.worker_cpus,
                         source=source, tta=settings.tta)


def _run(model: torch.nn.Module, meta: ModelMeta, settings: ScanSettings, dev: torch.device,
         backend: Backend, jobs: list[Job], out: Path, overwrite: bool,
         progress: Callable, source: str | Path | None = None) -> ScanSummary:
    t0 = time.perf_counter()
    created = not out.exists()
    results = []
    try:
        busy = any(job.done is None for job in jobs)  # no Ray start when all are complete
        with (_scorer(model, meta, settings, dev, backend, source) if busy else
              contextlib.nullcontext()) as scorer, raster.gdal_env():
            with writing(out):
                out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out)  # of scans killed before they renamed their files
            ctx = _Ctx(scorer, meta, settings, progress)
            for job in jobs:
                results.append(_scan_scene(ctx, job, overwrite))
    except SlidewatchError:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    warnings = [w for job in jobs for w in job.info.warnings]
    return ScanSummary(results, time.perf_counter() - t0, warnings)


# ---------------------------------------------------------------- one scene


def _scan_scene(ctx: _Ctx, job: Job, overwrite: bool) -> SceneResult:
    info, p = job.info, job.paths
    result = SceneResult(info.path, "complete", p.probability, p.detections,
                         p.wgs84 if info.georeferenced else None, p.quicklook, job.done or 0)
    if job.done is not None:
        return result
    t0 = time.perf_counter()
    state = scan_plan.start_state(job, overwrite)
    start_row = state["rows_written"]
    result.status = "resumed" if state["next_row"] > 0 else "scanned"
    grid = Grid(info.height, info.width, ctx.settings.tile, ctx.settings.stride)
    try:
        with raster.open_scene(info.path) as ds:
            result.windows, result.skipped_windows = _blend_pass(ctx, ds, job, grid, state)
            result.detections_count = scan_outputs.finish(ds, info, p, ctx.meta.scale,
                                                          ctx.settings.threshold)
    except SlidewatchError as exc:
        if not getattr(exc, "resumable", False):
            scan_plan.discard(p)  # bad input: nothing to resume from
        raise
    result.megapixels = (info.height - start_row) * info.width / 1e6
    result.seconds = time.perf_counter() - t0
    return result


class _Blender:
    """Blends scored window rows in row order and writes each finished block row, then the
    resume state (the rows on disk, the next window row, the rows still needed for a replay)."""

    def __init__(self, ctx: _Ctx, ds, job: Job, grid: Grid, state: dict):
        s = ctx.settings
        self.ds, self.job, self.grid, self.tile = ds, job, grid, s.tile
        self.weights = mosaic.blend_weights(s.tile, s.blend)
        self.acc = mosaic.Accumulator(job.info.width, s.tile, base=state["rows_written"])
        # pixel maps are not kept in the state: their window rows are scored again on a resume
        self.maps = ctx.meta.task == "segment"
        self.recent = {} if self.maps else dict(sorted(state["replay"].items()))
        for j, probs in self.recent.items():
            self.acc.add(grid.windows(j), probs, self.weights)
        self.scored = self.skipped = 0

    def add(self, i: int, probs: np.ndarray) -> None:
        info, acc, grid = self.job.info, self.acc, self.grid
        windows = grid.windows(i)
        empty = np.isnan(probs).reshape(len(probs), -1).all(1)
        n_skip = int(empty.sum())
        self.scored, self.skipped = self.scored + len(windows) - n_skip, self.skipped + n_skip
        if self.maps:
            acc.add(windows, probs, self.weights)
            self.recent[i] = [None] * len(windows)
        else:
            self.recent[i] = probs.tolist()
            acc.add(windows, self.recent[i], self.weights)
        done = grid.done_rows(i)
        whole_blocks = acc.base + (done - acc.base) // OUT_BLOCK * OUT_BLOCK
        upto = done if done == info.height else whole_blocks
        if upto <= acc.base:
            return
        row0 = acc.base
        rows = acc.pop(upto)
        if info.has_mask:
            rows[~raster.valid_rows(self.ds, info.bands, row0, upto)] = NODATA
        mosaic.write_rows(self.job.paths.partial, row0, rows)
        self.recent = {j: v for j, v in self.recent.items() if grid.rows[j] + self.tile > upto}
        scan_plan.save_state(self.job.paths.state, self.job.fingerprint, upto, i + 1,
                             self.recent)


def _blend_pass(ctx: _Ctx, ds, job: Job, grid: Grid, state: dict) -> tuple[int, int]:
    """Score the remaining window rows with the backend and blend them in order; returns
    (windows scored, windows skipped)."""
    blender = _Blender(ctx, ds, job, grid, state)
    plan, first = ChunkPlan(grid, ctx.settings.batch), state["next_row"]
    if blender.maps and state["replay"]:  # maps of the rows still open: score them again
        first = min(state["replay"])
    chunks = (plan.windows(c) for c in range(plan.first_chunk(first), plan.count))
    stats = scene_statistics(ctx.meta, ds, job.info.bands)  # standardise: the whole scene's
    scores = ctx.scorer.scores(job.info.path, ds, job.info.bands, chunks, stats=stats)
    with contextlib.closing(scores):
        for i, probs in ctx.progress(plan.rows(scores, first), desc=f"scan {job.info.path.name}",
                                     total=len(grid.rows) - first):
            blender.add(i, probs)
    return blender.scored, blender.skipped
