"""Peak resident memory of ``slidewatch scan`` on a 20000 x 20000 px 3-band GeoTIFF against a
10000 x 10000 one (target: <= 1.5 GB and about the same for both), efficientnet_lite0 at 224.

Each scan runs in its own subprocess, which reports ``ru_maxrss`` after loading torch and the
model, after one forward pass of a batch (the model's own working memory: the floor of any
scan) and after the scan (the peak). The scenes are generated a block row at a time
by this (parent) process, never as whole arrays. The memory does not depend much on the stride;
on a CPU the default ``--stride 224`` (= tile: 7921 windows for 20000 px) keeps the run short.

    python benchmarks/scan_memory.py [--sizes 10000 20000] [--stride 224] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(model_dir: str, scene: str, out: str, stride: int, batch: int, device: str) -> None:
    """Runs in the subprocess: one JSON line with the floor and the peak."""
    import torch

    from slidewatch.inference.forward import forward_logits
    from slidewatch.models.checkpoint import load_model
    from slidewatch.scan.run import scan

    model, meta = load_model(model_dir, device)
    loaded = rss_mb()  # torch (CUDA build: its libraries count), timm, rasterio, the weights
    with torch.inference_mode():  # the model's own working memory for one batch
        forward_logits(model, torch.rand(batch, 3, 224, 224), meta, torch.device(device))
    floor = rss_mb()
    del model
    t0 = time.perf_counter()
    s = scan(model_dir, [scene], out, tile=224, stride=stride, batch=batch, device=device,
             overwrite=True)
    print(json.dumps({"loaded_mb": round(loaded, 1), "after_one_batch_mb": round(floor, 1),
                      "peak_mb": round(rss_mb(), 1),
                      "windows": s.windows, "seconds": round(time.perf_counter() - t0, 1),
                      "windows_per_s": round(s.windows_per_s, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000])
    scan_args(ap, stride=224)
    ap.add_argument("--work", default=None, help="folder for the scenes [a temporary one]")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "SCENE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child, args.stride, args.batch, args.device)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        return run(args, Path(args.work))
    with tempfile.TemporaryDirectory(prefix="scan_memory_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, root: Path) -> None:
    """Scenes (kept in ``root`` between runs), one subprocess per scan, the JSON lines."""
    results = Path(args.results or RESULTS / f"{args.device.split(':')[0]}-scan-memory.jsonl")
    model_dir, _ = lite0_model_dir(root)
    base = {"benchmark": "scan_memory", "model": "efficientnet_lite0", "tile": 224,
            "stride": args.stride, "batch": args.batch, "machine": machine(args.device)}
    peaks = {}
    for size in args.sizes:
        scene = root / f"scene{size}.tif"
        if not scene.exists():
            write_scene(scene, size, size, seed=size)
        cmd = [sys.executable, __file__, "--child", str(model_dir), str(scene),
               str(root / f"out{size}"), "--stride", str(args.stride), "--batch",
               str(args.batch), "--device", args.device]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"scan of {scene} failed:\n{done.stderr[-2000:]}")
        rec = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[size] = rec["peak_mb"]
        emit({**base, "scene": f"{size}x{size}x3 uint8", "scene_mb": size * size * 3 / 2**20,
              "load": load(), **rec}, results)
    if len(peaks) > 1:
        small, big = min(peaks), max(peaks)
        emit({**base, "what": "ratio", f"peak_mb_{big}": peaks[big],
              f"peak_mb_{small}": peaks[small], "ratio_peak": peaks[big] / peaks[small],
              "target_mb": 1536}, results)


if __name__ == "__main__":
    main()
