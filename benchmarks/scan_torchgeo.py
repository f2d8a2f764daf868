"""slidewatch's scan against TorchGeo's ``RasterDataset`` + ``GridGeoSampler`` + ``DataLoader`` on
the same generated scene, model (efficientnet_lite0 at 224) and batch size (``pip install
'slidewatch[bench]'``).

TorchGeo: windows of size = tile and stride = stride (pixel units), batches of ``--batch``
(``stack_samples``), each window through the same pixel path as scan (``scale_to_unit`` ->
``EvalTransform`` -> ``forward_logits`` -> softmax); it only scores windows (no blending, no
output files). slidewatch: ``scan`` end to end (scoring, blending, probability GeoTIFF,
polygons, quick-look), interleaved with TorchGeo ``--repeat`` times (medians compared), and
its scoring alone (the local backend's chunks) for the per-window probabilities. Windows are
matched by their bounds; the max absolute difference of the probabilities is taken over the
windows both have.
GridGeoSampler anchors its grid at the scene's left and bottom (south) edges and its last
column and row reach past the right and top edges (padded with nodata), where slidewatch
anchors at the left and top and ends with windows flush with the right and bottom edges; the
default scene (2688 rows = 224 + 22 x 112, 2700 columns) makes the rows coincide and shows the
different last column.

    python benchmarks/scan_torchgeo.py [--height 2688 --width 2700] [--batch 16] [--tg-workers 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_common import (  # noqa: E402
    ORIGIN,
    PIXEL,
    RESULTS,
    emit,
    lite0_model_dir,
    load,
    machine,
    scan_args,
    write_scene,
)

from slidewatch.data import raster  # noqa: E402
from slidewatch.data.readers import scale_to_unit  # noqa: E402
from slidewatch.data.transforms import EvalTransform  # noqa: E402
from slidewatch.inference.forward import forward_logits  # noqa: E402
from slidewatch.models.checkpoint import load_model  # noqa: E402
from slidewatch.scan.run import scan  # noqa: E402
from slidewatch.scan.score import ChunkPlan, LocalScorer  # noqa: E402


def torchgeo_pass(scene: Path, model, meta, args, device) -> tuple[dict, dict]:
    """Window probabilities keyed by (col, row) of the window's top-left pixel, and timing."""
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    class Scene(RasterDataset):
        filename_glob = scene.name
        is_image = True

        @property
        def dtype(self) -> torch.dtype:  # the file's uint8, so scale_to_unit sees what scan sees
            return torch.uint8

    t0 = time.perf_counter()
    ds = Scene(paths=[scene.parent])
    sampler = GridGeoSampler(ds, size=args.tile, stride=args.stride)
    loader = DataLoader(ds, sampler=sampler, batch_size=args.batch, collate_fn=stack_samples,
                        num_workers=args.tg_workers)
    transform = EvalTransform(meta.input_size, grayscale=meta.grayscale)
    probs, n = {}, 0
    with torch.inference_mode():
        for batch in loader:
            x = torch.stack([transform(torch.from_numpy(scale_to_unit(img.numpy(), meta.scale)))
                             for img in batch["image"]])
            p = torch.softmax(forward_logits(model, x, meta, device), 1)[:, meta.positive_index]
            for q, bounds in zip(p.cpu().numpy(), batch["bounds"]):
                col = round((bounds[0].start - ORIGIN[0]) / PIXEL)
                row = round((ORIGIN[1] - bounds[1].stop) / PIXEL)
                probs[(col, row)] = float(q)
            n += len(p)
    seconds = time.perf_counter() - t0
    return probs, {"windows": n, "seconds": seconds, "windows_per_s": n / seconds}


def slidewatch_scores(scene: Path, model, meta, args, device) -> tuple[dict, dict]:
    """The local backend's scores of every window (what scan blends), keyed like TorchGeo's."""
    t0 = time.perf_counter()
    with raster.gdal_env(), raster.open_raster(scene) as ds:
        plan = ChunkPlan(raster.Grid(ds.height, ds.width, args.tile, args.stride), args.batch)
        chunks = [plan.windows(c) for c in range(plan.count)]
        scorer = LocalScorer(model, meta, device, args.batch)
        probs = {}
        for windows, p in zip(chunks, scorer.scores(scene, ds, [1, 2, 3], chunks)):
            probs.update({(w.col_off, w.row_off): float(q) for w, q in zip(windows, p)})
    seconds = time.perf_counter() - t0
    return probs, {"windows": len(probs), "seconds": seconds,
                   "windows_per_s": len(probs) / seconds}


def slidewatch_scan(model_dir: Path, scene: Path, out: Path, args) -> dict:
    s = scan(model_dir, [scene], out, tile=args.tile, stride=args.stride, batch=args.batch,
             device=args.device, overwrite=True)
    return {"windows": s.windows, "seconds": s.seconds, "windows_per_s": s.windows_per_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=2688, help="scene rows")
    ap.add_argument("--width", type=int, default=2700, help="scene columns")
    ap.add_argument("--tile", type=int, default=224)
    scan_args(ap)
    ap.add_argument("--tg-workers", type=int, default=1, help="TorchGeo DataLoader workers")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved scan/TorchGeo pairs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan_torchgeo_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, root: Path) -> None:
    import torchgeo

    device = torch.device(args.device)
    results = Path(args.results or RESULTS / f"{device.type}-scan-torchgeo.jsonl")
    model_dir, _ = lite0_model_dir(root)
    (root / "scene").mkdir()
    scene = write_scene(root / "scene" / "scene.tif", args.height, args.width, seed=3)
    model, meta = load_model(model_dir, device)
    base = {"benchmark": "scan_torchgeo", "model": "efficientnet_lite0", "tile": args.tile,
            "stride": args.stride, "batch": args.batch, "scene": [args.height, args.width],
            "torchgeo": torchgeo.__version__, "tg_workers": args.tg_workers,
            "machine": machine(args.device)}
    rates: dict[str, list[float]] = {"slidewatch scan": [], "torchgeo": []}
    for _ in range(args.repeat):  # interleaved: the machine's load changes from minute to minute
        res = slidewatch_scan(model_dir, scene, root / "out", args)
        emit({**base, "what": "slidewatch scan", "load": load(), **res}, results)
        rates["slidewatch scan"].append(res["windows_per_s"])
        tg_probs, tg = torchgeo_pass(scene, model, meta, args, device)
        emit({**base, "what": "torchgeo", "load": load(), **tg}, results)
        rates["torchgeo"].append(tg["windows_per_s"])
    sw_probs, sw = slidewatch_scores(scene, model, meta, args, device)
    emit({**base, "what": "slidewatch scoring only", "load": load(), **sw}, results)
    both = sorted(set(tg_probs) & set(sw_probs))
    diff = np.array([abs(tg_probs[k] - sw_probs[k]) for k in both])
    scan_rate, tg_rate = (float(np.median(rates[k])) for k in ("slidewatch scan", "torchgeo"))
    emit({**base, "what": "comparison", "repeats": args.repeat,
          "slidewatch_scan_windows_per_s": scan_rate, "torchgeo_windows_per_s": tg_rate,
          "ratio_slidewatch_to_torchgeo": scan_rate / tg_rate,
          "ratios_per_repeat": [a / b for a, b in zip(*rates.values())],
          "windows_slidewatch": len(sw_probs), "windows_torchgeo": len(tg_probs),
          "windows_coinciding": len(both), "max_abs_diff": float(diff.max()),
          "identical_windows": int((diff == 0).sum())}, results)


if __name__ == "__main__":
    main()
