"""Several training processes under ``torchrun`` (DistributedDataParallel).

``torchrun`` starts one process per GPU (or several on CPU) and sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`session` reads them: with
``WORLD_SIZE`` > 1 it opens the process group (NCCL on ``cuda:LOCAL_RANK``, gloo on CPU) and
closes it again, also on errors; otherwise it yields a one-process :class:`DistContext` and every
helper here does nothing (single-process training is unchanged, bit for bit).

How the ranks agree (see ``docs/distributed.md``):

- data: each rank reads the whole dataset and computes the same split and normalisation; a
  ``DistributedSampler`` (seeded by the config seed, ``set_epoch`` every epoch) gives each rank
  its share; per-rank batch size and ``steps_per_epoch``.
- gradients: DDP averages them; the wrapper is rebuilt when the trainable set changes.
- metrics: training outputs are gathered, validation logits are gathered in dataset order, and
  the epoch's row (which drives early stopping and the best epoch) is broadcast from rank 0.
- files: only rank 0 writes. :func:`on_main`, :func:`everywhere` and :func:`main_first` run a
  step and then let every rank learn whether any rank failed, so an error on one rank stops all
  of them instead of leaving them waiting in the next collective.

Test hook: with ``SLIDEWATCH_DDP_DUMP_DIR`` set, every rank writes its final weights to
``<dir>/rank<N>.safetensors`` (used by the tests to check that the ranks agree).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from slidewatch.errors import ConfigError, SlidewatchError

DUMP_ENV = "SLIDEWATCH_DDP_DUMP_DIR"
# Coordination (errors, metric rows) runs on a CPU gloo group with a long timeout: rank 0 may
# tile scene folders for a while before the other ranks can go on.
CONTROL_TIMEOUT = datetime.timedelta(hours=2)


class RankFailed(SlidewatchError):
    """Another rank failed; this one stops too (the message names the rank and its error)."""


@dataclass
class DistContext:
    """Where this process stands: rank, world size and its device (``None``: one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None
    control: Any = None  # the gloo group for coordination

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE: expected an integer, got {raw!r}") from None


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` for ``--device name`` under torchrun."""
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise ConfigError(f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; "
                          "use --device cuda (or auto, or cpu)")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise ConfigError("--device cuda: CUDA is not available on this machine; use cpu")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"torchrun: local rank {local_rank} has no GPU (this machine has "
                          f"{count}); use --nproc_per_node {count} or fewer")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def session(device_name: str = "auto") -> Iterator[DistContext]:
    """The process group for one training run when launched by torchrun; closed at the end.

    A group the caller opened already is used as it is and left open.
    """
    world = env_world_size()
    if world <= 1:
        yield DistContext()
        return
    if not dist.is_available():
        raise ConfigError("torchrun: this torch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device_name, local_rank)
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    control = None
    try:
        control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        yield DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                          local_rank=local_rank, device=device, backend=dist.get_backend(),
                          control=control)
    finally:
        if owned:
            dist.destroy_process_group()
        elif control is not None:
            dist.destroy_process_group(control)


# --------------------------------------------------------------- agreeing on success or failure


def _outcome(ctx: DistContext, err: Exception | None) -> None:
    """Every rank learns whether any rank failed; then all of them raise."""
    message = None if err is None else (
        str(err) if isinstance(err, SlidewatchError) else f"{type(err).__name__}: {err}")
    failed = [(r, m) for r, m in enumerate(gather_objects(ctx, message)) if m is not None]
    if err is not None:
        raise err
    if failed:
        rank, message = failed[0]
        raise RankFailed(f"rank {rank} failed: {message}")


def _agreed(ctx: DistContext, run_here: bool, fn: Callable, args, kwargs):
    """Run ``fn`` where ``run_here``; if it failed on any rank, raise on every rank."""
    result, err = None, None
    if run_here:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised below, once the other ranks know
            err = exc
    _outcome(ctx, err)
    return result


def everywhere(ctx: DistContext, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` on every rank; if it fails on any rank, it fails on all."""
    if not ctx.enabled:
        return fn(*args, **kwargs)
    return _agreed(ctx, True, fn, args, kwargs)


def on_main(ctx: DistContext, fn: Callable, *args, **kwargs):
    """``fn`` on rank 0 only (e.g. writing files); the others wait and fail if it failed."""
    if not ctx.enabled:
        return fn(*args, **kwargs)
    return _agreed(ctx, ctx.is_main, fn, args, kwargs)


def main_first(ctx: DistContext, fn: Callable, *args, **kwargs):
    """``fn`` on rank 0, then on the others (which may read what rank 0 wrote)."""
    if not ctx.enabled:
        return fn(*args, **kwargs)
    result = on_main(ctx, fn, *args, **kwargs)
    if ctx.is_main:
        return everywhere(ctx, lambda: result)
    return everywhere(ctx, fn, *args, **kwargs)


# --------------------------------------------------------------------------- communication


def gather_objects(ctx: DistContext, obj: Any) -> list:
    """``obj`` of every rank, in rank order (pickled, over the CPU group)."""
    if not ctx.enabled:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.control)
    return out


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=ctx.control)
    return box[0]


def gather_rows(ctx: DistContext, t: torch.Tensor, n: int) -> torch.Tensor:
    """Rows scored by the ranks of a ``DistributedSampler(shuffle=False)`` shard, put back in
    dataset order (rank ``r`` holds rows ``r, r + world, ...``; padding rows dropped)."""
    if not ctx.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts, 1).flatten(0, 1)[:n]


def merge_epoch(ctx: DistContext, loss_sum: float, y: np.ndarray, prob: np.ndarray
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """Summed loss, labels and probabilities of one training epoch over all ranks."""
    parts = gather_objects(ctx, (loss_sum, y, prob))
    return (sum(p[0] for p in parts), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def sync_buffers(ctx: DistContext, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if not ctx.enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


# --------------------------------------------------------------------------- model and data


def wrap_model(ctx: DistContext, model: torch.nn.Module,
               previous: torch.nn.Module | None = None) -> torch.nn.Module:
    """DDP around ``model`` for its current trainable set (DDP registers its gradient hooks at
    construction); the hooks of ``previous``, an earlier wrapper, are removed first."""
    from torch.nn.parallel import DistributedDataParallel

    if previous is not None and hasattr(previous, "_remove_autograd_hooks"):
        previous._remove_autograd_hooks()
    ids = [ctx.device.index] if ctx.device is not None and ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sampler(ctx: DistContext, ds: Dataset, *, shuffle: bool, seed: int
            ) -> DistributedSampler | None:
    """This rank's share of ``ds`` (equal sizes on every rank, padded by repeating images)."""
    if not ctx.enabled:
        return None
    return DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                              seed=seed, drop_last=False)


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(1)[0])


def start_epoch(ctx: DistContext, loader: DataLoader, seed: int, epoch: int) -> None:
    """New shuffle for ``epoch`` (the same on every rank) and per-rank random streams for
    augmentation and dropout that depend only on (seed, epoch, rank), so ``--resume`` repeats
    them."""
    if not ctx.enabled:
        return
    from slidewatch.runtime import seed_everything

    loader.sampler.set_epoch(epoch)
    s = rank_seed(seed, epoch, ctx.rank)
    seed_everything(s)
    if loader.generator is not None:
        loader.generator.manual_seed(s)


def describe(ctx: DistContext, batch_size: int) -> dict:
    """What the model metadata records about a multi-process run (nothing for one process)."""
    if not ctx.enabled:
        return {}
    return {"distributed": {"world_size": ctx.world_size, "backend": ctx.backend,
                            "per_rank_batch_size": batch_size,
                            "global_batch_size": batch_size * ctx.world_size}}


def debug_dump(ctx: DistContext, model: torch.nn.Module) -> None:
    """Test hook: with ``SLIDEWATCH_DDP_DUMP_DIR`` set, write this rank's weights there."""
    folder = os.environ.get(DUMP_ENV)
    if not folder:
        return
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_file(state, str(Path(folder) / f"rank{ctx.rank}.safetensors"))
