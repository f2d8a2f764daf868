"""``slidewatch changes`` and ``slidewatch date``: wrappers of :mod:`slidewatch.stac.changes`
and :mod:`slidewatch.stac.dating`."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo, progress


def band_numbers(value: str | None) -> list[int] | None:
    """``--bands`` as 1-based band numbers (as ``slidewatch scan`` reads it)."""
    if value is None:
        return None
    try:
        bands = [int(b) for b in value.split(",") if b.strip()]
    except ValueError:
        bands = []
    if not bands or min(bands) < 1:
        raise click.BadParameter(f"give 1-based band numbers, e.g. 1,2,3 (got {value!r})",
                                 param_hint="--bands")
    return bands


def scan_options(fn):
    """The options of the scans run for scenes (a scan folder is taken as it is)."""
    for option in reversed([
        click.option("--model", "model_dir", default=None, metavar="MODEL_DIR",
                     help="model folder that scans the scenes (not needed for scan folders)"),
        click.option("--threshold", type=float, default=None,
                     help="probability for a detection  [default: the scans' threshold]"),
        click.option("--tile", type=int, default=None,
                     help="scan window size  [default: the model's input size]"),
        click.option("--stride", type=int, default=None,
                     help="step between windows  [default: tile/2]"),
        click.option("--batch", type=int, default=None, help="windows per forward pass"),
        click.option("--bands", default=None, help="1-based band numbers, comma-separated"),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N"),
        click.option("--overwrite", is_flag=True, help="scan again instead of resuming"),
        click.option("--no-progress", is_flag=True, help="no progress bar"),
    ]):
        fn = option(fn)
    return fn


def _scan_kwargs(tile, stride, batch, bands, device, overwrite) -> dict:
    return {"tile": tile, "stride": stride, "batch": batch, "bands": band_numbers(bands),
            "device": device, "overwrite": overwrite}


def _fmt(p) -> str:
    return "-" if p is None else f"{p:.2f}"


@click.command("changes")
@click.argument("before")
@click.argument("after")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for changes.geojson, changes_wgs84.geojson, changes.json (and the "
                   "scans of scenes: OUT/before, OUT/after)")
@scan_options
def changes_cmd(before, after, out, model_dir, threshold, tile, stride, batch, bands, device,
                overwrite, no_progress) -> None:
    """Detections new, persisting or gone between BEFORE and AFTER: scenes (scanned with
    --model) or output folders of finished scans, put on AFTER's grid; warns when the images
    are shifted against each other by more than a pixel."""
    from slidewatch.stac.changes import changes

    summary = changes(before, after, out, model_dir=model_dir, threshold=threshold,
                      scan_options=_scan_kwargs(tile, stride, batch, bands, device, overwrite),
                      progress=progress(not no_progress))
    for w in summary.warnings:
        echo(f"warning: {w}")
    c = summary.counts
    click.echo(f"{c['new']} new, {c['persisting']} persisting, {c['gone']} gone "
               f"(threshold {summary.threshold:g}) -> {summary.files[0]}")


@click.command("date")
@click.argument("scenes", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for dates.geojson, dates_wgs84.geojson, dating.csv, dating.json (and "
                   "the scans of scenes: OUT/scans/)")
@click.option("--dates", default=None, metavar="D1,D2,...",
              help="acquisition date of each scene, in their order  [default: the scenes' "
                   "tags, e.g. those imagery fetch writes]")
@scan_options
def date_cmd(scenes, out, dates, model_dir, threshold, tile, stride, batch, bands, device,
             overwrite, no_progress) -> None:
    """When did each detection of the latest of SCENES (one area at several dates: scenes or
    finished scan folders) appear: the last date it was absent and the first date it was
    present, with the probability over its footprint at every date."""
    from slidewatch.stac.dating import date_detections

    listed = None if dates is None else [d.strip() for d in dates.split(",") if d.strip()]
    summary = date_detections(list(scenes), out, model_dir=model_dir, dates=listed,
                              threshold=threshold,
                              scan_options=_scan_kwargs(tile, stride, batch, bands, device,
                                                        overwrite),
                              progress=progress(not no_progress))
    for w in summary.warnings:
        echo(f"warning: {w}")
    for d in summary.detections:
        probs = ", ".join(_fmt(e.mean_prob) for e in d.evidence)
        click.echo(f"{d.id}: {d.appeared} ({d.area_px} px; p {probs})")
    first, last = summary.maps[0].time, summary.maps[-1].time
    click.echo(f"{len(summary.detections)} detection(s) in the latest image, {len(summary.maps)} "
               f"dates {first:%Y-%m-%d}..{last:%Y-%m-%d} (threshold {summary.threshold:g}) -> "
               f"{summary.files[0]}")
