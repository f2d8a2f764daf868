"""Classifier and segmenter together: does averaging their tile scores rank a new region better?

Takes the folds of two runs of benchmarks/generalisation.py (a classifier recipe and a
segmentation recipe, the same seeds) and scores every held-out region's tiles with both, the
tiles of the benchmark (224 px, stride 224, 5% rule; bijie adds the Bijie dataset's test list),
matched by name. A segmenter's tile score is its own tile rule's (the k-th largest pixel
probability, k = its ``min_area_pixels``). Compared at equal numbers of models: one
classifier; two (two classifiers' probabilities averaged, or one classifier and the segmenter
of the same seed); four (four classifiers, or two and two); eight (four and four); and the
segmenters' ensemble alone. Per region: ROC-AUC and the false-positive rate at recall 0.9
(means over the seeds' combinations), and the share of tiles flagged at the mean of the
members' thresholds (the classifier's probability threshold, the segmenter's tile threshold).
One JSON line per region and comparison in benchmarks/results/task-fusion.jsonl.

    python benchmarks/task_fusion.py runs/generalisation/cls-std runs/generalisation/seg-std-r90 \
        --tiles runs/generalisation/tiles --data $SLIDEWATCH_DATA --seeds 0,1,2,3
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scan_common import RESULTS, emit, machine
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from slidewatch.data.inputs import image_dataset
from slidewatch.data.masks import scene_samples
from slidewatch.data.sampledata import REGIONS, locate
from slidewatch.evaluation.metrics import fpr_at_recall
from slidewatch.evaluation.segment import score_images
from slidewatch.experiments.demo import _load, held_out_images, region_tiles
from slidewatch.inference.forward import predict_outputs
from slidewatch.runtime import no_progress, resolve_device

RESULTS_FILE = RESULTS / "task-fusion.jsonl"


def classifier_scores(fold: Path, tiles: Path, root: Path, region: str) -> tuple[dict, float]:
    """``{tile name: (probability, is landslide)}`` of a classifier fold, and its threshold."""
    model, meta = _load(fold)
    samples = region_tiles(tiles, region, held_out_images(root, region, meta.classes))
    loader = DataLoader(image_dataset(meta, samples), batch_size=64)
    prob = predict_outputs(model, meta, loader, resolve_device("auto"))["probability"]
    return ({s.path.stem: (float(p), s.label == meta.positive_index)
             for s, p in zip(samples, prob)}, float(meta.threshold))


def segmenter_scores(fold: Path, root: Path, region: str) -> tuple[dict, float]:
    """``{tile name: (tile score, is landslide)}`` of a segmentation fold (scene windows named
    as the classifier's tiles: ``<region>__<scene>__r<row>_c<col>``), and its tile threshold."""
    model, meta = _load(fold)
    samples = scene_samples(root / "regions" / region)
    samples += held_out_images(root, region, list(meta.classes))
    _, rows = score_images(model, meta, samples, batch_size=16, device=resolve_device("auto"),
                           progress=no_progress)
    out = {}
    for t in rows:
        if t["label"] >= 0:  # not ambiguous, not an edge window
            name = f"{region}__{t['name']}" if "__r" in t["name"] else t["name"]
            out[name] = (float(t["score"]), t["label"] == 1)
    return out, float(meta.tile_threshold())


def compare(y: np.ndarray, sets: list[tuple[list[np.ndarray], float]]) -> dict:
    """Means over ``sets`` (each: the members' scores and their mean threshold) of ROC-AUC,
    FPR at recall 0.9 and the share flagged."""
    probs = [np.mean(members, axis=0) for members, _ in sets]
    both = bool(y.any() and not y.all())
    return {"roc_auc": float(np.mean([roc_auc_score(y, p) for p in probs])) if both else None,
            "fpr_at_recall_0.9": (float(np.mean([fpr_at_recall(y, p, 0.9) for p in probs]))
                                  if both else None),
            "flagged": float(np.mean([np.mean(p >= t) for p, (_, t) in zip(probs, sets)])),
            "combinations": len(sets)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classifier_run", type=Path, help="folder with seed<N>/holdout-<region>")
    ap.add_argument("segmenter_run", type=Path, help="the same, of a segmentation recipe")
    ap.add_argument("--tiles", type=Path, required=True,
                    help="the benchmark's reference tiles (runs/generalisation/tiles)")
    ap.add_argument("--data", default=None, help="sample data folder (else $SLIDEWATCH_DATA)")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--regions", default=",".join(REGIONS))
    args = ap.parse_args()
    root = locate(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2 or len(seeds) % 2:
        raise SystemExit("--seeds: give an even number of seeds (pairs are compared)")
    for region in args.regions.split(","):
        cls, seg, tc, ts = [], [], [], []
        for seed in seeds:
            c, t1 = classifier_scores(args.classifier_run / f"seed{seed}" / f"holdout-{region}",
                                      args.tiles, root, region)
            s, t2 = segmenter_scores(args.segmenter_run / f"seed{seed}" / f"holdout-{region}",
                                     root, region)
            cls.append(c)
            seg.append(s)
            tc.append(t1)
            ts.append(t2)
        names = sorted(set.intersection(*(set(d) for d in cls + seg)))
        y = np.array([cls[0][n][1] for n in names])
        if any((np.array([d[n][1] for n in names]) != y).any() for d in cls + seg):
            raise SystemExit(f"{region}: the two runs disagree on tile labels")
        c = [np.array([d[n][0] for n in names]) for d in cls]
        s = [np.array([d[n][0] for n in names]) for d in seg]
        k = range(len(seeds))
        halves = [k[: len(k) // 2], k[len(k) // 2:]]
        rows = {
            "1 classifier": [([c[i]], tc[i]) for i in k],
            "2 classifiers": [([c[i], c[j]], (tc[i] + tc[j]) / 2)
                              for i, j in itertools.combinations(k, 2)],
            "1 classifier + 1 segmenter": [([c[i], s[i]], (tc[i] + ts[i]) / 2) for i in k],
            f"{len(k)} classifiers": [(c, float(np.mean(tc)))],
            f"{len(k) // 2} classifiers + {len(k) // 2} segmenters": [
                ([np.mean([c[i] for i in h], 0), np.mean([s[i] for i in h], 0)],
                 (np.mean([tc[i] for i in h]) + np.mean([ts[i] for i in h])) / 2)
                for h in halves],
            f"{len(k)} classifiers + {len(k)} segmenters": [
                ([np.mean(c, 0), np.mean(s, 0)], (np.mean(tc) + np.mean(ts)) / 2)],
            f"{len(k)} segmenters": [([np.mean(s, 0)], float(np.mean(ts)))],
        }
        for name, sets in rows.items():
            emit({"benchmark": "task-fusion", "classifier_run": str(args.classifier_run),
                  "segmenter_run": str(args.segmenter_run), "seeds": seeds, "region": region,
                  "tiles": len(names), "landslide_tiles": int(y.sum()), "models": name,
                  **compare(y, sets), "machine": machine()}, RESULTS_FILE)


if __name__ == "__main__":
    main()
