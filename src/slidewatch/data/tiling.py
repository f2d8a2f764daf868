"""Cut labelled scenes into classification tiles using their landslide masks.

A scene folder holds ``images/`` and ``masks/`` with matching file stems. Each tile lies fully
inside its image; it is a landslide tile if the mask covers at least ``min_landslide`` of it,
landslide-free if the mask covers none of it, and dropped otherwise. Each landslide tile's
piece of the mask is written beside it as ``masks/<tile stem>.png`` (0 / 255; a landslide-free
tile's mask is all zero by definition), the layout of class folders with masks
(:mod:`slidewatch.data.masks`), so the tiles carry their pixel labels to a training-only mask
loss (``mask_loss``) or to ``--task segment``.

``tiles.csv`` has the standard columns (:data:`~slidewatch.data.folders.CSV_COLUMNS`: path,
label, source image as ``<region>/<stem>``, row, col, landslide fraction, region) and the
statistics of the whole scene image each tile was cut from, ``scene_mean`` and ``scene_std``
(:data:`~slidewatch.data.imagestats.SCENE_COLUMNS`: per band, over its valid pixels by the one
nodata rule, in unit scale by the dtype rule, :func:`slidewatch.data.standardize.
array_statistics`; space-separated ``repr`` floats that read back exactly). A model with the
``standardize: image`` rule standardises a tile with them, as ``scan`` does the same pixels
with the scene's; tiles of a ``tiles.csv`` without these columns (written by an older
slidewatch) use their own statistics.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError

from slidewatch.data.dataset import declared_valid
from slidewatch.data.folders import CSV_COLUMNS, TILES_CSV, validate_classes
from slidewatch.data.imagestats import SCENE_COLUMNS, format_values
from slidewatch.data.masks import MASKS_DIR
from slidewatch.data.readers import (
    IMAGE_SUFFIXES,
    georef,
    probe,
    read_image,
    read_mask,
    tile_suffix,
    write_mask,
    write_tile,
)
from slidewatch.data.standardize import array_statistics
from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_dir, open_output, quiet_writing

try:  # GDAL's errors that rasterio raises as they are
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - rasterio moved it
    CPLE_BaseError = RasterioError
RASTER_WRITE_ERRORS = (RasterioError, CPLE_BaseError, OSError)  # a tile write that failed

TILING_COLUMNS = CSV_COLUMNS + SCENE_COLUMNS  # the header of the tiles.csv written here


@dataclass
class TilingSummary:
    """What ``tile_scenes`` wrote: tile counts per region and class, and what it left out."""

    out_dir: Path
    tiles_csv: Path
    counts: dict[str, dict[str, int]]  # region -> class -> tiles
    dropped: int = 0  # tiles whose landslide fraction was between 0 and min_landslide
    skipped_images: list[str] = field(default_factory=list)  # images smaller than one tile

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def per_class(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for by_class in self.counts.values():
            for name, n in by_class.items():
                out[name] = out.get(name, 0) + n
        return out

    def table(self) -> str:
        """Tiles per region and class as plain text, with totals."""
        classes = list(self.per_class())
        width = max([len(r) for r in self.counts] + [6])
        head = f"{'region':{width}}  " + "  ".join(f"{c:>14}" for c in classes) + f"  {'total':>6}"
        lines = [head]
        for region, by_class in [*self.counts.items(), ("total", self.per_class())]:
            cells = "  ".join(f"{by_class[c]:>14}" for c in classes)
            lines.append(f"{region:{width}}  {cells}  {sum(by_class.values()):>6}")
        lines.append(f"dropped {self.dropped} tiles between 0 and the landslide threshold")
        if self.skipped_images:
            lines.append(f"skipped {len(self.skipped_images)} image(s) smaller than one tile")
        lines.append(f"-> {self.tiles_csv}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    region: str
    image: Path
    mask: Path


def is_scene_folder(path: Path) -> bool:
    """A folder of scenes to tile: ``images/`` and ``masks/`` side by side."""
    return (path / "images").is_dir() and (path / "masks").is_dir()


def _validate(tile: int, stride: int, min_landslide: float) -> None:
    if not isinstance(tile, (int, np.integer)) or tile <= 0:
        raise ConfigError(f"--tile: must be a positive whole number of pixels, got {tile}")
    if not isinstance(stride, (int, np.integer)) or stride <= 0:
        raise ConfigError(f"--stride: must be a positive whole number of pixels, got {stride}")
    if not 0.0 <= min_landslide <= 1.0:
        raise ConfigError(f"--min-landslide: must be between 0 and 1, got {min_landslide}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _by_stem(folder: Path, files: list[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise DataError(
                f"{folder}: two files with the stem '{p.stem}': {out[p.stem].name}, {p.name}"
            )
        out[p.stem] = p
    return out


def _scene_jobs(scene: Path) -> list[_Job]:
    """Pair every image of one scene folder with its mask."""
    if not scene.is_dir():
        raise DataError(f"{scene}: scene folder not found")
    for sub in ("images", "masks"):
        if not (scene / sub).is_dir():
            raise DataError(f"{scene}: no '{sub}' folder (a scene folder holds images/ and masks/)")
    images = _by_stem(scene / "images", _image_files(scene / "images"))
    if not images:
        raise DataError(f"{scene / 'images'}: no images ({' '.join(sorted(IMAGE_SUFFIXES))})")
    masks = _by_stem(scene / "masks", _image_files(scene / "masks"))
    jobs = []
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"{image}: no mask with the stem '{stem}' in {scene / 'masks'}")
        jobs.append(_Job(scene.resolve().name, image, masks[stem]))
    return jobs


def _collect(
    scene_dirs: Sequence[str | Path], tile: int
) -> tuple[list[_Job], list[str], list[str]]:
    """All (image, mask) pairs, checked from headers before anything is written."""
    if not scene_dirs:
        raise ConfigError("no scene folders given")
    jobs, skipped, regions = [], [], []
    for scene in map(Path, scene_dirs):
        scene_jobs = _scene_jobs(scene)
        region = scene_jobs[0].region
        if region in regions:
            raise DataError(f"{scene}: another scene folder has the same name '{region}'")
        regions.append(region)
        for job in scene_jobs:
            img, msk = probe(job.image), probe(job.mask)
            if (img.width, img.height) != (msk.width, msk.height):
                raise DataError(
                    f"{job.mask}: mask is {msk.width}x{msk.height} but its image "
                    f"{job.image} is {img.width}x{img.height}"
                )
            if img.width < tile or img.height < tile:
                skipped.append(f"{region}/{job.image.stem}")
            else:
                jobs.append(job)
    if not jobs:
        raise DataError(f"--tile {tile}: larger than every image; use a smaller tile")
    return jobs, skipped, regions


def _check_out_dir(out_dir: Path, scene_dirs: Sequence[str | Path]) -> None:
    """Refuse an output folder that is, or holds, one of the scene folders."""
    out = out_dir.resolve()
    for scene in map(Path, scene_dirs):
        src = scene.resolve()
        if src == out or out in src.parents:
            raise ConfigError(
                f"{out_dir}: the output folder must not hold the scene folder {scene}"
            )


def tile_positions(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left (row, col) of every tile fully inside an image, row by row."""
    rows = range(0, height - tile + 1, stride)
    cols = range(0, width - tile + 1, stride)
    return [(r, c) for r in rows for c in cols]


def tile_fractions(mask: np.ndarray, positions, tile: int) -> np.ndarray:
    """Landslide fraction of each tile, from a summed-area table of the mask."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    out = np.empty(len(positions), dtype=np.float64)
    for i, (r, c) in enumerate(positions):
        total = sat[r + tile, c + tile] - sat[r, c + tile] - sat[r + tile, c] + sat[r, c]
        out[i] = total / (tile * tile)
    return out


def classify(fraction: float, min_landslide: float, classes: Sequence[str]) -> str | None:
    """classes[1] when the mask covers nothing, classes[0] at >= min_landslide, else None."""
    if fraction == 0:
        return classes[1]
    if fraction >= min_landslide:
        return classes[0]
    return None


def _tile_one(job: _Job, out: Path, opts: dict, summary: TilingSummary, writer) -> None:
    tile, classes = opts["tile"], opts["classes"]
    image = read_image(job.image)
    mask = read_mask(job.mask)
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"{job.mask}: mask size {mask.shape} differs from {job.image} {image.shape[:2]}"
        )
    geo = georef(job.image)
    stats = array_statistics(image, declared_valid(job.image))  # the whole scene image's
    scene = [format_values(stats.mean), format_values(stats.std)]
    positions = tile_positions(image.shape[0], image.shape[1], tile, opts["stride"])
    fractions = tile_fractions(mask, positions, tile)
    counts = summary.counts[job.region]
    for (r, c), frac in zip(positions, fractions, strict=True):
        label = classify(float(frac), opts["min_landslide"], classes)
        if label is None:
            summary.dropped += 1
            continue
        profile = None
        if geo is not None:  # the window's transform: shift the origin to (col, row)
            from rasterio.transform import Affine

            shift = Affine.translation(c, r)
            profile = {"crs": geo["crs"], "transform": geo["transform"] @ shift}
        name = f"{job.region}__{job.image.stem}__r{r}_c{c}"
        pixels = image[r : r + tile, c : c + tile]
        target = (out / label / name).with_suffix(tile_suffix(pixels, profile))
        with quiet_writing(target, RASTER_WRITE_ERRORS):  # a full disk: one line naming it
            written = write_tile(out / label / name, pixels, profile)
        if label == classes[0]:  # its piece of the mask, beside it (see the module doc)
            piece = out / MASKS_DIR / f"{name}.png"
            with quiet_writing(piece, RASTER_WRITE_ERRORS):
                write_mask(piece, mask[r : r + tile, c : c + tile])
        counts[label] += 1
        writer.writerow(
            [written.relative_to(out).as_posix(), label, f"{job.region}/{job.image.stem}",
             r, c, f"{frac:.6f}", job.region, *scene]
        )


def tile_scenes(
    scene_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tile: int = 224,
    stride: int = 224,
    min_landslide: float = 0.05,
    classes: Sequence[str] = ("landslide", "non_landslide"),
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> TilingSummary:
    """Tile every scene into ``<out>/<class>/`` and write ``<out>/tiles.csv`` (built atomically;
    :data:`TILING_COLUMNS`, with each scene image's statistics)."""
    _validate(tile, stride, min_landslide)
    classes = validate_classes(classes)
    if MASKS_DIR in classes:
        raise ConfigError(f"--classes: '{MASKS_DIR}' is the folder of the tiles' masks; give "
                          "the classes other names")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, scene_dirs)
    jobs, skipped, regions = _collect(scene_dirs, tile)
    opts = {"tile": tile, "stride": stride, "min_landslide": min_landslide, "classes": classes}
    counts = {region: {name: 0 for name in classes} for region in regions}
    summary = TilingSummary(out_dir, out_dir / TILES_CSV, counts, 0, skipped)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for name in (*classes, MASKS_DIR):
            (tmp / name).mkdir()
        with open_output(tmp / TILES_CSV, newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(TILING_COLUMNS)
            for i, job in enumerate(jobs):
                _tile_one(job, tmp, opts, summary, writer)
                if progress is not None:
                    progress(i + 1, len(jobs))
    return summary
