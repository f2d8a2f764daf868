"""Training: ``loop`` (the epoch loop, read top to bottom), ``setup`` (data, model and optimiser
from a config; resume state), ``multimodal`` (tabular/terrain/size inputs and the multitask loss),
``distributed`` (torchrun: sharded sampling, gathered validation, rank-0 writes), ``curves``.

May import: leaves, config, data, models, inference, evaluation (metrics). Never explain, report,
scan, experiments or cli.
"""
