"""Scenes and models the server may touch, and nothing else.

A scene is named by its path relative to ``--data-root`` (``sub/scene.tif``) or by an upload id
(``upload:<id>``); so is a job's DEM. :func:`scene_path` refuses, before anything is opened:
absolute paths, ``..`` components, empty or hidden components, NUL bytes and backslashes (400);
paths that leave the root once symbolic links are followed (403); anything that is not an
existing regular file with a raster suffix (404/400). Models are the folders with a
``slidewatch.json`` directly under each ``--models`` folder (or a ``--models`` folder that is
itself a model), named by their folder name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from slidewatch.meta import META_FILE

SCENE_SUFFIXES = (".tif", ".tiff")
MAX_LISTED = 5000  # scenes listed from the data root (the rest: "truncated")
UPLOAD_PREFIX = "upload:"
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class PathRefused(Exception):
    """A path the server will not open: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def inside(path: Path, root: Path) -> bool:
    """``path`` (resolved: symbolic links followed) lies under ``root`` (resolved)."""
    try:
        return path.resolve(strict=False).is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def relative_parts(name: str, what: str = "scene") -> tuple[str, ...]:
    """The components of a relative path given by a client, or PathRefused(400)."""
    if not isinstance(name, str) or not name.strip():
        raise PathRefused(400, f"{what}: give a path relative to the data root")
    if "\x00" in name or "\\" in name:
        raise PathRefused(400, f"{what} {name!r}: NUL bytes and backslashes are not allowed")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise PathRefused(400, f"{what} {name!r}: absolute paths are not allowed; give a path "
                               f"relative to the data root")
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") for p in parts) or any(p.startswith(".") for p in parts):
        raise PathRefused(400, f"{what} {name!r}: '..', '.' and hidden components are not "
                               f"allowed")
    return parts


def scene_path(root: Path, name: str, what: str = "scene") -> Path:
    """The file of scene ``name`` (relative to ``root``), checked as the module doc says
    (``what`` names it in messages: a DEM is checked the same way)."""
    parts = relative_parts(name, what)
    path = root.joinpath(*parts)
    if not inside(path, root):
        raise PathRefused(403, f"{what} {name!r}: leads outside the data root (symbolic link)")
    if path.suffix.lower() not in SCENE_SUFFIXES:
        raise PathRefused(400, f"{what} {name!r}: not a GeoTIFF (.tif, .tiff)")
    if not path.is_file():
        raise PathRefused(404, f"{what} {name!r}: no such file under the data root")
    return path


def upload_id(name: str, what: str = "scene") -> str | None:
    """The upload id of ``upload:<id>``, else None."""
    if not name.startswith(UPLOAD_PREFIX):
        return None
    uid = name[len(UPLOAD_PREFIX):]
    if not _UPLOAD_ID.match(uid):
        raise PathRefused(400, f"{what} {name!r}: not an upload id")
    return uid


@dataclass
class SceneEntry:
    name: str  # relative to the data root, or upload:<id>
    label: str  # what the page shows
    bytes: int


def list_scenes(root: Path, limit: int = MAX_LISTED) -> tuple[list[SceneEntry], bool]:
    """GeoTIFFs under ``root`` (hidden files and folders skipped, folder links not followed,
    file links only when they stay under the root), sorted; and whether the list was cut."""
    found: list[SceneEntry] = []
    truncated = False
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for f in sorted(filenames):
            if f.startswith(".") or Path(f).suffix.lower() not in SCENE_SUFFIXES:
                continue
            path = here / f
            if path.is_symlink() and not inside(path, root):
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            rel = path.relative_to(root).as_posix()
            found.append(SceneEntry(rel, rel, size))
            if len(found) >= limit:
                truncated = True
                break
        if truncated:
            break
    return sorted(found, key=lambda e: e.name), truncated


def list_models(folders: tuple[Path, ...]) -> dict[str, Path]:
    """``{name: folder}`` of the model folders (see the module doc); a name that repeats gets
    its parent folder's name in front."""
    found: list[Path] = []
    for folder in folders:
        if (folder / META_FILE).is_file():
            found.append(folder)
            continue
        try:
            subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        found += [p for p in subs if (p / META_FILE).is_file()]
    names: dict[str, Path] = {}
    for path in found:
        name = path.name if path.name not in names else f"{path.parent.name}/{path.name}"
        k = 2
        while name in names:
            name, k = f"{path.name} ({k})", k + 1
        names[name] = path
    return names
