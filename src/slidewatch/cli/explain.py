"""`slidewatch explain`: Grad-CAM family maps, localisation scores and attributions."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo, progress, tabular_inputs


@click.command("explain")
@click.argument("model_dir")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", required=True,
              help="folder for the CAM pictures, cams.csv and localisation.json")
@click.option("--method", type=click.Choice(["gradcam", "gradcam++", "layercam", "eigencam",
                                             "scorecam"]), default="gradcam", show_default=True)
@click.option("--target-layer", default=None, help="module name (default: last conv stage)")
@click.option("--masks-from", "masks_from", default=None,
              help="tile dataset (from `slidewatch data tiles`, with --scenes) or class-folder "
                   "dataset with masks/, whose masks to score against")
@click.option("--scenes", multiple=True, help="scene folder(s) the tiles were cut from (repeat)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an earlier run in --out")
@click.option("--quiet", is_flag=True, help="no progress bar")
@tabular_inputs
def explain_cmd(model_dir, paths, out, method, target_layer, masks_from, scenes, device,
                overwrite, quiet, tabular, aux, missing, unknown):
    """Grad-CAM (and friends) maps for PATHS, overlays, and CAM-vs-mask localisation scores.
    For a segmentation model the CAM explains its predicted landslide region."""
    from slidewatch.explain.run import explain_paths, masks_for
    from slidewatch.meta import read_meta

    if scenes and not masks_from:
        raise click.BadParameter("needs --masks-from", param_hint="--scenes")
    masks = None
    if masks_from:
        masks = masks_for(masks_from, list(scenes), read_meta(model_dir).positive_class)
    rows = explain_paths(model_dir, list(paths), out, method=method, target_layer=target_layer,
                         masks=masks, device=device, overwrite=overwrite,
                         progress=progress(not quiet), tabular=tabular, aux=aux,
                         missing=missing, unknown=unknown)
    layer = rows[0]["target_layer"] or "none"
    echo(f"{len(rows)} images explained ({method}, layer {layer}) -> {out}")
