"""The Ray backend of ``slidewatch scan`` (``--backend ray``; ``pip install 'slidewatch[ray]'``).

The driver (the process running ``slidewatch scan``) plans, blends and writes exactly as the
local backend does; only the scoring moves. Each Ray worker is an actor holding one model
replica, received once through Ray's object store. A task is one chunk of windows
(:class:`slidewatch.scan_score.ChunkPlan`: whole batches, about one window row): the worker
opens the scene by its path (so every node must see the scenes at the same path, e.g. a shared
file system) and calls :func:`slidewatch.scan_score.score_windows` on it, which scores the same
batches as the local backend, so the probabilities are the same (on CPU bit-identical when a
worker runs as many torch threads as the local process: math libraries may split a sum by
thread count). Up to two chunks are queued per worker; results come back as chunks finish and
are blended in order, so the driver holds per-window probabilities, never pixels.

Defaults: with no ``address`` a running ``ray.init`` in this process is used, else ``auto``
when ``RAY_ADDRESS`` is set, else a local instance is started (and shut down at the end) with
``workers x worker_cpus`` CPUs (default: all cores, 1 CPU per worker). On a cluster a worker
reserves ``worker_cpus`` CPUs (default 4) and there are CPUs / worker_cpus of them; with
``device="cuda"`` one GPU each and as many workers as GPUs.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import ray
import torch

from slidewatch.errors import ConfigError, SlidewatchError
from slidewatch.meta import ModelMeta
from slidewatch.runtime import prepare_model
from slidewatch.scan.score import score_windows

QUEUED_PER_WORKER = 2  # chunks sent to a worker before its first one comes back
CLUSTER_WORKER_CPUS = 4
CONNECT_TIMEOUT_S = 5


class RayWorkerError(SlidewatchError):
    """A Ray worker died or the cluster went away; the partial scan is kept for a resume."""

    resumable = True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


class _Worker:
    """One model replica on a Ray worker (wrapped with ``ray.remote`` at run time)."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: str, threads: int,
                 source: str | None = None, tta: bool = False):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = prepare_model(model, self.device).eval()
        self.meta, self.source, self.tta = meta, source, tta

    def score(self, k: int, scene: str, windows: list, bands: list[int],
              batch: int, stats=None) -> tuple[int, np.ndarray]:
        return k, score_windows(self.model, self.meta, Path(scene), windows, bands, batch,
                                self.device, source=self.source, tta=self.tta, stats=stats)


def check_reachable(address: str) -> None:
    """``host:port`` (or ``ray://host:port``) that does not answer: an error in seconds rather
    than after Ray's minutes of retries."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if "://" in hostport or not host or not port.isdigit():
        return  # auto, a bare host, another scheme: Ray decides
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there "
                          f"({_one_line(exc)}); start one with `ray start --head`, or leave "
                          f"--ray-address out for a local instance") from None


def connect(address: str | None, cpus: int | None) -> bool:
    """Join or start Ray; True when this call started it (shut it down at the end)."""
    if ray.is_initialized():
        return False
    address = address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    kw = {"logging_level": logging.ERROR, "include_dashboard": False}
    try:
        if address is None:
            ray.init(num_cpus=cpus or os.cpu_count() or 1, **kw)
        else:
            check_reachable(address)
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"--ray-address {address}" if address else "--backend ray"
        raise ConfigError(f"{where}: cannot start or join Ray ({_one_line(exc)})") from None
    return True


def worker_layout(device: torch.device, workers: int | None, worker_cpus: int | None,
                  local: bool) -> tuple[int, int, int]:
    """``(workers, CPUs each, GPUs each)`` that fit the cluster's current resources."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    if device.type == "cuda":
        if gpus == 0:
            raise ConfigError("--device cuda: the Ray cluster has no GPUs; use --device cpu")
        n, c = workers or gpus, worker_cpus or max(1, min(CLUSTER_WORKER_CPUS, cpus // gpus))
        if n > gpus:
            raise ConfigError(f"--workers {n}: the Ray cluster has {gpus} GPUs (one per worker)")
    else:
        c = worker_cpus or (1 if local else min(CLUSTER_WORKER_CPUS, max(1, cpus)))
        n = workers or max(1, cpus // c)
    if n * c > cpus:
        raise ConfigError(f"--workers {n} x --worker-cpus {c}: needs {n * c} CPUs, the Ray "
                          f"cluster has {cpus}")
    return n, c, 1 if device.type == "cuda" else 0


class RayScorer:
    """Scores chunks of windows on Ray workers; a context manager (connects, starts the
    workers, and stops them, and a Ray instance it started, on exit)."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: torch.device,
                 batch: int, *, address: str | None = None, workers: int | None = None,
                 worker_cpus: int | None = None, source: str | Path | None = None,
                 tta: bool = False):
        self.model, self.meta, self.device, self.batch = model, meta, device, batch
        self.tta = tta
        self.source = None if source is None else str(source)  # the model folder
        self.address, self.workers, self.worker_cpus = address, workers, worker_cpus
        self.actors: list = []
        self.started = False

    def __enter__(self) -> RayScorer:
        local = self.address is None and not os.environ.get("RAY_ADDRESS")
        cpus = self.workers * (self.worker_cpus or 1) if self.workers else None
        self.started = connect(self.address, cpus)
        try:
            n, c, g = worker_layout(self.device, self.workers, self.worker_cpus,
                                    local and self.started)
            remote = ray.remote(_Worker).options(num_cpus=c, num_gpus=g, max_restarts=0)
            on_cpu = all(t.device.type == "cpu" for t in self.model.state_dict().values())
            model = ray.put(self.model if on_cpu else copy.deepcopy(self.model).cpu())
            self.actors = [remote.remote(model, self.meta, self.device.type, c, self.source,
                                         self.tta) for _ in range(n)]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.started:
            ray.shutdown()
            self.started = False

    def scores(self, path: Path, ds, bands: Sequence[int], chunks: Iterable[list],
               stats=None) -> Iterator[np.ndarray]:
        """P(positive) per window for each list of windows of ``chunks``, in order; ``ds``
        (the driver's open scene) is not used: the workers open ``path`` themselves.
        ``stats``: the scene's statistics (computed once by the driver) for a model that
        standardises."""
        todo = enumerate(chunks)
        free = [a for a in self.actors for _ in range(QUEUED_PER_WORKER)]
        running: dict = {}  # ObjectRef -> actor
        done: dict[int, np.ndarray] = {}  # chunk position -> probabilities, waiting in order
        nxt, exhausted = 0, False
        try:
            while True:
                while free and not exhausted:
                    item = next(todo, None)
                    if item is None:
                        exhausted = True
                        break
                    actor = free.pop(0)
                    ref = actor.score.remote(item[0], str(path), item[1], list(bands), self.batch,
                                             stats)
                    running[ref] = actor
                if nxt in done:
                    yield done.pop(nxt)
                    nxt += 1
                    continue
                if not running:
                    return
                ready, _ = ray.wait(list(running), num_returns=1)
                free.append(running.pop(ready[0]))
                k, probs = self._get(ready[0])
                done[k] = probs
        finally:
            for ref in running:
                ray.cancel(ref)

    @staticmethod
    def _get(ref) -> tuple[int, np.ndarray]:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SlidewatchError):
                raise cause from None
            raise RayWorkerError(f"a Ray worker failed ({_one_line(cause or exc)}); run the "
                                 f"same command again to resume") from None
        except ray.exceptions.RayError as exc:
            raise RayWorkerError(f"a Ray worker died ({_one_line(exc)}); run the same command "
                                 f"again to resume") from None
