"""Perdure: batch workflows that outlive their machines.

``from perdure import Client, Workflow`` is the Python SDK (``perdure.sdk``), imported on first use so
the server and the worker do not pay for it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("perdure")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from perdure.sdk import ApiError, Client, Job, NotFoundError, PerdureError, Task, Workflow

_SDK_NAMES = frozenset({"ApiError", "Client", "Job", "NotFoundError", "PerdureError", "Task", "Workflow"})


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from perdure import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'perdure' has no attribute {name!r}")


__all__ = ["ApiError", "Client", "Job", "NotFoundError", "PerdureError", "Task", "Workflow", "__version__"]
