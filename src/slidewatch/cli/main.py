"""The ``slidewatch`` command: the click group, its commands and the entry point that turns
our errors into one line on stderr and a non-zero exit."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo
from slidewatch.cli.data import data
from slidewatch.cli.evaluate import evaluate_cmd, report_cmd
from slidewatch.cli.experiments import demo_cmd, experiment_cmd
from slidewatch.cli.explain import explain_cmd
from slidewatch.cli.inventory import from_inventory
from slidewatch.cli.models import models_cmd
from slidewatch.cli.predict import predict_cmd
from slidewatch.cli.scan import scan
from slidewatch.cli.train import train_cmd
from slidewatch.errors import SlidewatchError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="slidewatch")
def cli() -> None:
    """slidewatch: find landslides in satellite and aerial imagery with deep learning."""


data.add_command(from_inventory)
for command in (data, models_cmd, train_cmd, predict_cmd, evaluate_cmd, explain_cmd, report_cmd,
                experiment_cmd, demo_cmd, scan):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: our errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="slidewatch", standalone_mode=False)
    except SlidewatchError as exc:
        echo(f"error: {exc}")
        return exc.exit_code
    except click.exceptions.Abort:
        echo("aborted")
        return 130
    except KeyboardInterrupt:
        echo("interrupted")
        return 130
    except click.ClickException as exc:
        echo(f"error: {exc.format_message()} (see --help)")
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        echo(f"error: {where}{exc.strerror or exc}")
        return 1
    return 0
