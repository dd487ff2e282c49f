"""Issue 17: no request can write a line of its own into the server's logs.

A path is decoded before it is logged, so ``%0a`` is a real newline: written raw, the rest of the path
would be a forged access-log record. Every field is written with its control characters escaped, on a
real server (both databases); the server log's formatter does the same for messages and tracebacks.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import httpx

from perdure.config.model import ServerLogConfig
from perdure.logs import ServerLogs
from tests.support import ServerProcess, wait_for

#: The start of a real access-log record: the time, the client address, the user, the request.
RECORD = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \S+ \S+ "')
FORGED = '2026-12-07T10:00:00+0000 10.0.0.1 admin "DELETE /job/victim" 200 0 1.0ms'


def test_a_newline_in_the_path_cannot_forge_an_access_log_line(server: ServerProcess) -> None:
    access_log = server.data_dir / "logs" / "perdure-access.log"
    marker = f"/job/end-{uuid.uuid4().hex}"
    paths = [
        "/job/x%0a" + FORGED.replace(" ", "%20").replace('"', "%22"),
        "/job/y%0d%0a" + FORGED.replace(" ", "%20").replace('"', "%22"),
        "/job/z%1b%5b31mred%e2%80%a8sep",
    ]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in [*paths, marker]:
            assert http.get(path).status_code == 404
    text = wait_for(
        lambda: access_log.exists() and marker in (t := access_log.read_text()) and t.endswith("\n") and t,
        15,
        "the requests in the access log",
    )
    lines = text.splitlines()
    # Every line is one request's record (the server's own probes included), none a forged one.
    assert all(RECORD.match(line) for line in lines), lines
    assert not any(line.startswith("2026-12-07T10:00:00") for line in lines)
    first, second, third, last = [line for line in lines if '"GET /job/' in line]
    assert '"GET /job/x\\x0a2026-12-07T10:00:00+0000 10.0.0.1 admin \\"DELETE /job/victim\\" 200' in first
    assert "/job/y\\x0d\\x0a2026" in second
    assert "/job/z\\x1b[31mred\\u2028sep" in third
    assert marker in last
    assert not any(
        ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch == "\u2028" for line in lines for ch in line
    )


def test_server_log_messages_and_tracebacks_stay_on_their_record(tmp_path: Path) -> None:
    logs = ServerLogs(tmp_path)
    logs.apply(ServerLogConfig())
    log = logging.getLogger("perdure.test-injection")
    try:
        log.warning("unknown client %s", "c1\n2026-12-07 10:00:00,000 INFO perdure.server: forged")
        try:
            raise ValueError("bad input\nERROR forged traceback line")
        except ValueError:
            log.exception("failed for %s", "w\r1")
    finally:
        logs.close()
    lines = (tmp_path / "logs" / "perdure.log").read_text().splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert len(records) == 2, lines
    assert records[0].endswith("unknown client c1\\x0a2026-12-07 10:00:00,000 INFO perdure.server: forged")
    assert records[1].endswith("failed for w\\x0d1")
    assert "    ERROR forged traceback line" in lines  # the traceback's lines are indented under it
