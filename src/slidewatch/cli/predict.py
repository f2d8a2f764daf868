"""`slidewatch predict`: probabilities and labels for images."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo, ensemble_option, progress, runtime_option, tabular_inputs


@click.command("predict")
@click.argument("model_dir", metavar="MODEL")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", required=True, help="CSV to write (path, probability, label)")
@click.option("--threshold", type=float, default=None, help="override the model's threshold")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--tta", is_flag=True,
              help="test-time augmentation: average over flips and 90-degree rotations")
@ensemble_option
@runtime_option
@click.option("--quiet", is_flag=True, help="no progress bar")
@tabular_inputs
def predict_cmd(model_dir, paths, out, threshold, batch_size, device, tta, ensemble, runtime,
                quiet, tabular, aux, missing, unknown):
    """Landslide probability for every image in PATHS (files or folders). MODEL: a model
    folder, or an .onnx file from `slidewatch export`."""
    from slidewatch.inference.predict import collect_images, predict_paths, write_predictions
    from slidewatch.io_utils import check_output_file
    from slidewatch.meta import META_FILE

    check_output_file(out, "a CSV file name", (".csv",), marker=META_FILE,
                      inputs=[*collect_images(list(paths)), tabular, aux])
    preds = predict_paths(model_dir, list(paths), threshold=threshold, batch_size=batch_size,
                          device=device, progress=progress(not quiet), tabular=tabular,
                          aux=aux, missing=missing, unknown=unknown, tta=tta,
                          ensemble=list(ensemble), runtime=runtime)
    write_predictions(out, preds)
    positives = sum(p.positive for p in preds)
    echo(f"{len(preds)} images, {positives} predicted landslide -> {out}")
