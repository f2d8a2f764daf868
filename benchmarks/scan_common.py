"""Shared pieces of the scan benchmarks: machine description, the model folder, generated scenes.

Scenes are written a block row at a time (never a whole-scene array), as 3-band uint8 GeoTIFFs
(UTM 45N, 10 m pixels) with 256 x 256 tiles and deflate compression, like a Cloud-Optimised
GeoTIFF: a vegetation texture with bright landslide-like scars.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from slidewatch.meta import ModelMeta
from slidewatch.models import build_model, model_data_config
from slidewatch.models.checkpoint import save_model

RESULTS = Path(__file__).resolve().parent / "results"
ORIGIN = (500000.0, 3000000.0)  # west, north (EPSG:32645)
PIXEL = 10.0


def scan_args(ap: argparse.ArgumentParser, stride: int = 112) -> None:
    """The options every scan benchmark takes: windows, batch, device, results file."""
    ap.add_argument("--stride", type=int, default=stride)
    ap.add_argument("--batch", type=int, default=16, help="windows per forward pass [16: "
                    "scan's CPU default]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", default=None, help="JSON lines file [results/<device>-...]")


def machine(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    driver=_nvidia_driver())
    return info


def _nvidia_driver() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def emit(record: dict, results: Path) -> None:
    """Print one JSON line and append it to ``results``."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    line = json.dumps(record)
    print(line, flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def lite0_model_dir(root: Path, weights: str = "imagenet") -> tuple[Path, ModelMeta]:
    """A slidewatch model folder: efficientnet_lite0 at 224 px, two classes, ImageNet weights
    from the offline package (the weights do not change the speed)."""
    name = "efficientnet_lite0"
    model = build_model(name, num_classes=2, weights=weights)
    dc = model_data_config(name, model)
    meta = ModelMeta(name, ["landslide", "non_landslide"], 3, 224, list(dc["mean"]),
                     list(dc["std"]))
    save_model(root / "model", model, meta)
    return root / "model", meta


def write_scene(path: Path, height: int, width: int, seed: int = 0,
                compress: str | None = "deflate") -> Path:
    """A generated scene, written 256 rows at a time."""
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32645", "transform": from_origin(*ORIGIN, PIXEL, PIXEL),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "bigtiff": "if_safer"}
    if compress:
        profile["compress"] = compress
    green = np.array([40, 120, 40], np.int16)[:, None, None]
    scar = np.array([185, 150, 110], np.int16)[:, None, None]
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, height, 256):
            h = min(256, height - r0)
            img = green + rng.integers(-20, 30, (3, h, width), dtype=np.int16)
            for _ in range(max(1, width // 1500)):  # a few scars per block row
                c, s = int(rng.integers(0, max(1, width - 200))), int(rng.integers(40, 200))
                img[:, : min(s, h), c:c + s] = scar + rng.integers(-15, 15, (3, min(s, h),
                                                                            min(s, width - c)))
            dst.write(np.clip(img, 0, 255).astype(np.uint8), window=Window(0, r0, width, h))
    return path
