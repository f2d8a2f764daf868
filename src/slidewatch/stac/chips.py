"""``slidewatch data from-inventory INVENTORY.csv --stac URL --collection NAME``: for each event of
an inventory, the least cloudy image of a catalogue in the days after its date (and, with
``days_before``, one before), fetched around the point and cut into chips as
:func:`slidewatch.data.inventory.chips_from_inventory` cuts them.

* Event dates (:func:`parse_event_date`): the inventory's date column, ISO 8601
  (``2023-05-20``, ``2023-05-20 14:00:00``) or month-first (``5/20/2023``, the NASA
  catalogue's ``05/20/2023 02:00:00 PM``); an event without a readable date is skipped and
  counted.
* Images: per event a search of ``collection`` over a box around the point within
  ``[date, date + days_after]`` (``[date - days_before, date)``) and ``max_cloud``; the item
  with the least ``eo:cloud_cover`` wins (ties: the one nearest the event). No item: the
  event is skipped and counted with the reason. The image is a square of ``radius`` metres
  around the point (default: ``min_distance`` + 1.5 chips, room for landslide-free chips) on
  the item's CRS at ``resolution`` (default: the item's), written as a COG with the tags of
  :mod:`slidewatch.stac.tags` into ``scenes`` (a temporary folder unless given).
* Chips: one call of ``chips_from_inventory`` over all images; an image gives the landslide
  chip of its own event only (other events in it are kept away from its landslide-free chips
  but not chipped from an image chosen for another date). ``tiles.csv`` gains ``stac_item``,
  ``stac_collection``, ``acquired`` (ISO 8601), ``days_from_event`` (image time minus event
  time, in days; negative before), ``image_role`` (``after``/``before``) and ``cloud_cover``;
  its ``region`` is the event (``--split-by region`` keeps an event's images together) unless
  ``region`` is given. ``OUT/stac_items.json`` lists the events and the items chosen.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_write_text
from slidewatch.stac import tags as tag_names
from slidewatch.stac.catalog import (
    DEFAULT_TIMEOUT,
    DateRange,
    check_collection,
    check_max_cloud,
    cloud_cover,
    item_time,
    open_catalog,
    search,
)
from slidewatch.stac.fetch import (
    DEFAULT_RESAMPLING,
    band_sources,
    read_item,
    remote_env,
    safe_name,
    write_cog,
)
from slidewatch.stac.grid import choose_crs, grid_around, lonlat_box_around, resolution_in

DEFAULT_DAYS_AFTER = 30
EXTRA_COLUMNS = ("stac_item", "stac_collection", "acquired", "days_from_event", "image_role",
                 "cloud_cover")
STAC_ITEMS_JSON = "stac_items.json"
_US_FORMATS = ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M %p", "%m/%d/%Y %H:%M:%S",
               "%m/%d/%Y %H:%M", "%m/%d/%Y", "%m/%d/%y")


def _no_progress(iterable, **_):
    return iterable


def parse_event_date(text: str) -> dt.datetime | None:
    """An inventory date (see the module doc) in UTC, or None."""
    raw = str(text or "").strip()
    if not raw:
        return None
    t = tag_names.parse_tag_time(raw)
    if t is None and " " in raw and len(raw) >= 16:  # "2023-05-20 14:00:00"
        t = tag_names.parse_tag_time(raw.replace(" ", "T", 1))
    if t is not None:
        return t
    for fmt in _US_FORMATS:
        try:
            return dt.datetime.strptime(raw, fmt).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    return None


@dataclass
class EventImage:
    """The image chosen for one event and where it was written."""

    event: str  # the event's name (its id, else row<N>)
    point: int  # index of the event among the inventory's valid points
    role: str  # "after" or "before"
    item: object  # pystac Item
    time: dt.datetime
    cloud: float | None
    days: float  # image time minus event time
    path: Path | None = None


@dataclass
class CatalogueChips:
    summary: object  # data.inventory.InventorySummary
    images: list[EventImage]
    events: int  # valid points
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> events
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one example message


def _least_cloudy(items, event_time: dt.datetime):
    def key(i):
        c = cloud_cover(i)
        return (math.inf if c is None else c, abs((item_time(i) - event_time).total_seconds()))

    return min(items, key=key)


def _window(event: dt.datetime, role: str, days_after: float, days_before: float | None
            ) -> DateRange:
    if role == "after":
        start, end = event, event + dt.timedelta(days=days_after)
    else:
        start, end = event - dt.timedelta(days=days_before), event - dt.timedelta(seconds=1)
    text = f"{start:%Y-%m-%d}/{end:%Y-%m-%d}"
    return DateRange(start, end, text)


def chips_from_catalogue(inventory: str | Path, out: str | Path, *, url: str, collection: str,
                         days_after: float = DEFAULT_DAYS_AFTER,
                         days_before: float | None = None, max_cloud: float | None = None,
                         bands: Sequence[str] | None = None, resolution: float | None = None,
                         radius: float | None = None, scenes: str | Path | None = None,
                         signer=None, headers: dict[str, str] | None = None,
                         timeout: float = DEFAULT_TIMEOUT, columns=None,
                         size: int = 224, min_distance: float = 500.0,
                         negatives: int | None = None, negative_ratio: float | None = None,
                         seed: int = 0, classes: Sequence[str] = ("landslide", "non_landslide"),
                         region: str | None = None, max_nodata: float = 0.5,
                         overwrite: bool = False, progress: Callable = _no_progress
                         ) -> CatalogueChips:
    """Images from the catalogue per event, then chips (see the module doc)."""
    from slidewatch.data.inventory import check_options, chips_from_inventory
    from slidewatch.data.inventory_csv import InventoryColumns, read_inventory

    check_options(size, min_distance, negatives, negative_ratio, max_nodata, classes, seed)
    check_max_cloud(max_cloud)
    if not (days_after > 0 and math.isfinite(days_after)):
        raise ConfigError(f"--days-after: must be > 0 days, got {days_after}")
    if days_before is not None and not (days_before > 0 and math.isfinite(days_before)):
        raise ConfigError(f"--days-before: must be > 0 days, got {days_before}")
    if radius is not None and not (radius > 0 and math.isfinite(radius)):
        raise ConfigError(f"--radius: must be > 0 metres, got {radius}")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    inv = read_inventory(Path(inventory), columns or InventoryColumns())
    if columns is not None and not columns.date:
        raise ConfigError("--date-column: needed with --stac (the event dates)")
    result = CatalogueChips(None, [], len(inv.lon))
    events = []
    names = set()
    for k, (lon, lat, attrs) in enumerate(zip(inv.lon.tolist(), inv.lat.tolist(), inv.attrs,
                                              strict=True)):
        ident, date, _size, _trigger, row = attrs
        name = safe_name(ident) if str(ident).strip() else f"row{row}"
        if name in names:
            name = f"{name}-row{row}"
        names.add(name)
        t = parse_event_date(date)
        if t is None:
            why = "no date" if not str(date).strip() else "unreadable date"
            result.skipped[why] = result.skipped.get(why, 0) + 1
            result.examples.setdefault(why, f"row {row}: {date!r}")
            continue
        events.append((k, name, lon, lat, t))
    if not events:
        raise DataError(f"{inventory}: no event with a readable date (column "
                        f"{(columns or InventoryColumns()).date!r}; "
                        f"{'; '.join(result.examples.values()) or 'no rows'})")
    catalog = open_catalog(url, signer=signer, headers=headers, timeout=timeout)
    check_collection(catalog, collection)
    roles = ["after"] + (["before"] if days_before else [])
    chosen: list[EventImage] = []
    for k, name, lon, lat, t in progress(events, desc="search", total=len(events)):
        for role in roles:
            window = _window(t, role, days_after, days_before)
            try:
                found = search(catalog, collection, lonlat_box_around(lon, lat, 100.0), window,
                               max_cloud=max_cloud, check=False)
            except DataError as exc:
                if "failed (" in str(exc):  # the catalogue itself: stop
                    raise
                why = f"no item {role}"
                result.skipped[why] = result.skipped.get(why, 0) + 1
                result.examples.setdefault(why, f"{name}: {exc}")
                continue
            best = _least_cloudy(found.items, t)
            band_sources(best, bands)  # the bands exist, before anything is read
            it = item_time(best)
            chosen.append(EventImage(name, k, role, best, it, cloud_cover(best),
                                     round((it - t).total_seconds() / 86400, 3)))
    if not chosen:
        raise DataError(f"{url}: no image for any of the {len(events)} event(s) of {inventory} "
                        f"({'; '.join(result.examples.values())})")
    with tempfile.TemporaryDirectory(prefix="slidewatch-scenes-") as tmpdir:
        folder = Path(scenes) if scenes is not None else Path(tmpdir)
        folder.mkdir(parents=True, exist_ok=True)
        with remote_env(timeout, headers):
            for img in progress(chosen, desc="fetch", total=len(chosen)):
                img.path = _fetch_one(catalog, img, inv, folder, bands, resolution, radius,
                                      size, min_distance, url, collection)
        kept = [i for i in chosen if i.path is not None]
        for i in chosen:
            if i.path is None:
                why = "no valid pixel"
                result.skipped[why] = result.skipped.get(why, 0) + 1
                result.examples.setdefault(why, f"{i.event}: item {i.item.id}")
        if not kept:
            raise DataError(f"{url}: none of the images chosen has valid pixels around its "
                            f"event")
        result.summary = chips_from_inventory(
            Path(inventory), [i.path for i in kept], out, size=size, min_distance=min_distance,
            negatives=negatives, negative_ratio=negative_ratio, seed=seed, classes=classes,
            region=None, columns=columns or InventoryColumns(), max_nodata=max_nodata,
            overwrite=overwrite, positives_from=[[i.point] for i in kept])
    result.images = kept
    _add_columns(out, kept, region, collection)
    doc = {"stac": url, "collection": collection, "days_after": days_after,
           "days_before": days_before, "max_cloud": max_cloud, "events": len(inv.lon),
           "skipped": result.skipped, "examples": result.examples,
           "images": [{"event": i.event, "role": i.role, "item": i.item.id,
                       "datetime": tag_names.iso(i.time), "cloud_cover": i.cloud,
                       "days_from_event": i.days, "scene": i.path.name} for i in kept]}
    atomic_write_text(out / STAC_ITEMS_JSON, json.dumps(doc, indent=2) + "\n")
    return result


def _fetch_one(catalog, img: EventImage, inv, folder: Path, bands, resolution, radius, size,
               min_distance, url, collection) -> Path | None:
    """The image of one event as a COG around its point; None without valid pixels."""
    from slidewatch.data import raster

    lon, lat = float(inv.lon[img.point]), float(inv.lat[img.point])
    sources = band_sources(catalog.sign(img.item), bands)
    with raster.open_url(sources[0].href) as ds:
        crs = choose_crs(ds.crs, lon, lat)
        res = resolution or resolution_in(crs, abs(ds.transform.a), ds.crs, lat)
    r = radius if radius is not None else min_distance + 1.5 * size * res
    grid = grid_around(lon, lat, r, crs, res)
    if grid.width < size:
        raise ConfigError(f"--radius {r:g}: the image around an event ({grid.width} px) is "
                          f"smaller than a chip (--size {size}); give a larger --radius")
    image = read_item(sources, grid, DEFAULT_RESAMPLING)
    if image is None:
        return None
    tags = tag_names.image_tags(img.time, img.item.collection_id or collection, img.item.id,
                                img.cloud, url, image.bands, image.coverage)
    path = folder / f"{img.event}_{img.role}_{img.time:%Y%m%d}_{safe_name(img.item.id)}.tif"
    write_cog(path, image, grid, tags)
    return path


def _add_columns(out: Path, images: list[EventImage], region: str | None,
                 collection: str) -> None:
    """tiles.csv with :data:`EXTRA_COLUMNS` per row (by its image) and the event as region."""
    from slidewatch.data.tiling import TILES_CSV

    path = out / TILES_CSV
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    by_source = {f"{i.path.stem}/{i.path.stem}": i for i in images}
    buf = io.StringIO()
    w = csv.writer(buf)  # as chips_from_inventory writes it
    w.writerow([*header, *EXTRA_COLUMNS])
    for row in body:
        img = by_source[row[col["source_image"]]]
        where = region or img.event
        row[col["region"]] = where
        row[col["source_image"]] = f"{where}/{img.path.stem}"
        w.writerow([*row, img.item.id, img.item.collection_id or collection,
                    tag_names.iso(img.time), f"{img.days:g}", img.role,
                    "" if img.cloud is None else f"{img.cloud:g}"])
    atomic_write_text(path, buf.getvalue())
