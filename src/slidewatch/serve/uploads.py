"""GeoTIFF uploads: streamed to disk under a size limit, then checked.

A request body is either ``multipart/form-data`` with one file field (``file``), parsed as it
arrives (python-multipart's streaming parser), or the raw file (any other content type, the name
in ``?name=``). Nothing is held in memory: bytes go to ``<workdir>/uploads/<id>/.part.tif`` and the
count is checked as they come, so an upload over ``--max-upload-mb`` is cut off at the limit
(413; a ``Content-Length`` over it is refused before a byte is read). Then the file must be a
TIFF (magic bytes; else 415), open in GDAL, not truncated and not colour-mapped (the scan's own
checks, :func:`slidewatch.data.raster.inspect_scene`), with its first and last blocks readable
(else 422, saying what is wrong). Accepted files become ``<workdir>/uploads/<id>/<name>.tif``
with ``upload.json`` beside them; refused ones leave nothing behind.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from slidewatch.errors import DataError
from slidewatch.io_utils import atomic_write_text

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF
UPLOAD_FILE = "upload.json"
MAX_NAME = 100


class UploadRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def safe_name(name: str | None) -> str:
    """A file name that is safe on any file system, ending in .tif."""
    stem = Path(str(name or "upload")).name
    stem = re.sub(r"\.(tiff?|TIFF?)$", "", stem)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "upload"
    return stem[:MAX_NAME] + ".tif"


def uploads_dir(workdir: Path) -> Path:
    return workdir / "uploads"


def upload_path(workdir: Path, uid: str) -> Path | None:
    """The file of upload ``uid`` (already checked to be 32 hex digits), or None."""
    folder = uploads_dir(workdir) / uid
    try:
        meta = json.loads((folder / UPLOAD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    path = folder / Path(str(meta.get("file", ""))).name
    return path if path.is_file() else None


def list_uploads(workdir: Path) -> list[dict]:
    out = []
    folder = uploads_dir(workdir)
    if not folder.is_dir():
        return out
    for d in sorted(folder.iterdir()):
        try:
            meta = json.loads((d / UPLOAD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.append({"name": f"upload:{d.name}", "label": f"upload: {meta.get('name')}",
                    "bytes": meta.get("bytes")})
    return out


class _Limited:
    """Counts bytes written to a file and stops at the limit."""

    def __init__(self, path: Path, limit: int):
        self.fh = open(path, "wb")
        self.limit, self.size = limit, 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadRefused(413, f"upload is larger than the server's limit of "
                                     f"{self.limit / 2**20:g} MB (--max-upload-mb)")
        self.fh.write(data)


async def _multipart(stream: AsyncIterator[bytes], content_type: str, sink: _Limited) -> str:
    """Write the first file part of a multipart body to ``sink``; returns its file name."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRefused(400, "multipart upload without a boundary")
    state = {"field": b"", "value": b"", "headers": {}, "name": None, "in_file": False,
             "done": False}

    def on_part_begin():
        state["headers"] = {}

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished():
        disp = state["headers"].get("content-disposition", b"")
        _, p = parse_options_header(disp)
        if b"filename" in p and not state["done"]:
            state["name"] = p[b"filename"].decode("utf-8", "replace")
            state["in_file"] = True

    def on_part_data(data, start, end):
        if state["in_file"]:
            sink.write(data[start:end])

    def on_part_end():
        if state["in_file"]:
            state["in_file"], state["done"] = False, True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    async for chunk in stream:
        parser.write(chunk)
    parser.finalize()
    if not state["done"]:
        raise UploadRefused(400, "multipart upload without a file field")
    return state["name"] or "upload.tif"


def check_geotiff(path: Path, name: str) -> dict:
    """Why ``path`` is not a scene the server can scan (UploadRefused), else a summary."""
    from rasterio.windows import Window

    from slidewatch.data import raster

    with open(path, "rb") as fh:
        head = fh.read(4)
    if path.stat().st_size == 0:
        raise UploadRefused(422, f"{name}: the file is empty")
    if head not in TIFF_MAGIC:
        raise UploadRefused(415, f"{name}: not a GeoTIFF (the file does not start like a TIFF); "
                                 f"upload a .tif raster")
    try:
        with raster.open_raster(path) as ds:
            bands = raster.image_bands(ds)
            width, height = ds.width, ds.height
        info = raster.inspect_scene(path, len(bands), bands)
        with raster.open_raster(path) as ds:
            bh, bw = ds.block_shapes[0]
            for r, c in ((0, 0), (max(0, height - bh), max(0, width - bw))):
                raster.read_window(ds, bands, Window(c, r, min(bw, width), min(bh, height)),
                                   what="corrupt pixel data")
    except DataError as exc:
        text = str(exc).replace(str(path), name)
        raise UploadRefused(422, f"corrupt or unreadable GeoTIFF: {text}") from None
    return {"width": info.width, "height": info.height, "bands": len(bands),
            "crs": None if info.crs is None else info.crs.to_string()}


async def receive(stream: AsyncIterator[bytes], content_type: str, content_length: str | None,
                  name: str | None, workdir: Path, limit: int) -> dict:
    """Stream an upload to disk and check it (module doc); returns its record."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadRefused(400, "bad Content-Length") from None
        if declared > limit + 64 * 1024:  # multipart framing
            raise UploadRefused(413, f"upload of {declared / 2**20:.1f} MB is larger than the "
                                     f"server's limit of {limit / 2**20:g} MB (--max-upload-mb)")
    uid = secrets.token_hex(16)
    folder = uploads_dir(workdir) / uid
    folder.mkdir(parents=True)
    part = folder / ".part.tif"
    try:
        sink = _Limited(part, limit)
        try:
            if content_type.lower().startswith("multipart/form-data"):
                name = await _multipart(stream, content_type, sink)
            else:
                async for chunk in stream:
                    sink.write(chunk)
        finally:
            sink.fh.close()
        clean = safe_name(name)
        summary = check_geotiff(part, clean)
        final = folder / clean
        part.rename(final)
        record = {"id": uid, "name": clean, "file": clean, "bytes": sink.size,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary}
        atomic_write_text(folder / UPLOAD_FILE, json.dumps(record, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return {**record, "scene": f"upload:{uid}"}
