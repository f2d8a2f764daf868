"""`slidewatch export`: a model folder as one portable ONNX file with its model card inside."""

from __future__ import annotations

import click

from slidewatch.cli.common import echo


@click.command("export")
@click.argument("model_dir")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="file format")
@click.option("--out", required=True, help="file to write, e.g. model.onnx")
@click.option("--opset", type=int, default=17, show_default=True,
              help="ONNX opset (17 to 20)")
@click.option("--quantize", "quantization", type=click.Choice(["none", "dynamic", "static"]),
              default="none", show_default=True,
              help="int8: dynamic (activations quantised on the fly, no data needed) or static "
                   "(activation ranges calibrated on --calibration-data)")
@click.option("--calibration-data", default=None, metavar="DIR",
              help="images for --quantize static (searched recursively, e.g. training tiles)")
@click.option("--calibration-samples", type=int, default=64, show_default=True,
              help="images read from --calibration-data (spread evenly over the sorted list)")
def export_cmd(model_dir, fmt, out, opset, quantization, calibration_data,
               calibration_samples):
    """Export MODEL_DIR as one ONNX file: unit-scale pixels in, probabilities out (the model's
    normalisation and temperature inside), the model card in its metadata, batch size
    dynamic. `slidewatch predict/evaluate/scan model.onnx ...` run it with ONNX Runtime."""
    from slidewatch.export.onnx_export import export_model, summary
    from slidewatch.io_utils import check_output_file
    from slidewatch.meta import META_FILE

    check_output_file(out, "an .onnx file name", (".onnx",), marker=META_FILE,
                      inputs=[model_dir, calibration_data])
    result = export_model(model_dir, out, fmt=fmt, opset=opset, quantization=quantization,
                          calibration_data=calibration_data,
                          calibration_samples=calibration_samples)
    echo(summary(result, model_dir))
