"""Atomic file and folder writes.

A file is written to ``.<name>.tmp-<pid><suffix>`` in the same folder and ``os.replace``d onto
its final name; a folder is built under a temporary sibling name and renamed at the end. A
failure leaves neither a half-written file nor a half-built folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from slidewatch.errors import ConfigError


def expand_path(raw: str, key: str) -> Path:
    """``raw`` with ``$VARS`` and ``~`` expanded; a ConfigError naming ``key`` and the
    variable when one is not set."""
    path = Path(os.path.expandvars(raw)).expanduser()
    if "$" in str(path):
        var = str(path)[str(path).index("$"):].split("/")[0]
        raise ConfigError(f"{key}: {raw}: environment variable {var} is not set")
    return path


def _tmp_sibling(path: Path) -> Path:
    """``.<stem>.tmp-<pid><suffix>`` next to ``path`` (the suffix kept for suffix-aware writers)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that is renamed onto ``path`` at the end.

    Raises ``ConfigError`` before anything is written when ``path`` exists, is not empty and
    ``overwrite`` is False. With ``overwrite`` the old content is replaced only on success.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"{path}: exists and is not empty; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(old)
