"""A report's files reach the store the same whichever parser reads them, and a later report's logs
replace an earlier attempt's (issue 22: small bodies are parsed in memory, logs written in one
statement)."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from perdure.api import reportparts
from tests.integration.drive import checkout, register, report, submit
from tests.jobs import script, task


def log(client: TestClient, wu_id: str, kind: str) -> str:
    response = client.get(f"/work/{wu_id}?report={kind}")
    assert response.status_code == 200, response.text
    text: str = response.json()["data"]
    return text


def test_small_large_and_unusual_report_bodies_store_the_same_logs(client: TestClient) -> None:
    register(client, "c1")
    submit(client, script(task("a", totalwork=3)))
    big = b"x" * (reportparts.MAX_BYTES + 10)  # streamed by Starlette's parser
    bodies = [
        {"stdout": ("stdout.txt", b"out \xc3\xa9\x00", "text/plain"), "notes": (None, "a note")},
        {"stdout": ("stdout.txt", big, "text/plain"), "notes": (None, "a note")},
    ]
    for files in bodies:
        wu = checkout(client, "c1")
        assert wu is not None
        report(client, wu["id"], "c1", files=files)
        assert log(client, wu["id"], "stdout") == files["stdout"][1].decode().replace("\x00", "\ufffd")
        assert log(client, wu["id"], "worknotes") == "a note"

    # A part header the in-memory parser leaves to Starlette's: read all the same.
    wu = checkout(client, "c1")
    assert wu is not None
    request = httpx.Request("PUT", "http://x/", files={"stderr": ("e", b"err", "text/plain")})
    raw = request.read().replace(b"Content-Type: text/plain", b"Content-Transfer-Encoding: binary")
    response = client.put(
        f"/work/{wu['id']}?status=done&client=c1&report",
        content=raw,
        headers={"Content-Type": request.headers["content-type"]},
    )
    assert response.status_code == 200, response.text
    assert log(client, wu["id"], "stderr") == "err"


def test_a_later_attempts_logs_replace_the_earlier_attempts(client: TestClient) -> None:
    register(client, "c1")
    register(client, "c2")
    submit(client, script(task("a")))
    wu = checkout(client, "c1")
    assert wu is not None
    report(client, wu["id"], "c1", "fail", files={"stderr": ("e", b"first try"), "stdout": ("o", b"1")})
    assert log(client, wu["id"], "stderr") == "first try"
    again = checkout(client, "c2")
    assert again is not None and again["id"] == wu["id"]
    report(client, wu["id"], "c2", files={"stderr": ("e", b"second try")})
    assert log(client, wu["id"], "stderr") == "second try"
    assert log(client, wu["id"], "stdout") == "1"  # not sent again: the earlier one is kept, as before
