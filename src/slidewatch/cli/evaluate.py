"""`slidewatch evaluate` and `slidewatch report`: metrics on labelled data, the HTML report."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo, ensemble_option, progress, runtime_option, tabular_inputs


@click.command("evaluate")
@click.argument("model_dir", metavar="MODEL")
@click.option("--data", "data_dirs", multiple=True, required=True,
              help="labelled class-folder dataset, or for a segmentation model images with "
                   "masks (scene folders or class folders with masks/); repeat for several")
@click.option("--out", required=True, help="folder for metrics.json, predictions.csv, figures")
@click.option("--threshold", type=float, default=None, help="override the model's threshold")
@click.option("--target-recall", type=float, default=None,
              help="set (and store in the model) the threshold reaching this validation "
                   "recall (a segmentation model: its tile threshold and area; maps keep theirs)")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an earlier evaluation in --out")
@click.option("--tta", is_flag=True,
              help="test-time augmentation: average over flips and 90-degree rotations")
@ensemble_option
@runtime_option
@click.option("--quiet", is_flag=True, help="no progress bar")
@tabular_inputs
def evaluate_cmd(model_dir, data_dirs, out, threshold, target_recall, batch_size, device,
                 overwrite, tta, ensemble, runtime, quiet, tabular, aux, missing, unknown):
    """Score MODEL (a model folder, or an .onnx file from `slidewatch export`) on labelled
    data: metrics with 95% CIs, overall and per region."""
    from slidewatch.evaluation.evaluate import evaluate, format_table
    from slidewatch.evaluation.sizes import format_size, second_task

    result = evaluate(model_dir, list(data_dirs), out, threshold=threshold,
                      target_recall=target_recall, batch_size=batch_size, device=device,
                      overwrite=overwrite, progress=progress(not quiet), tabular=tabular,
                      aux=aux, missing=missing, unknown=unknown, tta=tta,
                      ensemble=list(ensemble), runtime=runtime)
    click.echo(format_table(result))
    if result.get("task") == "segment":
        from slidewatch.evaluation.evaluate import format_pixels

        click.echo(format_pixels(result))
    if found := second_task(result):
        click.echo(format_size(found[1]))
    echo(f"{result['overall']['n']} images evaluated -> {out}")


@click.command("report")
@click.argument("model_dir")
@click.option("--eval", "eval_dir", required=True, help="folder written by `slidewatch evaluate`")
@click.option("--explain", "explain_dir", default=None,
              help="folder written by `slidewatch explain` (CAM overlays, localisation)")
@click.option("--out", required=True, help="HTML file to write (self-contained, opens offline)")
@click.option("--per-gallery", default=8, show_default=True, type=int,
              help="tiles shown per gallery (TP, FP, FN, TN)")
def report_cmd(model_dir, eval_dir, explain_dir, out, per_gallery):
    """One self-contained HTML report: metrics, figures, galleries, model card."""
    from slidewatch.io_utils import check_output_file
    from slidewatch.meta import META_FILE
    from slidewatch.report.html import write_report

    check_output_file(out, "an HTML file name", (".html", ".htm"), marker=META_FILE,
                      inputs=[model_dir, eval_dir, explain_dir])
    path = write_report(model_dir, eval_dir, out, explain_dir=explain_dir,
                        per_gallery=per_gallery)
    echo(f"report -> {path}")
