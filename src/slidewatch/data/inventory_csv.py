"""Reading landslide inventories: CSV files of WGS84 points (NASA Global Landslide Catalog
columns by default), with rows whose coordinates are missing or impossible skipped and counted."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

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


def _decode(path: Path) -> tuple[str, str]:
    if not path.exists():
        raise DataError(f"{path}: inventory file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file; expected a CSV with a header row")
    for encoding in ENCODINGS[:-1]:
        try:
            return raw.decode(encoding), encoding.removesuffix("-sig")
        except UnicodeDecodeError:
            continue
    return raw.decode(ENCODINGS[-1]), ENCODINGS[-1]


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
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader)]
    missing = _check_columns(path, header, columns)
    pos = {name: i for i, name in reversed(list(enumerate(header)))}
    wanted = (columns.lat, columns.lon, columns.id, columns.date, columns.size, columns.trigger)
    rows, skipped, points, attrs = 0, Counter(), [], []
    try:
        for row in reader:
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
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: {exc}") from None
    lat, lon = np.asarray(points, float).reshape(-1, 2).T
    return Inventory(path, encoding, rows, skipped, missing, lon, lat, attrs)
