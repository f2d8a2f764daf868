"""Leave-one-region-out generalisation of any training config, on all the shared sample data.

For each region (sichuan, bijie with ``datasets/bijie``, nepal, tianshui) a model is trained
with CONFIG on everything else (the reference tiles of the other regions and the Bijie dataset
for a classifier; their scene folders and the Bijie dataset for ``task: segment``) and scored
on the held-out region's reference tiles (224 px, stride 224, 5% rule; bijie adds the Bijie
dataset's test list), as the demo does: ROC-AUC, PR-AUC, F1 and specificity at the model's own
threshold, recall at a false-positive rate of 0.1, false-positive rate at recall 0.9, the share
of tiles flagged (on nepal, which has no landslide tile at stride 224, every flag is a false
alarm), and pixel IoU and F1 for segmentation models. CONFIG's ``data.paths`` and
``data.holdout_regions`` are set per fold; everything else is the recipe. One JSON line per
region in benchmarks/results/generalisation.jsonl, and a table.

    python benchmarks/generalisation.py configs/segment-unet-lite0-cpu.yaml --data $SLIDEWATCH_DATA

Variants of a recipe without a new file: ``--set augment.gain=0.2 --set
'augment={jpeg: 0.3, noise: 0.02}'`` (YAML values; mappings merge), named by ``--tag``;
``--seeds 0,1,2`` trains each fold once per seed (the recipes vary from seed to seed);
``--ensemble`` also scores, per region, the ensemble of those seeds' models (probabilities
averaged), and ``--tta`` each model with test-time augmentation (8 flips and rotations).
Folds trained earlier with the same recipe and seed are reused.

``--adapt N`` asks what a few labelled images of the new region buy: each fold is trained
further (``model.init_from``, phase 2 only, ``--adapt-epochs``) on N scene images of the
held-out region drawn with the seed, mixed with as many of the fold's own training images or
tiles, validated on the fold's validation split (a segmentation model keeps the fold's tile
area; its tile threshold is chosen again); then the fold and its adapted model are both
scored on the region's other tiles (tags ``TAG+adaptN-before`` and ``TAG+adaptN``;
``TAG+adaptNxE`` with ``--adapt-epochs E`` other than 5), so the two rows compare the same
tiles. These rows are not leave-one-region-out: the model has seen N labelled images of the
region.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import yaml
from scan_common import RESULTS, emit, load, machine

from slidewatch.config.train import DataConfig, from_dict, load_yaml, to_dict
from slidewatch.data.folders import name_group
from slidewatch.data.masks import scene_samples
from slidewatch.data.sampledata import REGIONS, locate
from slidewatch.experiments.demo import (
    REFERENCE_TILING,
    _fold,
    bijie_dataset,
    ensure_tiles,
    evaluate_region,
    evaluate_segmenter,
    held_out_images,
)
from slidewatch.io_utils import atomic_write_text
from slidewatch.meta import read_meta
from slidewatch.runtime import no_progress

RESULTS_FILE = RESULTS / "generalisation.jsonl"
ADAPT_EPOCHS = 5
KEYS = ("roc_auc", "pr_auc", "f1", "specificity", "recall", "recall_at_fpr_0.1",
        "fpr_at_recall_0.9", "flagged", "pixel_iou", "pixel_f1")


def fold_config(recipe: dict, root: Path, tiles: Path, region: str,
                val_regions: list[str] | None = None, scenes: bool = False):
    """The recipe for the fold without ``region``; with ``val_regions``, the first of them
    that is not held out becomes the fold's validation region (``data.val_regions``);
    ``scenes``: a classifier trains on tiles it cuts from the regions' scene folders with the
    recipe's ``data.tile`` and ``data.stride`` instead of on the reference tiles; a recipe whose
    own tiling is not the reference's (:func:`own_tiling`) always does, so that the benchmark
    measures the recipe as it trains."""
    cfg = copy.deepcopy(recipe)
    scenes = scenes or own_tiling(recipe)
    bijie = bijie_dataset(root)
    extra = [str(bijie)] if bijie is not None else []
    if cfg.get("task", "classify") == "segment" or scenes:
        paths = [str(root / "regions" / r) for r in REGIONS] + extra
    else:
        paths = [str(tiles)] + extra
    cfg.setdefault("data", {}).update({"paths": paths, "holdout_regions": [region]})
    val = next((r for r in val_regions or [] if r != region), None)
    if val is not None:
        cfg["data"]["val_regions"] = [val]
    cfg["progress"] = False
    return from_dict(cfg)


def own_tiling(recipe: dict) -> bool:
    """Whether a recipe tiles scenes otherwise than the reference tiling that the folds are
    scored on (``slidewatch.experiments.demo.REFERENCE_TILING``)."""
    given, default = recipe.get("data") or {}, DataConfig()
    return (given.get("tile", default.tile), given.get("stride", default.stride),
            given.get("min_landslide", default.min_landslide)) != REFERENCE_TILING


def adapt_groups(root: Path, region: str, n: int, seed: int) -> frozenset[str]:
    """N scene images of ``region`` (as split groups, e.g. ``bijie/10009``) drawn with
    ``seed``: the images a user would label in the new region."""
    groups = sorted(s.group for s in scene_samples(root / "regions" / region))
    if not 0 < n < len(groups):
        raise SystemExit(f"--adapt {n}: {region} has {len(groups)} scene images; label fewer")
    rng = np.random.default_rng(seed)
    return frozenset(groups[i] for i in sorted(rng.choice(len(groups), n, replace=False)))


def adapt_config(cfg, fold: Path, adapt_dir: Path, groups: frozenset[str], seed: int,
                 epochs: int):
    """The fold's recipe ``cfg``, continued from the fold's model on the ``groups`` images of the
    held-out region and as many of the fold's training items (drawn with ``seed``); phase 2
    only; the fold's validation split. Writes the split file beside ``adapt_dir``."""
    split = json.loads((fold / "split.json").read_text())
    new = [k for k in split["test"] if name_group(k) in groups]
    if not new:
        raise SystemExit(f"{fold}: no test item of {sorted(groups)} in split.json")
    rng = np.random.default_rng(seed)
    source = sorted(rng.choice(split["train"], min(len(new), len(split["train"])),
                               replace=False).tolist())
    path = adapt_dir.parent / f"{adapt_dir.name}.split.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"format": "slidewatch-split", "version": 1,
                                        "train": sorted(new + source), "val": split["val"],
                                        "test": []}, indent=1) + "\n")
    d = to_dict(cfg)
    d["data"].update({"split_file": str(path), "holdout_regions": [], "val_regions": []})
    d["model"]["init_from"] = str(fold)
    d["phase1"]["epochs"] = 0
    d["phase2"]["epochs"] = epochs
    if cfg.task == "segment":  # the fold's tile area: only the weights and threshold move
        d["segment"]["min_area"] = read_meta(fold).segmentation.min_area_pixels
    return from_dict(d)


def apply_set(recipe: dict, assignments: list[str]) -> dict:
    """``key.sub=VALUE`` (VALUE read as YAML; a mapping merges into the mapping there)."""
    out = copy.deepcopy(recipe)
    for text in assignments:
        key, sep, raw = text.partition("=")
        if not sep:
            raise SystemExit(f"--set {text}: expected KEY=VALUE")
        value = yaml.safe_load(raw)
        *parents, last = key.strip().split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = {**node[last], **value}
        else:
            node[last] = value
    return out


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--data", default=None, help="sample data folder (else $SLIDEWATCH_DATA)")
    ap.add_argument("--out", type=Path, default=Path("runs/generalisation"))
    ap.add_argument("--regions", default=",".join(REGIONS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the recipe (YAML value), repeatable")
    ap.add_argument("--tag", default=None, help="name of the variant (default: the config's)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the "
                    "recipe's)")
    ap.add_argument("--ensemble", action="store_true",
                    help="also score the ensemble of the seeds' models per region")
    ap.add_argument("--tta", action="store_true",
                    help="also score each model with test-time augmentation")
    ap.add_argument("--val-region", default=None, metavar="A,B",
                    help="validate each fold on a region it does not train on: the first of "
                    "these that is not held out (thresholds and temperature come from it)")
    ap.add_argument("--train-scenes", action="store_true",
                    help="a classifier fold trains on tiles cut from the regions' scene folders "
                    "with the recipe's data.tile and data.stride (e.g. --set data.stride=112) "
                    "instead of the reference tiles; the tiles it is scored on do not change "
                    "(implied when the recipe's tiling is not the reference's)")
    ap.add_argument("--adapt", type=int, default=0, metavar="N",
                    help="also continue each fold on N labelled scene images of the held-out "
                    "region and score both on its other tiles (see the module doc)")
    ap.add_argument("--adapt-epochs", type=int, default=ADAPT_EPOCHS, metavar="E",
                    help=f"phase-2 epochs of the --adapt training (default {ADAPT_EPOCHS}; "
                    "another number is named in the tag: TAG+adaptNxE)")
    args = ap.parse_args()
    recipe = apply_set(load_yaml(args.config), args.set)
    tag = args.tag or args.config.stem
    seeds = ([int(v) for v in args.seeds.split(",")] if args.seeds
             else [recipe.get("seed", 0)])
    task = recipe.get("task", "classify")
    val_regions = args.val_region.split(",") if args.val_region else None
    train_scenes = task == "classify" and (args.train_scenes or own_tiling(recipe))
    root = locate(args.data, download=False)
    out = args.out / tag
    out.mkdir(parents=True, exist_ok=True)
    tiles = ensure_tiles(root, args.out, print)
    rows, t_all = [], time.perf_counter()
    def score(dirs, region, held, tta=False, exclude=frozenset()):
        return (evaluate_segmenter(dirs, root, region, held, tta=tta, exclude=exclude)
                if task == "segment"
                else evaluate_region(dirs, tiles, region, held, tta=tta, exclude=exclude))

    def record(row, region, seed, name, t0, cfg, **more):
        rec = {"benchmark": "generalisation", "config": str(args.config), "tag": name,
               "set": args.set, "seed": seed, "task": task,
               "val_regions": list(cfg.data.val_regions),
               **({"train_scenes": True} if train_scenes else {}),
               "region": region, "tiles": row["tiles"],
               "landslide_tiles": row["landslide_tiles"],
               **{k: row.get(k) for k in KEYS},
               "steps_per_epoch": cfg.steps_per_epoch,
               "seconds": round(time.perf_counter() - t0, 1),
               "machine": machine("cpu"), "load": load(), **more}
        emit(rec, RESULTS_FILE)
        rows.append(rec)

    for region in args.regions.split(","):
        members = []
        for seed in seeds:
            t0 = time.perf_counter()
            cfg = fold_config({**recipe, "seed": seed}, root, tiles, region, val_regions,
                              train_scenes)
            run_dir = out / f"seed{seed}" / f"holdout-{region}"
            _fold(run_dir, cfg, print, no_progress, f"{tag} (seed {seed}) without {region}")
            members.append(run_dir)
            held = held_out_images(root, region, list(cfg.data.classes))
            record(score(run_dir, region, held), region, seed, tag, t0, cfg)
            if args.tta:
                t0 = time.perf_counter()
                record(score(run_dir, region, held, tta=True), region, seed, tag + "+tta", t0,
                       cfg)
            if args.adapt:
                t0 = time.perf_counter()
                groups = adapt_groups(root, region, args.adapt, seed)
                what = f"adapt{args.adapt}" + (f"x{args.adapt_epochs}"
                                               if args.adapt_epochs != ADAPT_EPOCHS else "")
                adapt_dir = out / f"seed{seed}" / f"holdout-{region}-{what}"
                acfg = adapt_config(cfg, run_dir, adapt_dir, groups, seed, args.adapt_epochs)
                _fold(adapt_dir, acfg, print, no_progress,
                      f"{tag} (seed {seed}) without {region}, + {args.adapt} of its images")
                name = f"{tag}+{what}"
                for label, d in ((name + "-before", run_dir), (name, adapt_dir)):
                    record(score(d, region, held, exclude=groups), region, seed, label, t0,
                           acfg, adapt_images=sorted(groups), adapt_epochs=args.adapt_epochs,
                           adapt_min_area=acfg.segment.min_area if task == "segment" else None)
        if args.ensemble and len(members) > 1:
            t0 = time.perf_counter()
            record(score(members, region, held), region, "+".join(map(str, seeds)),
                   f"{tag}+ensemble", t0, cfg)
    print(f"\n{tag} ({task}), {time.perf_counter() - t_all:.0f} s")
    print(f"{'variant':22} {'held-out':10} {'seed':>5} {'tiles':>5} {'slides':>6} "
          + " ".join(f"{k:>9.9}" for k in KEYS))
    for r in rows:
        print(f"{r['tag'][:22]:22} {r['region']:10} {str(r['seed']):>5} {r['tiles']:>5} "
              f"{r['landslide_tiles']:>6} " + " ".join(f"{fmt(r[k]):>9}" for k in KEYS))


if __name__ == "__main__":
    main()
