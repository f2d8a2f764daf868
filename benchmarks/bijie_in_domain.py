"""In-domain scores on the full Bijie dataset: train on its ``splits/train.txt``, validate on
``val.txt``, score ``test.txt``, for the tile classifier and the segmentation model.

The published reference on this dataset: F1 0.966 (Ji et al., Landslides 17, 2020; an
attention-boosted CNN with optical imagery and DEM, a 2:1 train/test split). Prints one JSON
line per task (also appended to benchmarks/results/bijie-in-domain.jsonl).

    python benchmarks/bijie_in_domain.py $SLIDEWATCH_DATA/datasets/bijie --out runs/bijie
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scan_common import RESULTS, emit, machine

from slidewatch.config.train import from_dict
from slidewatch.evaluation.evaluate import evaluate
from slidewatch.training.loop import train

RESULTS_FILE = RESULTS / "bijie-in-domain.jsonl"
CLASSES = ("landslide", "non_landslide")


def write_split(dataset: Path, path: Path) -> Path:
    """The dataset's own lists as a slidewatch split file (keys ``bijie/<class>/<file>``)."""
    files = {p.stem: p for c in CLASSES for p in (dataset / c).iterdir()}
    data = {"format": "slidewatch-split", "version": 1}
    for part in ("train", "val", "test"):
        stems = (dataset / "splits" / f"{part}.txt").read_text().split()
        data[part] = [f"{dataset.name}/{files[s].relative_to(dataset).as_posix()}" for s in stems]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def classifier(dataset: Path, split: Path, steps: int) -> dict:
    return {"data": {"paths": [str(dataset)], "split_file": str(split)},
            "model": {"name": "efficientnet_lite0", "weights": "imagenet", "input_size": 224},
            "augment": {"resize": 256, "crop": 224, "translate": 0.05, "rotate90": True,
                        "saturation": 0.3},
            "phase1": {"epochs": 2, "lr": 2e-3},
            "phase2": {"epochs": 3, "lr": 2e-4, "unfreeze_layers": 40},
            "optim": {"optimizer": "adamw", "weight_decay": 1e-4},
            "batch_size": 32, "steps_per_epoch": steps, "early_stopping_metric": "val_f1",
            "seed": 0, "progress": False}


def segmenter(dataset: Path, split: Path, steps: int) -> dict:
    return {"task": "segment", "data": {"paths": [str(dataset)], "split_file": str(split)},
            "model": {"name": "unet/efficientnet_lite0", "weights": "imagenet",
                      "input_size": 224},
            "augment": {"translate": 0.05, "rotate90": True, "saturation": 0.3},
            "phase1": {"epochs": 2, "lr": 3e-3},
            "phase2": {"epochs": 3, "lr": 5e-4, "unfreeze_blocks": 3},
            "optim": {"optimizer": "adamw", "weight_decay": 1e-4},
            "batch_size": 8, "steps_per_epoch": steps, "early_stopping_metric": "val_iou",
            "seed": 0, "progress": False}


def test_folder(dataset: Path, out: Path) -> Path:
    """The test list as a class-folder dataset of links (with masks/), for `evaluate`."""
    stems = set((dataset / "splits" / "test.txt").read_text().split())
    root = out / "bijie-test"
    for sub in (*CLASSES, "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for p in (dataset / sub).iterdir():
            if p.stem in stems and not (root / sub / p.name).exists():
                (root / sub / p.name).symlink_to(p.resolve())
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/bijie-in-domain"))
    ap.add_argument("--steps", type=int, default=40, help="batches per epoch, classifier")
    ap.add_argument("--seg-steps", type=int, default=30, help="batches per epoch, segmenter")
    ap.add_argument("--tasks", default="classify,segment")
    args = ap.parse_args()
    split = write_split(args.dataset, args.out / "split.json")
    test = test_folder(args.dataset, args.out)
    for task in args.tasks.split(","):
        cfg = (classifier(args.dataset, split, args.steps) if task == "classify"
               else segmenter(args.dataset, split, args.seg_steps))
        model = args.out / task
        t0 = time.perf_counter()
        if not (model / "slidewatch.json").is_file():
            train(from_dict(cfg), model, log=print)
        trained = time.perf_counter() - t0
        m = evaluate(model, [test], args.out / f"eval-{task}", overwrite=True)
        o = m["overall"]
        row = {"benchmark": "bijie_in_domain", "task": task, "test_images": o["n"],
               "f1": o["f1"], "precision": o["precision"], "recall": o["recall"],
               "specificity": o["specificity"], "roc_auc": o["roc_auc"],
               "reference_f1": 0.966, "train_seconds": round(trained, 1),
               "machine": machine("cpu")}
        if task == "segment":
            px = m["pixels"]["overall"]
            row.update({"pixel_iou": px["iou"], "pixel_f1": px["f1"],
                        "pixel_iou_ci95": px["ci95"]["iou"],
                        "objects_found": px["objects"]["found"],
                        "objects_true": px["objects"]["true"]})
        emit(row, RESULTS_FILE)


if __name__ == "__main__":
    main()
