"""Helpers every command module shares: messages on stderr, progress bars, the options of
multi-modal inputs, class-name parsing. Imports only click, tqdm and the library's leaves."""

from __future__ import annotations

import sys

import click

CLASSES_HELP = "class folder names, positive (landslide) class first, comma-separated"


def echo(msg: str) -> None:
    click.echo(msg, err=True)


def progress(enabled: bool):
    """A tqdm progress factory for the library (stderr), or a pass-through."""
    if not enabled:
        from slidewatch.runtime import no_progress

        return no_progress
    from tqdm.auto import tqdm

    def bar(iterable, desc="", total=None):
        return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, disable=None,
                    dynamic_ncols=True)

    return bar


def tabular_inputs(fn):
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


def ensemble_option(fn):
    """``--ensemble DIR`` (repeatable): more model folders whose probabilities are averaged
    with MODEL_DIR's."""
    return click.option("--ensemble", "ensemble", multiple=True, metavar="DIR",
                        help="average probabilities with this model folder too; repeatable "
                             "(same task, classes, bands, input size and scale)")(fn)


def runtime_option(fn):
    """``--runtime torch|onnx``: what runs the model (default: PyTorch for a model folder, ONNX
    Runtime for an ``.onnx`` file from ``slidewatch export``)."""
    return click.option("--runtime", type=click.Choice(["torch", "onnx"]), default=None,
                        help="run the model with PyTorch or ONNX Runtime (a folder is exported "
                             "in memory)  [default: torch for a model folder, onnx for an "
                             ".onnx file]")(fn)


def parse_classes(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if len(names) < 2:
        raise click.BadParameter("give at least two names, e.g. landslide,non_landslide",
                                 param_hint="--classes")
    return names
