"""Planning and resume state of ``slidewatch scan``: output names, settings fingerprints, checks
of every scene before anything is written, and the state file of work in progress.

Work in progress is ``.<stem>_probability.partial.tif`` + ``.<stem>_scan-state.json``; the state
holds the fingerprint, the rows already on disk, the next window row and the probabilities of
the window rows that still overlap unwritten rows (replayed on a resume, in the original order).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from slidewatch.data import raster
from slidewatch.data.raster import SceneInfo
from slidewatch.errors import ConfigError, WeightsError
from slidewatch.io_utils import atomic_write_text
from slidewatch.meta import META_FILE, WEIGHTS_FILE, ModelMeta
from slidewatch.scan import mosaic

STATE_VERSION = 2  # 2: batches follow scan_score.ChunkPlan (1: one window row per call)


@dataclass(frozen=True)
class ScanSettings:
    tile: int
    stride: int
    batch: int = 32
    bands: tuple[int, ...] | None = None  # 1-based; None: all bands (greyscale repeated)
    blend: str = "mean"
    threshold: float = 0.5


def resolve_settings(meta: ModelMeta, *, tile: int | None = None, stride: int | None = None,
                     batch: int = 32, bands: Sequence[int] | None = None, blend: str = "mean",
                     threshold: float | None = None) -> ScanSettings:
    """Fill defaults from the model (tile = input size, stride = tile // 2, its threshold)."""
    tile = meta.input_size if tile is None else tile
    if tile < 1:
        raise ConfigError(f"--tile: must be >= 1, got {tile}")
    stride = max(1, tile // 2) if stride is None else stride
    if not 1 <= stride <= tile:
        raise ConfigError(f"--stride: must be between 1 and --tile ({tile}), got {stride}")
    if batch < 1:
        raise ConfigError(f"--batch: must be >= 1, got {batch}")
    if blend not in ("mean", "hann"):
        raise ConfigError(f"--blend: must be mean or hann, got {blend!r}")
    threshold = meta.threshold if threshold is None else threshold
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold: must be in (0, 1), got {threshold}")
    if bands is not None and (not bands or min(bands) < 1):
        raise ConfigError(f"--bands: 1-based band numbers, got {list(bands)}")
    return ScanSettings(tile, stride, batch, None if bands is None else tuple(bands), blend,
                        float(threshold))


@dataclass
class Paths:
    probability: Path
    detections: Path
    wgs84: Path
    quicklook: Path
    partial: Path
    state: Path

    @classmethod
    def of(cls, out: Path, stem: str) -> Paths:
        return cls(out / f"{stem}_probability.tif", out / f"{stem}_detections.geojson",
                   out / f"{stem}_detections_wgs84.geojson", out / f"{stem}_quicklook.png",
                   out / f".{stem}_probability.partial.tif", out / f".{stem}_scan-state.json")

    def finals(self, georeferenced: bool) -> list[Path]:
        wgs = [self.wgs84] if georeferenced else []
        return [self.probability, self.detections, *wgs, self.quicklook]


@dataclass
class Job:
    info: SceneInfo
    paths: Paths
    fingerprint: dict
    done: int | None  # detections of a complete earlier scan with the same settings


def model_identity(model_dir: str | Path) -> str:
    """Changes when the model folder's metadata or weights change."""
    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise WeightsError(f"{model_dir}: weights file {WEIGHTS_FILE} is missing")
    st = (model_dir / WEIGHTS_FILE).stat()
    h = hashlib.sha256((model_dir / META_FILE).read_bytes())
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def fingerprint(info: SceneInfo, s: ScanSettings, model_id: str, device: torch.device) -> dict:
    """What the output depends on. The backend is not part of it: local and Ray give the same
    numbers, so a scan started with one can be resumed with the other."""
    st = info.path.stat()
    fp = {"version": STATE_VERSION, "scene": str(info.path.resolve()), "bytes": st.st_size,
          "mtime_ns": st.st_mtime_ns, "model": model_id, "tile": s.tile, "stride": s.stride,
          "batch": s.batch, "bands": info.bands, "blend": s.blend, "device": device.type}
    return json.loads(json.dumps(fp))


def _earlier_result(paths: Paths, info: SceneInfo, fp: dict, threshold: float,
                    overwrite: bool) -> int | None:
    """Detections of a complete earlier scan with the same settings, else None (scan it)."""
    finals = paths.finals(info.georeferenced)
    existing = [f for f in finals if f.exists()]
    if overwrite or not existing:
        return None
    tags = {}
    if paths.probability.is_file():
        with raster.open_scene(paths.probability) as ds:
            tags = ds.tags()
    same = (tags.get("SLIDEWATCH_SCAN") == json.dumps(fp, sort_keys=True)
            and tags.get("SLIDEWATCH_THRESHOLD") == repr(threshold))
    if not same:
        raise ConfigError(f"{existing[0]}: exists from a scan with other settings or another "
                          f"scene; pass --overwrite to replace it")
    return int(tags.get("SLIDEWATCH_DETECTIONS", 0)) if len(existing) == len(finals) else None


def plan(scenes: Sequence, out: Path, meta: ModelMeta, s: ScanSettings, model_id: str,
         device: torch.device, overwrite: bool) -> list[Job]:
    """Check every scene and the output folder before anything is written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not scenes:
        raise ConfigError("no scenes given")
    jobs, stems = [], {}
    for scene in map(Path, scenes):
        info = raster.inspect_scene(scene, meta.in_chans, s.bands and list(s.bands))
        if s.tile > min(info.width, info.height):
            raise ConfigError(f"{scene}: {info.width}x{info.height} pixels is smaller than the "
                              f"{s.tile}-pixel window; use a smaller --tile")
        if scene.stem in stems:
            raise ConfigError(f"{scene}: same name as {stems[scene.stem]}; outputs would collide, "
                              f"scan them into different --out folders")
        stems[scene.stem] = scene
        paths = Paths.of(out, scene.stem)
        fp = fingerprint(info, s, model_id, device)
        jobs.append(Job(info, paths, fp, _earlier_result(paths, info, fp, s.threshold,
                                                         overwrite)))
    return jobs


# ---------------------------------------------------------------- resume state


def discard(p: Paths) -> None:
    for f in (p.partial, p.state):
        if f.exists():
            f.unlink()


def save_state(path: Path, fp: dict, rows_written: int, next_row: int, replay: dict) -> None:
    rep = {str(j): [None if math.isnan(v) else v for v in ps] for j, ps in replay.items()}
    atomic_write_text(path, json.dumps({"fingerprint": fp, "rows_written": rows_written,
                                        "next_row": next_row, "replay": rep}) + "\n")


def start_state(job: Job, overwrite: bool) -> dict:
    """The saved state when it is for the same settings (resume), else a fresh partial file."""
    p = job.paths
    if not overwrite and p.state.is_file() and p.partial.is_file():
        try:
            state = json.loads(p.state.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = {}
        if state.get("fingerprint") == job.fingerprint:
            state["replay"] = {int(j): [math.nan if v is None else v for v in ps]
                               for j, ps in state["replay"].items()}
            return state
    discard(p)
    mosaic.create_probability(p.partial, job.info,
                              {"SLIDEWATCH_SCAN": json.dumps(job.fingerprint, sort_keys=True)})
    save_state(p.state, job.fingerprint, 0, 0, {})
    return {"rows_written": 0, "next_row": 0, "replay": {}}
