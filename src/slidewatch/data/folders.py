"""Datasets laid out as one folder per class: ``<root>/<class>/**/<image>``.

``tiles.csv`` (written by ``tile_scenes``), when present in the root, tells each tile's source
image, region and position, so that splits can keep the tiles of one image together, and (its
``scene_mean`` / ``scene_std`` columns) the statistics of the whole scene image it was cut
from, for the ``standardize: image`` rule (:attr:`Sample.scene_stats`). Without it, file names
of the form ``<region>__<stem>__r<row>_c<col>`` give the same information except the
statistics (each tile is then standardised by its own), and any other file is its own group.

The scanner (:func:`scan_class_folders`) takes every regular file with an image suffix under a
class folder (recursively; hidden files and folders, and symbolic links to folders, are left
out). What it cannot take is never skipped without a word: a broken symbolic link, a folder it
cannot list, a named pipe or other special file with an image suffix, a path that is not valid
UTF-8 (:func:`slidewatch.data.readers.file_problem`). Training, evaluation and splits refuse
the first such path with one line; ``slidewatch data info`` lists them all as unreadable.
``tiles.csv`` is UTF-8 (a byte-order mark is fine); another encoding, a UTF-16 file or a quote
that is never closed is a one-line error naming the file (and line).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slidewatch.data.imagestats import SCENE_COLUMNS, ImageStats, parse_scene_stats
from slidewatch.data.inventory_csv import csv_rows, decode_csv
from slidewatch.data.readers import IMAGE_SUFFIXES, file_problem
from slidewatch.errors import ConfigError, DataError

TILES_CSV = "tiles.csv"
# the standard columns of tiles.csv (tiling adds SCENE_COLUMNS, an inventory its attributes)
CSV_COLUMNS = ("path", "label", "source_image", "row", "col", "landslide_fraction", "region")
_TILE_NAME = re.compile(r"^(?P<region>.+?)__(?P<stem>.+)__r(?P<row>\d+)_c(?P<col>\d+)$")


def validate_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Two or more distinct folder names, or ConfigError naming ``--classes``."""
    classes = tuple(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"--classes: need two or more distinct names, got {list(classes)}")
    for name in classes:
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise ConfigError(f"--classes: '{name}' is not a valid folder name")
    return classes


@dataclass
class Sample:
    """One labelled image: ``group`` keeps related tiles in one split part."""

    path: Path
    label: int
    group: str
    region: str
    row: int | None = None
    col: int | None = None
    landslide_fraction: float | None = None
    root: Path | None = None  # the dataset root it came from (for relative paths in splits)
    # a tile cut from a scene: the whole scene image's statistics (tiles.csv scene_mean and
    # scene_std), which the standardize image rule uses instead of the tile's own
    scene_stats: ImageStats | None = None

    @property
    def key(self) -> str:
        """``<root name>/<path inside root>`` when the root is known, else the path."""
        if self.root is not None:
            try:
                return f"{self.root.name}/{self.path.relative_to(self.root).as_posix()}"
            except ValueError:
                pass
        return self.path.as_posix()


def _class_images(folder: Path, problems: list[tuple[Path, str]]) -> list[Path]:
    """Image files under ``folder`` (recursive), hidden files and folders skipped, sorted.

    What cannot be read (a folder that cannot be listed, a broken link, a special file, a name
    that is not UTF-8) is appended to ``problems`` as ``(path, what)``."""
    found = []

    def walk(d: Path) -> None:
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            problems.append((d, f"cannot list folder ({exc.strerror or exc})"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            p = d / entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)  # links to folders: not followed
            except OSError:
                is_dir = False
            if is_dir:
                walk(p)
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            problem = file_problem(p)
            if problem is None:
                found.append(p)
            elif not p.is_dir():  # a link to a folder named like an image: not an image
                problems.append((p, problem))

    walk(folder)
    problems.sort(key=lambda item: os.fsencode(item[0]))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_tiles_csv(path: Path) -> dict[str, dict]:
    """Rows of a ``tiles.csv`` keyed by their relative path (``region`` is optional: without
    it every tile belongs to the dataset folder's region, as for tiles without a csv).
    ``scene_mean`` / ``scene_std`` (optional, :mod:`slidewatch.data.imagestats`) give a tile's
    ``scene_stats``; without them (or empty) it is None and a model that standardises uses
    the tile file's own statistics. Other columns are ignored.

    UTF-8 with or without a byte-order mark; anything else is a one-line DataError."""
    rows: dict[str, dict] = {}
    text, _ = decode_csv(path, path.read_bytes())
    lines = csv_rows(path, text)
    header = next((row for _, row in lines if row), [])
    missing = {"path", "source_image"} - set(header)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    for line, fields in lines:
        if not fields:
            continue
        row = dict(zip(header, fields))
        try:
            rows[row.get("path")] = {
                "group": row.get("source_image"),
                "region": row.get("region") or path.parent.name,
                "row": _opt(row.get("row"), int),
                "col": _opt(row.get("col"), int),
                "landslide_fraction": _opt(row.get("landslide_fraction"), float),
                "scene_stats": parse_scene_stats(*(row.get(c) for c in SCENE_COLUMNS)),
            }
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: line {line}: {exc}") from None
    return rows


def tiles_table(root: Path) -> dict[str, dict]:
    """:func:`read_tiles_csv` of ``<root>/tiles.csv``; empty when the root has none."""
    csv_path = Path(root) / TILES_CSV
    return read_tiles_csv(csv_path) if csv_path.is_file() else {}


def _opt(value: str | None, kind):
    return None if value in (None, "") else kind(value)


def name_group(key: str) -> str:
    """The group (source image) of a split-file key (:attr:`Sample.key`: root folder name +
    relative path) as its file name tells it, without ``tiles.csv``: ``<region>/<stem>`` for a
    tile ``<region>__<stem>__r<row>_c<col>``, else ``<root>/<stem>``."""
    parts = Path(key).parts
    return _meta_from_name(Path(parts[0]), Path(key))["group"]


def _meta_from_name(root: Path, path: Path) -> dict:
    match = _TILE_NAME.match(path.stem)
    if match is None:
        return {"group": f"{root.name}/{path.stem}", "region": root.name}
    region = match["region"]
    return {
        "group": f"{region}/{match['stem']}",
        "region": region,
        "row": int(match["row"]),
        "col": int(match["col"]),
    }


def _check_root(root: Path, classes: tuple[str, ...]) -> None:
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    for name in classes:
        if not (root / name).is_dir():
            found = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
            raise DataError(
                f"{root}: no class folder '{name}' "
                f"(sub-folders found: {', '.join(sorted(found)) or 'none'}); "
                "class folder names are configurable with --classes"
            )


def scan_class_folders(
    root: str | Path, classes: Sequence[str] = ("landslide", "non_landslide"),
    allow_empty: bool = False, problems: list[dict] | None = None,
) -> list[Sample]:
    """Every image under ``<root>/<class>/``, labelled by the class's index in ``classes``.

    ``allow_empty``: a class folder may be empty (one dataset of several that are merged,
    e.g. a region without landslide tiles); :func:`load_datasets` checks the merged set.
    ``problems``: paths under the class folders that cannot be read (see the module doc) are
    appended here as ``{"path", "error"}``; without it the first one is a DataError.
    """
    root = Path(root)
    classes = validate_classes(classes)
    _check_root(root, classes)
    table = tiles_table(root)
    absolute = root.resolve()
    samples = []
    for label, name in enumerate(classes):
        found: list[tuple[Path, str]] = []
        files = _class_images(absolute / name, found)
        for bad, what in found:
            shown = root / bad.relative_to(absolute)
            if problems is None:
                raise DataError(f"{shown}: {what}")
            problems.append({"path": str(shown), "error": f"{shown}: {what}"})
        if not files and not allow_empty:
            raise DataError(
                f"{root / name}: no images ({' '.join(sorted(IMAGE_SUFFIXES))}) in class folder"
            )
        for path in files:
            rel = path.relative_to(absolute).as_posix()
            meta = table.get(rel) or _meta_from_name(absolute, path)
            samples.append(Sample(path=path, label=label, root=absolute, **meta))
    return samples


def load_datasets(
    roots: Sequence[str | Path], classes: Sequence[str] = ("landslide", "non_landslide")
) -> list[Sample]:
    """Samples of several dataset roots together (e.g. the study's Set 1 + Set 2 -> Set 4)."""
    if not roots:
        raise DataError("no dataset folders given")
    if len(roots) == 1:
        return scan_class_folders(roots[0], classes)
    samples: list[Sample] = []
    seen: dict[str, Path] = {}
    for root in roots:
        for sample in scan_class_folders(root, classes, allow_empty=True):
            if sample.key in seen:
                raise DataError(
                    f"{sample.path}: same name '{sample.key}' as {seen[sample.key]}; "
                    "give each dataset folder its own name (or list it once)"
                )
            seen[sample.key] = sample.path
            samples.append(sample)
    present = {s.label for s in samples}
    for label, name in enumerate(validate_classes(classes)):
        if label not in present:
            where = ", ".join(str(Path(r) / name) for r in roots)
            raise DataError(f"{where}: no images of class '{name}' in any of these folders")
    return samples
