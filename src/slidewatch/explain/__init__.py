"""Why a model said what it said: ``cams`` (Grad-CAM family maps and overlays for plain and fused
models), ``localisation`` (how well a CAM falls on the landslide mask), ``attributions``
(integrated gradients over tabular inputs, beside the CAMs).

May import: leaves, config, data, models, inference.
"""
