"""Studies built from the stages below: ``grid`` (train/test grids from a YAML file), ``search``
(Optuna over a grid's settings), ``demo`` (leave-one-region-out on the sample regions).

May import: everything but ``cli``.
"""
