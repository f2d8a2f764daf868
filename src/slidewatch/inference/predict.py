"""Landslide probabilities for image files with a trained slidewatch model."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import DataLoader

from slidewatch.data.folders import TILES_CSV
from slidewatch.data.masks import MASKS_DIR
from slidewatch.data.readers import IMAGE_SUFFIXES, file_problem
from slidewatch.errors import ConfigError, DataError
from slidewatch.inference.ensemble import describe, load_models
from slidewatch.inference.forward import predict_outputs
from slidewatch.io_utils import atomic_write_text
from slidewatch.runtime import no_progress, resolve_device


def collect_images(paths: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order.

    What cannot be read is refused, never skipped (the dataset scanner's rule,
    :func:`~slidewatch.data.readers.file_problem`): a broken symbolic link, a named pipe,
    socket or device with an image suffix, a sub-folder that cannot be listed."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(_folder_images(p))
            if not found:
                raise DataError(f"{p}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder")
            out += found
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{p}: not an image file type slidewatch reads")
            out.append(p)
        elif p.exists() or p.is_symlink():  # a FIFO, socket, device or broken link
            raise DataError(f"{p}: {file_problem(p)}")
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def _folder_images(folder: Path) -> list[Path]:
    """Files with an image suffix under ``folder`` (symbolic links to folders not followed);
    the first entry that is no readable file is a DataError naming it. The ``masks/`` of a
    tile folder (one holding ``tiles.csv``) are labels, not images: left out."""
    found = []

    def unlisted(exc: OSError) -> None:
        raise DataError(f"{exc.filename}: cannot list folder ({exc.strerror or exc})")

    for root, dirs, files in os.walk(folder, onerror=unlisted):
        if TILES_CSV in files and MASKS_DIR in dirs:
            dirs.remove(MASKS_DIR)
        for name in sorted(files) + sorted(dirs):
            f = Path(root, name)
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            problem = file_problem(f)
            if problem is None:
                found.append(f)
            elif not f.is_dir():  # a link to a folder named like an image: not an image
                raise DataError(f"{f}: {problem}")
    return found


def image_samples(paths: list[str | Path], files: list[Path], classes: list[str],
                  scene_stats: bool = False) -> list:
    """Unlabelled samples of ``files`` (label -1) for the dataset builder. For joining tabular
    rows, a file found in a folder argument is keyed relative to that folder (to its parent
    when the folder is named like a class, as in a dataset's ``<root>/<class>/<file>``).

    ``scene_stats`` (a model with ``standardize: image``): a file found so under a dataset
    root with a ``tiles.csv`` takes its scene's statistics from there
    (:attr:`~slidewatch.data.folders.Sample.scene_stats`), as evaluation does; a file named
    alone, or one the ``tiles.csv`` does not list, is its own image (its own statistics)."""
    from slidewatch.data.folders import Sample, tiles_table

    folders = [Path(p) for p in paths if Path(p).is_dir()]
    tables: dict[Path, dict] = {}
    out = []
    for f in files:
        root = next((d for d in folders if f.is_relative_to(d)), None)
        if root is not None and root.resolve().name in classes:
            root = root.parent
        stats = None
        if scene_stats and root is not None:
            if root not in tables:
                tables[root] = tiles_table(root)
            row = tables[root].get(f.relative_to(root).as_posix())
            stats = row["scene_stats"] if row else None
        out.append(Sample(path=f, label=-1, group="", region="", root=root, scene_stats=stats))
    return out


@dataclass
class Prediction:
    path: str
    probability: float
    label: str
    positive: bool
    size: str | None = None  # class of a model's second head: size, or age (``task``)
    size_probability: float | None = None
    task: str = "size"
    landslide_pixels: int | None = None  # segmentation model: pixels at or above the threshold
    landslide_share: float | None = None  # ... as a share of the image's pixels


def predict_paths(model_dir: str | Path, paths: list[str | Path], *, threshold: float | None = None,
                  batch_size: int = 32, device: str = "auto", num_workers: int = 0,
                  progress: Callable = no_progress, tabular: str | Path | None = None,
                  aux: str | Path | None = None, missing: str | None = None,
                  unknown: str | None = None, tta: bool = False,
                  ensemble: Sequence[str | Path] = (),
                  runtime: str | None = None) -> list[Prediction]:
    """One prediction per image; the label uses the model's threshold unless one is given.
    A multi-modal model takes each image's row from ``tabular`` and its terrain from ``aux``.
    A segmentation model labels an image by its tile rule (enough pixels at or above the
    threshold) and reports the landslide pixels. ``tta``: average over flips and rotations.
    ``ensemble``: more model folders; the probabilities of all are averaged
    (:mod:`slidewatch.inference.ensemble`). ``model_dir`` may be an ONNX file
    (``slidewatch export``); ``runtime`` ``torch`` or ``onnx`` (default: torch for a folder,
    onnx for an ONNX file)."""
    from slidewatch.data.inputs import model_dataset, model_inputs

    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold: must be in (0, 1), got {threshold}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    files = collect_images(paths)
    dev = resolve_device(device)
    dirs = [model_dir, *ensemble]
    model, meta = load_models(dirs, dev, runtime)
    inputs = model_inputs(meta, tabular, aux, missing, unknown)
    thr = meta.threshold if threshold is None else threshold  # pixels
    tile_thr = meta.tile_threshold(threshold)  # decisions (a segmentation model's may differ)
    samples = image_samples(paths, files, meta.classes, meta.standardize == "image")
    ds = model_dataset(meta, samples, inputs=inputs)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers)
    batches = progress(loader, desc="predict", total=len(loader))
    source = model_dir if not ensemble else describe(dirs)
    out = predict_outputs(model, meta, batches, dev, source=source, names=files, tta=tta,
                          threshold=thr)
    other = meta.negative_label
    preds = [Prediction(str(f), float(p), meta.positive_class if p >= tile_thr else other,
                        bool(p >= tile_thr)) for f, p in zip(files, out["probability"])]
    if "landslide_pixels" in out:
        for pred, n, v in zip(preds, out["landslide_pixels"], out["valid_pixels"]):
            pred.landslide_pixels, pred.landslide_share = int(n), float(n / max(int(v), 1))
    if "size_probs" in out:
        names = meta.inputs.sizes.names
        for pred, sp in zip(preds, out["size_probs"]):
            pred.task = meta.inputs.sizes.task
            k = int(sp.argmax())
            pred.size, pred.size_probability = names[k], float(sp[k])
    return preds


def write_predictions(path: str | Path, preds: list[Prediction]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    sizes = any(p.size is not None for p in preds)
    area = any(p.landslide_pixels is not None for p in preds)
    task = next((p.task for p in preds if p.size is not None), "size")
    w.writerow(["path", "probability", "label", *([task, f"{task}_probability"] if sizes else []),
                *(["landslide_pixels", "landslide_share"] if area else [])])
    for p in preds:
        extra = [p.size, f"{p.size_probability:.6f}"] if sizes else []
        if area:
            extra += [p.landslide_pixels, f"{p.landslide_share:.6f}"]
        w.writerow([p.path, f"{p.probability:.6f}", p.label, *extra])
    atomic_write_text(Path(path), buf.getvalue())
