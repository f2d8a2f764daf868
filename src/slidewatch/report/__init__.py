"""The self-contained HTML report (``html``) built from the files ``evaluate`` and ``explain``
wrote, with the multi-modal sections (``multimodal``: size report, attributions).

May import: leaves, config and data (it reads outputs, never runs a model).
"""
