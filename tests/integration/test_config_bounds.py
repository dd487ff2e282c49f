"""Configuration bounds and a housekeeping that keeps going (issue 18 item 5), on both databases.

* ``PUT /api/v1/configKV`` with a value outside its key's bounds is 422 / errorCode 1003 naming the key,
  and nothing is applied (the node.ttl that used to stop every sweep among them);
* a value stored out of today's bounds (by an older version) does not stop a server: it starts, uses the
  nearest bound and logs a warning naming the key;
* one sweep step that fails is logged and counted in ``perdure_sweep_failures_total{step=...}``, and the
  steps after it still run.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from perdure.api.app import create_app, sweep_once
from perdure.api.context import ServerContext
from perdure.config.documents import to_document
from perdure.config.model import DEFAULTS
from perdure.settings import Settings
from perdure.store import migrate
from perdure.store.configs import replace_config
from perdure.store.database import Database

KV = "/api/v1/configKV"


@pytest.fixture
def quiet_settings(tmp_path: Path, db_url: str) -> Settings:
    """A server whose own sweep does not run during the test: the test runs it."""
    return Settings(data_dir=tmp_path / "data", db_url=db_url, sweep_interval_s=3600)


@pytest.fixture
def quiet(quiet_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(quiet_settings)) as test_client:
        yield test_client


def refused(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["statusCode"], body["errorCode"]) == (422, 1003), body
    fields: dict[str, str] = body["fields"]
    return fields


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("node.ttl", "99999999999999999999999"),
        ("node.ttl", "8d"),
        ("node.ttl", "100ms"),
        ("node.heartbeat", "90m"),
        ("perdure.maxWorkFailure", "0"),
        ("perdure.maxClientFailure", "100000"),
        ("perdure.maxUploadBytes", "99999999999999999999"),
        ("perdure.sweepInterval", "0.001"),
        ("job.diskSizeGB", "1000000"),
        ("log.maxSizeMB", "99999999"),
    ],
)
def test_out_of_range_values_are_422_naming_the_key(quiet: TestClient, key: str, value: str) -> None:
    before = quiet.get("/api/v1/config").json()
    fields = refused(quiet.put(KV, json={"kvMap": {key: value}}))
    assert list(fields) == [key]
    assert "range" in fields[key]
    assert quiet.get("/api/v1/config").json() == before


def test_the_bounds_are_accepted_and_the_sweep_runs_with_them(quiet: TestClient) -> None:
    response = quiet.put(KV, json={"kvMap": {"node.ttl": "7d", "perdure.maxWorkFailure": "1000"}})
    assert response.status_code == 200, response.text
    assert response.json()["node"]["ttl"] == "168h0m0s"
    context: ServerContext = quiet.app.state.ctx  # type: ignore[attr-defined]
    before = failure_counts(quiet)
    sweep_once(context)
    assert failure_counts(quiet) == before


def test_a_value_stored_out_of_range_is_clamped_at_start_with_a_warning(
    quiet_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(quiet_settings.database_url)
    try:
        migrate.upgrade(db)
        document = to_document(DEFAULTS, mask=False)
        document["node"]["ttl"] = "2562047h"  # accepted before bounds existed; overflowed the sweep
        document["perdure"]["maxWorkFailure"] = 0
        replace_config(db, document)
    finally:
        db.dispose()
    logs = caplog.at_level(logging.WARNING, logger="perdure.config")
    with logs, TestClient(create_app(quiet_settings)) as client:
        shown = client.get("/api/v1/config").json()
        assert shown["node"]["ttl"] == "168h0m0s"
        assert shown["perdure"]["maxWorkFailure"] == 1
        before = failure_counts(client)
        sweep_once(client.app.state.ctx)  # type: ignore[attr-defined]
        assert failure_counts(client) == before
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("node.ttl" in w and "2562047h" in w for w in warnings), warnings
    assert any("perdure.maxWorkFailure" in w for w in warnings), warnings


def failure_counts(client: TestClient) -> dict[str, float]:
    """``perdure_sweep_failures_total`` by step, from ``/metrics`` as Prometheus reads it."""
    text = client.get("/metrics").text
    pattern = r'^perdure_sweep_failures_total\{step="([^"]+)"\} (\S+)$'
    return {step: float(value) for step, value in re.findall(pattern, text, flags=re.MULTILINE)}


def test_a_failing_sweep_step_is_counted_and_the_others_still_run(
    quiet: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    context: ServerContext = quiet.app.state.ctx  # type: ignore[attr-defined]
    ran: list[str] = []

    def broken() -> int:
        raise OverflowError("bigint out of range")

    def spy(name: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            ran.append(name)
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(context.clients, "requeue_lost", broken)
    for name in ("promote_due", "advance_finished", "reap_expired"):
        monkeypatch.setattr(context.jobs, name, spy(name, getattr(context.jobs, name)))
    monkeypatch.setattr(
        context.checkpoints, "job_ids", spy("collect_checkpoints", context.checkpoints.job_ids)
    )
    before = failure_counts(quiet)

    with caplog.at_level(logging.ERROR, logger="perdure.server"):
        sweep_once(context)
        sweep_once(context)

    assert ran == ["promote_due", "advance_finished", "reap_expired", "collect_checkpoints"] * 2
    # counted under the failing step only
    assert failure_counts(quiet) == {**before, "requeue_lost": before.get("requeue_lost", 0.0) + 2}
    errors = [r for r in caplog.records if "requeue_lost" in r.getMessage()]
    assert len(errors) == 2 and all(r.exc_info for r in errors)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--set", "node.ttl=99999999999999999999999"], {}, id="--set"),
        pytest.param([], {"PERDURE_NODE_TTL_S": "8d"}, id="PERDURE_NODE_TTL_S"),
        pytest.param([], {"PERDURE_CFG_node__ttl": "0.5s"}, id="PERDURE_CFG_"),
    ],
)
def test_a_server_given_an_out_of_range_value_refuses_to_start_naming_the_key(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    command = [sys.executable, "-m", "perdure", "server", "--data-dir", str(tmp_path / "data"), *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")}
    result = subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "node.ttl" in output and "Traceback" not in output, output
