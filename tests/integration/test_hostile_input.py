"""Hostile input, on both databases: every case gets the 4xx it deserves, in its API's error shape, and
no request gets a 500 (issue 18). The table is the one in docs/operations.md."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from perdure.api.app import create_app
from perdure.settings import Settings
from tests.jobs import script, task, upload
from tests.support import free_port, postgres_database, wait_for

BIG = 10**23  # beyond 64 bits
INT32_PAST = 2**31  # beyond PostgreSQL's integer, and so beyond the bound on both databases


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def module_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """One database per backend for the whole module: the cases only read, or are refused."""
    tmp = tmp_path_factory.mktemp("hostile")
    if request.param == "sqlite":
        yield Settings(data_dir=tmp / "data", db_url=f"sqlite:///{tmp / 'perdure.db'}", sweep_interval_s=0.2)
    else:
        with postgres_database() as url:
            yield Settings(data_dir=tmp / "data", db_url=url, sweep_interval_s=0.2)


@pytest.fixture(scope="module")
def hostile(module_settings: Settings) -> Iterator[TestClient]:
    """The app in-process, answering a 500 as a 500 instead of raising it in the test."""
    with TestClient(create_app(module_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def job_id(hostile: TestClient) -> str:
    reply = hostile.post("/job", files=upload(script(task("0"))))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["id"])


def _with(path: str, value: Any) -> dict[str, Any]:
    """A valid one-task script with ``info.x``, ``task.x`` or ``output.x`` set to ``value``."""
    document = script(task("0", outputs=[{"filename": "out.txt"}]))
    scope, key = path.split(".", 1)
    target = {
        "info": document["info"],
        "task": document["tasks"][0],
        "output": document["tasks"][0]["outputs"][0],
    }[scope]
    target[key] = value
    return document


#: (id, job script, where the message points, what it says). Every one is a 400 in AWE's envelope.
BAD_SCRIPTS = [
    ("priority-past-int32", _with("info.priority", INT32_PAST), "info.priority", "2147483647"),
    ("priority-past-int64", _with("info.priority", BIG), "info.priority", "2147483647"),
    ("name-256", _with("info.name", "n" * 256), "info.name", "at most 255 characters"),
    ("project-256", _with("info.project", "p" * 256), "info.project", "at most 255 characters"),
    ("nul-in-name", _with("info.name", "a\x00b"), "info.name", "NUL"),
    ("nul-in-userattr", _with("info.userattr", {"k": "\x00"}), "info.userattr.k", "NUL"),
    ("esc-in-name", _with("info.name", "\x1b[2J"), "info.name", "control characters"),
    ("totalwork-negative", _with("task.totalwork", -5), "tasks[0].totalwork", "at least 1"),
    ("totalwork-past-max", _with("task.totalwork", BIG), "tasks[0].totalwork", "100000"),
    ("maxworksize-past-int32", _with("task.maxworksize", INT32_PAST), "tasks[0].maxworksize", "2147483647"),
    ("clientgroups-dotdot", _with("info.clientgroups", "../etc"), "info.clientgroups", "'..'"),
    ("clientgroups-slash", _with("task.clientgroups", "a/b"), "tasks[0].clientgroups", "'/'"),
    ("output-newline", _with("output.filename", "a\nb"), "tasks[0].outputs[0].filename", "control"),
    ("output-esc", _with("output.filename", "a\x1bb"), "tasks[0].outputs[0].filename", "control"),
    ("typo-dependson", _with("task.dependson", []), "tasks[0].dependson", "did you mean 'dependsOn'?"),
    ("typo-ouputs", _with("task.ouputs", []), "tasks[0].ouputs", "did you mean 'outputs'?"),
    ("typo-totalWork", _with("task.totalWork", 4), "tasks[0].totalWork", "did you mean 'totalwork'?"),
    ("typo-clientgroup", _with("task.clientgroup", "g"), "tasks[0].clientgroup", "did you mean"),
    ("skip-1", _with("task.skip", 1), "tasks[0].skip", "Perdure does not do it"),
]


@pytest.mark.parametrize(
    ("document", "where", "says"), [case[1:] for case in BAD_SCRIPTS], ids=[case[0] for case in BAD_SCRIPTS]
)
def test_a_bad_job_script_gets_400_naming_the_field(
    hostile: TestClient, document: dict[str, Any], where: str, says: str
) -> None:
    before = hostile.get("/job").json()["total_count"]
    reply = hostile.post("/job", files=upload(json.dumps(document)))
    assert reply.status_code == 400, reply.text
    (message,) = reply.json()["error"]
    assert where in message
    assert says in message
    assert hostile.get("/job").json()["total_count"] == before  # nothing was stored


#: (id, method, path ({job} is a queued job's id), status, what the message says).
BAD_REQUESTS = [
    ("query-priority-int32", "GET", f"/job?query&info.priority={INT32_PAST}", 400, "info.priority must be"),
    ("query-priority-int64", "GET", f"/job?query&info.priority={BIG}", 400, "info.priority must be"),
    ("query-remaintasks", "GET", f"/job?query&remaintasks={INT32_PAST}", 400, "remaintasks must be"),
    ("query-2000-fields", "GET", "/job?query&" + "&".join(f"info.f{i}=1" for i in range(2000)), 400, "50"),
    ("query-nul", "GET", "/job?query&info.name=%00", 400, "NUL"),
    ("limit-past-int64", "GET", f"/job?limit={BIG}", 400, "limit must be"),
    ("offset-past-int64", "GET", f"/job?offset={BIG}", 400, "offset must be"),
    ("work-limit-past-int64", "GET", f"/work?query&limit={BIG}", 400, "limit must be"),
    ("checkout-available", "GET", f"/work?client=nobody&available=-{BIG}", 400, "available"),
    ("set-priority-int32", "PUT", f"/job/{{job}}?priority={INT32_PAST}", 400, "between 1 and 2147483647"),
    ("set-priority-int64", "PUT", f"/job/{{job}}?priority={BIG}", 400, "between 1 and 2147483647"),
    ("set-clientgroup-dotdot", "PUT", "/job/{job}?clientgroup=../x", 400, "'..'"),
    ("set-clientgroup-long", "PUT", "/job/{job}?clientgroup=" + "g" * 2000, 400, "at most 1024"),
    ("set-pipeline-long", "PUT", "/job/{job}?pipeline=" + "p" * 300, 400, "at most 255"),
    ("set-expiration-huge", "PUT", f"/job/{{job}}?expiration={BIG}D", 400, "at most 36600D"),
    ("cgroup-dotdot", "POST", "/cgroup/a..b", 400, "'..'"),
    ("job-id-long", "GET", "/job/" + "j" * 300, 404, "Not Found"),
    ("wrong-method-awe", "PATCH", "/job", 405, "Method Not Allowed"),
    ("wrong-method-queue", "POST", "/queue", 405, "allowed: GET"),
]


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[c[0] for c in BAD_REQUESTS],
)
def test_a_bad_request_gets_its_4xx_in_the_awe_envelope(
    hostile: TestClient, job_id: str, method: str, path: str, status: int, says: str
) -> None:
    reply = hostile.request(method, path.replace("{job}", job_id))
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == status
    assert says in body["error"][0]


def test_a_wrong_method_gets_405_with_every_method_the_path_serves(hostile: TestClient) -> None:
    reply = hostile.request("PATCH", "/job")
    assert reply.status_code == 405
    assert reply.headers["allow"] == "GET, POST, PUT, DELETE"
    management = hostile.request("DELETE", "/api/v1/config")
    assert management.status_code == 405
    assert management.headers["allow"] == "GET"
    assert management.json()["statusCode"] == 405
    assert management.json()["errorCode"] == 1005


def test_a_job_bounded_at_the_limits_is_accepted_on_both_databases(hostile: TestClient) -> None:
    document = _with("info.priority", 2**31 - 1)
    document["info"]["name"] = "n" * 255
    document["info"]["project"] = "p" * 255
    document["tasks"][0]["maxworksize"] = 2**31 - 1
    reply = hostile.post("/job", files=upload(document))
    assert reply.status_code == 200, reply.text
    job = reply.json()["data"]
    found = hostile.get(f"/job?query&info.priority={2**31 - 1}").json()
    assert job["id"] in [j["id"] for j in found["data"]]
    assert hostile.put(f"/job/{job['id']}?priority={2**31 - 1}").status_code == 200


# ---- HTTP hygiene on a real server: 500s close the connection, a client that leaves is a 499 -----


def _app_with_a_failing_route(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/test-only/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    return app


@pytest.fixture
def live(module_settings: Settings) -> Iterator[str]:
    """The app (plus a route that fails) served by uvicorn on loopback, in this process."""
    port = free_port()
    app = _app_with_a_failing_route(module_settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the server to start")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _exchange(address: str, request: bytes, *, close_after_send: bool = False) -> bytes:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(request)
        if close_after_send:
            return b""
        received = b""
        while chunk := sock.recv(65536):  # returns b"" only once the server closed the connection
            received += chunk
        return received


def test_a_500_says_connection_close_and_the_server_closes_it(live: str) -> None:
    request = b"GET /test-only/boom HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    received = _exchange(live, request)  # would time out if the server kept the connection open
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 500")
    assert b"connection: close" in head


def test_a_client_that_leaves_mid_upload_is_logged_as_499_at_info_without_a_traceback(
    live: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    boundary = b"b0undary"
    head = (
        b"POST /job HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    disposition = b'Content-Disposition: form-data; name="upload"; filename="j.json"'
    part = b"--" + boundary + b"\r\n" + disposition + b"\r\n\r\n" + b'{"ta'
    _exchange(live, head + part, close_after_send=True)
    access = wait_for(
        lambda: [r for r in caplog.records if r.name == "perdure.access" and '"POST /job"' in r.getMessage()],
        20,
        "the access-log line of the abandoned upload",
        lambda: caplog.text,
    )
    assert " 499 " in access[0].getMessage()
    went_away = [r for r in caplog.records if "client went away" in r.getMessage()]
    assert went_away and went_away[0].levelname == "INFO"
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info], caplog.text
