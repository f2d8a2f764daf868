"""Running a trained model: ``forward`` (the one forward pass: normalise, autocast, logits or
probabilities, plain and multi-modal batches), ``predict`` (probabilities and labels for files)
and ``ensemble`` (several model folders whose probabilities are averaged; the one model loader,
which also opens ONNX files and runs folders on ONNX Runtime through ``export``).

May import: leaves, config, data, models and export.
"""
