"""Leases: the refusal every store gives a client that does not hold the workunit it speaks of.

Its own module so that the stores that fence on a lease (work, spot) share it without importing
each other.
"""

from __future__ import annotations

from perdure.errors import PerdureError


class LeaseLost(PerdureError):
    """The reporting client does not hold this workunit (any more)."""

    status = 409


__all__ = ["LeaseLost"]
