"""Pixel-level quality of `slidewatch scan` maps on a labelled sample region.

The sample regions are not georeferenced, so each scene is wrapped in a GeoTIFF with a
made-up UTM origin (0.8 m pixels), scanned with a model that never saw the region (e.g. the
demo's leave-one-region-out fold), and the thresholded probability map is compared with the
hand-drawn mask. Prints one JSON line (also appended to benchmarks/results/scan-quality.jsonl).

    python benchmarks/scan_quality.py runs/demo/holdout-bijie $SLIDEWATCH_DATA/regions/bijie
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from scan_common import RESULTS, emit, load, machine

from slidewatch.data.readers import read_image, read_mask
from slidewatch.inference.ensemble import ensemble_meta
from slidewatch.scan.run import scan

RESULTS_FILE = RESULTS / "scan-quality.jsonl"
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def wrap_scenes(region: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(sorted((region / "images").iterdir())):
        arr = read_image(image)
        h, w, bands = arr.shape
        path = out / f"{image.stem}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands,
                           dtype=arr.dtype, crs="EPSG:32648",
                           transform=from_origin(400000 + 2000 * i, 3000000, 0.8, 0.8)) as ds:
            ds.write(arr.transpose(2, 0, 1))
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("region", help="a scene folder with images/ and masks/")
    ap.add_argument("--tile", type=int, default=None,
                    help="window size in pixels (default: the model's input size)")
    ap.add_argument("--stride", type=int, default=112)
    ap.add_argument("--blend", default="mean", choices=["mean", "hann"])
    ap.add_argument("--tta", action="store_true", help="average over flips and rotations")
    ap.add_argument("--ensemble", action="append", default=[], metavar="DIR",
                    help="another model folder whose maps are averaged with the model's "
                    "(repeatable; the ensemble's threshold is the mean of theirs)")
    ap.add_argument("--sweep", action="store_true",
                    help="also the pixel IoU at thresholds 0.1-0.9 (headroom only: a threshold "
                    "chosen on these scenes would be tuned on the test set)")
    args = ap.parse_args()
    region = Path(args.region)
    threshold = ensemble_meta([args.model_dir, *args.ensemble]).threshold
    with tempfile.TemporaryDirectory() as tmp:
        scenes = wrap_scenes(region, Path(tmp) / "scenes")
        t0 = time.perf_counter()
        summary = scan(args.model_dir, scenes, Path(tmp) / "out", tile=args.tile,
                       stride=args.stride,
                       blend=args.blend, tta=args.tta, ensemble=args.ensemble)
        seconds = time.perf_counter() - t0
        c = np.zeros(4, dtype=np.int64)  # tp, fp, fn, tn
        sweep = np.zeros((len(SWEEP), 3), dtype=np.int64)  # tp, fp, fn per threshold
        hits = 0
        for result in summary.scenes:
            with rasterio.open(result.probability) as ds:
                prob = ds.read(1)
            pred = prob >= threshold
            mask = read_mask(region / "masks" / f"{Path(result.scene).stem}.png")
            for i, t in enumerate(SWEEP if args.sweep else ()):
                p = prob >= t
                sweep[i] += [np.sum(p & mask), np.sum(p & ~mask), np.sum(~p & mask)]
            c += [np.sum(pred & mask), np.sum(pred & ~mask), np.sum(~pred & mask),
                  np.sum(~pred & ~mask)]
            hits += bool(np.any(pred & mask))
    tp, fp, fn, tn = (int(v) for v in c)
    row = {"benchmark": "scan_quality", "model": str(args.model_dir),
           **({"ensemble": [str(d) for d in args.ensemble]} if args.ensemble else {}),
           "region": region.name,
           "scenes": len(scenes), **({"tile": args.tile} if args.tile else {}),
           "stride": args.stride, "blend": args.blend, "tta": args.tta,
           "threshold": threshold, "windows": summary.windows, "seconds": round(seconds, 1),
           "pixel_recall": round(tp / max(1, tp + fn), 4),
           "pixel_precision": round(tp / max(1, tp + fp), 4),
           "pixel_iou": round(tp / max(1, tp + fp + fn), 4),
           "flagged_fraction": round((tp + fp) / max(1, c.sum()), 4),
           "mask_fraction": round((tp + fn) / max(1, c.sum()), 4),
           "scenes_with_a_detection_on_the_mask": hits,
           "machine": machine(), "load": load()}
    if args.sweep:
        row["iou_by_threshold"] = {f"{t:.1f}": round(int(tp) / max(1, int(tp + fp + fn)), 4)
                                   for t, (tp, fp, fn) in zip(SWEEP, sweep)}
    emit(row, RESULTS_FILE)


if __name__ == "__main__":
    main()
