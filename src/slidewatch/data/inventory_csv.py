"""Reading landslide inventories: CSV files of WGS84 points (NASA Global Landslide Catalog
columns by default), with rows whose coordinates are missing or impossible skipped and counted.

The CSV text rules shared with ``tiles.csv`` (:mod:`slidewatch.data.folders`): :func:`decode_csv`
reads the bytes in the first encoding that fits (a UTF-8 byte-order mark is dropped) and refuses
UTF-16/UTF-32 (a byte-order mark or NUL bytes: "looks like UTF-16; save it as UTF-8") and a
stray NUL byte with one line; :func:`csv_rows` gives each row with the line it starts on and
refuses a quote that is never closed (it would swallow every row after it into one value),
naming its line.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from slidewatch.data.readers import file_problem
from slidewatch.errors import ConfigError, DataError

ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")  # the NASA catalog is not UTF-8
SKIP_MISSING, SKIP_TEXT, SKIP_RANGE = ("missing coordinate", "non-numeric coordinate",
                                       "coordinate out of range")
@dataclass(frozen=True)
class InventoryColumns:
    """Column names of an inventory CSV; the defaults are the NASA Global Landslide Catalog's.

    A default attribute column (id, date, size, trigger) that the file lacks is left empty; one
    named on purpose must exist; ``""`` leaves an attribute out.
    """

    lat: str = "latitude"
    lon: str = "longitude"
    id: str = "id"
    date: str = "date"
    size: str = "landslide_size"
    trigger: str = "trigger"


@dataclass
class Inventory:
    """The valid points of an inventory CSV (WGS84) and the rows skipped, by reason."""

    path: Path
    encoding: str
    rows: int
    skipped: Counter
    missing_columns: list[str]  # default attribute columns the file lacks (left empty)
    lon: np.ndarray
    lat: np.ndarray
    attrs: list[tuple]  # per point: id, date, size, trigger, data row number (1 = first)


WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def decode_csv(path: Path, raw: bytes,
               encodings: Sequence[str] = ("utf-8-sig",)) -> tuple[str, str]:
    """``(text, encoding)`` of a CSV file's bytes: the first of ``encodings`` that decodes them
    (``utf-8-sig`` reads UTF-8 with or without a byte-order mark; reported as ``utf-8``).

    A UTF-16 or UTF-32 file (byte-order mark, or many NUL bytes in its first 4 KiB), a NUL
    byte, and bytes that no encoding fits are one-line DataErrors naming the file."""
    head = raw[:4096]
    if raw.startswith(WIDE_BOMS) or head.count(0) > len(head) // 8:
        wide = "UTF-32" if raw.startswith(WIDE_BOMS[:2]) or head.count(0) > len(head) // 2 \
            else "UTF-16"
        raise DataError(f"{path}: looks like {wide}; save it as UTF-8")
    if 0 in head:
        raise DataError(f"{path}: line {head[:head.index(0)].count(10) + 1}: a NUL byte; "
                        "not a text CSV file")
    for encoding in encodings:
        try:
            return raw.decode(encoding), encoding.removesuffix("-sig")
        except UnicodeDecodeError as exc:
            error = exc
    line = raw[:error.start].count(b"\n") + 1
    raise DataError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); "
                    "save it as UTF-8")


def csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line the row starts on, fields)`` of every row of CSV ``text`` (blank rows too, as
    ``[]``). A quote that is never closed (the csv module would read the rest of the file as
    one value) and the csv module's own errors are DataErrors naming the line."""
    lines: list[str] = []

    def feed() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            lines.append(line)
            yield line

    reader = csv.reader(feed())
    last, last_lines = None, []
    try:
        for row in reader:
            start = reader.line_num - len(lines) + 1
            if last is not None:
                yield last
            last, last_lines = (start, row), lines[:]
            lines.clear()
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: {exc}") from None
    if last is None:
        return
    try:  # only a row that runs to the end of the file can hold a quote never closed
        list(csv.reader(io.StringIO("".join(last_lines), newline=""), strict=True))
    except csv.Error as exc:
        if "end of data" in str(exc):
            raise DataError(f"{path}: line {last[0]}: a quote (\") opened in this row is never "
                            "closed, so every row after it would be read as one value; close "
                            "the quote") from None
    yield last


def _decode(path: Path) -> tuple[str, str]:
    problem = file_problem(path)
    if problem is not None:
        what = "inventory file not found" if problem == "file not found" else problem
        raise DataError(f"{path}: {what}")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file; expected a CSV with a header row")
    return decode_csv(path, raw, ENCODINGS)


def _check_columns(path: Path, header: list[str], columns: InventoryColumns) -> list[str]:
    """Missing default attribute columns; an error for missing coordinate or chosen columns."""
    missing, defaults = [], InventoryColumns()
    for f in fields(columns):
        name = getattr(columns, f.name)
        if f.name in ("lat", "lon") and not name:
            raise ConfigError(f"--{f.name}-column: must name a column")
        if not name or name in header:
            continue
        if f.name in ("lat", "lon") or name != getattr(defaults, f.name):
            shown = ", ".join(header[:16]) + (", ..." if len(header) > 16 else "")
            raise DataError(f"{path}: no column '{name}' (columns: {shown}); "
                            f"name it with --{f.name}-column")
        missing.append(name)
    return missing


def _coordinate(lat_text: str, lon_text: str) -> tuple[float, float] | str:
    """(lat, lon) or the reason the row is skipped."""
    if not lat_text or not lon_text:
        return SKIP_MISSING
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        return SKIP_TEXT
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return SKIP_TEXT
    if abs(lat) > 90 or abs(lon) > 180:
        return SKIP_RANGE
    return lat, lon


def read_inventory(path: str | Path, columns: InventoryColumns = InventoryColumns()) -> Inventory:
    """Valid points (WGS84 lon/lat) and attributes; bad coordinates are skipped and counted."""
    path = Path(path)
    text, encoding = _decode(path)
    reader = csv_rows(path, text)
    header = [h.strip() for h in next(reader)[1]]
    missing = _check_columns(path, header, columns)
    pos = {name: i for i, name in reversed(list(enumerate(header)))}
    wanted = (columns.lat, columns.lon, columns.id, columns.date, columns.size, columns.trigger)
    rows, skipped, points, attrs = 0, Counter(), [], []
    for _, row in reader:
        if not any(c.strip() for c in row):
            continue
        rows += 1
        lat, lon, *rest = (row[pos[n]].strip() if n and pos.get(n, len(row)) < len(row)
                           else "" for n in wanted)
        point = _coordinate(lat, lon)
        if isinstance(point, str):
            skipped[point] += 1
        else:
            points.append(point)
            attrs.append((*rest, rows))
    lat, lon = np.asarray(points, float).reshape(-1, 2).T
    return Inventory(path, encoding, rows, skipped, missing, lon, lat, attrs)
