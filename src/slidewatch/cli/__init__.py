"""The command line, on top of everything: one module per command group over one library call
each; shared helpers in ``common``; ``main`` builds the group and turns our errors into one line
and a non-zero exit. Nothing imports this package.

May import: everything below it (experiments, scan, report, explain, training, evaluation,
inference, data, models, config and the leaf modules).
"""
