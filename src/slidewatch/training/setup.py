"""Everything the training loop needs, prepared from a config: data, split, model, loss.

Kept apart from :mod:`slidewatch.train` so the loop itself reads top to bottom.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from slidewatch.config.train import TrainConfig, dump_yaml, to_dict, validate
from slidewatch.data.dataset import TileDataset
from slidewatch.data.folders import Sample, load_datasets
from slidewatch.data.inputs import image_dataset
from slidewatch.data.masks import TileMasks
from slidewatch.data.readers import probe
from slidewatch.data.splits import Split, save_split, split_for
from slidewatch.data.standardize import standardizer
from slidewatch.data.tiling import is_scene_folder, tile_scenes
from slidewatch.data.transforms import EvalTransform, TrainTransform
from slidewatch.errors import ConfigError, DataError, WeightsError
from slidewatch.io_utils import (
    atomic_path,
    expand_path,
    foreign_entries,
    remove_stale_temporaries,
)
from slidewatch.meta import META_FILE, WEIGHTS_FILE, ModelMeta
from slidewatch.models import build_model, mixstyle, model_data_config
from slidewatch.models.checkpoint import load_init_model
from slidewatch.runtime import prepare_model, resolve_device, seed_everything, worker_init
from slidewatch.training.distributed import (
    DistContext,
    everywhere,
    main_first,
    on_main,
    sampler,
)
from slidewatch.training.mask_loss import MaskHead
from slidewatch.training.multimodal import MultiModalSetup, prepare_multimodal
from slidewatch.training.segment import SegmentSetup

RESUME_FILE = "resume.pt"
# what a training run writes into its --out folder (a folder holding only these is ours)
RUN_FILES = ("tiles", "split.json", "history.csv", "config.yaml", "curves.png", META_FILE,
             WEIGHTS_FILE, RESUME_FILE)
# the entries of resume.pt and their types (a file without them is not ours)
RESUME_KEYS = {"config": str, "phase": int, "phase_epoch": int, "history": list, "best": dict,
               "bad_epochs": int, "model": dict, "optimizer": dict, "rng": torch.Tensor,
               "loader_rng": torch.Tensor, "mean": list, "std": list}


@dataclass
class Setup:
    cfg: TrainConfig
    model: torch.nn.Module
    meta: ModelMeta
    device: torch.device
    train_loader: DataLoader
    val_loader: DataLoader | None
    loss_fn: torch.nn.Module
    config_dict: dict
    data_summary: dict
    out_dir: Path
    freeze_bn: bool = True  # pretrained backbones keep their BatchNorm statistics
    dist: DistContext = field(default_factory=DistContext)  # this process under torchrun
    train_model: torch.nn.Module | None = None  # the DDP wrapper of ``model`` under torchrun
    multimodal: MultiModalSetup | None = None  # tabular / terrain / size inputs (None: plain)
    size_weights: torch.Tensor | None = None  # size-class weights of the size loss (balanced)
    resume_state: dict | None = None  # the resume.pt of --resume, checked and applied
    split_record: tuple | None = None  # (samples, split): split.json, written once all is checked
    segment: SegmentSetup | None = None  # task segment: loss settings, validation tile labels
    train_samples: list | None = None  # the training split's samples (the hard-negative pool)
    mask_head: MaskHead | None = None  # the training-only mask loss (mask_loss > 0)


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    """The output folder: new, empty or a run of ours (tiles and records of a run that never
    reached its first checkpoint); a model or an interrupted run only with ``resume``.
    Temporaries that killed runs left in it are removed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    if resume:
        if not (out_dir / RESUME_FILE).is_file():
            raise ConfigError(f"--resume: {out_dir} holds no interrupted run ({RESUME_FILE})")
    elif (out_dir / META_FILE).exists() or (out_dir / RESUME_FILE).exists():
        raise ConfigError(f"--out {out_dir}: already holds a model or an interrupted run; "
                          "choose another folder, or pass --resume to continue it")
    else:
        foreign = foreign_entries(out_dir, RUN_FILES)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(f"--out {out_dir}: exists and holds files that are not a "
                              f"slidewatch training run ({shown}); choose a new or empty folder")
    for folder in (out_dir, out_dir / "tiles"):
        remove_stale_temporaries(folder)


def _resume_problem(state) -> str | None:
    """What makes ``state`` (a loaded resume.pt) not one of ours, or None."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a run's state"
    for key, kind in RESUME_KEYS.items():
        if not isinstance(state.get(key), kind):
            return f"no valid '{key}'"
    if state["phase"] not in (1, 2, 3):  # 3: the hard-negative pass
        return f"phase {state['phase']}"
    if not {"score", "epoch", "row", "state"} <= set(state["best"]):
        return "no valid 'best'"
    stats = [*state["mean"], *state["std"]]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats):
        return "mean/std not finite numbers"
    return None


def read_resume(out_dir: Path, cfg: TrainConfig) -> dict:
    """The state of the interrupted run in ``out_dir``, checked before anything is written:
    one line when it is damaged, not ours, or saved with other settings."""
    path = out_dir / RESUME_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise DataError(f"{path}: cannot read the interrupted run ({exc.__class__.__name__}); "
                        "start again in a new folder") from None
    bad = _resume_problem(state)
    if bad:
        raise DataError(f"{path}: not an interrupted slidewatch run ({bad}); start again in a "
                        "new folder")
    if state["config"] != dump_yaml(cfg):
        raise ConfigError(f"--resume: the settings differ from those of the run in {out_dir}; "
                          "resume with the same config and flags")
    return state


def resolve_paths(cfg: TrainConfig, out_dir: Path, log: Callable, tile: bool = True
                  ) -> list[Path]:
    """Dataset roots: ``$VARS`` expanded; scene folders tiled into ``<out>/tiles/<name>``
    (``tile=False``: the tiles must exist already, as for the ranks after rank 0)."""
    roots = []
    for raw in cfg.data.paths:
        path = expand_path(raw, "data.paths")
        if is_scene_folder(path):
            tiles = out_dir / "tiles" / path.name
            if not (tiles / "tiles.csv").is_file():
                if not tile:
                    raise DataError(f"{tiles}: rank 0 tiled {path} there, but this process "
                                    "cannot see the tiles; put --out on a filesystem shared by "
                                    "every node, or tile first with `slidewatch data tiles`")
                d = cfg.data
                summary = tile_scenes([path], tiles, tile=d.tile, stride=d.stride,
                                      min_landslide=d.min_landslide, classes=tuple(d.classes))
                log(f"tiled {path} -> {tiles}: {summary.total} tiles")
            path = tiles
        roots.append(path)
    return roots


def _bands(samples: list[Sample]) -> int:
    """Band count shared by all samples (read from file headers)."""
    seen: dict[int, Path] = {}
    for s in samples:
        info = probe(s.path)
        seen.setdefault(info.bands, s.path)
    if len(seen) > 1:
        (b1, p1), (b2, p2) = list(seen.items())[:2]
        raise DataError(f"{p2}: has {b2} bands but {p1} has {b1}; a dataset needs one band count")
    return next(iter(seen))


def band_statistics(ds: TileDataset, limit: int = 512,
                    seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-band mean and std over (up to ``limit``) images of ``ds``, in unit scale. Values
    that are not finite (pixels too large for the scale) are a DataError naming the image."""
    pick = np.random.default_rng(seed).permutation(len(ds))[:limit]
    total = sq = None
    count = 0
    for i in pick:
        x = torch.from_numpy(ds.unit_image(int(i))).double().flatten(0, 1)  # (pixels, bands)
        s1, s2 = x.sum(0), (x * x).sum(0)
        finite = torch.isfinite(s1) & torch.isfinite(s2)
        if not finite.all():
            band = int((~finite).nonzero()[0]) + 1
            dem = " (terrain channels from the DEM included)" if ds.dem is not None else ""
            raise DataError(f"{ds.samples[int(i)].path}: band {band} of {len(finite)}{dem} "
                            "gives non-finite band statistics; check the file or --scale")
        total = s1 if total is None else total + s1
        sq = s2 if sq is None else sq + s2
        count += x.shape[0]
    if total is None or count == 0:
        raise DataError("--data: no pixels to compute the band statistics from")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(1e-12).sqrt()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise DataError(f"--data: the band statistics of the training images are not finite "
                        f"(mean {_short(mean)}, std {_short(std)}); check the images or --scale")
    return mean.tolist(), std.clamp_min(1e-6).tolist()


def _short(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values.tolist()[:4]) + "]"


def _build(cfg: TrainConfig, in_chans: int, log: Callable) -> tuple[torch.nn.Module, ModelMeta]:
    """The model and the parts of its metadata that do not depend on data statistics."""
    m, classes = cfg.model, cfg.data.classes
    if m.init_from:
        model, prev = load_init_model(m.init_from, cfg.task, cfg.data.standardize)
        if len(prev.classes) != len(classes) or prev.in_chans != in_chans:
            raise ConfigError(f"--init-from {m.init_from}: that model takes {prev.in_chans} bands "
                              f"and {len(prev.classes)} classes; this data has {in_chans} and "
                              f"{len(classes)}")
        log(f"continuing from {m.init_from} ({prev.architecture})")
        prev.classes = list(classes)
        prev.extra = {"init_from": str(m.init_from)}
        prev.weights_source = f"init_from:{m.init_from}"
        prev.threshold = cfg.threshold
        if m.input_size:
            prev.input_size = m.input_size
        return model, prev
    try:
        model = build_model(m.name, num_classes=len(classes), in_chans=in_chans,
                            weights=m.weights, drop_rate=m.drop_rate)
    except WeightsError as exc:
        if m.weights_fallback != "none" or str(m.weights).lower() != "imagenet":
            raise
        log(f"warning: {exc}")
        log(f"warning: model.weights_fallback: none -> {m.name} starts from random weights")
        model = build_model(m.name, num_classes=len(classes), in_chans=in_chans, weights="none",
                            drop_rate=m.drop_rate)
        model.slidewatch_weights.source = "none (imagenet unavailable; weights_fallback)"
    dc = model_data_config(m.name, model)
    meta = ModelMeta(architecture=m.name, classes=list(classes), in_chans=in_chans,
                     input_size=m.input_size or int(dc["input_size"][-1]),
                     mean=list(dc["mean"]), std=list(dc["std"]), scale=cfg.data.scale,
                     grayscale=cfg.augment.grayscale, threshold=cfg.threshold,
                     drop_rate=m.drop_rate, standardize=cfg.data.standardize,
                     weights_source=getattr(getattr(model, "slidewatch_weights", None), "source",
                                            str(m.weights)))
    return model, meta


def _summary(cfg: TrainConfig, samples: list[Sample], split: Split) -> dict:
    def counts(idx):
        c = Counter(cfg.data.classes[samples[i].label] for i in idx)
        return dict(sorted(c.items()))

    regions = Counter((samples[i].region, cfg.data.classes[samples[i].label]) for i in split.train)
    return {"paths": list(cfg.data.paths), "split_by": cfg.data.split_by,
            "train": counts(split.train), "val": counts(split.val), "test": counts(split.test),
            "train_regions": sorted({r for r, _ in regions}),
            "val_regions": sorted({samples[i].region for i in split.val}),
            "holdout_regions": list(cfg.data.holdout_regions)}


def class_weights(cfg: TrainConfig, labels: list[int]) -> torch.Tensor:
    k = len(cfg.data.classes)
    if cfg.class_weights == "none":
        return torch.ones(k)
    if isinstance(cfg.class_weights, list):
        return torch.tensor(cfg.class_weights, dtype=torch.float32)
    counts = np.bincount(labels, minlength=k).astype(float)
    if (counts == 0).any():
        missing = cfg.data.classes[int(np.argmin(counts))]
        raise DataError(f"--data: the training split has no '{missing}' images")
    return torch.tensor(len(labels) / (k * counts), dtype=torch.float32)


def _loader(ds: TileDataset, cfg: TrainConfig, device: torch.device, shuffle: bool,
            ctx: DistContext) -> DataLoader:
    """Batches of ``ds``; under torchrun only this rank's share (a ``DistributedSampler``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    nw = cfg.data.num_workers
    part = sampler(ctx, ds, shuffle=shuffle, seed=cfg.seed)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle and part is None,
                      sampler=part, generator=gen,
                      num_workers=nw, worker_init_fn=worker_init, persistent_workers=nw > 0,
                      pin_memory=device.type == "cuda")


def _output_and_roots(cfg: TrainConfig, out_dir: Path, resume: bool, log: Callable,
                      ctx: DistContext) -> tuple[torch.device, list[Path], dict | None]:
    """Checks the output folder (and a run to resume) before anything is written, picks the
    device; rank 0 creates the folder and tiles."""
    _check_out_dir(out_dir, resume)
    state = read_resume(out_dir, cfg) if resume else None
    device = ctx.device or resolve_device(cfg.device)
    if cfg.task == "segment":  # masks are read whole: scene folders are not tiled
        if ctx.enabled:
            raise ConfigError("--task segment: training under torchrun is not supported yet; "
                              "train in one process")
        roots = [expand_path(raw, "data.paths") for raw in cfg.data.paths]
        out_dir.mkdir(parents=True, exist_ok=True)
        return device, roots, state
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    return device, resolve_paths(cfg, out_dir, log, tile=ctx.is_main), state


def prepare(cfg: TrainConfig, out_dir: Path, *, resume: bool, log: Callable,
            dist: DistContext | None = None) -> Setup:
    """Data, split, model and loss for ``cfg``. Under torchrun (``dist``) rank 0 checks and
    fills the output folder first; then every rank reads the same data (an error on any rank
    stops all of them), and only rank 0 writes."""
    ctx = dist if dist is not None else DistContext()
    validate(cfg)
    if not cfg.data.paths:
        raise ConfigError("--data: give at least one dataset folder (or data.paths in the config)")
    device, roots, state = main_first(ctx, _output_and_roots, cfg, out_dir, resume, log, ctx)
    s = everywhere(ctx, _prepare, cfg, out_dir, roots, device, log, ctx)
    if cfg.augment.enabled and cfg.augment.mixstyle > 0:  # training-only hooks, never saved
        mixstyle.attach(s.model, cfg.augment.mixstyle)
        log(f"mixstyle: p {cfg.augment.mixstyle:g} after the first {mixstyle.STAGES} backbone "
            "stages (training only)")
    if cfg.mask_loss > 0:  # training only, never saved (slidewatch.training.mask_loss)
        if ctx.enabled:
            raise ConfigError("mask_loss: training under torchrun is not supported yet; train "
                              "in one process")
        s.mask_head = MaskHead(s.model, cfg.mask_loss, cfg.model.name).to(s.device)
        known, landslides = s.train_loader.dataset.masks.known()
        log(f"mask loss: weight {cfg.mask_loss:g}; {known:,} of {landslides:,} landslide "
            "training images with a mask (the others are not learnt from)")
        if known == 0:
            raise DataError("mask_loss: no landslide training image has a mask (tiles cut from "
                            "scene folders by this version of slidewatch, or class folders with "
                            "masks/<stem>.png)")
    if state is not None:
        s.resume_state = state
        everywhere(ctx, load_resume, s)
    samples, split = s.split_record
    s.split_record = None
    on_main(ctx, save_split, out_dir / "split.json", samples, split)  # everything checked
    return s


def _prepare(cfg: TrainConfig, out_dir: Path, roots: list[Path], device: torch.device,
             log: Callable, ctx: DistContext) -> Setup:
    seed_everything(cfg.seed)
    if cfg.task == "segment":
        return _prepare_segment(cfg, out_dir, roots, device, log, ctx)
    samples = load_datasets(roots, tuple(cfg.data.classes))
    split = split_for(cfg.data, cfg.seed, samples)
    train_s = [samples[i] for i in split.train]
    val_s = [samples[i] for i in split.val]
    mm = prepare_multimodal(cfg, train_s, val_s, log)  # None for a plain image run
    in_chans = _bands(train_s + val_s) + (mm.extra_channels if mm else 0)
    model, meta = _build(cfg, in_chans, log)
    train_ds, val_ds = _datasets(cfg, meta, train_s, val_s, mm)
    if cfg.data.cache:  # every image is read (and checked) before the first epoch
        train_ds.preload()
        val_ds.preload()
    pretrained = bool(cfg.model.init_from) or not meta.weights_source.startswith("none")
    if not (in_chans == 3 and pretrained) and not cfg.model.init_from:  # training split only
        if meta.standardize == "image":  # a standardised image's statistics: 0 and 1
            meta.mean, meta.std = [0.0] * in_chans, [1.0] * in_chans
        else:
            meta.mean, meta.std = band_statistics(train_ds, seed=cfg.seed)
    if mm is not None:  # the FusionModel around the backbone; items carry the tabular inputs
        model = mm.attach(model, meta)
        train_ds, val_ds = mm.wrap(train_ds, "train"), mm.wrap(val_ds, "val")
    weights = class_weights(cfg, [s.label for s in train_s]).to(device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.optim.label_smoothing)
    size_weights = mm.size_class_weights() if mm is not None else None
    summary = _summary(cfg, samples, split)
    log(f"data: train {summary['train']}, val {summary['val']}, test {summary['test']}; "
        f"{in_chans} bands; input {meta.input_size}px; device {device}")
    return Setup(cfg=cfg, model=prepare_model(model, device), meta=meta, device=device,
                 train_loader=_loader(train_ds, cfg, device, True, ctx),
                 val_loader=_loader(val_ds, cfg, device, False, ctx) if val_s else None,
                 loss_fn=loss_fn, config_dict=to_dict(cfg), data_summary=summary,
                 out_dir=out_dir, freeze_bn=pretrained, dist=ctx, multimodal=mm,
                 size_weights=None if size_weights is None else
                 torch.tensor(size_weights, dtype=torch.float32, device=device),
                 split_record=(samples, split), train_samples=train_s)


def _prepare_segment(cfg: TrainConfig, out_dir: Path, roots: list[Path], device: torch.device,
                     log: Callable, ctx: DistContext) -> Setup:
    """Data from masks, a segmenter, the pixel loss (:mod:`slidewatch.training.segment`)."""
    from slidewatch.training import segment as sg

    samples = sg.find_samples(roots, list(cfg.data.classes))
    split = sg.split(cfg, samples)
    train_s = [samples[i] for i in split.train]
    val_s = [samples[i] for i in split.val]
    model, meta = sg.build(cfg, sg.band_count(train_s + val_s), log)
    train_ds, val_ds = sg.datasets(cfg, meta.input_size, train_s, val_s, cfg.data.scale,
                                   standardize=standardizer(meta))
    pretrained = model.slidewatch_weights != "none"
    own = not (meta.in_chans == 3 and pretrained)  # the model's own band statistics
    if own and meta.standardize == "image":  # a standardised image's statistics: 0 and 1
        meta.mean, meta.std = [0.0] * meta.in_chans, [1.0] * meta.in_chans
    mean, std, share = sg.pixel_statistics(train_ds, seed=cfg.seed,
                                           share=cfg.segment.positive_share)
    if own and meta.standardize == "none":
        meta.mean, meta.std = mean, std
    seg = sg.SegmentSetup(loss=cfg.segment.loss, pos_weight=sg.pos_weight(cfg, share),
                          landslide_share=share)
    if val_ds is not None:
        seg.val_labels = sg.tile_labels(val_ds, cfg.data.min_landslide)
    seed_everything(cfg.seed)  # the statistics above drew crops: start the epochs afresh
    summary = sg.summary(cfg, samples, split)
    pw = "none" if seg.pos_weight is None else f"{seg.pos_weight:.2f}"
    log(f"data: train {summary['train']}, val {summary['val']}, test {summary['test']}; "
        f"{len(train_ds)} training crops/images per epoch; landslide pixels {share:.1%} "
        f"(pos_weight {pw}); {meta.in_chans} bands; input {meta.input_size}px; device {device}")
    return Setup(cfg=cfg, model=prepare_model(model, device), meta=meta, device=device,
                 train_loader=sg.loader(train_ds, cfg, True, drop_last=True),
                 val_loader=sg.loader(val_ds, cfg, False) if val_ds is not None else None,
                 loss_fn=torch.nn.Identity(), config_dict=to_dict(cfg), data_summary=summary,
                 out_dir=out_dir, freeze_bn=pretrained, dist=ctx, segment=seg,
                 split_record=(sg.as_split_samples(samples), split), train_samples=train_s)


def _datasets(cfg: TrainConfig, meta: ModelMeta, train_s: list[Sample], val_s: list[Sample],
              mm: MultiModalSetup | None) -> tuple[TileDataset, TileDataset]:
    """Training (augmented) and validation images; with terrain channels the terrain is
    appended to each image before the transforms (photometric jitter on the image bands)."""
    extra = mm.extra_channels if mm else 0
    masks = cfg.mask_loss > 0  # the mask rides as a last band: no photometric change on it
    train_tf = TrainTransform(cfg.augment, meta.input_size,
                              color_bands=meta.in_chans - extra if extra or masks else None)
    eval_tf = EvalTransform(meta.input_size, grayscale=meta.grayscale)
    inputs = mm.inputs if mm is not None else None
    train = image_dataset(meta, train_s, inputs=inputs, transform=train_tf, cache=cfg.data.cache)
    if masks:
        train.masks = TileMasks(train_s, positive=meta.positive_index)
    return (train,
            image_dataset(meta, val_s, inputs=inputs, transform=eval_tf, cache=cfg.data.cache))


def save_resume(s: Setup, *, phase: int, phase_epoch: int, history: list, best: dict,
                bad_epochs: int, optimizer: torch.optim.Optimizer) -> None:
    """State to continue an interrupted run (our own file, read back with weights_only).
    Written through a Python file, so that a full disk is an OSError naming the file."""
    state = {"config": dump_yaml(s.cfg), "phase": phase, "phase_epoch": phase_epoch,
             "history": history, "best": best, "bad_epochs": bad_epochs,
             "model": s.model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": torch.get_rng_state(), "loader_rng": s.train_loader.generator.get_state(),
             "mean": s.meta.mean, "std": s.meta.std}
    if s.mask_head is not None:
        state["mask_head"] = s.mask_head.state_dict()
    with atomic_path(s.out_dir / RESUME_FILE) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())


def load_resume(s: Setup) -> dict:
    """Apply the interrupted run's state (``s.resume_state``, checked by :func:`read_resume`)
    to the model, the random generators and the statistics of ``s``; returns it."""
    path = s.out_dir / RESUME_FILE
    if s.resume_state is None:
        s.resume_state = read_resume(s.out_dir, s.cfg)
    state = s.resume_state
    try:
        s.model.load_state_dict(state["model"])
        if s.mask_head is not None:
            s.mask_head.load_state_dict(state["mask_head"])
        torch.set_rng_state(state["rng"].cpu())
        s.train_loader.generator.set_state(state["loader_rng"].cpu())
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise DataError(f"{path}: does not fit this run ({detail}); start again in a new "
                        "folder") from None
    s.meta.mean, s.meta.std = state["mean"], state["std"]
    return state
