"""`slidewatch experiment` and `slidewatch demo`: grids, searches and the demo."""

from __future__ import annotations

from pathlib import Path

import click

from slidewatch.cli.common import echo, progress


@click.command("experiment")
@click.argument("config_path", metavar="CONFIG.yaml")
@click.option("--out", default=None, help="output folder (default: `out:` in the file)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--search", "search_n", default=None, type=int,
              help="instead of the grid: N Optuna trials over the file's `search:` ranges")
def experiment_cmd(config_path, out, quiet, search_n):
    """Train and test every run of a grid (resumable); write results.csv/.md and plots."""
    from slidewatch.experiments.grid import load_experiment, run_experiment

    if search_n is not None:
        from slidewatch.experiments.search import run_search

        res = run_search(config_path, search_n, out, progress=progress(not quiet), log=echo)
        click.echo(f"{len(res.rows)} trials, best {res.best_number} ({res.best_value:.4g}) "
                   f"-> {res.out / 'best.yaml'}")
        return
    exp = load_experiment(config_path)
    rows = run_experiment(exp, out, progress=progress(not quiet), log=echo)
    failed = [r for r in rows if r["status"] == "failed"]
    click.echo(f"{len(rows)} runs ({len(failed)} failed) -> "
               f"{Path(out or exp.out) / 'results.csv'}")


@click.command("demo")
@click.option("--data", "data_dir", default=None,
              help="sample data folder (else $SLIDEWATCH_DATA, else download)")
@click.option("--out", default="runs/demo", show_default=True, help="working folder")
@click.option("--holdout", multiple=True, help="only these held-out regions (default: all four)")
@click.option("--quick", is_flag=True, help="a few steps only (a smoke run, not the result)")
def demo_cmd(data_dir, out, holdout, quick):
    """Leave-one-region-out on the sample regions: an EfficientNet-Lite0 tile classifier and a
    U-Net segmentation model per fold, scored on the region each never saw; prints a table."""
    from slidewatch.experiments.demo import REGIONS, format_table, run_demo

    for region in holdout:
        if region not in REGIONS:
            raise click.BadParameter(f"{region!r} is not one of {', '.join(REGIONS)}",
                                     param_hint="--holdout")
    rows = run_demo(data_dir, Path(out), quick=quick, log=echo, progress=progress(True),
                    regions=tuple(holdout) or REGIONS)
    click.echo(format_table(rows))
