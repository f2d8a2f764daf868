"""`slidewatch data`: tiles from scene folders, dataset info, splits, chips from inventories."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from slidewatch.cli.common import CLASSES_HELP, parse_classes


@click.group("data")
def data() -> None:
    """Build, inspect and split tile datasets."""


@data.command("tiles")
@click.argument("scenes", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--tile", default=224, show_default=True, type=int, help="tile size in pixels")
@click.option("--stride", default=224, show_default=True, type=int, help="step between tiles")
@click.option("--min-landslide", default=0.05, show_default=True, type=float,
              help="mask fraction from which a tile is a landslide (0 < f < this: dropped)")
@click.option("--classes", default="landslide,non_landslide", show_default=True, help=CLASSES_HELP)
@click.option("--overwrite", is_flag=True, help="replace an existing output folder")
@click.option("--quiet", is_flag=True, help="no progress bar")
def data_tiles(scenes, out, tile, stride, min_landslide, classes, overwrite, quiet):
    """Cut SCENES (folders with images/ and masks/) into class-folder tiles + tiles.csv, and
    each landslide tile's piece of the mask as masks/<tile>.png."""
    from slidewatch.data.tiling import tile_scenes

    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        pbar = tqdm(total=0, desc="tiling", file=sys.stderr, leave=False, disable=None)

        def bar(done, total):
            pbar.total = total
            pbar.n = done
            pbar.refresh()

    summary = tile_scenes([Path(s) for s in scenes], Path(out), tile=tile, stride=stride,
                          min_landslide=min_landslide, classes=parse_classes(classes),
                          overwrite=overwrite, progress=bar)
    click.echo(summary.table() if hasattr(summary, "table") else str(summary))


@data.command("info")
@click.argument("root")
@click.option("--classes", default="landslide,non_landslide", show_default=True, help=CLASSES_HELP)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def data_info(root, classes, as_json):
    """Counts per class and region, image sizes and bands, and every unreadable entry (damaged
    images, broken links, folders that cannot be listed, FIFOs, names that are not UTF-8)."""
    from slidewatch.data.info import dataset_info, format_info

    info = dataset_info(Path(root), parse_classes(classes))
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@data.command("split")
@click.argument("roots", nargs=-1, required=True)
@click.option("--out", required=True, help="split file to write (JSON)")
@click.option("--split-by", "by", type=click.Choice(["image", "region", "tile"]), default="image",
              show_default=True, help="keep whole images or regions together ('tile' leaks)")
@click.option("--val-fraction", default=0.2, show_default=True, type=float)
@click.option("--test-fraction", default=0.0, show_default=True, type=float)
@click.option("--holdout-region", "holdout", multiple=True, help="region(s) kept for testing")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--classes", default="landslide,non_landslide", show_default=True, help=CLASSES_HELP)
def data_split(roots, out, by, val_fraction, test_fraction, holdout, seed, classes):
    """Write a group-aware train/val/test split of one or more datasets to a file."""
    from slidewatch.data.folders import load_datasets
    from slidewatch.data.splits import save_split, split_samples
    from slidewatch.io_utils import check_output_file
    from slidewatch.meta import META_FILE

    check_output_file(out, "a JSON file name", (".json",), marker=META_FILE, inputs=roots)
    samples = load_datasets([Path(r) for r in roots], parse_classes(classes))
    split = split_samples(samples, by=by, val_fraction=val_fraction, test_fraction=test_fraction,
                          seed=seed, holdout_regions=tuple(holdout))
    save_split(Path(out), samples, split)
    click.echo(f"train {len(split.train)}, val {len(split.val)}, test {len(split.test)} "
               f"images -> {out}")


@data.command("from-reviews")
@click.argument("reviews", metavar="REVIEWS.gpkg")
@click.argument("scene", metavar="SCENE.tif")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--size", default=128, show_default=True, type=int,
              help="tile size in pixels (larger for a polygon that does not fit)")
@click.option("--region", default=None, help="region name in tiles.csv  [default: scene stem]")
@click.option("--overwrite", is_flag=True, help="replace an existing output folder")
def data_from_reviews(reviews, scene, out, size, region, overwrite):
    """Training tiles from reviewed detections (`slidewatch serve`): accepted, redrawn and
    added polygons become landslide tiles with masks, rejected detections landslide-free
    tiles (hard negatives), as class folders + tiles.csv that `slidewatch train --data` reads
    (e.g. with --init-from MODEL to fine-tune on the corrections)."""
    from slidewatch.data.reviews import tiles_from_reviews

    result = tiles_from_reviews(Path(reviews), Path(scene), Path(out), size=size, region=region,
                                overwrite=overwrite)
    click.echo(result.summary())
