"""Issue 17: with the directory (embedded) store, a clientgroup token alone reads no job data; each
checkout's capability (``captoken``) reads exactly its workunit's inputs and checkpoints, and dies with
the lease (both databases, security on).

One server, two clients of group g1 acting as workers. Bob's job leaves a secret output; Alice's DAG
(``0`` -> ``1``) and her job ``B`` read ``a.txt``. Refused: the token alone on an output, a node and a
checkpoint; a capability on another job's output, on another workunit's checkpoint, tampered, expired,
after its lease ended (done; failed and requeued; an older lease of a workunit checked out again).
Allowed: the capability (with the token, or alone as AWE's worker sends it) on the workunit's own
inputs, its input's Shock node, its own checkpoint; the owner with her own token.

Then with real server and worker processes: a split DAG, and jobs reading its outputs as an input and
as predata, run end to end on the directory store while the workers' token alone reads nothing; and a
workunit handed over with a final checkpoint is restored from the server's checkpoint store by the
next worker, whose reads carry its own lease's capability (SQLite only: the worker side, as in
tests/integration/test_spot_e2e.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from perdure.api.leasecaps import issue
from perdure.store.leasecaps import capability_key
from tests.integration.cluster import Cluster, sh, squares_job
from tests.integration.test_security import Issuer, awe_error, bearer, data_of, enable, profile
from tests.integration.test_spot_e2e import SERVER_ENV as SPOT_SERVER_ENV
from tests.integration.test_spot_e2e import WORKER_ENV as SPOT_WORKER_ENV
from tests.integration.test_spot_e2e import (
    checkpointed,
    counter_job,
    drain,
    expected_output,
    left,
    messages,
    report,
    running_on,
    the_workunit,
)
from tests.jobs import script, task, upload

A_TXT = b"alpha\n" * 100
SECRET = b"bob's secret\n"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


class Worker:
    """The worker protocol's calls, with one client's group token."""

    def __init__(self, http: TestClient, token: str, client_id: str, group: str) -> None:
        self.http, self.client_id = http, client_id
        self.headers = {"Authorization": f"CG_TOKEN {token}"}
        data_of(http.post("/client", files=profile(client_id, group), headers=self.headers))

    def checkout(self) -> dict[str, Any]:
        workunit: dict[str, Any] = data_of(
            self.http.get("/work", params={"client": self.client_id}, headers=self.headers)
        )
        return workunit

    def deliver(self, workunit: dict[str, Any], outputs: dict[str, bytes]) -> None:
        for name, data in outputs.items():
            reply = self.http.put(
                f"/work/{workunit['id']}/output/{name}",
                params={"client": self.client_id},
                content=data,
                headers=self.headers,
            )
            data_of(reply)

    def report(self, workunit: dict[str, Any], status: str = "done", *, then_next: bool = False) -> Any:
        params = {"status": status, "client": self.client_id, **({"next": ""} if then_next else {})}
        reply = self.http.put(f"/work/{workunit['id']}", params=params, headers=self.headers)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def get(self, path: str, captoken: str | None = None, **params: str) -> httpx.Response:
        query = {**params, **({"captoken": captoken} if captoken is not None else {})}
        return self.http.get(path, params=query, headers=self.headers)

    def put_chunk(self, workunit: dict[str, Any], data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        reply = self.http.put(
            f"/work/{workunit['id']}/ckpt/chunks/{digest}",
            params={"client": self.client_id},
            content=data,
            headers=self.headers,
        )
        data_of(reply)
        return digest


def post_job(http: TestClient, headers: dict[str, str], document: dict[str, Any]) -> str:
    job_id: str = data_of(http.post("/job", files=upload(json.dumps(document)), headers=headers))["id"]
    return job_id


def local(url: str) -> str:
    """A URL of the workunit document as a path of this server (what Perdure's worker fetches)."""
    return url[url.index("/", len("http://")) :] if url.startswith("http") else url


def test_job_data_needs_the_leases_capability(client: TestClient, issuer: Issuer) -> None:
    enable(client, issuer, issuer.token("root", ("admin",)))
    admin = bearer(issuer.token("root", ("admin",)))
    alice, bob = bearer(issuer.token("alice", ("users",))), bearer(issuer.token("bob", ("users",)))
    ttl = client.put("/api/v1/configKV", json={"kvMap": {"security.capabilityTTL": "600"}}, headers=admin)
    assert ttl.status_code == 200, ttl.text
    g1 = data_of(client.post("/cgroup/g1", headers=admin))["token"]
    c1, c2 = Worker(client, g1, "c1", "g1"), Worker(client, g1, "c2", "g1")
    refused = "job data needs the reading workunit's capability"

    # Bob's job leaves an output.
    victim = post_job(client, bob, script(task("0", outputs=[{"filename": "secret.txt"}])))
    held = c1.checkout()
    assert held["jobid"] == victim and held["captoken"]
    c1.deliver(held, {"secret.txt": SECRET})
    c1.report(held)
    secret = f"/job/{victim}/output/0/secret.txt"

    # Alice's DAG: 0 writes a.txt, 1 reads it. Its workunit 1 comes as the ``next`` of 0's report.
    dag = script(
        task("0", outputs=[{"filename": "a.txt"}]),
        task(
            "1",
            depends=["0"],
            inputs=[{"filename": "a.txt", "origin": "0"}],
            outputs=[{"filename": "b.txt"}],
        ),
    )
    job_a = post_job(client, alice, dag)
    first = c1.checkout()
    c1.deliver(first, {"a.txt": A_TXT})
    second = c1.report(first, then_next=True)["next"]
    assert (second["jobid"], second["task_name"]) == (job_a, "1")
    cap = second["captoken"]
    expires = int(cap.split(".")[2])  # <workunit>.<attempt>.<expiry>.<mac>: security.capabilityTTL
    assert time.time() + 590 < expires <= time.time() + 600
    (a_input,) = second["inputs"]
    assert f"captoken={cap}" in a_input["url"]
    a_txt = f"/job/{job_a}/output/0/a.txt"

    # The token alone reads no output, no node, no checkpoint (403).
    assert refused in awe_error(c1.get(a_txt), 403)
    assert refused in awe_error(c1.get(secret), 403)
    assert refused in awe_error(c1.get(f"/node/{a_input['node']}", download=""), 403)
    digest = c1.put_chunk(second, b"checkpoint of workunit 1")
    chunk = f"/work/{second['id']}/ckpt/chunks/{digest}"
    assert refused in awe_error(c1.get(chunk, client="c1"), 403)

    # The capability reads its workunit's input: as given, by path, alone, through its node.
    assert client.get(local(a_input["url"]), headers=c1.headers).content == A_TXT
    assert c1.get(a_txt, cap).content == A_TXT
    assert client.get(a_txt, params={"captoken": cap, "offset": "6", "length": "6"}).content == b"alpha\n"
    assert c1.get(f"/node/{a_input['node']}", cap, download="").content == A_TXT
    awe = {"Authorization": "OAuth the-jobs-datatoken"}  # what AWE's worker sends to a Shock host
    assert client.get(local(a_input["url"]), headers=awe).content == A_TXT
    assert c1.get(chunk, cap, client="c1").content == b"checkpoint of workunit 1"
    # ... and nothing else: another job's output, tampered, expired.
    assert "does not read" in awe_error(c1.get(secret, cap), 403)
    assert "does not read" in awe_error(client.get(secret, params={"captoken": cap}), 403)
    tampered = cap[:-2] + ("AA" if not cap.endswith("AA") else "BB")
    assert "invalid" in awe_error(c1.get(a_txt, tampered), 403)
    assert "invalid" in awe_error(c1.get(a_txt, "not-a-capability"), 403)
    key = capability_key(client.app.state.ctx.db)  # type: ignore[attr-defined]
    expired = issue(key, second["id"], second["attempt"], int(time.time()) - 1)
    assert "expired" in awe_error(c1.get(a_txt, expired), 403)
    # The users: the owner reads with her own token; Bob does not see Alice's job.
    assert client.get(a_txt, headers=alice).content == A_TXT
    awe_error(client.get(a_txt, headers=bob), 404)

    # Alice's job B reads a.txt too; c2 holds it.
    job_b = post_job(
        client,
        alice,
        script(task("0", inputs=[{"filename": "a.txt", "url": a_txt}], outputs=[{"filename": "c.txt"}])),
    )
    other = c2.checkout()
    assert other["jobid"] == job_b
    other_digest = c2.put_chunk(other, b"checkpoint of B")
    other_chunk = f"/work/{other['id']}/ckpt/chunks/{other_digest}"
    # A capability is its own workunit's: workunit 1's does not read B's checkpoint.
    assert "not" in awe_error(c2.get(other_chunk, cap, client="c2"), 403)
    assert c2.get(other_chunk, other["captoken"], client="c2").content == b"checkpoint of B"

    # Workunit 1 done: its capability is dead.
    c1.deliver(second, {"b.txt": b"b\n"})
    c1.report(second)
    assert "has ended" in awe_error(c1.get(a_txt, cap), 403)
    assert "has ended" in awe_error(client.get(f"/node/{a_input['node']}?download&captoken={cap}"), 403)

    # B failed and requeued: its capability is dead; checked out again (by c1: c2 now skips it), only
    # the new lease's capability reads.
    assert c2.get(a_txt, other["captoken"]).content == A_TXT
    c2.report(other, "fail")
    assert "has ended" in awe_error(c2.get(a_txt, other["captoken"]), 403)
    again = c1.checkout()
    assert again["id"] == other["id"] and again["attempt"] == other["attempt"] + 1
    assert "has ended" in awe_error(c1.get(a_txt, other["captoken"]), 403)
    assert c1.get(a_txt, again["captoken"]).content == A_TXT


def test_a_split_dag_and_its_readers_run_end_to_end_with_capabilities(
    cluster: Cluster, issuer: Issuer
) -> None:
    server = cluster.server()
    api = cluster.api(server)
    enable(api.http, issuer, issuer.token("root", ("admin",)))
    api.http.headers["Authorization"] = f"Bearer {issuer.token('root', ('admin',))}"
    token = api.data("POST", "/cgroup/lab")["token"]
    cluster.worker(server.url, group="lab", token=token, slots=2)

    count = 2000
    dag = squares_job(count, clientgroups="lab")
    job_id = api.submit(dag)
    api.wait_job(job_id)
    total = f"/job/{job_id}/output/sum/total.txt"
    assert int(api.http.get(total).text) == sum(n * n for n in range(1, count + 1))

    # Two jobs read its outputs: one as an input, both as predata (fetched once per node, although
    # each workunit's URL carries its own capability).
    numbers = f"/job/{job_id}/output/generate/numbers.txt"
    readers = [
        api.submit(
            script(
                sh(
                    "read",
                    "cat total.txt > report.txt; wc -l < numbers.txt >> report.txt",
                    inputs=[{"filename": "total.txt", "url": total}],
                    predata=[{"filename": "numbers.txt", "url": numbers}],
                    outputs=[{"filename": "report.txt"}],
                ),
                clientgroups="lab",
                name=f"reader-{n}",
            )
        )
        for n in range(2)
    ]
    expected = f"{sum(n * n for n in range(1, count + 1))}\n{count}\n"
    for reader in readers:
        api.wait_job(reader)
        assert api.download(reader, "read", "report.txt").text == expected
    access = (server.data_dir / "logs" / "perdure-access.log").read_text()
    assert access.count(f'"GET {numbers}?captoken=****"') == 1, access

    # Meanwhile the workers' token alone reads none of it.
    worker = {"Authorization": f"CG_TOKEN {token}"}
    for path in (total, numbers, f"/job/{readers[0]}/output/read/report.txt"):
        assert httpx.get(server.url + path, headers=worker).status_code == 403


def test_a_handed_over_workunit_restores_from_the_servers_store_with_its_capability(
    sqlite_cluster: Cluster, issuer: Issuer
) -> None:
    cluster = sqlite_cluster
    server = cluster.server(SPOT_SERVER_ENV)
    api = cluster.api(server)
    enable(api.http, issuer, issuer.token("root", ("admin",)))
    api.http.headers["Authorization"] = f"Bearer {issuer.token('root', ('admin',))}"
    token = api.data("POST", "/cgroup/lab")["token"]
    w1 = cluster.worker(server.url, "w1", group="lab", token=token, env=SPOT_WORKER_ENV)
    steps = 100
    job = counter_job(steps, cluster.base / "steps.log")
    job["info"]["clientgroups"] = "lab"
    job_id = api.submit(job)
    wu_id = the_workunit(api, job_id, cluster)
    running_on(api, wu_id, w1, cluster)
    cluster.worker(server.url, "w2", group="lab", token=token, env=SPOT_WORKER_ENV)
    checkpointed(api, wu_id, cluster)

    drain(w1)
    left(w1, cluster)
    api.wait_job(job_id)
    assert api.download(job_id, "count", "out.txt").content == expected_output(steps)
    document = report(api, job_id)
    events = [(e["code"], e["message"]) for e in document["events"]]
    assert messages(document, "SP") and messages(document, "SR") and not messages(document, "SF"), events
