"""AWE keeps client groups as one comma-separated string; matching one name inside it, in SQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_


def comma_list_contains(column: Any, item: str) -> Any:
    """SQL for "the comma-separated list in ``column`` names ``item``" (``_`` and ``%`` taken literally)."""
    escaped = item.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return or_(
        column == item,
        column.like(f"{escaped},%", escape="\\"),
        column.like(f"%,{escaped}", escape="\\"),
        column.like(f"%,{escaped},%", escape="\\"),
    )
