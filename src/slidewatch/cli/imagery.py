"""``slidewatch imagery search|fetch``: wrappers of :mod:`slidewatch.stac.fetch`."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo, progress

# The library's defaults, repeated so that `slidewatch --help` imports nothing heavy (a test
# checks that they agree with slidewatch.stac).
DEFAULTS = {"radius": 500.0, "timeout": 10.0, "max_items": 500, "resampling": "bilinear"}
RESAMPLING = ("nearest", "bilinear", "cubic", "average")
SIGNER_HELP = ("sign asset addresses: planetary-computer (pip install 'slidewatch[planetary]'), "
               "an entry point of group slidewatch.stac_signers, or module:function (called "
               "with each pystac Item the catalogue returns; changes hrefs in place)")


def catalogue_options(fn):
    """The options of a catalogue and its search (shared by search and fetch)."""
    for option in reversed([
        click.option("--stac", "url", required=True, metavar="URL",
                     help="STAC API root, e.g. https://earth-search.aws.element84.com/v1"),
        click.option("--collection", required=True, help="collection id, e.g. sentinel-2-l2a"),
        click.option("--bbox", default=None, metavar="W,S,E,N",
                     help="area: a WGS84 box in degrees"),
        click.option("--around", default=None, type=click.Path(dir_okay=False),
                     metavar="INVENTORY.csv",
                     help="areas: a square around each point of an inventory CSV"),
        click.option("--radius", type=float, default=DEFAULTS["radius"], show_default=True,
                     help="metres from an --around point to the square's sides"),
        click.option("--dates", required=True, metavar="START/END",
                     help="acquisition dates, e.g. 2023-06-01/2023-09-30 (.. for an open end)"),
        click.option("--max-cloud", type=float, default=None, metavar="P",
                     help="keep items with eo:cloud_cover <= P percent"),
        click.option("--bands", default=None,
                     help="asset keys or band (common) names, comma-separated, e.g. B04,B03,B02 "
                          "or red,green,blue  [default: the visual asset]"),
        click.option("--signer", default=None, help=SIGNER_HELP),
        click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                     help="HTTP header for the catalogue and the assets; repeatable"),
        click.option("--timeout", type=float, default=DEFAULTS["timeout"], show_default=True,
                     help="seconds to wait for the catalogue or an asset"),
        click.option("--max-items", type=int, default=DEFAULTS["max_items"],
                     show_default=True, help="items read per area"),
        click.option("--lat-column", default="latitude", show_default=True),
        click.option("--lon-column", default="longitude", show_default=True),
        click.option("--id-column", default="id", show_default=True),
        click.option("--date-column", default="date", show_default=True),
        click.option("--no-progress", is_flag=True, help="no progress bar"),
    ]):
        fn = option(fn)
    return fn


def _request(url, collection, bbox, around, radius, dates, max_cloud, bands, headers,
             lat_column, lon_column, id_column, date_column):
    """The areas, date range, bands and headers, checked."""
    from slidewatch.data.inventory_csv import InventoryColumns
    from slidewatch.errors import ConfigError
    from slidewatch.stac.catalog import parse_bbox, parse_dates, parse_headers
    from slidewatch.stac.fetch import bbox_area, inventory_areas, parse_bands

    if (bbox is None) == (around is None):
        raise ConfigError("--bbox, --around: give one of them (a box, or an inventory's points)")
    window = parse_dates(dates)
    if bbox is not None:
        areas = [bbox_area(parse_bbox(bbox))]
    else:
        columns = InventoryColumns(lat_column, lon_column, id_column, date_column, "", "")
        areas = inventory_areas(around, radius, columns)
    return areas, window, parse_bands(bands), parse_headers(headers)


def _report(summary) -> None:
    for w in summary.warnings:
        echo(f"warning: {w}")
    for r in summary.areas:
        where = f"area {r.area.name}: " if r.area.name else ""
        if r.error:
            echo(f"{where}{r.error}")
            continue
        for f in r.found:
            cloud = "-" if f.cloud is None else f"{f.cloud:g}%"
            done = f" -> {f.file}" if f.file else (f" ({f.note})" if f.note else "")
            click.echo(f"{where}{f.time:%Y-%m-%d %H:%M}  {f.item.id}  cloud {cloud}{done}")


@click.group("imagery")
def imagery() -> None:
    """Imagery from STAC catalogues: search items, fetch their windows onto one grid."""


@imagery.command("search")
@catalogue_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="write OUT/items.json (the items found)")
@click.option("--overwrite", is_flag=True, help="replace OUT/items.json")
def search_cmd(url, collection, bbox, around, radius, dates, max_cloud, bands, signer, headers,
               timeout, max_items, lat_column, lon_column, id_column, date_column, no_progress,
               out, overwrite) -> None:
    """List the items of a collection over an area (or around inventory points) within
    --dates and --max-cloud; nothing is read from the assets."""
    from slidewatch.stac.fetch import search_imagery

    areas, window, names, hdrs = _request(url, collection, bbox, around, radius, dates,
                                          max_cloud, bands, headers, lat_column, lon_column,
                                          id_column, date_column)
    summary = search_imagery(url, collection, areas, window, max_cloud=max_cloud, bands=names,
                             out=out, signer=signer, headers=hdrs, timeout=timeout,
                             max_items=max_items, overwrite=overwrite,
                             progress=progress(not no_progress))
    _report(summary)
    n = sum(len(r.found) for r in summary.areas)
    echo(f"{n} item(s) in {len(summary.areas)} area(s)"
         + (f" -> {summary.items_json}" if summary.items_json else ""))


@imagery.command("fetch")
@catalogue_options
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for <YYYYMMDD>_<item>.tif (per point: OUT/<id>/) and items.json")
@click.option("--resolution", type=float, default=None,
              help="pixel size in metres  [default: the first item's]")
@click.option("--resampling", type=click.Choice(RESAMPLING), default=DEFAULTS["resampling"],
              show_default=True, help="warping onto the area's grid")
@click.option("--cloud-mask", default=None, metavar="SPEC",
              help="make cloud pixels nodata: scl (Sentinel-2 SCL classes 3, 8, 9, 10) or "
                   "ASSET:V1,V2,... (class values of that asset)")
@click.option("--overwrite", is_flag=True, help="replace an existing output folder")
def fetch_cmd(url, collection, bbox, around, radius, dates, max_cloud, bands, signer, headers,
              timeout, max_items, lat_column, lon_column, id_column, date_column, no_progress,
              out, resolution, resampling, cloud_mask, overwrite) -> None:
    """Fetch the window of every item over the area(s) onto one grid per area (the first
    item's CRS, or the UTM zone; --resolution) as COG GeoTIFFs tagged with acquisition time,
    collection, item id and cloud cover, plus OUT/items.json."""
    from slidewatch.stac.fetch import fetch_imagery

    areas, window, names, hdrs = _request(url, collection, bbox, around, radius, dates,
                                          max_cloud, bands, headers, lat_column, lon_column,
                                          id_column, date_column)
    summary = fetch_imagery(url, collection, areas, window, out, max_cloud=max_cloud,
                            bands=names, resolution=resolution, resampling=resampling,
                            signer=signer, headers=hdrs, timeout=timeout, max_items=max_items,
                            overwrite=overwrite, cloud_mask=cloud_mask,
                            progress=progress(not no_progress))
    _report(summary)
    grids = {r.grid.to_json()["crs"] for r in summary.areas if r.grid}
    echo(f"{summary.images} image(s) in {sum(1 for r in summary.areas if r.grid)} area(s) on "
         f"{', '.join(sorted(grids))} -> {summary.out}")
