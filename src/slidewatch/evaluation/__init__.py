"""Scoring against labels: ``metrics`` (pure functions: confusion, F1, ROC/PR, bootstrap CIs),
``evaluate`` (a model on labelled folders -> metrics.json, predictions.csv), ``sizes`` (the size
head's report), ``plots`` (confusion matrices, ROC and PR curves); for segmentation models
``pixels`` (pixel and object scores), ``segment`` (maps and tiles of images with masks) and
``tile_rule`` (the tile rule's area and threshold from scored validation tiles);
``calibration`` (temperature scaling, reliability).

May import: leaves, config, data, models, inference.
"""
