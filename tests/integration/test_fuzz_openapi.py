"""Schema-driven fuzzing: ``schemathesis`` generates requests from the server's own OpenAPI schema and
every answer must be anything but a 500 (issue 18), on both databases. Bounded (a few examples per
operation, no deadline) so it runs in CI in well under a minute per database.

Operations that change the server's own configuration (log file paths, security, config values) are
left out: fuzzing them would point logs at random paths. Everything else, job and workunit operations
included, is fuzzed against a database that holds one queued job and one registered client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from perdure.api.app import create_app
from perdure.settings import Settings
from tests.jobs import script, task, upload
from tests.support import postgres_database

pytestmark = pytest.mark.timeout(300)

#: Operations not fuzzed: they rewrite the server's own configuration (see the module's docstring).
CONFIGURATION = ("/api/v1/configKV", "/api/v1/log/config", "/api/v1/security/cognito")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fuzzed_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with postgres_database() if request.param == "postgresql" else _nothing() as url:
        db_url = url or f"sqlite:///{tmp / 'perdure.db'}"
        app = create_app(Settings(data_dir=tmp / "data", db_url=db_url, sweep_interval_s=3600))
        with TestClient(app) as client:  # runs the lifespan; a job and a client to find
            client.post("/job", files=upload(script(task("0"))))
            profile = {"id": "c1", "group": "default", "apps": ["*"]}
            client.post("/client", files={"profile": ("p", json.dumps(profile), "application/json")})
            yield app


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


#: Per database: the fuzzing stops starting new operations after this many seconds.
TIME_BUDGET_S = 60.0
EXAMPLES = 15


def test_no_generated_request_gets_a_500(fuzzed_app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    schema = schema.exclude(path=list(CONFIGURATION), method=["PUT", "DELETE"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40  # the schema really lists the API
    failures: list[str] = []
    started = time.monotonic()
    fuzzed = 0
    for operation in operations:
        if time.monotonic() - started > TIME_BUDGET_S:
            break

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests every run: a CI failure reproduces
            database=None,
        )
        def fuzz(case: Any) -> None:
            response = case.call()
            # 501 is AWE's answer to an operation it does not implement (``PUT /job?frobnicate``).
            if response.status_code >= 500 and response.status_code != 501:
                failures.append(f"{case.method} {case.formatted_path} {case.query}: {response.text[:300]}")

        fuzz()
        fuzzed += 1
    assert fuzzed >= len(operations) // 2, f"only {fuzzed} of {len(operations)} operations in the time budget"
    assert failures == []


#: Operations anyone may call that refuse nothing: the server's greeting, how to sign in, and the list
#: of wheels the worker installer installs.
NO_ERRORS = {("get", "/"), ("get", "/api/v1/security/cognito"), ("get", "/api/v1/scripts/wheelhouse")}


def test_every_operation_declares_its_error_responses_and_hand_read_inputs(fuzzed_app: Any) -> None:
    spec = fuzzed_app.openapi()
    undeclared = [
        (method, path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if (method, path) not in NO_ERRORS and not any(str(s).startswith("4") for s in operation["responses"])
    ]
    assert undeclared == []
    operations = {(m, p): op for p, ops in spec["paths"].items() for m, op in ops.items()}

    def parameters(method: str, path: str) -> set[str]:
        return {p["name"] for p in operations[method, path].get("parameters", []) if p["in"] == "query"}

    # Routes that read their query strings and bodies by hand declare them, so fuzzing reaches them.
    assert {"client", "prune"} <= parameters("post", "/work/{work_id}/ckpt")
    assert {"offset", "length"} <= parameters("get", "/job/{job_id}/output/{taskid}/{filename}")
    assert {"download", "index", "part"} <= parameters("get", "/node/{node_id}")
    assert {"server", "group", "token"} <= parameters("get", "/api/v1/scripts/install-worker")
    assert "json" in parameters("get", "/queue")
    for method, path in (
        ("put", "/api/v1/configKV"),
        ("put", "/api/v1/log/config"),
        ("put", "/api/v1/nodes/{node_id}"),
        ("put", "/node/{node_id}"),
        ("post", "/client"),
        ("put", "/work/{work_id}/ckpt/chunks/{digest}"),
    ):
        assert "requestBody" in operations[method, path], (method, path)
