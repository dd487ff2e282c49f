"""Issue 17: the reads the docs reserve for admins are refused to every other user (both databases).

With security on: the configuration, the log settings, the clients, the client groups, the worker
pools, the nodes, their files and shipped logs, and the metrics summary need an admin (403 in each
API's error shape);
a user still reads their own jobs and the queue. ``/metrics`` needs an admin, or its own scrape token
(``security.metricsToken``) which, once set, is needed even with security off, is masked in the
configuration, and is good for ``/metrics`` only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.integration.test_security import Issuer, awe_error, bearer, enable, mgmt_error, submit

ADMIN_READS_MGMT = [
    "/api/v1/config",
    "/api/v1/log/config",
    "/api/v1/node",
    "/api/v1/nodes/n1/files",
    "/nodes/n1/var/log/perdure/worker.log",
    "/api/v1/metrics/summary",
    "/api/v1/pools",
    "/api/v1/pools/spot",
]
ADMIN_READS_AWE = ["/client", "/client/c1", "/cgroup", "/cgroup/g1"]
USER_READS = ["/job", "/queue", "/"]


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


@pytest.fixture
def secured(client: TestClient, issuer: Issuer) -> TestClient:
    enable(client, issuer, issuer.token("root", ("admin",)))
    return client


def test_each_admin_only_read_is_refused_to_a_user_and_served_to_an_admin(
    secured: TestClient, issuer: Issuer
) -> None:
    user, admin = bearer(issuer.token("alice", ("users",))), bearer(issuer.token("root", ("admin",)))
    for path in ADMIN_READS_MGMT:
        body = mgmt_error(secured.get(path, headers=user), 403, 2005)
        assert "admin" in body["message"]
        assert secured.get(path, headers=admin).status_code in (200, 404), path  # n1 does not exist
    for path in ADMIN_READS_AWE:
        assert "admin" in awe_error(secured.get(path, headers=user), 403)
        assert secured.get(path, headers=admin).status_code in (200, 404), path
    for path in USER_READS:
        assert secured.get(path, headers=user).status_code == 200, path
    # A user's own job stays theirs to read.
    job_id = submit(secured, user)
    assert secured.get(f"/job/{job_id}", headers=user).status_code == 200


def test_metrics_need_an_admin_when_security_is_on(secured: TestClient, issuer: Issuer) -> None:
    user, admin = bearer(issuer.token("alice", ("users",))), bearer(issuer.token("root", ("admin",)))
    mgmt_error(secured.get("/metrics", headers=user), 403, 2005)
    assert secured.get("/metrics").status_code == 401
    reply = secured.get("/metrics", headers=admin)
    assert reply.status_code == 200 and "perdure_" in reply.text


def test_metrics_scrape_token_is_its_own_credential(client: TestClient, issuer: Issuer) -> None:
    assert client.get("/metrics").status_code == 200  # security off, no token: open as before
    scrape = "prom-" + "s3cret" * 4
    reply = client.put("/api/v1/configKV", json={"kvMap": {"security.metricsToken": scrape}})
    assert reply.status_code == 200, reply.text
    # Now needed even with security off; never shown back.
    mgmt_error(client.get("/metrics"), 401, 2005)
    mgmt_error(client.get("/metrics", headers=bearer("wrong")), 401, 2005)
    assert client.get("/metrics", headers=bearer(scrape)).status_code == 200
    assert scrape not in client.get("/api/v1/config").text
    # With security on, the scrape token still reads /metrics, and nothing else.
    enable(client, issuer, issuer.token("root", ("admin",)))
    assert client.get("/metrics", headers=bearer(scrape)).status_code == 200
    assert client.get("/api/v1/config", headers=bearer(scrape)).status_code == 401
    assert client.get("/job", headers=bearer(scrape)).status_code == 401
    admin = bearer(issuer.token("root", ("admin",)))
    assert client.get("/metrics", headers=admin).status_code == 200
