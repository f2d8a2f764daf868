"""Scoring windows of a scene: the unit of work of every scan backend.

:func:`score_windows` turns a list of windows into P(positive class) per window. A scan calls
it on the chunks of :class:`ChunkPlan` (whole batches, about a window row each). The local
backend (:class:`LocalScorer`) runs its two halves, :func:`window_batches` (reading) and
:func:`score_batches` (unit scaling, transform, the model), with the next batches read in a
thread while the model runs; the Ray backend calls :func:`score_windows` on its workers.
Batches never span two calls, so every backend scores the same batches and gives the same
numbers.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from slidewatch.data import raster
from slidewatch.data.inputs import window_tensor
from slidewatch.data.standardize import ImageStats, raster_statistics, standardizer
from slidewatch.inference.forward import batch_probabilities, non_finite
from slidewatch.meta import ModelMeta

PREFETCH_BATCHES = 2  # batches read ahead of the model by the local backend (0: inline)


class ChunkPlan:
    """The windows of a grid in row-major order, cut into chunks (one backend call each) of
    ``size`` windows: the smallest multiple of ``batch`` that holds a window row. Batches are
    full even when a row is narrower than a batch, and the cut does not depend on where a scan
    starts, so a resumed scan scores the same batches as an uninterrupted one."""

    def __init__(self, grid: raster.Grid, batch: int):
        self.grid, self.ncols = grid, len(grid.cols)
        self.size = batch * math.ceil(self.ncols / batch)
        self.count = math.ceil(grid.n_windows / self.size)

    def windows(self, c: int) -> list:
        g = self.grid
        return [Window(g.cols[k % self.ncols], g.rows[k // self.ncols], g.tile, g.tile)
                for k in range(c * self.size, min((c + 1) * self.size, g.n_windows))]

    def first_chunk(self, row: int) -> int:
        """The chunk that holds the first window of window row ``row``."""
        return row * self.ncols // self.size

    def rows(self, scores: Iterable[np.ndarray], first_row: int) -> Iterator[tuple]:
        """``(window row, its probabilities)`` from ``first_row`` on, out of the scores of the
        chunks from :meth:`first_chunk` on (windows before ``first_row`` are dropped)."""
        start = self.first_chunk(first_row) * self.size  # window index of buf[0]
        buf, i, n = None, first_row, self.ncols
        for probs in scores:  # one value per window, or one map per window (segmentation)
            buf = probs if buf is None else np.concatenate([buf, probs])
            while i < len(self.grid.rows) and (i + 1) * n <= start + len(buf):
                yield i, buf[i * n - start:(i + 1) * n - start]
                i += 1
            buf, start = buf[i * n - start:], i * n


def window_batches(ds, windows: list, bands: Sequence[int], batch: int) -> Iterator[tuple]:
    """``(positions in windows, N x C x H x W pixels as read, N x H x W valid masks or None)``
    for the windows of ``ds`` (an open rasterio dataset), ``batch`` at a time; windows without a
    valid pixel are left out. Raw pixels are 4 x smaller than the float batch: this is what the
    local backend's reading thread hands over."""
    bands = list(bands)
    masked = raster.needs_mask(ds, bands)
    index: list[int] = []
    items: list[tuple] = []

    def done() -> tuple:
        valid = None if items[0][1] is None else np.stack([v for _, v in items])
        return index, np.stack([d for d, _ in items]), valid

    for k, (data, valid) in enumerate(raster.read_windows(ds, windows, bands, masked)):
        if valid is not None and not valid.any():
            continue
        items.append((data, valid))
        index.append(k)
        if len(items) == batch:
            yield done()
            index, items = [], []
    if items:
        yield done()


def batch_tensor(meta: ModelMeta, raw: np.ndarray, valid: np.ndarray | None,
                 pin: bool = False, stats: ImageStats | None = None) -> torch.Tensor:
    """Raw N x C x H x W pixels -> the unit-scale, transformed float32 batch (in pinned memory
    with ``pin``, so that the copy to a GPU can overlap); ``stats``: the scene's statistics
    for a model that standardises (:func:`scene_statistics`)."""
    t = window_tensor(meta, raw, valid, stats)  # the model-input builder's rule for windows
    return t.pin_memory() if pin else t


def scene_statistics(meta: ModelMeta, ds, bands: Sequence[int]) -> ImageStats | None:
    """The statistics of the whole scene ``ds`` (its chosen ``bands``) for a model with the
    ``image`` standardisation rule, read strip by strip; None for a model without one."""
    if standardizer(meta) is None:
        return None
    return raster_statistics(ds, list(bands), meta.scale)


def score_batches(model: torch.nn.Module, meta: ModelMeta, batches: Iterable, n: int,
                  device: torch.device, *, source: str | Path | None = None,
                  scene: str | Path | None = None, tta: bool = False,
                  tile: int | None = None, stats: ImageStats | None = None) -> np.ndarray:
    """P(positive) for ``n`` windows from :func:`window_batches`' output; NaN where left out.
    A segmentation model gives a ``tile`` x ``tile`` map per window (n x tile x tile), NaN on
    the window's invalid pixels. ``tta``: the mean over flips and 90-degree rotations.
    ``stats``: the scene's statistics (:func:`scene_statistics`) for a model that
    standardises.

    NaN marks a window without valid pixels, so a probability the model gives that is not
    finite stops here (:func:`~slidewatch.inference.forward.non_finite`): one line naming the
    model folder ``source`` (weights or statistics not finite) or the ``scene`` (its pixels
    overflow the model), never a window silently counted as skipped."""
    segment = meta.task == "segment"
    probs = None
    with torch.inference_mode():
        for index, raw, valid in batches:
            x = batch_tensor(meta, raw, valid, pin=device.type == "cuda", stats=stats)
            p = batch_probabilities(model, {"image": x}, meta, device, tta)["probability"]
            if segment and p.shape[-2:] != raw.shape[-2:]:  # windows other than the input size
                p = torch.nn.functional.interpolate(p[:, None].float(), size=raw.shape[-2:],
                                                    mode="bilinear", align_corners=False)[:, 0]
            p = p.float().cpu().numpy()
            if not np.isfinite(p).all():
                raise non_finite(model, meta, 0, source, [scene or "the scene"])
            if segment and valid is not None:
                p = np.where(valid, p, np.nan).astype(np.float32)
            if probs is None:
                shape = (n, *raw.shape[-2:]) if segment else (n,)
                probs = np.full(shape, np.nan, np.float32)
            probs[index] = p
    if probs is None:
        side = tile or meta.input_size
        probs = np.full((n, side, side) if segment else (n,), np.nan, np.float32)
    return probs


def score_windows(model: torch.nn.Module, meta: ModelMeta, scene, windows: list,
                  bands: Sequence[int], batch: int, device: torch.device, *,
                  source: str | Path | None = None, tta: bool = False,
                  stats: ImageStats | None = None) -> np.ndarray:
    """P(positive class) of each window (rasterio ``Window``s) of ``scene`` (a path or an open
    rasterio dataset), float32; NaN for windows without a valid pixel (skipped).

    Invalid pixels of partly valid windows are 0 after unit scaling. Batches never mix calls,
    so a given list of windows always gives the same numbers. A probability that is not finite
    is an error naming ``source`` (the model folder) or the scene (:func:`score_batches`).
    A model that standardises uses ``stats``, the whole scene's statistics (computed here
    from the scene when not given: pass them when scoring a scene in several calls).
    """
    if isinstance(scene, (str, Path)):
        with raster.gdal_env(), raster.open_scene(Path(scene)) as ds:
            return score_windows(model, meta, ds, windows, bands, batch, device, source=source,
                                 tta=tta, stats=stats)
    model.eval()
    if stats is None:
        stats = scene_statistics(meta, scene, bands)
    batches = window_batches(scene, windows, bands, batch)
    tile = windows[0].height if windows else None
    return score_batches(model, meta, batches, len(windows), device, source=source,
                         scene=scene.name, tta=tta, tile=tile, stats=stats)


class LocalScorer:
    """Scores chunks in this process. A thread reads up to :data:`PREFETCH_BATCHES` batches
    ahead (its own handle on the scene: rasterio datasets are not shared between threads) while
    the model runs; with ``PREFETCH_BATCHES = 0`` it reads inline. Either way the batches are
    those of :func:`score_windows` on each chunk."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: torch.device,
                 batch: int, source: str | Path | None = None, tta: bool = False):
        self.model, self.meta, self.device, self.batch = model.eval(), meta, device, batch
        self.source = source  # the model folder, named when its probabilities are not finite
        self.tta = tta

    def __enter__(self) -> LocalScorer:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def scores(self, path: Path, ds, bands: Sequence[int], chunks: Iterable[list],
               stats: ImageStats | None = None) -> Iterator[np.ndarray]:
        """P(positive) per window for each list of windows of ``chunks``, in order; ``stats``:
        the scene's statistics for a model that standardises (:func:`scene_statistics`)."""
        if PREFETCH_BATCHES < 1:
            for windows in chunks:
                yield score_windows(self.model, self.meta, ds, windows, bands, self.batch,
                                    self.device, source=self.source, tta=self.tta,
                                    stats=stats)
            return
        for n, batches in _prefetched(path, bands, self.batch, chunks,
                                      self.device.type == "cuda"):
            yield score_batches(self.model, self.meta, batches, n, self.device,
                                source=self.source, scene=path, tta=self.tta, stats=stats)


_END, _CHUNK_END = object(), object()


def _prefetched(path: Path, bands: Sequence[int], batch: int, chunks: Iterable[list],
                gpu: bool) -> Iterator[tuple[int, Iterator]]:
    """``(number of windows, its raw batches)`` per chunk, read by a thread (for a GPU, GDAL
    decodes the scene's blocks with all cores).
    Each chunk's batch iterator must be used up before the next chunk is taken."""
    q: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            threads = {"GDAL_NUM_THREADS": "ALL_CPUS"} if gpu else {}
            with raster.gdal_env(**threads), raster.open_scene(path) as ds:
                for windows in chunks:
                    raw = window_batches(ds, windows, bands, batch)
                    items = itertools.chain([len(windows)], raw, [_CHUNK_END])
                    if not all(put(item) for item in items):  # lazily: a batch at a time
                        return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    def get():
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def batches() -> Iterator:
        while (item := get()) is not _CHUNK_END:
            yield item

    thread = threading.Thread(target=read, name="scan-prefetch", daemon=True)
    thread.start()
    try:
        while (n := get()) is not _END:
            yield n, batches()
    finally:
        stop.set()
        thread.join()
