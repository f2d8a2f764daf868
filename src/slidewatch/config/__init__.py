"""Run configuration: dataclasses for every setting of a training run (``train``) and its
multi-modal inputs (``multimodal``), YAML loading with unknown keys refused, CLI flags over YAML.

May import: the leaf modules (``errors``, ``io_utils``, ``meta`` for its size limits,
``runtime`` for the device names) only.
"""
