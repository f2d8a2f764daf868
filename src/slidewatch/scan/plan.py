"""Planning and resume state of ``slidewatch scan``: output names, settings fingerprints, checks
of every scene before anything is written, and the state file of work in progress.

Work in progress is ``.<stem>_probability.partial.tif`` + ``.<stem>_scan-state.json``; the state
holds the fingerprint, the rows already on disk, the next window row and the probabilities of
the window rows that still overlap unwritten rows (replayed on a resume, in the original order).

A state is resumed only when it fits the scene and the settings exactly (:func:`check_state`):
the same fingerprint; ``rows_written`` a whole number of output blocks (or the scene height)
equal to the rows the windows before ``next_row`` finish; ``next_row`` within the window grid;
``replay`` exactly the window rows before ``next_row`` that still overlap unwritten rows, each
with one probability in [0, 1] (or null: all nodata) per window of the row; and a partial file
of the scene's size written for the same fingerprint. A state from other settings starts the
scene again (as ``--overwrite`` does); so does a state that is damaged or edited (not JSON,
wrong types, out of range, inconsistent), with a warning line naming the state file, since
the tool wrote it and can recompute it: a scan never "resumes" from a state that does not fit.

Scene size: a scene with more than ``ScanSettings.max_pixels`` pixels (default
:data:`MAX_PIXELS`, 2**30, e.g. 32768 x 32768; ``--max-pixels``, 0 for no limit) is refused
from its header before anything is planned or written: scan time and the probability map grow
with the area (a sparse 100000 x 100000 GeoTIFF is 39 million windows at tile 32, stride 16).
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
from slidewatch.data.readers import utf8_name
from slidewatch.errors import ConfigError, DataError, WeightsError
from slidewatch.io_utils import atomic_write_text
from slidewatch.meta import META_FILE, WEIGHTS_FILE, ModelMeta
from slidewatch.scan import mosaic

STATE_VERSION = 2  # 2: batches follow scan_score.ChunkPlan (1: one window row per call)
MAX_PIXELS = 2**30  # default scene size limit (width x height), e.g. 32768 x 32768


@dataclass(frozen=True)
class ScanSettings:
    tile: int
    stride: int
    batch: int = 32
    bands: tuple[int, ...] | None = None  # 1-based; None: all bands (greyscale repeated)
    blend: str = "mean"
    threshold: float = 0.5
    max_pixels: int | None = MAX_PIXELS  # scenes larger than this are refused; None: no limit
    tta: bool = False  # test-time augmentation: the mean over flips and 90-degree rotations
    runtime: str = "torch"  # "onnx": ONNX Runtime scores the windows (an .onnx file, --runtime)


def resolve_settings(meta: ModelMeta, *, tile: int | None = None, stride: int | None = None,
                     batch: int = 32, bands: Sequence[int] | None = None, blend: str = "mean",
                     threshold: float | None = None,
                     max_pixels: int | None = MAX_PIXELS, tta: bool = False,
                     runtime: str = "torch") -> ScanSettings:
    """Fill defaults from the model (tile = input size, stride = tile // 2, its threshold).
    ``max_pixels``: the scene size limit (None or 0: no limit). ``runtime``: ``torch`` or
    ``onnx`` (part of the resume fingerprint: the two differ in the last bits)."""
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
    if max_pixels is not None and max_pixels < 0:
        raise ConfigError(f"--max-pixels: must be >= 0 (0: no limit), got {max_pixels}")
    return ScanSettings(tile, stride, batch, None if bands is None else tuple(bands), blend,
                        float(threshold), max_pixels or None, bool(tta), runtime)


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
    """Changes when the model folder's metadata or weights change (for an ONNX file: when any
    of its bytes change)."""
    model_dir = Path(model_dir)
    if model_dir.suffix.lower() == ".onnx" and model_dir.is_file():
        h = hashlib.sha256(b"onnx:")
        with open(model_dir, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return "onnx-" + h.hexdigest()[:16]
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise WeightsError(f"{model_dir}: weights file {WEIGHTS_FILE} is missing")
    st = (model_dir / WEIGHTS_FILE).stat()
    h = hashlib.sha256((model_dir / META_FILE).read_bytes())
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def models_identity(model_dirs: Sequence) -> str:
    """:func:`model_identity` of one folder; for an ensemble, a digest of its member folders
    (resolved paths, in order) and their identities, so that a scan is resumed only with the
    same members, unchanged."""
    if len(model_dirs) == 1:
        return model_identity(model_dirs[0])
    members = [[str(Path(d).resolve()), model_identity(d)] for d in model_dirs]
    return "ensemble-" + hashlib.sha256(json.dumps(members).encode()).hexdigest()[:16]


def fingerprint(info: SceneInfo, s: ScanSettings, model_id: str, device: torch.device,
                standardize: str = "none") -> dict:
    """What the output depends on. The backend is not part of it: local and Ray give the same
    numbers, so a scan started with one can be resumed with the other. ``standardize``: the
    model's standardisation rule (written only when not ``none``)."""
    st = info.path.stat()
    fp = {"version": STATE_VERSION, "scene": str(info.path.resolve()), "bytes": st.st_size,
          "mtime_ns": st.st_mtime_ns, "model": model_id, "tile": s.tile, "stride": s.stride,
          "batch": s.batch, "bands": info.bands, "blend": s.blend, "device": device.type}
    if s.tta:  # only when on, so that scans without it resume across versions
        fp["tta"] = True
    if s.runtime != "torch":  # the same
        fp["runtime"] = s.runtime
    if standardize != "none":  # the same: scans without a rule resume across versions
        fp["standardize"] = standardize
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
    if not utf8_name(out.resolve()):  # rasterio cannot write the probability map there
        raise ConfigError(f"--out {out}: folder name is not valid UTF-8; rename it")
    if not scenes:
        raise ConfigError("no scenes given")
    jobs, stems = [], {}
    for scene in map(Path, scenes):
        info = raster.inspect_scene(scene, meta.in_chans, s.bands and list(s.bands),
                                    s.max_pixels)
        if s.tile > min(info.width, info.height):
            raise ConfigError(f"{scene}: {info.width}x{info.height} pixels is smaller than the "
                              f"{s.tile}-pixel window; use a smaller --tile")
        if scene.stem in stems:
            raise ConfigError(f"{scene}: same name as {stems[scene.stem]}; outputs would collide, "
                              f"scan them into different --out folders")
        stems[scene.stem] = scene
        paths = Paths.of(out, scene.stem)
        fp = fingerprint(info, s, model_id, device, meta.standardize)
        jobs.append(Job(info, paths, fp, _earlier_result(paths, info, fp, s.threshold,
                                                         overwrite)))
    return jobs


# ---------------------------------------------------------------- resume state


def discard(p: Paths) -> None:
    for f in (p.partial, p.state):
        if f.exists():
            f.unlink()


def save_state(path: Path, fp: dict, rows_written: int, next_row: int, replay: dict) -> None:
    rep = {str(j): [None if v is None or math.isnan(v) else v for v in ps]
           for j, ps in replay.items()}
    atomic_write_text(path, json.dumps({"fingerprint": fp, "rows_written": rows_written,
                                        "next_row": next_row, "replay": rep}) + "\n")


def check_state(state: object, job: Job) -> str | None:
    """Why a saved state (same fingerprint) does not fit the scene and settings, or None."""
    if not isinstance(state, dict) or set(state) != {"fingerprint", "rows_written",
                                                     "next_row", "replay"}:
        return "not a scan state"
    info, fp = job.info, job.fingerprint
    grid = raster.Grid(info.height, info.width, fp["tile"], fp["stride"])
    written, nxt, replay = state["rows_written"], state["next_row"], state["replay"]
    if type(nxt) is not int or not 0 <= nxt <= len(grid.rows):
        return f"next_row must be a window row 0..{len(grid.rows)}, got {nxt!r}"
    done = 0 if nxt == 0 else grid.done_rows(nxt - 1)
    expected = done if done == info.height else done // mosaic.OUT_BLOCK * mosaic.OUT_BLOCK
    if type(written) is not int or written != expected:
        return f"rows_written must be {expected} after window row {nxt}, got {written!r}"
    wanted = {str(j) for j in range(nxt) if grid.rows[j] + grid.tile > written}
    if not isinstance(replay, dict) or set(replay) != wanted:
        return f"replay must hold window rows {sorted(wanted, key=int)}"
    for j, probs in replay.items():
        if not isinstance(probs, list) or len(probs) != len(grid.cols) or not all(
                v is None or (type(v) in (int, float) and 0.0 <= v <= 1.0) for v in probs):
            return (f"replay row {j} must be {len(grid.cols)} probabilities in [0, 1] "
                    f"(or null)")
    return _check_partial(job)


def _check_partial(job: Job) -> str | None:
    """Why the partial probability map does not belong to this state, or None."""
    try:
        with raster.open_raster(job.paths.partial) as ds:
            size, tag = (ds.width, ds.height, ds.count), ds.tags().get("SLIDEWATCH_SCAN")
    except DataError as exc:
        return f"partial map unreadable ({exc})"
    if size != (job.info.width, job.info.height, 1):
        return f"partial map is {size[0]}x{size[1]}x{size[2]}, not the scene's size"
    if tag != json.dumps(job.fingerprint, sort_keys=True):
        return "partial map is from another scan"
    return None


def _saved_state(p: Paths) -> object:
    try:
        return json.loads(p.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON
        return None


def start_state(job: Job, overwrite: bool) -> dict:
    """The saved state when it is for the same settings and fits (resume), else a fresh
    partial file. A damaged state (see the module doc) starts again with a warning in
    ``job.info.warnings``."""
    p = job.paths
    if not overwrite and p.state.is_file() and p.partial.is_file():
        state = _saved_state(p)
        if state is None:
            problem = "not valid JSON"
        elif not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict):
            problem = "not a scan state"
        elif state["fingerprint"] != job.fingerprint:
            problem = None  # other settings, scene or model: start again
        else:
            problem = check_state(state, job)
            if problem is None:
                state["replay"] = {int(j): [math.nan if v is None else float(v) for v in ps]
                                   for j, ps in state["replay"].items()}
                return state
        if problem is not None:
            job.info.warnings.append(f"{p.state}: damaged resume state ({problem}); scanning "
                                     f"{job.info.path} from the start")
    discard(p)
    mosaic.create_probability(p.partial, job.info,
                              {"SLIDEWATCH_SCAN": json.dumps(job.fingerprint, sort_keys=True)})
    save_state(p.state, job.fingerprint, 0, 0, {})
    return {"rows_written": 0, "next_row": 0, "replay": {}}
