"""The GeoTIFF tags of a fetched image, and reading an image's acquisition time back.

``imagery fetch`` writes :data:`DATETIME` (ISO 8601, UTC), :data:`COLLECTION`, :data:`ITEM`,
:data:`CLOUD_COVER` (percent, empty when the item has none), :data:`CATALOGUE` (the STAC API's
URL), :data:`BANDS` (comma-separated) and :data:`COVERAGE` (the share of the grid with data),
plus the TIFF ``DateTime`` tag (``TIFFTAG_DATETIME``, ``YYYY:MM:DD HH:MM:SS``).
:func:`acquisition_time` reads :data:`DATETIME`, else the date tags other tools write
(:data:`DATE_TAGS`, e.g. ``TIFFTAG_DATETIME``, ``ACQUISITIONDATETIME``), else None.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

DATETIME = "SLIDEWATCH_DATETIME"
COLLECTION = "SLIDEWATCH_COLLECTION"
ITEM = "SLIDEWATCH_ITEM"
CLOUD_COVER = "SLIDEWATCH_CLOUD_COVER"
CATALOGUE = "SLIDEWATCH_STAC"
BANDS = "SLIDEWATCH_BANDS"
COVERAGE = "SLIDEWATCH_COVERAGE"
DATE_TAGS = (DATETIME, "ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITION_DATE",
             "DATE_ACQUIRED", "DATETIME", "TIFFTAG_DATETIME")

_TIFF = re.compile(r"^(\d{4}):(\d{2}):(\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2}))?$")


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_tags(t: dt.datetime, collection: str, item_id: str, cloud: float | None,
               url: str, bands: list[str], coverage: float) -> dict[str, str]:
    """The tags of a fetched image."""
    return {DATETIME: iso(t), COLLECTION: collection, ITEM: item_id,
            CLOUD_COVER: "" if cloud is None else f"{cloud:g}", CATALOGUE: url,
            BANDS: ",".join(bands), COVERAGE: f"{coverage:.4f}",
            "TIFFTAG_DATETIME": t.astimezone(dt.timezone.utc).strftime("%Y:%m:%d %H:%M:%S")}


def parse_tag_time(text: str) -> dt.datetime | None:
    """A tag's date or date-time (ISO 8601 or the TIFF ``YYYY:MM:DD HH:MM:SS``) in UTC, or
    None when it is not one."""
    raw = str(text).strip()
    m = _TIFF.match(raw)
    try:
        if m:
            parts = [int(p) if p else 0 for p in m.groups()]
            t = dt.datetime(*parts)
        elif len(raw) == 10:
            t = dt.datetime.combine(dt.date.fromisoformat(raw), dt.time())
        else:
            t = dt.datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    except ValueError:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def acquisition_time(path: str | Path) -> tuple[dt.datetime | None, str | None]:
    """``(time, tag it came from)`` of a raster, or ``(None, None)``."""
    from slidewatch.data.raster import open_raster

    with open_raster(path) as ds:
        tags = {k.upper(): v for k, v in ds.tags().items()}
    for name in DATE_TAGS:
        if name in tags:
            t = parse_tag_time(tags[name])
            if t is not None:
                return t, name
    return None, None


def fetched_tags(path: str | Path) -> dict[str, str]:
    """The :data:`DATETIME`... tags of a fetched image (empty for another file)."""
    from slidewatch.data.raster import open_raster

    with open_raster(path) as ds:
        return {k: v for k, v in ds.tags().items() if k.startswith("SLIDEWATCH_")}
