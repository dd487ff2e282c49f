"""The server's rotating log writes and rotates exactly as Python's RotatingFileHandler (issue 22: it
only does less work per line)."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from perdure.logs import RotatingLog


def written(handler: logging.Handler, directory: Path) -> dict[str, str]:
    handler.setFormatter(logging.Formatter("%(message)s"))
    for n in range(60):
        handler.handle(logging.makeLogRecord({"msg": f"GET /work/{n} 200 {'é' * (n % 7)}", "levelno": 20}))
    handler.close()
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def test_lines_and_rotation_are_those_of_pythons_handler(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    expected = written(
        logging.handlers.RotatingFileHandler(theirs / "a.log", maxBytes=300, backupCount=2), theirs
    )
    assert written(RotatingLog(ours / "a.log", maxBytes=300, backupCount=2), ours) == expected
    assert set(expected) == {"a.log", "a.log.1", "a.log.2"}
