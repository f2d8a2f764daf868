"""Errors the server answers as JSON ``{"error": message}`` (see :mod:`slidewatch.serve.app`)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as ``{"error": message, **extra}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.extra = status, extra
