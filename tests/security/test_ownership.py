"""Issue 17: a job's owner comes from the verified token; ``info.user`` is only a label (both databases).

Alice submits a job claiming ``info.user: bob``: it is shown with ``owner: alice`` apart from the
label, Bob does not see it, and the owner filter finds it under Alice only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.integration.test_security import Issuer, awe_error, bearer, data_of, enable
from tests.jobs import script, task, upload


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


def ids(reply: httpx.Response) -> set[str]:
    return {job["id"] for job in data_of(reply)}


def test_info_user_cannot_claim_someone_elses_job(client: TestClient, issuer: Issuer) -> None:
    enable(client, issuer, issuer.token("root", ("admin",)))
    alice, bob = bearer(issuer.token("alice", ("users",))), bearer(issuer.token("bob", ("users",)))
    admin = bearer(issuer.token("root", ("admin",)))
    document = json.dumps(script(task("0"), user="bob"))
    spoof = data_of(client.post("/job", files=upload(document), headers=alice))["id"]
    bobs = data_of(client.post("/job", files=upload(json.dumps(script(task("0")))), headers=bob))["id"]

    job = data_of(client.get(f"/job/{spoof}", headers=alice))
    assert (job["owner"], job["info"]["user"]) == ("alice", "bob")
    awe_error(client.get(f"/job/{spoof}", headers=bob), 404)  # not Bob's, whatever it says
    assert spoof not in ids(client.get("/job", params={"limit": 100}, headers=bob))

    by_owner = {"query": "", "owner": "alice", "limit": "100"}
    assert ids(client.get("/job", params=by_owner, headers=admin)) == {spoof}
    assert ids(client.get("/job", params={**by_owner, "owner": "bob"}, headers=admin)) == {bobs}
    # A user's owner filter cannot widen what they see.
    assert ids(client.get("/job", params={**by_owner, "owner": "bob"}, headers=alice)) == set()
