"""CPU cost of the two tasks, same run: training images/s (phase 1: frozen backbone or
encoder; phase 2: top stages unfrozen) and inference images/s of the demo's EfficientNet-Lite0
classifier and U-Net over EfficientNet-Lite0, at the same input size and batch. Random inputs
(the model cost, not reading). Prints one JSON line per model and phase (also appended to
benchmarks/results/task-speed.jsonl).

    python benchmarks/task_speed.py --size 224 --batch 8
"""

from __future__ import annotations

import argparse
import time

import torch
from scan_common import RESULTS, emit, load, machine

from slidewatch.models import build_model, freeze_backbone, set_batchnorm_eval
from slidewatch.models.freezing import unfreeze_top_blocks, unfreeze_top_layers
from slidewatch.models.segmentation import build_segmenter
from slidewatch.training.losses import segmentation_loss

RESULTS_FILE = RESULTS / "task-speed.jsonl"


def timed(step, n: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    for task in ("classify", "segment"):
        if task == "classify":
            model = build_model("efficientnet_lite0", weights="imagenet")
            y = torch.randint(0, 2, (args.batch,))

            def loss_of(out):
                return torch.nn.functional.cross_entropy(out, y)
        else:
            model = build_segmenter("unet/efficientnet_lite0", weights="imagenet")
            mask = (torch.rand(args.batch, 1, args.size, args.size) > 0.8).float()

            def loss_of(out):
                return segmentation_loss(out, mask)
        for phase in (1, 2):
            freeze_backbone(model)
            if phase == 2:
                if task == "classify":
                    unfreeze_top_layers(model, 20)
                else:
                    unfreeze_top_blocks(model, 3)
            model.train()
            set_batchnorm_eval(model)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)

            def step():
                loss = loss_of(model(x))
                opt.zero_grad()
                loss.backward()
                opt.step()

            dt = timed(step, args.steps)
            emit({"benchmark": "task_speed", "task": task, "phase": phase, "size": args.size,
                  "batch": args.batch, "train_images_per_s": round(args.batch / dt, 2),
                  "machine": machine("cpu"), "load": load()}, RESULTS_FILE)
        model.eval()
        with torch.no_grad():
            dt = timed(lambda: model(x), args.steps)
        emit({"benchmark": "task_speed", "task": task, "phase": "inference", "size": args.size,
              "batch": args.batch, "images_per_s": round(args.batch / dt, 2),
              "machine": machine("cpu"), "load": load()}, RESULTS_FILE)


if __name__ == "__main__":
    main()
