"""The hard-negative pass (``hard_negatives: N``, ``--hard-negatives N``).

After the regular phases, the best model so far scores the landslide-free training pool of
every source: a classifier's landslide-free training tiles (all regions and datasets), a
segmentation model's landslide-free class-folder images and the landslide-free windows of its
training scenes (the reference grid: windows without a mask pixel). The ``N`` highest-scoring
ones are then drawn ``hard_negative_share`` of the time (the rest of the draws keep the usual
sampling) for ``hard_negative_epochs`` more epochs at phase 2's settings. The pool is scored
again when a run is resumed in this phase.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from slidewatch.errors import ConfigError
from slidewatch.runtime import worker_init

SCORE_BATCH = 32


class _Augmented(Dataset):
    """Items ``indexes`` of ``base`` (dicts with image, mask, valid) through ``transform``."""

    def __init__(self, base: Dataset, indexes: list[int], transform) -> None:
        self.base, self.indexes, self.transform = base, list(indexes), transform

    def __len__(self) -> int:
        return len(self.indexes)

    def __getitem__(self, i: int) -> dict:
        item = self.base[self.indexes[i]]
        image, both = item["image"], torch.cat([item["mask"], item["valid"]])
        if self.transform is not None:
            image, both = self.transform(image, both)
        return {"image": image, "mask": both[:1], "valid": both[1:], "index": i}


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indexes of the ``n`` highest scores (ties: the earlier item), highest first."""
    order = np.argsort(-scores, kind="stable")
    return order[:n]


@torch.no_grad()
def _classifier_pool(s) -> tuple[list[int], np.ndarray]:
    from slidewatch.data.inputs import image_dataset
    from slidewatch.inference.forward import predict_probs

    samples = s.train_samples
    pool = [j for j, x in enumerate(samples) if x.label != s.meta.positive_index]
    if not pool:
        return [], np.zeros(0)
    ds = image_dataset(s.meta, [samples[j] for j in pool])
    loader = DataLoader(ds, batch_size=SCORE_BATCH)
    return pool, predict_probs(s.model, s.meta, loader, s.device)


@torch.no_grad()
def _segment_pool(s) -> tuple[list[Dataset], list[np.ndarray]]:
    """Candidate datasets (no augmentation) and the score of each of their items."""
    from slidewatch.data.masks import MaskedImages, SceneTiles
    from slidewatch.data.standardize import standardizer
    from slidewatch.inference.forward import batch_probabilities, tile_scores
    from slidewatch.training.segment import from_class_folder

    size, scale = s.meta.input_size, s.cfg.data.scale
    free = [x for x in s.train_samples if from_class_folder(x) and x.mask is None]
    scenes = [x for x in s.train_samples if not from_class_folder(x)]
    parts: list[Dataset] = []
    if free:
        parts.append(MaskedImages(free, size, scale=scale, cache=False,
                                  standardize=standardizer(s.meta)))
    if scenes:
        tiles = SceneTiles(scenes, size, scale=scale, standardize=standardizer(s.meta))
        keep = [i for i in range(len(tiles)) if not tiles.edge[i]]
        parts.append(_Augmented(tiles, keep, None))
    k = max(1, round(0.01 * size * size))  # the default tile rule: 1% of the tile's pixels
    datasets, scores = [], []
    s.model.eval()
    for part in parts:
        out = []
        empty = []
        for batch in DataLoader(part, batch_size=SCORE_BATCH):
            p = batch_probabilities(s.model, batch, s.meta, s.device)["probability"]
            out.append(tile_scores(p, batch["valid"][:, 0], k).cpu().numpy())
            empty.append((batch["mask"].flatten(1).sum(1) == 0).numpy())
        sc, e = np.concatenate(out), np.concatenate(empty)
        datasets.append(part)
        scores.append(np.where(e, sc, -1.0))  # windows with landslide pixels are no candidates
    return datasets, scores


def _loader(s, ds: Dataset, weights: np.ndarray, gen_seed: int) -> DataLoader:
    old = s.train_loader
    gen = torch.Generator().manual_seed(gen_seed)
    sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                    len(weights) if old is None else len(old.dataset),
                                    replacement=True, generator=gen)
    nw = s.cfg.data.num_workers
    return DataLoader(ds, batch_size=old.batch_size, sampler=sampler, generator=gen,
                      num_workers=nw, worker_init_fn=worker_init, persistent_workers=nw > 0,
                      drop_last=old.drop_last, collate_fn=old.collate_fn,
                      pin_memory=old.pin_memory)


def check(cfg, multimodal: bool, distributed: bool) -> None:
    """Refuse the runs the pass does not support, before training starts."""
    if cfg.hard_negatives <= 0:
        return
    if multimodal:
        raise ConfigError("hard_negatives: the hard-negative pass takes image-only models "
                          "(no tabular, terrain or size inputs)")
    if distributed:
        raise ConfigError("hard_negatives: not supported under torchrun; train in one process")


def mine(s, log: Callable[[str], None]) -> dict:
    """Score the landslide-free training pool with the current model and replace the
    training loader with one that draws the ``hard_negatives`` highest-scoring items
    ``hard_negative_share`` of the time. Returns the record stored in the model."""
    cfg = s.cfg
    n, share = cfg.hard_negatives, cfg.hard_negative_share
    base = s.train_loader.dataset
    if s.segment is None:
        pool, prob = _classifier_pool(s)
        if not pool:
            raise ConfigError("hard_negatives: the training split has no landslide-free images")
        top = _top(prob, min(n, len(pool)))
        chosen = [pool[i] for i in top]
        weights = np.full(len(base), (1 - share) / len(base))
        weights[chosen] += share / len(chosen)
        ds, scores = base, prob[top]
        names = [str(s.train_samples[j].path) for j in chosen]
    else:
        from slidewatch.training.segment import draw_weights, shows_landslide

        parts, part_scores = _segment_pool(s)
        flat = np.concatenate(part_scores) if part_scores else np.zeros(0)
        valid = int((flat >= 0).sum())
        if not valid:
            raise ConfigError("hard_negatives: the training data has no landslide-free images "
                              "or scene windows")
        top = _top(flat, min(n, valid))
        offsets = np.cumsum([0] + [len(p) for p in parts])
        hard: list[Dataset] = []
        names = []
        for k, part in enumerate(parts):
            local = [int(i - offsets[k]) for i in top if offsets[k] <= i < offsets[k + 1]]
            if not local:
                continue
            if isinstance(part, _Augmented):  # scene windows: the grid's window indexes
                idx = [part.indexes[i] for i in local]
                hard.append(_Augmented(part.base, idx, _joint(cfg)))
                names += [f"{part.base.samples[part.base.windows[i][0]].image}@"
                          f"{part.base.windows[i][1]},{part.base.windows[i][2]}" for i in idx]
            else:
                hard.append(_Augmented(part, local, _joint(cfg)))
                names += [str(part.samples[i].image) for i in local]
        w = draw_weights(shows_landslide(base), cfg.segment.positive_share)
        w = np.full(len(base), 1 / len(base)) if w is None else w / w.sum()
        m = sum(len(h) for h in hard)
        weights = np.concatenate([w * (1 - share), np.full(m, share / m)])
        ds, scores = ConcatDataset([base, *hard]), flat[top]
    s.train_loader = _loader(s, ds, weights, cfg.seed + 3)
    log(f"hard negatives: the {len(scores)} highest-scoring landslide-free training items "
        f"(scores {float(scores.min()):.3f}-{float(scores.max()):.3f}) drawn "
        f"{share:.0%} of the time")
    return {"n": int(len(scores)), "share": share, "epochs": cfg.hard_negative_epochs,
            "score_min": round(float(scores.min()), 4), "score_max": round(float(scores.max()), 4),
            "examples": names[:10]}


def _joint(cfg):
    from slidewatch.data.masks import JointTransform

    return JointTransform(cfg.augment)
