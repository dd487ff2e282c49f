"""Perdure: batch workflows that outlive their machines."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("perdure")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
