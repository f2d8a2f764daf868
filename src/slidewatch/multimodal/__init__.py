"""Multi-modal models end to end: tabular inputs, terrain from a DEM and the size task, joined
to the image pipeline (train, evaluate, predict, explain, report).

- :mod:`.inputs`: what a model takes besides the image, rebuilt from its metadata
  (:class:`~.inputs.ModelInputs`): CSV rows joined to images, terrain channels or features,
  size labels, the datasets that carry them.
- :mod:`.training`: the training side (encoder fitted on the training split only, the
  FusionModel around the backbone, losses and size metrics for the training loop).
- :mod:`.evaluation`, :mod:`.explaining`, :mod:`.reporting`: the size report, tabular
  attributions next to Grad-CAM, and their HTML.

The building blocks live in :mod:`slidewatch.tabular`, :mod:`slidewatch.terrain`,
:mod:`slidewatch.sizes` and :mod:`slidewatch.models.fusion`.
"""
