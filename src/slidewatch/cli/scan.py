"""``slidewatch scan``: command-line wrapper of :func:`slidewatch.scan.scan`."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo, ensemble_option, progress, runtime_option


def _bands(value: str | None) -> list[int] | None:
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


@click.command("scan")
@click.argument("model_dir", metavar="MODEL")
@click.argument("scenes", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder for <stem>_probability.tif, _detections.geojson, "
              "_detections_wgs84.geojson and _quicklook.png")
@click.option("--tile", type=int, default=None, help="window size in pixels  [default: the "
              "model's input size]")
@click.option("--stride", type=int, default=None, help="step between windows  [default: tile/2]")
@click.option("--batch", default=None, type=int,
              help="windows per forward pass  [default: 16 on CPU, 32 on a GPU]")
@click.option("--bands", default=None,
              help="1-based band numbers, comma-separated  [default: all bands]")
@click.option("--blend", type=click.Choice(["mean", "hann"]), default="mean", show_default=True,
              help="weights of overlapping windows: uniform, or a Hann window (centre counts more)")
@click.option("--threshold", type=float, default=None,
              help="probability for a detection  [default: the model's threshold]")
@click.option("--tta", is_flag=True,
              help="test-time augmentation: each window the mean over flips and rotations")
@ensemble_option
@runtime_option
@click.option("--max-pixels", type=int, default=None,
              help="refuse scenes with more pixels (width x height); 0: no limit  [default: "
              "2**30 = 1073741824, e.g. 32768 x 32768]")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N")
@click.option("--overwrite/--resume", default=False, show_default=True,
              help="start again, or continue an interrupted scan with the same settings")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="score windows in this process, or on Ray workers "
              "(pip install 'slidewatch[ray]')")
@click.option("--ray-address", default=None, help="Ray cluster to join, e.g. auto or "
              "ray://head:10001  [default: $RAY_ADDRESS if set, else a local instance]")
@click.option("--workers", type=int, default=None, help="Ray workers (model replicas)  "
              "[default: CPUs / --worker-cpus, or one per GPU with --device cuda]")
@click.option("--worker-cpus", type=int, default=None,
              help="CPUs (torch threads) per Ray worker  [default: 1 on a local instance, 4 on a "
              "cluster]")
def scan(model_dir, scenes, out, tile, stride, batch, bands, blend, threshold, tta, ensemble,
         runtime, max_pixels, device, overwrite, no_progress, backend, ray_address, workers,
         worker_cpus) -> None:
    """Scan whole SCENES (GeoTIFF, PNG, JPEG) window by window into probability maps and
    detection polygons (a classifier's window probabilities or a segmentation model's pixel
    maps, blended where windows overlap). MODEL: a model folder, or an .onnx file from
    `slidewatch export`."""
    from slidewatch.scan.plan import MAX_PIXELS
    from slidewatch.scan.run import Backend
    from slidewatch.scan.run import scan as run_scan

    where = Backend(backend, ray_address, workers, worker_cpus)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    summary = run_scan(model_dir, list(scenes), out, tile=tile, stride=stride, batch=batch,
                       bands=_bands(bands), blend=blend, threshold=threshold, device=device,
                       overwrite=overwrite, progress=progress(not no_progress), backend=where,
                       max_pixels=limit, tta=tta, ensemble=list(ensemble), runtime=runtime)
    for w in summary.warnings:
        echo(f"warning: {w}")
    for r in summary.scenes:
        what = "already done" if r.status == "complete" else r.status
        echo(f"{r.scene}: {r.detections_count} detections ({what}) -> {r.probability}")
    echo(f"{summary.windows} windows ({summary.skipped_windows} all nodata) in "
          f"{summary.seconds:.1f} s: {summary.windows_per_s:.1f} windows/s, "
          f"{summary.megapixels_per_s:.2f} megapixels/s")
