"""Portable models: a model folder as one ONNX file with its model card inside, and that file
run by ONNX Runtime. ``card`` (the card in the ONNX ``metadata_props``: the whole
``slidewatch.json`` plus flat keys; reading a file back with one-line errors), ``onnx_export``
(the graph: unit-scale pixels in, probabilities out, the model's normalisation and temperature
inside; int8 quantisation; :func:`~slidewatch.export.onnx_export.export_model`), ``runtime``
(:class:`~slidewatch.export.runtime.OnnxModel`, a torch module over an ONNX Runtime session that
plugs into the usual forward pass, and the loaders of ``.onnx`` files and of ``--runtime
onnx``). Needs the ``onnx`` extra (``pip install 'slidewatch[onnx]'``), imported lazily.

Sits below ``inference`` (whose model loader opens ``.onnx`` files and exports folders in
memory for ``--runtime onnx``) and above ``data`` and ``models``.

May import: leaves, config, data and models.
"""
