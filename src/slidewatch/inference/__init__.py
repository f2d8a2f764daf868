"""Running a trained model: ``forward`` (the one forward pass: normalise, autocast, logits or
probabilities, plain and multi-modal batches) and ``predict`` (probabilities and labels for files).

May import: leaves, config, data and models.
"""
