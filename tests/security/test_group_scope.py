"""Issue 17: a client-group token acts on its own group only (both databases, security on).

A token of group g2 may not rewrite the record of a g1 node, upload a log in its name, read, heartbeat
or delete a g1 client, read or report on a g1 client's workunit; the g1 token does all of these. Nothing the
refused calls sent is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.integration.test_security import Issuer, awe_error, bearer, data_of, enable, mgmt_error, submit

LOG = "/var/log/perdure/worker.log"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


def profile(client_id: str, group: str, node_id: str) -> dict[str, tuple[str, str, str]]:
    document = {"id": client_id, "name": client_id, "group": group, "apps": ["*"], "node_id": node_id}
    return {"profile": ("profile.json", json.dumps(document), "application/json")}


def test_a_g2_token_is_refused_on_g1_nodes_logs_clients_and_work(client: TestClient, issuer: Issuer) -> None:
    admin = bearer(issuer.token("root", ("admin",)))
    enable(client, issuer, issuer.token("root", ("admin",)))
    g1 = {"Authorization": f"CG_TOKEN {data_of(client.post('/cgroup/g1', headers=admin))['token']}"}
    g2 = {"Authorization": f"CG_TOKEN {data_of(client.post('/cgroup/g2', headers=admin))['token']}"}
    data_of(client.post("/client", files=profile("g1-node-0", "g1", "g1-node"), headers=g1))
    good = {"info": {"hostName": "g1-host"}, "files": [LOG], "group": "g1"}
    assert client.put("/api/v1/nodes/g1-node", json=good, headers=g1).status_code == 200
    assert client.put("/api/v1/nodes/g1-node/files", params={"path": LOG}, content=b"real\n", headers=g1)
    job_id = submit(client, admin, "g1-job")
    workunit = data_of(client.get("/work", params={"client": "g1-node-0"}, headers=g1))
    assert workunit["jobid"] == job_id

    # The g2 token: the node record, its log, the client, the workunit.
    forged = {"info": {"hostName": "evil"}, "files": [LOG], "group": "g2"}
    mgmt_error(client.put("/api/v1/nodes/g1-node", json=forged, headers=g2), 403, 2005)
    mgmt_error(client.put("/api/v1/nodes/g1-node", json={**forged, "group": "g1"}, headers=g2), 401, 2001)
    refused = client.put("/api/v1/nodes/g1-node/files", params={"path": LOG}, content=b"forged\n", headers=g2)
    mgmt_error(refused, 403, 2005)
    awe_error(client.put("/client/g1-node-0?heartbeat", json={}, headers=g2), 401)
    awe_error(client.get("/client/g1-node-0", headers=g2), 401)
    awe_error(client.delete("/client/g1-node-0", headers=g2), 401)
    files = {"stdout": ("stdout", b"forged\n", "text/plain")}
    report = client.put(
        f"/work/{workunit['id']}", params={"status": "done", "client": "g1-node-0"}, files=files, headers=g2
    )
    awe_error(report, 401)
    # The leased workunit's document (its command, inputs, data) is the holding group's only.
    awe_error(client.get(f"/work/{workunit['id']}", headers=g2), 404)
    assert data_of(client.get(f"/work/{workunit['id']}", headers=g1))["id"] == workunit["id"]

    # Nothing of it stored: the node, its log and the work are as g1 left them.
    (node,) = client.get("/api/v1/node", headers=admin).json()
    assert node["hostName"] == "g1-host"
    assert client.get(f"/nodes/g1-node{LOG}", headers=admin).text == "real\n"
    assert data_of(client.get(f"/job/{job_id}", headers=admin))["state"] != "completed"
    assert data_of(client.get("/client/g1-node-0", headers=g1))["group"] == "g1"
