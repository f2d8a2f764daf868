"""Training throughput through the real data pipeline against synthetic tensors (one run).

CPU (default): efficientnet_lite0 at 224 px, phase-2 style fine-tuning, images/s and the share
of each step spent waiting for the DataLoader. GPU (``--gpu``): efficientnet_b3 at 300 px, bf16
autocast, channels_last; real pipeline against the same model fed synthetic tensors already on
the GPU. Prints one JSON line per measurement; ratios are taken within this one run.

    python benchmarks/train_speed.py [--data TILES] [--steps 20] [--gpu] [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from slidewatch.config.train import AugmentConfig
from slidewatch.data.dataset import TileDataset
from slidewatch.data.folders import scan_class_folders
from slidewatch.data.transforms import TrainTransform
from slidewatch.inference.forward import forward_logits
from slidewatch.meta import ModelMeta
from slidewatch.models import build_model, model_data_config
from slidewatch.models.freezing import set_batchnorm_eval, unfreeze_top_blocks
from slidewatch.runtime import prepare_model, worker_init


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def dataset(data: str | None, size: int) -> TileDataset:
    if data is None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _factories import make_class_dataset

        root = Path(tempfile.mkdtemp()) / "tiles"
        make_class_dataset(root, images=8, per_image=8, size=224)
        data = str(root)
    samples = scan_class_folders(Path(data))
    return TileDataset(samples, transform=TrainTransform(AugmentConfig(), size), cache=True)


def run(model, meta, batches, steps, device, opt, loss_fn, synthetic=None) -> dict:
    """Time ``steps`` optimiser steps; returns images/s and the share spent waiting for data."""
    model.train()
    set_batchnorm_eval(model)
    it = iter(batches) if synthetic is None else None
    wait = comp = 0.0
    n = 0
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        if synthetic is None:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(batches)
                batch = next(it)
            x, y = batch["image"], batch["label"].to(device)
        else:
            x, y = synthetic
        t1 = time.perf_counter()
        loss = loss_fn(forward_logits(model, x, meta, device), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= 2:
            wait += t1 - t0
            comp += t2 - t1
            n += len(y)
    return {"images_per_s": n / (wait + comp), "data_wait_share": wait / (wait + comp)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="a tile dataset (class folders); default: generated tiles")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--gpu", action="store_true", help="efficientnet_b3 at 300 px on CUDA")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if args.gpu else "cpu")
    name, size = ("efficientnet_b3", 300) if args.gpu else ("efficientnet_lite0", 224)
    model = build_model(name, num_classes=2, weights="none")
    dc = model_data_config(name, model)
    meta = ModelMeta(name, ["landslide", "non_landslide"], 3, size, list(dc["mean"]),
                     list(dc["std"]))
    unfreeze_top_blocks(model, 2)
    model = prepare_model(model, device)
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    ds = dataset(args.data, size)
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        worker_init_fn=worker_init, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0, drop_last=True)
    base = {"benchmark": "train_speed", "model": name, "input": size, "batch": args.batch,
            "workers": args.workers, "machine": machine()}
    real = run(model, meta, loader, args.steps, device, opt, loss_fn)
    x = torch.rand(args.batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (args.batch,), device=device)
    synth = run(model, meta, None, args.steps, device, opt, loss_fn, synthetic=(x, y))
    print(json.dumps({**base, "pipeline": "real", **real}))
    print(json.dumps({**base, "pipeline": "synthetic", **synth}))
    print(json.dumps({**base, "ratio_real_to_synthetic":
                      real["images_per_s"] / synth["images_per_s"]}))


if __name__ == "__main__":
    main()
