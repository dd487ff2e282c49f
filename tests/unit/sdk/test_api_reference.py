"""docs/api.md is generated from the server's OpenAPI schema; a route added or changed without
regenerating it (``.venv/bin/python docs/gen_api.py``) fails here."""

from __future__ import annotations

import runpy
from pathlib import Path

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_the_committed_api_reference_is_current() -> None:
    generator = runpy.run_path(str(DOCS / "gen_api.py"))
    expected = generator["render"](generator["schema"]())
    assert (DOCS / "api.md").read_text() == expected, (
        "docs/api.md is stale: run .venv/bin/python docs/gen_api.py"
    )
    for route in ("| `POST` | `/job` |", "| `GET` | `/api/v1/node` |", "| `PUT` | `/api/v1/configKV` |"):
        assert route in expected
