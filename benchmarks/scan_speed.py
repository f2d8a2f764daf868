"""Scan throughput against the bare model, same machine, same batch size, same run.

bare: the model's forward (``inference.forward_logits``: normalisation, channels_last, bf16
autocast on CUDA) under ``torch.inference_mode`` on pre-made unit-scale batches of the window
size (already on the device), images/s. scan: ``slidewatch.scan.scan`` over a generated GeoTIFF
(tile = input size 224, stride 112, deflate-compressed 256-px tiles), windows/s end to end
(reading, preparing, model, blending, writing, polygons and quick-look). The bare model is timed
before and after the scan; the ratio uses their mean. ``--profile`` adds a run with the reading
inline under cProfile and reports the seconds per stage.

    python benchmarks/scan_speed.py [--size 3584] [--batch 16] [--device cpu|cuda]
    python benchmarks/scan_speed.py --device cuda --size 12000 --batch 128   # on a GPU machine
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_common import (  # noqa: E402
    RESULTS,
    emit,
    lite0_model_dir,
    load,
    machine,
    scan_args,
    write_scene,
)

from slidewatch.inference.forward import forward_logits  # noqa: E402
from slidewatch.models.checkpoint import load_model  # noqa: E402
from slidewatch.scan import score as scan_score  # noqa: E402
from slidewatch.scan.run import Backend, scan  # noqa: E402

STAGES = {  # (file suffix, function name) -> stage, from cProfile's cumulative times
    ("data/raster.py", "read_windows"): "read",
    ("scan/score.py", "batch_tensor"): "prepare",
    ("inference/forward.py", "forward_logits"): "model",
    ("scan/mosaic.py", "add"): "blend",
    ("scan/mosaic.py", "pop"): "blend_pop",
    ("scan/mosaic.py", "write_rows"): "write",
    ("data/raster.py", "valid_rows"): "masks",
    ("scan/outputs.py", "finish"): "outputs",
}


def bare(model, meta, device: torch.device, batch: int, seconds: float) -> dict:
    x = torch.rand(batch, 3, meta.input_size, meta.input_size, device=device)
    n = 0
    with torch.inference_mode():
        for _ in range(2):
            forward_logits(model, x, meta, device)
        sync(device)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.softmax(forward_logits(model, x, meta, device), dim=1)
            n += batch
        sync(device)
    return {"images": n, "seconds": time.perf_counter() - t0,
            "images_per_s": n / (time.perf_counter() - t0)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_scan(model_dir, scene, out, args, backend) -> dict:
    t0 = time.perf_counter()
    s = scan(model_dir, [scene], out, tile=224, stride=args.stride, batch=args.batch,
             device=args.device, overwrite=True, backend=backend)
    wall = time.perf_counter() - t0
    r = s.scenes[0]
    return {"windows": s.windows, "seconds": r.seconds, "wall_seconds": wall,
            "windows_per_s": s.windows / r.seconds, "detections": r.detections_count}


def profile(model_dir, scene, out, args) -> dict:
    """Stage seconds of one scan with the reading inline (cProfile sees one thread)."""
    scan_score.PREFETCH_BATCHES, keep = 0, scan_score.PREFETCH_BATCHES
    prof = cProfile.Profile()
    try:
        prof.enable()
        res = run_scan(model_dir, scene, out, args, Backend())
        prof.disable()
    finally:
        scan_score.PREFETCH_BATCHES = keep
    stages = {}
    for (file, _, name), (_, _, _, cum, _) in pstats.Stats(prof).stats.items():
        for (suffix, fn), stage in STAGES.items():
            if name == fn and file.endswith(suffix):
                stages[stage] = round(stages.get(stage, 0.0) + cum, 2)
    return {**res, "stage_seconds": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=3584, help="scene side in pixels")
    scan_args(ap)
    ap.add_argument("--bare-seconds", type=float, default=20.0)
    ap.add_argument("--compress", default="deflate", help="scene compression (none: raw)")
    ap.add_argument("--profile", action="store_true", help="also a cProfile run, per stage")
    ap.add_argument("--no-prefetch", action="store_true", help="read inline (no thread)")
    ap.add_argument("--backend", default="local", choices=["local", "ray"])
    ap.add_argument("--workers", type=int, default=None, help="Ray workers")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan_speed_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, root: Path) -> None:
    device = torch.device(args.device)
    results = Path(args.results or RESULTS / f"{device.type}-scan-speed.jsonl")
    model_dir, _ = lite0_model_dir(root)
    compress = None if args.compress == "none" else args.compress
    scene = write_scene(root / "scene.tif", args.size, args.size, compress=compress)
    if args.no_prefetch:
        scan_score.PREFETCH_BATCHES = 0
    backend = Backend(args.backend, workers=args.workers) if args.backend == "ray" else Backend()
    model, meta = load_model(model_dir, device)
    base = {"benchmark": "scan_speed", "model": "efficientnet_lite0", "input": 224,
            "tile": 224, "stride": args.stride, "batch": args.batch, "scene": args.size,
            "compress": args.compress, "prefetch": scan_score.PREFETCH_BATCHES,
            "backend": args.backend, "machine": machine(args.device)}
    before = bare(model, meta, device, args.batch, args.bare_seconds)
    emit({**base, "what": "bare", "load": load(), **before}, results)
    res = run_scan(model_dir, scene, root / "out", args, backend)
    emit({**base, "what": "scan", "load": load(), **res}, results)
    after = bare(model, meta, device, args.batch, args.bare_seconds)
    emit({**base, "what": "bare", "load": load(), **after}, results)
    ceiling = (before["images_per_s"] + after["images_per_s"]) / 2
    emit({**base, "what": "ratio", "scan_windows_per_s": res["windows_per_s"],
          "bare_images_per_s": ceiling, "ratio_scan_to_bare": res["windows_per_s"] / ceiling,
          "target": 0.85 if device.type == "cpu" else 0.8}, results)
    if args.profile:
        emit({**base, "what": "profile", "load": load(),
              **profile(model_dir, scene, root / "out", args)}, results)


if __name__ == "__main__":
    main()
