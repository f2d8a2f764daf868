"""The ``slidewatch`` command: the click group, its commands and the entry point that turns
our errors into one line on stderr and a non-zero exit.

The error line never fails to print: a message is put on one line, and text that the terminal
cannot show (file names that are not valid UTF-8 reach Python as surrogate escapes) is shown
with backslash escapes, e.g. ``caf\\xe9.png``.
"""

from __future__ import annotations

import sys

import click

from slidewatch.cli.changes import changes_cmd, date_cmd
from slidewatch.cli.common import echo
from slidewatch.cli.data import data
from slidewatch.cli.evaluate import evaluate_cmd, report_cmd
from slidewatch.cli.experiments import demo_cmd, experiment_cmd
from slidewatch.cli.explain import explain_cmd
from slidewatch.cli.export import export_cmd
from slidewatch.cli.imagery import imagery
from slidewatch.cli.inventory import from_inventory
from slidewatch.cli.models import models_cmd
from slidewatch.cli.predict import predict_cmd
from slidewatch.cli.scan import scan
from slidewatch.cli.serve import serve_cmd
from slidewatch.cli.train import train_cmd
from slidewatch.errors import SlidewatchError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="slidewatch")
def cli() -> None:
    """slidewatch: find landslides in satellite and aerial imagery with deep learning."""


data.add_command(from_inventory)
for command in (data, models_cmd, train_cmd, predict_cmd, evaluate_cmd, explain_cmd, report_cmd,
                experiment_cmd, demo_cmd, scan, export_cmd):
    cli.add_command(command)
cli.add_command(imagery)
cli.add_command(changes_cmd)
cli.add_command(date_cmd)
cli.add_command(serve_cmd)


def printable(text: object) -> str:
    """``text`` on one line that any stream can take: surrogate escapes (bytes of a file name
    that are not UTF-8) become ``\\xNN``, characters the stream cannot encode ``\\uNNNN``,
    line breaks spaces."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    text = str(text)
    if "\n" in text or "\r" in text:
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text.encode("ascii", "backslashreplace").decode("ascii")


def _say(msg: object) -> None:
    """One line on stderr; never raises for the text (a closed stream is left alone)."""
    try:
        echo(printable(msg))
    except (OSError, ValueError):  # stderr closed or a broken pipe: nothing left to tell
        pass


def main(argv: list[str] | None = None) -> int:
    """Console entry point: our errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="slidewatch", standalone_mode=False)
    except SlidewatchError as exc:
        _say(f"error: {exc}")
        return exc.exit_code
    except click.exceptions.Abort:
        _say("aborted")
        return 130
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except click.ClickException as exc:
        _say(f"error: {exc.format_message()} (see --help)")
        return exc.exit_code
    except OSError as exc:
        where = f"{printable(exc.filename)}: " if exc.filename else ""
        _say(f"error: {where}{exc.strerror or exc}")
        return 1
    return 0
