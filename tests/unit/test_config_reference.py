"""docs/configuration.md's settings tables are generated from the configuration model; a setting added
or changed without regenerating them (``.venv/bin/python docs/gen_config.py``) fails here."""

from __future__ import annotations

import runpy
from pathlib import Path

from perdure.config.keys import FIELDS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_committed_settings_tables_are_current() -> None:
    generator = runpy.run_path(str(DOCS / "gen_config.py"))
    current = (DOCS / "configuration.md").read_text()
    assert generator["updated"](current) == current, (
        "docs/configuration.md is stale: run .venv/bin/python docs/gen_config.py"
    )
    for key in FIELDS:
        assert f"| `{key}` |" in current, key
    assert "| `node.ttl` | duration | `5m0s` | at least 1s and at most 168h0m0s |" in current
