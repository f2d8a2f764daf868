"""Atomic file and folder writes, the checks of output paths, and write errors as one line.

A file is written to ``.<stem>.tmp-<pid><suffix>`` in the same folder and ``os.replace``d onto
its final name; a folder is built under ``.<name>.tmp-<pid>`` beside it and renamed at the end
(the folder it replaces is ``.<name>.old-<pid>`` for a moment). A failure leaves neither a
half-written file nor a half-built folder behind. Temporaries that a killed process left (its
pid no longer alive) are removed by the next write into the same folder
(:func:`remove_stale_temporaries`); those of live processes are never touched.

A failed write (disk full, quota, read-only filesystem, no permission...) is one
:class:`~slidewatch.errors.DataError` naming the file being written (:func:`write_error`,
:func:`writing`, :func:`open_output`), never an ``OSError`` with a temporary name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from slidewatch.errors import ConfigError, DataError, SlidewatchError

_DESKTOP_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}  # what file browsers drop anywhere
# .<stem>.tmp-<pid><suffix> (files), .<name>.tmp-<pid> and .<name>.old-<pid> (folders)
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.(?:tmp|old)-(?P<pid>[0-9]+)(?P<suffix>\.[^.]*)?$")


def expand_path(raw: str, key: str) -> Path:
    """``raw`` with ``$VARS`` and ``~`` expanded; a ConfigError naming ``key`` and the
    variable when one is not set."""
    path = Path(os.path.expandvars(raw)).expanduser()
    if "$" in str(path):
        var = str(path)[str(path).index("$"):].split("/")[0]
        raise ConfigError(f"{key}: {raw}: environment variable {var} is not set")
    return path


# ---------------------------------------------------------------- write errors


def write_error(path: str | os.PathLike, exc: OSError, tmp: str | os.PathLike | None = None
                ) -> DataError:
    """The one-line DataError of a failed write of ``path``: ``"<path>: cannot write it (No
    space left on device)"``. An error about another file (not ``path`` or its temporary
    ``tmp``) names that file instead."""
    reason = " ".join(str(exc.strerror or exc).split()) or exc.__class__.__name__
    other = exc.filename
    if other is not None and Path(os.fsdecode(other)) not in (Path(path), Path(tmp or path)):
        return DataError(f"{os.fsdecode(other)}: {reason} (while writing {path})")
    return DataError(f"{path}: cannot write it ({reason})")


@contextlib.contextmanager
def writing(path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[None]:
    """An ``OSError`` in the block becomes :func:`write_error` of ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc, tmp) from None


class _Checked:
    """A file object whose write, flush and close errors name the file being written."""

    def __init__(self, fh, name: Path):
        self._fh, self.name = fh, name

    def write(self, data):
        with writing(self.name, self._fh.name):
            return self._fh.write(data)

    def flush(self) -> None:
        with writing(self.name, self._fh.name):
            self._fh.flush()

    def close(self) -> None:
        with writing(self.name, self._fh.name):
            self._fh.close()


@contextlib.contextmanager
def open_output(path: str | os.PathLike, name: str | os.PathLike | None = None,
                mode: str = "w", **kwargs) -> Iterator[_Checked]:
    """``open(path, mode)`` for writing; an error opening, writing, flushing or closing it is
    one DataError naming ``name`` (the final name of a temporary ``path``)."""
    name = Path(name if name is not None else path)
    with writing(name, path):
        fh = open(path, mode, **kwargs)
    checked = _Checked(fh, name)
    try:
        yield checked
        checked.flush()
        with writing(name, path):
            os.fsync(fh.fileno())
        checked.close()
    finally:
        with contextlib.suppress(OSError):
            fh.close()  # after a failure: nothing more to report


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """What C libraries print on file descriptor 2 (libtiff's "_tiffWriteProc: No space left
    on device." when a GeoTIFF write fails) is kept off the terminal; the yielded list holds
    its lines at the end. Python-level writes to ``sys.stderr`` in the block are captured too;
    a flood beyond the pipe's buffer is dropped, never blocking."""
    import sys

    lines: list[str] = []
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
    except (AttributeError, OSError):  # no non-blocking pipes here: leave stderr alone
        os.close(read_end)
        os.close(write_end)
        yield lines
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep off it
        os.close(read_end)
        os.close(write_end)
        yield lines
        return
    try:
        os.dup2(write_end, 2)
        yield lines
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
        chunks = []
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
        os.close(read_end)
        text = b"".join(chunks).decode("utf-8", "replace")
        lines.extend(line.strip() for line in text.splitlines() if line.strip())


# a line that libtiff ("_tiffWriteProc: No space left on device.") or GDAL ("ERROR 1: ...") prints
_LIBRARY_LINE = re.compile(r"^(ERROR \d+:|Warning \d+:|_?tiff\w*:|TIFF\w*:)", re.IGNORECASE)


@contextlib.contextmanager
def quiet_writing(path: str | os.PathLike, catch: tuple[type[BaseException], ...] = (OSError,)
                  ) -> Iterator[None]:
    """A write through a C library (GDAL/libtiff) to ``path``: what the library prints stays
    off the terminal, and a failure is one DataError naming ``path`` with the reason (disk
    full...): an exception of ``catch`` (the library's error types), or an error the library
    only printed (libtiff reports a block it could not flush at close that way). Other lines
    printed meanwhile (another thread's warning) pass through."""
    import sys

    failure = None
    with captured_stderr() as printed:
        try:
            yield
        except catch as exc:
            failure = _innermost(exc)
    for line in printed:
        if not _LIBRARY_LINE.match(line):
            sys.stderr.write(line + "\n")
    errors = [line.rstrip(".") for line in printed
              if _LIBRARY_LINE.match(line) and "warning" not in line.lower()]
    if failure is not None or errors:
        reason = "; ".join(dict.fromkeys(errors[:2] + ([failure] if failure else [])))
        raise DataError(f"{path}: cannot write it ({reason})")


def _innermost(exc: BaseException) -> str:
    """The innermost message of an exception chain, on one line (GDAL puts details there)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    msg = exc.args[-1] if exc.args and isinstance(exc.args[-1], str) else str(exc)
    return " ".join(msg.split()) or exc.__class__.__name__


# ---------------------------------------------------------------- temporaries of dead runs


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process, another user's, a zombie: alive)."""
    if pid <= 0 or pid == os.getpid():
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # larger than any pid
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, stem: str | None = None) -> list[Path]:
    """Remove the temporaries (``.<stem>.tmp-<pid>[.suffix]``, ``.<name>.old-<pid>``) that
    processes no longer alive left in ``folder``: all of them, or only those of ``stem``
    (a file's stem or a folder's name). Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m is None or (stem is not None and m["stem"] != stem):
            continue
        if pid_alive(int(m["pid"])):
            continue
        path = folder / entry.name
        with contextlib.suppress(OSError):
            _remove(path)
            removed.append(path)
    return removed


_SWEPT: dict[str, int] = {}  # folder -> its mtime after our last write (no stale temporaries)


def _sweep(folder: Path) -> None:
    """:func:`remove_stale_temporaries` of ``folder``, unless it has not changed since this
    process last wrote there (a folder is not listed again for every file written into it)."""
    try:
        mtime = folder.stat().st_mtime_ns
    except OSError:
        return
    if _SWEPT.get(str(folder)) != mtime:
        remove_stale_temporaries(folder)


def _swept(folder: Path) -> None:
    with contextlib.suppress(OSError):
        _SWEPT[str(folder)] = folder.stat().st_mtime_ns


# ---------------------------------------------------------------- atomic writes


def _tmp_sibling(path: Path) -> Path:
    """``.<stem>.tmp-<pid><suffix>`` next to ``path`` (the suffix kept for suffix-aware writers)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _make_parent(path: Path) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` on success. An OSError
    while writing (in the block or at the rename) is one DataError naming ``path``."""
    path = Path(path)
    _make_parent(path)
    _sweep(path.parent)
    tmp = _tmp_sibling(path)
    try:
        with writing(path, tmp):
            yield tmp
            os.replace(tmp, path)
        _swept(path.parent)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):  # the error that got us here says it all
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


def _renamed(exc: SlidewatchError, tmp: Path, path: Path) -> SlidewatchError:
    """``exc`` with the temporary folder's name replaced by the final one (same class)."""
    text = str(exc)
    if str(tmp) not in text:
        return exc
    try:
        new = exc.__class__(text.replace(str(tmp), str(path)))
    except TypeError:  # a subclass with other arguments: keep it as it is
        return exc
    new.__dict__.update(exc.__dict__)
    return new


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that is renamed onto ``path`` at the end.

    Raises ``ConfigError`` before anything is written when ``path`` exists, is not empty and
    ``overwrite`` is False. With ``overwrite`` the old content is replaced only on success.
    A failed write in the block names the file by its final path under ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"{path}: exists and is not empty; pass --overwrite to replace it")
    _make_parent(path)
    _sweep(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path):
        _remove(tmp)
        tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            name = exc.filename
            inside = name is not None and Path(os.fsdecode(name)).is_relative_to(tmp)
            where = path / Path(os.fsdecode(name)).relative_to(tmp) if inside else path
            raise write_error(where, exc, name if inside else None) from None
        if isinstance(exc, SlidewatchError):
            renamed = _renamed(exc, tmp, path)
            if renamed is not exc:
                raise renamed from None
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        with writing(path, tmp):
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        _remove(old)


# ---------------------------------------------------------------- output paths


def check_output_file(path: str | os.PathLike, what: str, suffixes: tuple[str, ...], *,
                      inputs: Iterable = (), marker: str | None = None,
                      option: str = "--out") -> Path:
    """Check an output file named by ``option`` before anything is read or written.

    A ConfigError naming ``option`` when ``path`` is a folder (``what``: e.g. "a CSV file
    name"), when it is the same file as one of ``inputs`` (files the command reads, and folders
    whose files it reads: there an existing file counts as an input unless it has one of the
    output's ``suffixes``, as an earlier output does), or when it lies in a folder holding
    ``marker`` (a model folder's ``slidewatch.json``: an output file never goes into one).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give {what}")
    target = Path(os.path.realpath(path))
    if marker is not None:
        for folder in target.parents:
            if (folder / marker).is_file():
                raise ConfigError(f"{option} {path}: is inside the model folder {folder}; "
                                  "write it somewhere else")
    if not path.exists():
        return path
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        if item.is_dir():
            hit = (target.is_relative_to(os.path.realpath(item))
                   and path.suffix.lower() not in suffixes)
        else:
            hit = item.exists() and os.path.samefile(item, path)
        if hit:
            raise ConfigError(f"{option} {path}: is one of the inputs ({item}); give another "
                              "file name")
    return path


def foreign_entries(folder: str | os.PathLike, ours: Iterable[str]) -> list[str]:
    """Sorted names in ``folder`` that are neither one of ``ours`` (what the command writes
    there) nor a temporary of an atomic write; [] for a missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    ours = set(ours) | _DESKTOP_FILES
    return sorted(e.name for e in os.scandir(folder)
                  if e.name not in ours and _TEMPORARY.match(e.name) is None)


def holding(folder: str | os.PathLike, paths: Iterable) -> Path | None:
    """The first of ``paths`` (None entries skipped) that is ``folder`` or lies inside it, or
    None: an output folder that would be replaced must not hold its command's inputs."""
    root = os.path.realpath(folder)
    for p in paths:
        if p is not None and Path(os.path.realpath(p)).is_relative_to(root):
            return Path(p)
    return None
