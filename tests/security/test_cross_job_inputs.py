"""Issue 17: a job may not name another user's job data as an input (both databases, security on).

A worker fetches server-relative inputs with its client-group token, which reads every job's outputs;
so the server refuses, at submit, an input or predata naming a job the submitter may not read, and any
server path that is not a job output. The submitter's own jobs, and for an admin every job, stay
allowed. (``file://`` inputs are refused by the worker: test_worker_credentials.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.integration.test_security import Issuer, awe_error, bearer, data_of, enable, submit
from tests.jobs import script, task, upload


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


def reading(url: str, *, predata: bool = False) -> dict[str, object]:
    io = [{"filename": "in.txt", "url": url}]
    return script(task("copy", name="cat", **({"predata": io} if predata else {"inputs": io})))


def post(http: TestClient, headers: dict[str, str], document: dict[str, object]) -> httpx.Response:
    return http.post("/job", files=upload(json.dumps(document)), headers=headers)


def test_inputs_naming_another_users_job_are_refused_at_submit(client: TestClient, issuer: Issuer) -> None:
    enable(client, issuer, issuer.token("root", ("admin",)))
    alice, bob = bearer(issuer.token("alice", ("users",))), bearer(issuer.token("bob", ("users",)))
    admin = bearer(issuer.token("root", ("admin",)))
    victim = submit(client, bob, "bobs-job")
    own = submit(client, alice, "alices-job")
    before = {j["id"] for j in data_of(client.get("/job", params={"limit": 100}, headers=admin))}

    refused = [
        reading(f"/job/{victim}/output/0/secret.txt"),
        reading(f"/job/{victim}/output/0/secret.txt", predata=True),
        reading("/job/no-such-job/output/0/x"),
        reading(f"/job/{own}/output/../../{victim}/output/0/secret.txt"),
        reading(f"/job/{own}/output/%2e%2e/%2e%2e/{victim}/output/0/x"),
        reading("/work/some-workunit/ckpt/chunks/abc"),
        reading("/client/c1"),
        reading(f"//evil.example/job/{victim}/output/0/x"),
    ]
    for document in refused:
        message = awe_error(post(client, alice, document), 403)
        assert "in.txt" in message, message
    after = {j["id"] for j in data_of(client.get("/job", params={"limit": 100}, headers=admin))}
    assert after == before  # none of them was stored

    # Allowed: the submitter's own job, any job for an admin, and URLs the worker fetches without its
    # token.
    for headers, document in (
        (alice, reading(f"/job/{own}/output/0/mine.txt")),
        (admin, reading(f"/job/{victim}/output/0/secret.txt")),
        (alice, reading("https://data.example.org/public.txt")),
    ):
        reply = post(client, headers, document)
        assert reply.status_code == 200, reply.text
