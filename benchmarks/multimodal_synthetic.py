"""Image + tabular fusion on generated data with a known answer (one run, CPU).

A tile is a landslide only if its image shows a bright patch AND its slope (a CSV column) is
above 20 degrees; elevation (10% empty) and trigger are noise. Either branch alone sees half
the evidence, so its best F1 is 2/3; the fused model can reach 1. Trains the fused, image-only
and tabular-only models through ``slidewatch train`` (the study's small CNN at 32 px) and scores
each on a separate test folder with ``slidewatch evaluate``. Prints one JSON line per model.

    .venv/bin/python benchmarks/multimodal_synthetic.py [--train 512] [--test 256] [--epochs 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _factories import make_fusion_dataset, write_rows  # noqa: E402

from slidewatch.cli.main import main  # noqa: E402

MODES = ("fused", "image", "tabular")


def run(root: Path, args) -> list[dict]:
    rows = make_fusion_dataset(root / "train", n=args.train, seed=args.seed, prefix="a")
    rows += make_fusion_dataset(root / "test", n=args.test, seed=args.seed + 1, prefix="b")
    table = write_rows(root / "rows.csv", rows, ["tile_id", "slope", "elevation", "trigger"])
    results = []
    for mode in MODES:
        t0 = time.perf_counter()
        code = main(["train", "--data", str(root / "train"), "--out", str(root / mode),
                     "--tabular", str(table), "--numeric", "slope,elevation",
                     "--categorical", "trigger", "--tabular-key", "tile_id",
                     "--fusion-mode", mode, "--model", "baseline_cnn", "--weights", "none",
                     "--input-size", "32", "--phase1-epochs", "0", "--schedule", "constant",
                     "--phase2-epochs",
                     str(args.epochs), "--phase2-lr", "0.003", "--unfreeze-layers", "99",
                     "--batch-size", "16", "--val-fraction", "0.2", "--no-augment", "--quiet",
                     "--device", "cpu", "--seed", str(args.seed)])
        seconds = time.perf_counter() - t0
        assert code == 0, f"train {mode} failed"
        assert main(["evaluate", str(root / mode), "--data", str(root / "test"), "--out",
                     str(root / f"{mode}-eval"), "--tabular", str(table), "--quiet",
                     "--device", "cpu"]) == 0
        m = json.loads((root / f"{mode}-eval" / "metrics.json").read_text())["overall"]
        results.append({"benchmark": "multimodal_synthetic", "mode": mode, "test_n": m["n"],
                        "f1": m["f1"], "precision": m["precision"], "recall": m["recall"],
                        "roc_auc": m["roc_auc"], "train_seconds": round(seconds, 1),
                        "train_images": args.train, "epochs": args.epochs,
                        "torch": torch.__version__, "threads": torch.get_num_threads()})
    return results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=512, help="training images (20%% validation)")
    p.add_argument("--test", type=int, default=256, help="test images")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny model)")
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    return p.parse_args()


if __name__ == "__main__":
    args = parse()
    torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):  # the commands' tables; stdout = JSON lines
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=False)
            results = run(Path(args.out), args)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                results = run(Path(tmp), args)
    for r in results:
        print(json.dumps(r))
