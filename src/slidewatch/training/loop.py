"""The training loop: phase 1 (frozen backbone, head only), phase 2 (top layers unfrozen).

Reads top to bottom: :func:`train` prepares data and model (:mod:`slidewatch.trainsetup`),
then runs the phases epoch by epoch, keeps the best epoch by the chosen validation metric,
stops early, checkpoints after every epoch for ``--resume``, and writes the model folder.
Launched by ``torchrun`` it trains on every rank with DistributedDataParallel and rank 0 writes
(:mod:`slidewatch.distributed`, ``docs/distributed.md``).
"""

from __future__ import annotations

import copy
import itertools
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from slidewatch.config.train import PhaseConfig, TrainConfig, dump_yaml
from slidewatch.config.train import validate as validate_config
from slidewatch.errors import ConfigError, DataError
from slidewatch.evaluation import metrics
from slidewatch.evaluation.calibration import fit_temperature
from slidewatch.evaluation.pixels import PixelCounts
from slidewatch.inference.forward import forward_logits, forward_outputs
from slidewatch.io_utils import atomic_write_text
from slidewatch.models.checkpoint import save_model
from slidewatch.models.freezing import (
    freeze_backbone,
    set_batchnorm_eval,
    trainable_summary,
    unfreeze_top_blocks,
    unfreeze_top_layers,
)
from slidewatch.runtime import no_progress
from slidewatch.training import distributed, hard_negatives, segment
from slidewatch.training.curves import plot_curves
from slidewatch.training.setup import RESUME_FILE, Setup, prepare, save_resume

LOWER_IS_BETTER = {"val_loss"}
# parts of the training loss reported per epoch (unweighted): a multi-modal model's size loss,
# a classifier's training-only mask loss
REPORTED_PARTS = {"loss_size", "loss_mask"}


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    rank: int = 0  # under torchrun: this process's rank (0 wrote the model folder)


def lr_at(step: int, total: int, base: float, warmup: int, schedule: str) -> float:
    """Learning rate at optimiser step ``step`` of ``total`` (linear warm-up, then schedule)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
    return base * (0.1 ** int(t * 3))  # "step": three tenfold drops over the phase


def make_optimizer(cfg: TrainConfig, params, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    wd = o.weight_decay
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if o.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=lr, weight_decay=wd)
    if o.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=o.momentum)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=o.momentum, nesterov=True)


def steps_per_epoch(s: Setup) -> int:
    full = len(s.train_loader)
    return min(full, s.cfg.steps_per_epoch) if s.cfg.steps_per_epoch else full


def configure_phase(model: torch.nn.Module, phase: int, p: PhaseConfig) -> list[str]:
    """Set ``requires_grad`` for a phase; returns the names of the unfrozen layers."""
    freeze_backbone(model)
    if phase == 1:
        return []
    if p.unfreeze_blocks is not None:
        return unfreeze_top_blocks(model, p.unfreeze_blocks)
    return unfreeze_top_layers(model, p.unfreeze_layers if p.unfreeze_layers is not None else 0)


def score_of(row: dict, metric: str) -> float:
    value = row[metric]
    return -value if metric in LOWER_IS_BETTER else value


def _epoch_metrics(prefix: str, loss: float, y: np.ndarray, prob: np.ndarray,
                   threshold: float) -> dict:
    if len(y) == 0:
        return {}
    r = metrics.binary_report(y, prob, threshold)
    keys = ("accuracy", "precision", "recall", "f1", "f2")
    return {f"{prefix}_loss": loss, **{f"{prefix}_{k}": r[k] for k in keys}}


def train_one_epoch(s: Setup, optimizer, step0: int, total: int, base_lr: float,
                    progress: Callable, desc: str, bn_eval: bool) -> dict:
    """One pass over the training data (from optimiser step ``step0`` of the phase).

    ``bn_eval``: BatchNorm layers run in inference mode with frozen statistics (always in
    phase 1, as Keras does for a frozen base; in phase 2 whenever the backbone is pretrained).
    """
    model = s.train_model if s.train_model is not None else s.model
    cfg, dev = s.cfg, s.device
    model.train()
    if bn_eval:
        set_batchnorm_eval(model)
    if s.segment is not None:
        return _train_segment_epoch(s, model, optimizer, step0, total, base_lr, progress, desc)
    losses, ys, probs = [], [], []
    part_sums: dict[str, float] = {}  # the parts of the loss a history row reports
    step = step0
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch(s))
    steps = steps_per_epoch(s)
    for batch in progress(itertools.islice(s.train_loader, steps), desc=desc, total=steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, base_lr, warmup, cfg.optim.schedule)
        y = batch["label"].to(dev)
        logits, loss, parts = batch_loss(s, model, batch, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item() * len(y))
        for key in REPORTED_PARTS.intersection(parts):
            part_sums[key] = part_sums.get(key, 0.0) + parts[key] * len(y)
        ys.append((batch["label"] == s.meta.positive_index).numpy())
        probs.append(torch.softmax(logits.detach(), 1)[:, s.meta.positive_index].cpu().numpy())
    loss_sum, y_all, p_all = sum(losses), np.concatenate(ys), np.concatenate(probs)
    if s.dist.enabled:  # the metrics of the whole epoch, all ranks' batches together
        loss_sum, y_all, p_all = distributed.merge_epoch(s.dist, loss_sum, y_all, p_all)
    row = _epoch_metrics("train", loss_sum / len(y_all), y_all, p_all, cfg.threshold)
    for key, total_part in sorted(part_sums.items()):
        if s.dist.enabled:
            total_part = sum(distributed.gather_objects(s.dist, total_part))
        row[f"train_{key}"] = total_part / len(y_all)
    return row


def _train_segment_epoch(s: Setup, model: torch.nn.Module, optimizer, step0: int, total: int,
                         base_lr: float, progress: Callable, desc: str) -> dict:
    """One epoch of a segmentation model: the pixel loss, pooled pixel scores."""
    counts, loss_sum, n = PixelCounts(), 0.0, 0
    warmup = int(s.cfg.optim.warmup_epochs * steps_per_epoch(s))
    steps = steps_per_epoch(s)
    for step, batch in enumerate(progress(itertools.islice(s.train_loader, steps), desc=desc,
                                          total=steps), start=step0):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, base_lr, warmup, s.cfg.optim.schedule)
        logits, loss = segment.batch_loss(s.segment, model, batch, s.meta, s.device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(logits)
        n += len(logits)
        counts = counts + segment.counts_of(logits, batch, s.meta.threshold)
    return segment.pixel_row("train", loss_sum / max(n, 1), counts)


def batch_loss(s: Setup, model: torch.nn.Module, batch: dict, y: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logits, loss and loss parts of one training batch: the weighted cross-entropy for a
    plain model; landslide + size loss with their weights for a multi-modal one."""
    if s.multimodal is None:
        logits = forward_logits(model, batch["image"], s.meta, s.device)
        loss = s.loss_fn(logits, y)
        if s.mask_head is None:
            return logits, loss, {}
        mask_loss = s.mask_head.loss(batch, s.device)  # the features of this very pass
        return logits, loss + s.mask_head.weight * mask_loss, {"loss_mask": mask_loss.item()}
    from slidewatch.training.multimodal import task_loss

    out = forward_outputs(model, batch, s.meta, s.device)
    loss, parts = task_loss(s, out, batch)
    return out["logits"], loss, parts


@torch.no_grad()
def val_all(s: Setup) -> dict[str, torch.Tensor]:
    """Every output of the whole validation split, in split order: ``logits`` and ``label``,
    plus ``size_logits`` and ``size_label`` for a size head (under torchrun each rank scores
    its share and every rank receives all of them)."""
    s.model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in s.val_loader:
        if s.multimodal is None:
            out = {"logits": forward_logits(s.model, batch["image"], s.meta, s.device)}
        else:
            out = forward_outputs(s.model, batch, s.meta, s.device)
        out["label"] = batch["label"]
        if "size_label" in batch:
            out["size_label"] = batch["size_label"]
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
    z = torch.cat(parts.pop("logits"))
    result = {"logits": z, **{k: torch.cat(v).to(z.device) for k, v in parts.items()}}
    if s.dist.enabled:
        n = len(s.val_loader.dataset)
        result = {k: distributed.gather_rows(s.dist, v, n) for k, v in result.items()}
    return result


def val_outputs(s: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the whole validation split, in split order."""
    out = val_all(s)
    return out["logits"], out["label"]


@torch.no_grad()
def validate(s: Setup) -> dict:
    """Loss (same weighted loss as training) and scores on the validation split."""
    if s.val_loader is None:
        return {}
    if s.segment is not None:
        return segment.validate(s)[0]
    out = val_all(s)
    z, y = out["logits"], out["label"]
    if s.multimodal is None:
        loss, extra = float(s.loss_fn(z, y)), {}
    else:  # the training loss (landslide + size), size loss and size-class scores
        from slidewatch.training.multimodal import val_scores

        loss, extra = val_scores(s, out)
    prob = torch.softmax(z, 1)[:, s.meta.positive_index].cpu().numpy()
    pos = (y == s.meta.positive_index).cpu().numpy()
    return {**_epoch_metrics("val", loss, pos, prob, s.cfg.threshold), **extra}


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          progress: Callable = no_progress, log: Callable[[str], None] = lambda m: None
          ) -> TrainResult:
    """Train a classifier as ``cfg`` says and write the model folder ``out_dir``.

    If the run fails before its first checkpoint, a folder it created is removed again.
    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; only rank 0 logs and writes.
    """
    out_dir = Path(out_dir)
    validate_config(cfg)
    with distributed.session(cfg.device) as ctx:
        if not ctx.is_main:
            progress, log = no_progress, _quiet
        created = ctx.is_main and not out_dir.exists()
        try:
            return _train(cfg, out_dir, resume=resume, progress=progress, log=log, ctx=ctx)
        except BaseException:
            if created and out_dir.is_dir() and not (out_dir / RESUME_FILE).exists():
                shutil.rmtree(out_dir, ignore_errors=True)
            raise


def _quiet(message: str) -> None:
    """The log of the ranks other than 0."""


def _train(cfg: TrainConfig, out_dir: Path, *, resume: bool, progress: Callable,
           log: Callable[[str], None], ctx: distributed.DistContext) -> TrainResult:
    s = prepare(cfg, out_dir, resume=resume, log=log, dist=ctx)
    state, s.resume_state = s.resume_state, None  # applied by prepare
    history = state["history"] if state else []
    best = state["best"] if state else {"score": -math.inf, "epoch": 0, "row": {}, "state": None}
    start_phase, start_epoch = (state["phase"], state["phase_epoch"] + 1) if state else (1, 1)
    metric = cfg.early_stopping_metric if s.val_loader is not None else None
    hard_negatives.check(cfg, s.multimodal is not None, ctx.enabled)
    for phase, p in _phases(cfg):
        if phase < start_phase or p.epochs == 0:
            continue
        if phase == 3:  # the hard-negative pass starts from the best model so far
            resumed = state is not None and phase == start_phase  # weights of the pass
            if best["state"] is not None and not resumed:
                s.model.load_state_dict(best["state"])
            s.meta.extra["hard_negatives"] = hard_negatives.mine(s, log)
        bn_eval = phase == 1 or s.freeze_bn
        unfrozen = configure_phase(s.model, phase, p)
        _wrap_for_phase(s, bn_eval)
        summary = trainable_summary(s.model)
        log(f"phase {phase}: {p.epochs} epochs at lr {p.lr:g}; "
            f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters "
            f"trainable ({len(unfrozen)} backbone layers unfrozen)")
        params = [q for q in s.model.parameters() if q.requires_grad]
        if s.mask_head is not None:  # trained beside the model in every phase
            params += list(s.mask_head.parameters())
        optimizer = make_optimizer(cfg, params, p.lr)
        first = start_epoch if phase == start_phase else 1
        if state and phase == start_phase and state.get("optimizer"):
            _load_optimizer(optimizer, state["optimizer"], out_dir)
        patience = p.patience or cfg.patience
        bad = state["bad_epochs"] if state and phase == start_phase else 0
        total = p.epochs * steps_per_epoch(s)
        for epoch in range(first, p.epochs + 1):
            if bad >= patience:
                break
            row = run_epoch(s, optimizer, phase, p, epoch, len(history) + 1, total, progress,
                            bn_eval)
            check_finite(s, row, phase, p)
            history.append(row)
            score = score_of(row, metric) if metric else row["epoch"]
            if score > best["score"]:
                best = {"score": score, "epoch": row["epoch"], "row": row,
                        "state": copy.deepcopy(s.model.state_dict())}
                bad = 0
            else:
                bad += 1
            log(_epoch_line(row, metric))
            distributed.on_main(ctx, _checkpoint, s, out_dir, history, phase=phase,
                                phase_epoch=epoch, best=best, bad_epochs=bad,
                                optimizer=optimizer)
        state = None
    if "hard_negatives" in s.meta.extra and cfg.hard_negative_keep == "always" and history:
        best = {"score": best["score"], "epoch": history[-1]["epoch"], "row": history[-1],
                "state": copy.deepcopy(s.model.state_dict())}
    if "hard_negatives" in s.meta.extra:  # did the pass improve the validation score?
        kept = best["row"].get("phase") == 3
        s.meta.extra["hard_negatives"]["kept"] = kept
        if not kept:
            log("hard negatives: no epoch of the pass beat the best earlier epoch on "
                f"{metric or 'the last epoch'}; the model is the earlier one")
    result = finish(s, out_dir, history, best, metric, log)
    distributed.debug_dump(ctx, s.model)
    return result


def _phases(cfg: TrainConfig) -> list[tuple[int, PhaseConfig]]:
    """Phase 1 (frozen backbone), phase 2 (fine-tuning) and, with ``hard_negatives``, phase 3:
    the hard-negative pass at phase 2's settings (phase 1's learning rate when phase 2 has no
    epochs)."""
    phases = [(1, cfg.phase1), (2, cfg.phase2)]
    if cfg.hard_negatives > 0:
        base = cfg.phase2 if cfg.phase2.epochs > 0 else cfg.phase1
        phases.append((3, PhaseConfig(epochs=cfg.hard_negative_epochs, lr=base.lr,
                                      unfreeze_layers=cfg.phase2.unfreeze_layers,
                                      unfreeze_blocks=cfg.phase2.unfreeze_blocks,
                                      patience=cfg.hard_negative_epochs + 1)))
    return phases


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict, out_dir: Path) -> None:
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise DataError(f"{out_dir / RESUME_FILE}: its optimizer state does not fit this run "
                        f"({detail}); start again in a new folder") from None


def check_finite(s: Setup, row: dict, phase: int, p: PhaseConfig) -> None:
    """Stop a run whose loss or weights are no longer finite (NaN or inf) after an epoch,
    before anything of it is saved: one line naming the learning rate of the phase."""
    bad = [k for k in ("train_loss", "val_loss") if k in row and not math.isfinite(row[k])]
    if not bad:
        tensors = [t for t in s.model.state_dict().values() if t.is_floating_point()]
        if all(bool(torch.isfinite(t).all()) for t in tensors):
            return
    what = (f"{bad[0].replace('_', ' ')} {row[bad[0]]}" if bad
            else "the weights hold NaN or inf values")
    raise ConfigError(f"--phase{phase}-lr {p.lr:g}: training diverged in epoch {row['epoch']} "
                      f"({what}); use a smaller learning rate (phase{phase}.lr)")


def _wrap_for_phase(s: Setup, bn_eval: bool) -> None:
    """Under torchrun: a DDP wrapper for this phase's trainable set (DDP registers its gradient
    hooks when built, so it is rebuilt after unfreezing). Frozen BatchNorm is frozen first."""
    if not s.dist.enabled:
        return
    if bn_eval:
        set_batchnorm_eval(s.model)
    s.train_model = distributed.wrap_model(s.dist, s.model, previous=s.train_model)


def run_epoch(s: Setup, optimizer, phase: int, p: PhaseConfig, epoch: int, number: int,
              total: int, progress: Callable, bn_eval: bool) -> dict:
    """Train epoch ``epoch`` of ``phase`` (``number`` of the run), validate; the history row.

    Under torchrun the row is rank 0's, so every rank takes the same early-stopping and
    best-epoch decisions.
    """
    t0 = time.perf_counter()
    distributed.start_epoch(s.dist, s.train_loader, s.cfg.seed, number - 1)
    step0 = (epoch - 1) * steps_per_epoch(s)
    try:
        tm = train_one_epoch(s, optimizer, step0, total, p.lr, progress,
                             f"phase {phase} epoch {epoch}/{p.epochs}", bn_eval=bn_eval)
    except RuntimeError as exc:  # torch's optimisers: "value cannot be converted ... overflow"
        if "overflow" not in str(exc):
            raise
        raise ConfigError(f"--phase{phase}-lr {p.lr:g}: too large, the optimiser's step "
                          f"overflows in epoch {number}; use a smaller learning rate "
                          f"(phase{phase}.lr)") from None
    distributed.sync_buffers(s.dist, s.model)  # one set of BatchNorm statistics
    vm = validate(s)
    row = {"epoch": number, "phase": phase, "phase_epoch": epoch,
           "lr": optimizer.param_groups[0]["lr"], **tm, **vm,
           "seconds": round(time.perf_counter() - t0, 2)}
    return distributed.broadcast_object(s.dist, row)


def _checkpoint(s: Setup, out_dir: Path, history: list[dict], **state) -> None:
    write_history(out_dir, history)
    save_resume(s, history=history, **state)


def _epoch_line(row: dict, metric: str | None) -> str:
    if "train_iou" in row:  # a segmentation run: pixel scores of the landslide class
        parts = [f"epoch {row['epoch']} (phase {row['phase']})",
                 f"loss {row['train_loss']:.4f}", f"iou {row['train_iou']:.3f}"]
        if "val_loss" in row:
            parts += [f"val_loss {row['val_loss']:.4f}", f"val_iou {row['val_iou']:.3f}",
                      f"val_f1 {row['val_f1']:.3f}", f"val_precision {row['val_precision']:.3f}",
                      f"val_recall {row['val_recall']:.3f}"]
        return " | ".join([*parts, f"{row['seconds']:.1f}s"])
    parts = [f"epoch {row['epoch']} (phase {row['phase']})",
             f"loss {row['train_loss']:.4f}", f"acc {row['train_accuracy']:.3f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_accuracy']:.3f}",
                  f"val_recall {row['val_recall']:.3f}", f"val_f1 {row['val_f1']:.3f}"]
    if "val_size_macro_f1" in row:
        parts.append(f"val_size_f1 {row['val_size_macro_f1']:.3f}")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)


def write_history(out_dir: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join(_fmt(row.get(k, "")) for k in keys))
    atomic_write_text(out_dir / "history.csv", "\n".join(lines) + "\n")


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def recall_threshold(s: Setup, target: float) -> float:
    """Highest threshold reaching ``target`` recall on the validation split (best model)."""
    if s.val_loader is None:
        raise ConfigError("target_recall: needs a validation split (val_fraction > 0)")
    z, y = val_outputs(s)
    prob = torch.softmax(z / s.meta.temperature, 1)[:, s.meta.positive_index].cpu().numpy()
    labels = (y == s.meta.positive_index).cpu().numpy()
    if not labels.any():
        raise ConfigError("target_recall: the validation split has no landslide images")
    return float(np.clip(metrics.threshold_for_recall(labels, prob, target), 1e-4, 0.9999))


def _validation_regions(s: Setup) -> dict:
    """Which regions the validation split holds, and whether training saw them."""
    val = list(s.data_summary.get("val_regions", []))
    seen = set(s.data_summary.get("train_regions", []))
    return {"val_regions": val, "unseen_regions": bool(val) and not (set(val) & seen)}


def calibrate(s: Setup, log: Callable[[str], None]) -> float:
    """Temperature scaling fitted on the validation split (pixels for a segmentation model,
    tiles for a classifier); the fit is recorded in the model's ``calibration``."""
    if s.val_loader is None:
        raise ConfigError("calibration temperature: needs a validation split (val_fraction "
                          "> 0 or val_regions)")
    if s.segment is not None:
        z, y = segment.val_pixels(s)
        unit = "pixels"
    else:
        logits, labels = val_outputs(s)
        z, y = logits.cpu().double().numpy(), labels.cpu().numpy()
        unit = "tiles"
    t, fit = fit_temperature(z, y)
    where = _validation_regions(s)
    s.meta.extra["calibration"] = {"method": "temperature", "temperature": t,
                                   "fitted_on": f"validation {unit}", "n": int(len(y)),
                                   **{k: round(v, 6) for k, v in fit.items()}, **where}
    log(f"calibration: temperature {t:.3f} on {len(y):,} validation {unit} (NLL "
        f"{fit['nll_before']:.4f} -> {fit['nll_after']:.4f}; validation regions "
        f"{', '.join(where['val_regions']) or 'none'})")
    return t


def finish(s: Setup, out_dir: Path, history: list[dict], best: dict, metric: str | None,
           log: Callable[[str], None] = lambda m: None) -> TrainResult:
    """Restore the best epoch, calibrate, set the tile rule and threshold, and write the model
    folder, history, curves and config."""
    if s.mask_head is not None:  # training only: the model folder is a plain classifier's
        s.mask_head.remove()
    if best["state"] is not None:
        s.model.load_state_dict(best["state"])
    if s.cfg.calibration == "temperature":
        s.meta.temperature = calibrate(s, log)
    target = s.cfg.target_recall
    if s.segment is not None and target is not None:  # tile rule and threshold together
        s.meta.segmentation, detail = segment.recall_rule(s, target, log)
        s.meta.extra["threshold_source"] = {
            **detail, "threshold": s.meta.threshold, "temperature": s.meta.temperature,
            **_validation_regions(s)}
    elif s.segment is not None:  # the tile rule, chosen on validation with the best epoch
        s.meta.segmentation = segment.tile_rule(s, log)
    elif target is not None:
        s.meta.threshold = recall_threshold(s, target)
        s.meta.extra["threshold_source"] = {
            "rule": f"highest threshold reaching recall {target:g} on the validation split",
            "threshold": s.meta.threshold, "temperature": s.meta.temperature,
            **_validation_regions(s)}
        log(f"threshold {s.meta.threshold:.4f}: recall {target:g} on the validation split")
    s.meta.extra.update({
        "best_epoch": best["epoch"],
        "early_stopping_metric": metric,
        "best_metrics": {k: v for k, v in best["row"].items() if k not in ("lr",)},
        "training": s.config_dict,
        "data": s.data_summary,
        **distributed.describe(s.dist, s.cfg.batch_size),
    })
    distributed.on_main(s.dist, _write_model_folder, s, out_dir, history)
    return TrainResult(out_dir, best["epoch"], best["row"], history, rank=s.dist.rank)


def _write_model_folder(s: Setup, out_dir: Path, history: list[dict]) -> None:
    save_model(out_dir, s.model, s.meta)
    write_history(out_dir, history)
    atomic_write_text(out_dir / "config.yaml", dump_yaml(s.cfg))
    plot_curves(history, out_dir / "curves.png")
    (out_dir / RESUME_FILE).unlink(missing_ok=True)
