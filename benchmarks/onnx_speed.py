"""PyTorch eager against ONNX Runtime (fp32, int8 dynamic, int8 static), same machine, same
batch, same run: predict images/s and scan windows/s of the EfficientNet-Lite0 classifier and
the U-Net over EfficientNet-Lite0, both at 224 px.

predict: the library's forward pass (``inference.forward.batch_probabilities``: normalisation,
model, softmax or sigmoid) on pre-made unit-scale batches, ``inference_mode``, timed for
``--seconds`` per runtime, runtimes interleaved ``--repeats`` times (the mean is reported).
scan: ``slidewatch.scan.scan`` end to end (reading, preparing, model, blending, writing,
polygons, quick-look) over a generated GeoTIFF (3-band uint8, deflate, 256-px tiles), tile 224,
``--stride``; the ONNX runs read the exported ``.onnx`` files alone. The int8 static file is
calibrated on ``--calibration`` 224-px tiles cut from another generated scene, or on as many
images of ``--calibration-data DIR`` (``slidewatch export``'s choice: spread evenly over the
sorted list). Each line also gives the file size and the largest probability difference from
PyTorch on the predict batch (random pixels) and, with ``--check-tiles DIR``, on as many
images of DIR halfway between those picks (others than the calibration ones when both are the
same folder of at least twice as many images). The ONNX Runtime session uses as many threads
as torch (``torch.get_num_threads()``). ``--classifier DIR`` / ``--segmenter DIR``: trained
folders (224 px) instead of the generated ones.

    python benchmarks/onnx_speed.py [--size 1024] [--batch 16] [--stride 112] [--seconds 8]
    python benchmarks/onnx_speed.py --classifier runs/demo/holdout-bijie \
        --segmenter runs/demo/segment-holdout-bijie --calibration-data TILES --check-tiles TILES
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
from scan_common import RESULTS, emit, lite0_model_dir, load, machine, write_scene  # noqa: E402

from slidewatch.export.onnx_export import export_model  # noqa: E402
from slidewatch.export.runtime import load_onnx  # noqa: E402
from slidewatch.inference.forward import batch_probabilities  # noqa: E402
from slidewatch.meta import ModelMeta, SegmentationSpec  # noqa: E402
from slidewatch.models.checkpoint import load_model, save_model  # noqa: E402
from slidewatch.models.segmentation import build_segmenter  # noqa: E402
from slidewatch.scan.run import scan  # noqa: E402

RESULTS_FILE = RESULTS / "cpu-onnx-speed.jsonl"
SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static")


def unet_model_dir(root: Path, weights: str) -> Path:
    """A segmentation model folder: U-Net over EfficientNet-Lite0 at 224 px (encoder weights
    from the offline package; weights do not change the speed). The random decoder's head is
    scaled down and shifted (logits about N(-3, 0.5)) so that its map stays below the threshold:
    no polygons of noise, the scan costs what a trained model's does."""
    model = build_segmenter("unet/efficientnet_lite0", in_chans=3, weights=weights)
    head = model.net.segmentation_head[0]
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.fill_(-3.0)
    meta = ModelMeta("unet/efficientnet_lite0", ["landslide", "non_landslide"], 3, SIZE,
                     list(IMAGENET_MEAN), list(IMAGENET_STD), task="segment",
                     segmentation=SegmentationSpec(64))
    save_model(root / "unet", model.eval(), meta)
    return root / "unet"


def calibration_tiles(root: Path, n: int) -> Path:
    """``n`` 224-px PNG tiles cut from a generated scene (another seed than the scanned one)."""
    import rasterio
    from PIL import Image
    from rasterio.windows import Window

    side = SIZE * int(np.ceil(np.sqrt(n)))
    scene = write_scene(root / "calibration.tif", side, side, seed=1)
    out = root / "calibration"
    out.mkdir()
    with rasterio.open(scene) as ds:
        for k in range(n):
            r, c = divmod(k, side // SIZE)
            arr = ds.read(window=Window(c * SIZE, r * SIZE, SIZE, SIZE))
            Image.fromarray(np.moveaxis(arr, 0, -1)).save(out / f"t{k:03d}.png")
    return out


def check_files(folder: str | None, n: int) -> list[Path]:
    """``n`` images of ``folder`` halfway between the calibration picks (none without one)."""
    if folder is None:
        return []
    from slidewatch.data.readers import IMAGE_SUFFIXES

    found = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(found) < 2 * n:
        return found[-n:]
    return [found[i * len(found) // n + len(found) // (2 * n)] for i in range(n)]


def tile_probabilities(model: Path, files: list[Path]) -> np.ndarray:
    from slidewatch.inference.predict import predict_paths

    return np.array([p.probability for p in predict_paths(model, files, device="cpu")])


def export_all(model_dir: Path, root: Path, calibration: Path,
               args: argparse.Namespace) -> dict[str, dict]:
    files = {}
    for name, quant in (("onnx-fp32", "none"), ("onnx-int8-dynamic", "dynamic"),
                        ("onnx-int8-static", "static")):
        out = root / f"{model_dir.name}-{name}.onnx"
        r = export_model(model_dir, out, quantization=quant,
                         calibration_data=calibration if quant == "static" else None,
                         calibration_samples=args.calibration)
        files[name] = {"path": out, "file_mb": round(r.bytes / 1e6, 2),
                       "export_seconds": round(r.seconds, 1),
                       "export_check_max_abs_diff": r.max_abs_diff,
                       "export_checked_on": r.checked_on}
    return files


def timed_predict(model, meta: ModelMeta, x: torch.Tensor, seconds: float) -> float:
    """images/s of the forward pass on ``x`` for about ``seconds`` (after one warm-up)."""
    dev = torch.device("cpu")
    with torch.inference_mode():
        batch_probabilities(model, {"image": x}, meta, dev)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            batch_probabilities(model, {"image": x}, meta, dev)
            n += len(x)
    return n / (time.perf_counter() - t0)


def probs(model, meta: ModelMeta, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return batch_probabilities(model, {"image": x}, meta,
                                   torch.device("cpu"))["probability"].numpy()


def bench_model(task: str, model_dir: Path, scene: Path, root: Path, calibration: Path,
                args: argparse.Namespace) -> None:
    trained = str(model_dir) if root not in model_dir.parents else None
    base = {"benchmark": "onnx_speed", "task": task, "model": model_dir.name, "input": SIZE,
            "trained_folder": trained,
            "batch": args.batch, "machine": machine("cpu")}
    files = export_all(model_dir, root, calibration, args)
    models = {"torch": load_model(model_dir, "cpu")}
    for name, f in files.items():
        models[name] = load_onnx(f["path"], "cpu")
    x = torch.rand(args.batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    ref = probs(*models["torch"], x)
    speeds: dict[str, list[float]] = {name: [] for name in RUNTIMES}
    for _ in range(args.repeats):  # interleaved: the machine's load hits every runtime alike
        for name in RUNTIMES:
            speeds[name].append(timed_predict(*models[name], x, args.seconds))
    predict = {name: float(np.mean(v)) for name, v in speeds.items()}
    files_checked = check_files(args.check_tiles, args.calibration)
    tiles_ref = tile_probabilities(model_dir, files_checked) if files_checked else None
    for name in RUNTIMES:
        diff = float(np.abs(probs(*models[name], x) - ref).max())
        tiles = {}
        if files_checked:
            model = model_dir if name == "torch" else files[name]["path"]
            d = np.abs(tile_probabilities(model, files_checked) - tiles_ref)
            tiles = {"tiles_checked": len(files_checked),
                     "tiles_max_abs_diff_vs_torch": float(d.max()),
                     "tiles_mean_abs_diff_vs_torch": float(d.mean())}
        emit({**base, "stage": "predict", "runtime": name, "load": load(), **tiles,
              "images_per_s": round(predict[name], 2), "runs": [round(v, 2) for v in speeds[name]],
              "speedup_vs_torch": round(predict[name] / predict["torch"], 2),
              "max_abs_diff_vs_torch": diff,
              **({k: v for k, v in files[name].items() if k != "path"} if name in files else {})},
             RESULTS_FILE)
    scans = {}
    for name in RUNTIMES:
        model = model_dir if name == "torch" else files[name]["path"]
        t0 = time.perf_counter()
        s = scan(model, [scene], root / f"scan-{model_dir.name}-{name}", tile=SIZE,
                 stride=args.stride, batch=args.batch, device="cpu", overwrite=True)
        r = s.scenes[0]
        scans[name] = s.windows / r.seconds
        emit({**base, "stage": "scan", "runtime": name, "load": load(), "scene": args.size,
              "stride": args.stride, "windows": s.windows, "seconds": round(r.seconds, 2),
              "wall_seconds": round(time.perf_counter() - t0, 2),
              "windows_per_s": round(scans[name], 2),
              "speedup_vs_torch": round(scans[name] / scans["torch"], 2),
              "detections": r.detections_count}, RESULTS_FILE)
    emit({**base, "stage": "summary", "load": load(),
          "predict_images_per_s": {k: round(v, 2) for k, v in predict.items()},
          "scan_windows_per_s": {k: round(v, 2) for k, v in scans.items()},
          "scan_speedup_onnx_fp32": round(scans["onnx-fp32"] / scans["torch"], 2),
          "target_scan_speedup_onnx_fp32": 1.5}, RESULTS_FILE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="scanned scene side in pixels")
    ap.add_argument("--stride", type=int, default=112)
    ap.add_argument("--batch", type=int, default=16, help="[16: scan's CPU default]")
    ap.add_argument("--seconds", type=float, default=8.0, help="predict timing per runtime")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved predict timings")
    ap.add_argument("--calibration", type=int, default=32, help="tiles for int8 static")
    ap.add_argument("--weights", default="imagenet", help="imagenet (offline package) or none")
    ap.add_argument("--tasks", default="classify,segment")
    ap.add_argument("--classifier", default=None, help="a trained classifier folder (224 px)")
    ap.add_argument("--segmenter", default=None, help="a trained segmentation folder (224 px)")
    ap.add_argument("--calibration-data", default=None, help="tiles for int8 static")
    ap.add_argument("--check-tiles", default=None, help="tiles for the probability differences")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnx_speed_") as tmp:
        root = Path(tmp)
        scene = write_scene(root / "scene.tif", args.size, args.size)
        calibration = (Path(args.calibration_data) if args.calibration_data
                       else calibration_tiles(root, args.calibration))
        for task in args.tasks.split(","):
            if task == "classify" and args.classifier:
                model_dir = Path(args.classifier)
            elif task == "classify":
                model_dir, _ = lite0_model_dir(root, args.weights)
                model_dir = model_dir.rename(root / "efficientnet_lite0")
            elif args.segmenter:
                model_dir = Path(args.segmenter)
            else:
                model_dir = unet_model_dir(root, args.weights)
            bench_model(task, model_dir, scene, root, calibration, args)


if __name__ == "__main__":
    main()
