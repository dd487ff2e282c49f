"""What the SDK does with the server's answers: both APIs' errors become one exception family, and only
requests that cannot do anything twice are retried (against a scripted server, no network)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from perdure.sdk import ApiError, AuthError, BadRequestError, Client, NotFoundError, ServerUnavailable
from perdure.sdk.connection import Connection, save_login
from perdure.sdk.errors import error_for
from tests.scripted import scripted_client


def scripted(answers: list[httpx.Response | Exception]) -> tuple[Client, list[httpx.Request]]:
    """A client with the token ``tok`` whose server answers from ``answers`` in order."""
    return scripted_client(answers, token="tok")


def envelope(data: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"status": status, "data": data, "error": None})


def test_both_error_shapes_become_one_family() -> None:
    awe = error_for(404, {"status": 404, "data": None, "error": ["Not Found"]}, "")
    assert isinstance(awe, NotFoundError) and str(awe) == "404: Not Found"
    mgmt = error_for(
        422,
        {"statusCode": 422, "errorCode": 1003, "message": "Invalid argument", "fields": {"node.ttl": "bad"}},
        "",
    )
    assert isinstance(mgmt, BadRequestError) and (mgmt.error_code, mgmt.fields) == (1003, {"node.ttl": "bad"})
    assert str(mgmt) == "422: Invalid argument (node.ttl: bad)"
    assert isinstance(error_for(401, None, "no"), AuthError) and isinstance(error_for(403, {}, ""), AuthError)
    plain = error_for(500, None, "boom")
    assert type(plain) is ApiError and str(plain) == "500: boom"
    assert not plain.retryable  # an answered error is answered the same way again: never retried


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.Response(503, text="restarting"), httpx.Response(502)],
)
def test_idempotent_calls_are_retried_through_outages(failure: httpx.Response | Exception) -> None:
    client, seen = scripted([failure, failure, envelope({"jobs": {}, "clients": {"total": 2}})])
    assert client.queue().clients == {"total": 2}
    assert len(seen) == 3 and all(r.headers["Authorization"] == "bearer tok" for r in seen)


def test_retries_end_with_server_unavailable() -> None:
    client, seen = scripted([httpx.ConnectError("refused")] * 4)
    with pytest.raises(
        ServerUnavailable, match=re.escape("cannot reach http://perdure.test: refused")
    ) as caught:
        client.job("j")
    assert caught.value.retryable and len(seen) == 4  # the first try and three retries


def test_a_submit_is_never_repeated() -> None:
    client, seen = scripted([httpx.Response(503)])
    with pytest.raises(ServerUnavailable):
        client.submit({"tasks": [{"taskid": "t", "cmd": {"name": "true"}}]})
    assert len(seen) == 1 and seen[0].method == "POST"


def test_refusals_are_not_retried() -> None:
    answer = httpx.Response(400, json={"status": 400, "data": None, "error": ["job is not suspended"]})
    client, seen = scripted([answer])
    with pytest.raises(BadRequestError, match="400: job is not suspended"):
        client.resume_job("j")
    assert len(seen) == 1


def test_flags_and_filters_go_out_as_awe_reads_them() -> None:
    page = httpx.Response(
        200, json={"status": 200, "data": [], "error": None, "limit": 5, "offset": 0, "total_count": 0}
    )
    client, seen = scripted([page])
    client.jobs(suspended=True, project="p", states=["completed", "suspend"], limit=5)
    params = seen[0].url.params
    assert "suspend" in params and params["query"] == "" and params["info.project"] == "p"
    assert params["state"] == "completed,suspend" and params["limit"] == "5"


def test_checkout_with_nothing_to_do_is_none() -> None:
    nothing = httpx.Response(400, json={"status": 400, "data": None, "error": ["No eligible workunit found"]})
    client, seen = scripted(
        [nothing, httpx.Response(400, json={"status": 400, "error": ["missing client id"]})]
    )
    assert client.worker.checkout("c1", wait_s=1.5, available=10) is None
    assert seen[0].url.params["wait"] == "1.5" and seen[0].url.params["available"] == "10"
    with pytest.raises(BadRequestError, match="missing client id"):
        client.worker.checkout("c1")


def test_a_report_is_retried_with_its_files_sent_whole_each_time(tmp_path: Path) -> None:
    stdout = tmp_path / "stdout"
    stdout.write_text("out\n")
    client, seen = scripted([httpx.Response(503), envelope("ok")])
    client.worker.report("w1", "c1", "done", 5, {"stdout": stdout, "stderr": b"err\n"})
    assert len(seen) == 2
    for request in seen:
        body = request.read()
        assert b"out\n" in body and b"err\n" in body
        assert request.url.params["status"] == "done" and request.url.params["computetime"] == "5"


def test_a_download_that_breaks_starts_over(tmp_path: Path) -> None:
    client, seen = scripted([httpx.Response(503), httpx.Response(200, content=b"whole file\n")])
    target = tmp_path / "f"
    assert client.download_output("j", "t", "a b.txt", target) == len(b"whole file\n")
    assert target.read_bytes() == b"whole file\n"
    assert seen[0].url.raw_path == b"/job/j/output/t/a%20b.txt"


def test_connection_precedence_flag_env_login_file(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert Connection.resolve(env=env) == Connection("http://127.0.0.1:8001", "", "")
    (tmp_path / "perdure").mkdir()
    (tmp_path / "perdure" / "config.toml").write_text(
        '[client]\nserver = "http://toml:1"\ntoken = "t-toml"\n'
    )
    assert Connection.resolve(env=env) == Connection("http://toml:1", "t-toml", "")
    save_login("http://login:2/", "t-login", "/ca.pem", env=env)
    assert json.loads((tmp_path / "perdure" / "login.json").read_text())["server"] == "http://login:2/"
    assert Connection.resolve(env=env) == Connection("http://login:2", "t-login", "/ca.pem")
    env.update(PERDURE_SERVER="http://env:3", PERDURE_TOKEN="t-env")
    assert Connection.resolve(env=env) == Connection("http://env:3", "t-env", "/ca.pem")
    assert Connection.resolve("http://flag:4", "t-flag", "/mine.pem", env=env) == Connection(
        "http://flag:4", "t-flag", "/mine.pem"
    )
    (tmp_path / "perdure" / "login.json").write_text("not json")
    env.pop("PERDURE_SERVER")
    assert Connection.resolve(env=env).server == "http://toml:1"  # a broken login file counts as absent
