"""Errors that slidewatch raises on purpose.

Every message is one line that names the file or option at fault and says what is wrong
(and, where it helps, what to do). The command line turns these into ``error: <message>``
and a non-zero exit; the library never prints or exits.
"""

from __future__ import annotations


class SlidewatchError(Exception):
    """Base class of the errors that users can act on."""

    exit_code = 2


class ConfigError(SlidewatchError):
    """A bad option, config key, value or combination of values."""


class DataError(SlidewatchError):
    """Missing, unreadable or inconsistent input data."""


class ModelError(SlidewatchError):
    """An unknown architecture or a model that cannot be built."""


class WeightsError(ModelError):
    """Weights that cannot be found, are unsafe, or do not fit the architecture."""
