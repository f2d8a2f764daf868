"""``slidewatch data from-inventory``: wrapper of :mod:`slidewatch.data.inventory`."""

from __future__ import annotations

from pathlib import Path

import click

from slidewatch.cli.common import parse_classes

# The library's defaults, repeated so that `slidewatch --help` does not import numpy (a test
# checks that they agree with slidewatch.data.inventory).
DEFAULTS = {"size": 224, "min_distance": 500.0, "negative_ratio": 1.0, "max_nodata": 0.5,
            "lat": "latitude", "lon": "longitude", "id": "id", "date": "date",
            "size_column": "landslide_size", "trigger": "trigger"}
STAC_DEFAULTS = {"days_after": 30.0, "timeout": 10.0}  # slidewatch.stac.chips and .catalog

_COUNTS = (("points", "points_inside"), ("landslide", "positives"), ("edge", "skipped_edge"),
           ("nodata", "skipped_nodata"), ("repeat", "skipped_duplicate"),
           ("wanted", "negatives_wanted"), ("landslide-free", "negatives"))


def format_summary(s) -> str:
    """An ``InventorySummary`` as plain text: rows, skipped rows by reason, chips per scene."""
    skipped = sum(s.skipped_rows.values())
    reasons = ", ".join(f"{why} {n}" for why, n in s.skipped_rows.items())
    lines = [f"{s.inventory}: {s.rows_read} rows read ({s.encoding}), {s.valid_points} valid "
             f"points, {skipped} skipped" + (f" ({reasons})" if reasons else ""),
             f"{s.points_inside} point(s) inside the scenes"]
    if s.missing_columns:
        lines.append(f"no column(s) {', '.join(s.missing_columns)} in the inventory: left empty")
    width = max([len(x.scene) for x in s.scenes] + [5])
    widths = [max(len(h), 5) for h, _ in _COUNTS]
    table = [("scene", [h for h, _ in _COUNTS])]
    table += [(x.scene, [getattr(x, k) for _, k in _COUNTS]) for x in s.scenes]
    table.append(("total", [s.total(k) for _, k in _COUNTS]))
    for name, cells in table:
        cells = "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        lines.append(f"{name:{width}}  {cells}")
    lines.append("edge: chip would cross the scene edge; nodata: more than --max-nodata; "
                 "repeat: same pixels as a chip written")
    short = [x.scene for x in s.scenes if x.negatives < x.negatives_wanted]
    if short:
        lines.append(f"fewer landslide-free chips than wanted in {', '.join(short)}: not enough "
                     "room far enough from the inventory points and clear of nodata")
    lines.append(f"-> {s.tiles_csv}")
    return "\n".join(lines)


@click.command("from-inventory")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.argument("scenes", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--size", default=DEFAULTS["size"], show_default=True, type=int,
              help="chip size in pixels")
@click.option("--min-distance", default=DEFAULTS["min_distance"], show_default=True, type=float,
              help="metres on the ground from a landslide-free chip to every inventory point")
@click.option("--negatives", type=int, default=None,
              help="landslide-free chips per scene  [default: --negative-ratio]")
@click.option("--negative-ratio", type=float, default=None,
              help=f"landslide-free chips per landslide chip, per scene  "
                   f"[default: {DEFAULTS['negative_ratio']}]")
@click.option("--seed", default=0, show_default=True, type=int, help="landslide-free sampling")
@click.option("--max-nodata", default=DEFAULTS["max_nodata"], show_default=True, type=float,
              help="skip chips with a larger nodata fraction")
@click.option("--region", default=None, help="region of every chip  [default: scene file stem]")
@click.option("--classes", default="landslide,non_landslide", show_default=True,
              help="class folder names, positive (landslide) class first, comma-separated")
@click.option("--lat-column", default=DEFAULTS["lat"], show_default=True)
@click.option("--lon-column", default=DEFAULTS["lon"], show_default=True)
@click.option("--id-column", default=DEFAULTS["id"], show_default=True)
@click.option("--date-column", default=DEFAULTS["date"], show_default=True)
@click.option("--size-column", default=DEFAULTS["size_column"], show_default=True)
@click.option("--trigger-column", default=DEFAULTS["trigger"], show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing output folder")
@click.option("--stac", "url", default=None, metavar="URL",
              help="instead of SCENES: images from this STAC API, one per event after its date")
@click.option("--collection", default=None, help="with --stac: the collection to search")
@click.option("--days-after", type=float, default=STAC_DEFAULTS["days_after"],
              show_default=True, help="with --stac: days after the event date to search")
@click.option("--days-before", type=float, default=None,
              help="with --stac: also the least cloudy image this many days before the event")
@click.option("--max-cloud", type=float, default=None, metavar="P",
              help="with --stac: items with eo:cloud_cover <= P percent")
@click.option("--bands", default=None,
              help="with --stac: asset keys or band names, e.g. B04,B03,B02  [default: visual]")
@click.option("--resolution", type=float, default=None,
              help="with --stac: pixel size in metres  [default: the item's]")
@click.option("--radius", type=float, default=None,
              help="with --stac: metres around an event that its image covers  [default: "
                   "--min-distance + 1.5 chips]")
@click.option("--scenes", "scenes_dir", default=None, type=click.Path(file_okay=False),
              help="with --stac: keep the fetched images here  [default: a temporary folder]")
@click.option("--signer", default=None, help="with --stac: see `slidewatch imagery fetch`")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="with --stac: HTTP header for the catalogue and the assets; repeatable")
@click.option("--timeout", type=float, default=STAC_DEFAULTS["timeout"], show_default=True,
              help="with --stac: seconds to wait for the catalogue or an asset")
def from_inventory(inventory, scenes, out, size, min_distance, negatives, negative_ratio, seed,
                   max_nodata, region, classes, lat_column, lon_column, id_column, date_column,
                   size_column, trigger_column, overwrite, url, collection, days_after,
                   days_before, max_cloud, bands, resolution, radius, scenes_dir, headers,
                   signer, timeout) -> None:
    """Chips around the points of INVENTORY (CSV, WGS84 lat/lon) inside SCENES (GeoTIFFs),
    or inside the least cloudy image of a STAC catalogue after each event (--stac).

    Landslide chips are centred on the points; landslide-free chips keep --min-distance from
    every point. Writes OUT/<class>/*.tif (CRS and transform kept) and OUT/tiles.csv with the
    inventory's id, date, size and trigger (with --stac also the item, its acquisition and the
    days from the event). Defaults read the NASA Global Landslide Catalog.
    """
    from slidewatch.data.inventory import InventoryColumns, chips_from_inventory
    from slidewatch.errors import ConfigError

    columns = InventoryColumns(lat_column, lon_column, id_column, date_column, size_column,
                               trigger_column)
    if url is not None:
        if scenes:
            raise ConfigError("SCENES, --stac: give scenes or a catalogue, not both")
        if not collection:
            raise ConfigError("--collection: needed with --stac")
        from slidewatch.stac.catalog import parse_headers
        from slidewatch.stac.chips import chips_from_catalogue
        from slidewatch.stac.fetch import parse_bands

        got = chips_from_catalogue(
            Path(inventory), Path(out), url=url, collection=collection, days_after=days_after,
            days_before=days_before, max_cloud=max_cloud, bands=parse_bands(bands),
            resolution=resolution, radius=radius, scenes=scenes_dir, signer=signer,
            headers=parse_headers(headers), timeout=timeout, columns=columns, size=size,
            min_distance=min_distance, negatives=negatives, negative_ratio=negative_ratio,
            seed=seed, classes=parse_classes(classes), region=region, max_nodata=max_nodata,
            overwrite=overwrite)
        click.echo(format_summary(got.summary))
        skipped = ", ".join(f"{why} {n}" for why, n in got.skipped.items())
        roles = {r: sum(i.role == r for i in got.images) for r in ("after", "before")}
        click.echo(f"{got.events} event(s): {roles['after']} image(s) after, {roles['before']} "
                   f"before" + (f"; skipped: {skipped}" if skipped else ""))
        return
    if not scenes:
        raise ConfigError("SCENES: give one or more GeoTIFF scenes, or --stac URL "
                          "--collection NAME")
    summary = chips_from_inventory(
        Path(inventory), [Path(s) for s in scenes], Path(out), size=size,
        min_distance=min_distance, negatives=negatives, negative_ratio=negative_ratio,
        seed=seed, classes=parse_classes(classes), region=region, columns=columns,
        max_nodata=max_nodata, overwrite=overwrite)
    click.echo(format_summary(summary))
