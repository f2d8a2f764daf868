"""Evaluation of a segmentation model on images with masks: pixel, object and tile scores.

Data: class folders with ``masks/`` (each image fitted to the input size as in training: the
padding is left out of every score) and scene folders (``images/`` + ``masks/``, scored on a
grid of input-size windows stitched back into the scene).

* pixels: IoU, F1, precision, recall and MCC of the landslide class, pooled over all pixels,
  overall, per region and per scene, with 95% percentile bootstrap intervals over images;
* objects: 8-connected landslides; a true one counts as found when a predicted object overlaps
  it with IoU >= 0.3 (:data:`slidewatch.evaluation.pixels.MATCH_IOU`); precision and recall of
  objects, recall per size class (< 1,000, 1,000-10,000, >= 10,000 pixels);
* tiles: each class-folder image (landslide = it has a mask) or scene window (landslide = mask
  share >= 5%, landslide-free = no landslide pixel, in between left out) scored by the model's
  tile rule, with the same block of scores as a classifier's evaluation.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slidewatch.data.masks import MaskedImages, MaskedSample, SceneTiles, masked_samples
from slidewatch.data.readers import probe
from slidewatch.data.standardize import standardizer
from slidewatch.data.transforms import to_grayscale
from slidewatch.errors import DataError
from slidewatch.evaluation.pixels import (
    MATCH_IOU,
    PixelCounts,
    bootstrap_pixel_ci,
    object_counts,
    object_scores,
    pixel_counts,
    pixel_scores,
)
from slidewatch.inference.forward import batch_probabilities, non_finite, tile_scores
from slidewatch.io_utils import atomic_path, atomic_write_text
from slidewatch.meta import ModelMeta

SIZE_EDGES_PIXELS = (1000.0, 10000.0)
SIZE_NAMES = ("small (<1,000 px)", "medium (1,000-10,000 px)", "large (>=10,000 px)")
TILE_MIN_SHARE = 0.05
OVERLAYS = 12  # best and worst images each, by IoU


class _Scored:
    """The outputs of one image or scene: its probability map, truth and valid pixels."""

    def __init__(self, name: str, region: str, shape: tuple[int, int]):
        self.name, self.region = name, region
        self.prob = np.zeros(shape, np.float32)
        self.truth = np.zeros(shape, bool)
        self.valid = np.zeros(shape, bool)


def samples_of(roots: list[Path], meta: ModelMeta) -> list[MaskedSample]:
    """The images with masks under ``roots`` (scene folders, class folders with masks/)."""
    out: list[MaskedSample] = []
    for root in roots:
        out += masked_samples(root, meta.classes)
    _check_bands(out, meta)
    return out


def _check_bands(out: list[MaskedSample], meta: ModelMeta) -> None:
    for s in out[:1] + out[-1:]:
        bands = probe(s.image).bands
        if bands != meta.in_chans:
            raise DataError(f"{s.image}: has {bands} bands; the model takes {meta.in_chans}")


def _is_scene(s: MaskedSample) -> bool:
    return s.image.parent.name == "images"


def score_images(model, meta: ModelMeta, samples: list[MaskedSample], *, batch_size: int,
                 device, progress: Callable, tta: bool = False, source: Path | None = None,
                 areas: Sequence[int] = ()) -> tuple[list[_Scored], list[dict]]:
    """Probability maps of every image (fitted) and scene (stitched windows), and one tile row
    per image or window: name, region, label (1, 0 or -1: ambiguous, or a window flush with
    the scene's edge), score, pixels. Scene windows of the regular grid are the tiles of the
    reference tiling, so their tile scores compare with a classifier's on those tiles.
    ``areas``: also the tile score each of these minimum areas would give
    (``scores_by_area``, for comparing tile rules on the same forward passes)."""
    _check_bands(samples, meta)
    whole = [s for s in samples if not _is_scene(s)]
    scenes = [s for s in samples if _is_scene(s)]
    size = meta.input_size
    scored: list[_Scored] = []
    tiles: list[dict] = []
    parts: list[tuple[Dataset, list[MaskedSample], bool]] = []
    rule = standardizer(meta)  # each image or scene by its own whole statistics
    if whole:
        parts.append((MaskedImages(whole, size, scale=meta.scale, cache=False,
                                   standardize=rule), whole, False))
    if scenes:
        parts.append((SceneTiles(scenes, size, scale=meta.scale, standardize=rule), scenes,
                      True))
    model.eval()
    for ds, group, is_scene in parts:
        if is_scene:
            for s in group:
                info = probe(s.image)
                scored.append(_Scored(s.image.stem, s.region, (info.height, info.width)))
        first = len(scored) - len(group) if is_scene else len(scored)
        loader = DataLoader(ds, batch_size=batch_size)
        seen = 0
        for batch in progress(loader, desc="evaluate", total=len(loader)):
            image = batch["image"]
            if meta.grayscale:
                image = torch.stack([to_grayscale(x) for x in image])
            with torch.no_grad():
                prob = batch_probabilities(model, {**batch, "image": image}, meta, device,
                                           tta)["probability"]
            if not bool(torch.isfinite(prob).all()):
                bad = int((~torch.isfinite(prob.flatten(1))).any(1).nonzero()[0])
                names = [str(group[ds.windows[seen + bad][0]].image if is_scene
                             else group[seen + bad].image)]
                raise non_finite(model, meta, 0, source, names)
            score = tile_scores(prob, batch["valid"][:, 0], meta.segmentation.min_area_pixels)
            by_area = {k: tile_scores(prob, batch["valid"][:, 0], k).tolist() for k in areas}
            for j in range(len(prob)):
                i = seen + j
                p, m = prob[j].cpu().numpy(), batch["mask"][j, 0].numpy() > 0.5
                v = batch["valid"][j, 0].numpy() > 0.5
                share = float(m[v].mean()) if v.any() else 0.0
                if is_scene:
                    k, r, c = ds.windows[i]
                    target, s = scored[first + k], group[k]
                    h, w = min(size, target.prob.shape[0] - r), min(size, target.prob.shape[1] - c)
                    target.prob[r:r + h, c:c + w] = p[:h, :w]
                    target.truth[r:r + h, c:c + w] = m[:h, :w]
                    target.valid[r:r + h, c:c + w] = v[:h, :w]
                    label = 1 if share >= TILE_MIN_SHARE else (0 if share == 0 else -1)
                    if ds.edge[i]:
                        label = -1
                    name = f"{s.image.stem}__r{r}_c{c}"
                else:
                    s = group[i]
                    one = _Scored(s.image.stem, s.region, p.shape)
                    one.prob, one.truth, one.valid = p, m, v
                    scored.append(one)
                    label = 1 if s.mask is not None else 0
                    name = s.image.stem
                tiles.append({"path": str(s.image), "name": name, "region": s.region,
                              "label": label, "score": float(score[j]),
                              "landslide_pixels": int(((p >= meta.threshold) & v).sum()),
                              "truth_pixels": int((m & v).sum()),
                              **({"scores_by_area": {k: sc[j] for k, sc in by_area.items()}}
                                 if areas else {})})
            seen += len(prob)
    return scored, tiles


def scored_tiles(tiles: list[dict]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The tile rows that count (label 0 or 1: not ambiguous, not an edge window), their truth
    (landslide or not) and their tile scores."""
    kept = [t for t in tiles if t["label"] >= 0]
    return (kept, np.array([t["label"] == 1 for t in kept], bool),
            np.array([t["score"] for t in kept], float))


def pixel_block(items: list[_Scored], threshold: float, objects: bool = True) -> dict:
    """Pooled pixel scores with bootstrap intervals (over images) and object scores."""
    per = [pixel_counts(it.prob >= threshold, it.truth, it.valid) for it in items]
    total = sum(per, PixelCounts())
    block = {"n_images": len(items), **pixel_scores(total),
             "counts": {"tp": total.tp, "fp": total.fp, "fn": total.fn, "tn": total.tn},
             "ci95": bootstrap_pixel_ci(per, keys=("iou", "f1", "precision", "recall"))}
    if objects:
        obj = [object_counts((it.prob >= threshold) & it.valid, it.truth & it.valid,
                             size_edges=SIZE_EDGES_PIXELS) for it in items]
        scores = object_scores(obj)
        for k, row in enumerate(scores["by_size"]):
            row["size_class"] = SIZE_NAMES[k]
        block["objects"] = {**scores, "match_rule": f"IoU >= {MATCH_IOU}"}
    return block


def segment_report(items: list[_Scored], threshold: float) -> dict:
    """Pixel blocks overall, per region and per scene (a scene: an image of a scene folder)."""
    regions: dict[str, list[_Scored]] = {}
    for it in items:
        regions.setdefault(it.region, []).append(it)
    big = [it for it in items if it.prob.size > 512 * 512]  # scenes, not fitted images
    return {"overall": pixel_block(items, threshold),
            "regions": {r: pixel_block(v, threshold) for r, v in sorted(regions.items())},
            "scenes": {it.name: pixel_block([it], threshold, objects=False) for it in big}}


def write_rows(path: Path, tiles: list[dict], threshold: float, meta: ModelMeta) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "tile", "region", "true_label", "probability", "predicted_label",
                "outcome", "landslide_pixels", "truth_pixels"])
    names = {1: meta.positive_class, 0: meta.negative_label, -1: "ambiguous"}
    for t in tiles:
        pred = t["score"] >= threshold
        outcome = "" if t["label"] < 0 else \
            ("T" if pred == (t["label"] == 1) else "F") + ("P" if pred else "N")
        w.writerow([t["path"], t["name"], t["region"], names[t["label"]], f"{t['score']:.6f}",
                    meta.positive_class if pred else meta.negative_label, outcome,
                    t["landslide_pixels"], t["truth_pixels"]])
    atomic_write_text(path, buf.getvalue())


def write_overlays(folder: Path, items: list[_Scored], roots: list[Path], meta: ModelMeta,
                   threshold: float) -> list[str]:
    """Probability map and truth / prediction overlays of the ``OVERLAYS`` best and worst
    images with landslides (by IoU), as PNG figures; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rated = []
    for it in items:
        if it.truth.any():
            sc = pixel_scores(pixel_counts(it.prob >= threshold, it.truth, it.valid))
            rated.append((sc["iou"] or 0.0, it))
    rated.sort(key=lambda t: t[0])
    chosen = rated[:OVERLAYS] + rated[max(OVERLAYS, len(rated) - OVERLAYS):]
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for iou, it in chosen:
        pred = (it.prob >= threshold) & it.valid
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
        axes[0].imshow(it.prob, vmin=0, vmax=1, cmap="magma")
        axes[0].set_title("probability")
        axes[1].imshow(it.truth, cmap="gray")
        axes[1].set_title("truth")
        overlay = np.zeros((*it.truth.shape, 3), np.float32)
        overlay[..., 1] = it.truth & pred  # green: found
        overlay[..., 0] = pred & ~it.truth  # red: false alarm
        overlay[..., 2] = it.truth & ~pred  # blue: missed
        axes[2].imshow(overlay)
        axes[2].set_title(f"prediction (IoU {iou:.2f})")
        for ax in axes:
            ax.axis("off")
        fig.suptitle(f"{it.region}/{it.name}", fontsize=9)
        fig.tight_layout()
        name = f"{it.region}__{it.name}.png"
        with atomic_path(folder / name) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        names.append(name)
    return names
