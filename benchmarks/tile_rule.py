"""How the minimum area of a segmentation model's tile rule ranks the tiles of a held-out region.

A segmentation model calls a tile a landslide when ``min_area_pixels`` of its pixels reach the
threshold, i.e. it scores a tile by its k-th largest pixel probability (k = the area). For each
fold of a generalisation run (``<run>/holdout-<region>``, a model that never saw the region),
this scores the same tiles as ``benchmarks/generalisation.py`` (the region's reference tiling,
224 px, stride 224, 5% rule; for bijie also the Bijie dataset's test list) once, and gives the
tiles' ROC-AUC for areas from 1 to 8,192 pixels beside the area the model stores. One JSON line
per region (also appended to benchmarks/results/tile-rule.jsonl).

    python benchmarks/tile_rule.py runs/generalisation/seg-std/seed1 --data $SLIDEWATCH_DATA
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scan_common import RESULTS, emit, load, machine
from sklearn.metrics import roc_auc_score

from slidewatch.data.masks import scene_samples
from slidewatch.data.sampledata import REGIONS, locate
from slidewatch.evaluation.segment import score_images, scored_tiles
from slidewatch.experiments.demo import held_out_images
from slidewatch.inference.ensemble import load_models
from slidewatch.runtime import no_progress, resolve_device

RESULTS_FILE = RESULTS / "tile-rule.jsonl"
AREAS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def area_scores(tiles) -> tuple[np.ndarray, np.ndarray]:
    """Truth and tile scores (tiles x areas) of the tiles that count (:func:`scored_tiles`)."""
    kept, y, _ = scored_tiles(tiles)
    return y, np.array([[t["scores_by_area"][k] for k in AREAS] for t in kept], float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a folder with holdout-<region> model folders")
    ap.add_argument("--data", default=None, help="sample data folder (else $SLIDEWATCH_DATA)")
    args = ap.parse_args()
    root = locate(args.data, download=False)
    device = resolve_device("auto")
    for region in REGIONS:
        folder = args.run / f"holdout-{region}"
        if not folder.is_dir():
            continue
        model, meta = load_models([folder], device)
        samples = scene_samples(root / "regions" / region)
        samples += held_out_images(root, region, list(meta.classes))
        _, tiles = score_images(model, meta, samples, batch_size=16, device=device,
                                progress=no_progress, areas=AREAS)
        y, scores = area_scores(tiles)
        if y.all() or not y.any():
            continue  # no ranking without both classes (nepal)
        emit({"benchmark": "tile_rule", "model": str(folder), "region": region,
              "tiles": int(len(y)), "landslide_tiles": int(y.sum()),
              "stored_area": meta.segmentation.min_area_pixels,
              "stored_area_source": meta.segmentation.min_area_source,
              "roc_auc_by_area": {str(k): round(float(roc_auc_score(y, scores[:, i])), 4)
                                  for i, k in enumerate(AREAS)},
              "machine": machine("cpu"), "load": load()}, RESULTS_FILE)


if __name__ == "__main__":
    main()
