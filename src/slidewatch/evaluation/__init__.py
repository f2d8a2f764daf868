"""Scoring against labels: ``metrics`` (pure functions: confusion, F1, ROC/PR, bootstrap CIs),
``evaluate`` (a model on labelled folders -> metrics.json, predictions.csv), ``sizes`` (the size
head's report), ``plots`` (confusion matrices, ROC and PR curves).

May import: leaves, config, data, models, inference.
"""
