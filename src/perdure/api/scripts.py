"""Placeholder router; filled in by the node inventory work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
