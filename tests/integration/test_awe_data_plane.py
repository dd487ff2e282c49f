"""AWE 0.9.x's worker moving data through Perdure's Shock-compatible node API (issue 19).

Each call is replayed as the worker's source makes it (MG-RAST/AWE v0.9.68): inputs from the IO's
``url`` (``IO.DataUrl``, which refuses anything but an absolute URL or ``host`` + ``node``), for a
split input with ``&index=<part.index>&part=<Workunit.Part()>`` appended (``cache.MoveInputIO``);
outputs with ``PUT <host>/node/<node>``, a Go ``mime/multipart`` body sent chunked (the form is an
``io.MultiReader``), the file in the field ``upload`` for rank 0 or ``<rank>`` for a part
(``shock.PutFileToShock``), the data token as ``Authorization: OAuth <token>``; an output's
``shockindex`` with ``PUT <host>/node/<node>/index/<type>`` from rank 0.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from perdure.split import awe_part, split_ranges
from tests.support import ServerProcess, wait_for

NUMBERS = b"".join(b"%d\n" % n for n in range(1, 2001))

#: generate -> 4-way split over the generated file -> merge, the data flowing through nodes.
DAG = {
    "info": {"pipeline": "awe-data", "name": "shock-replay", "user": "awe"},
    "tasks": [
        {
            "taskid": "generate",
            "cmd": {"name": "generate"},
            "outputs": [{"filename": "numbers.txt", "shockindex": "line"}],
        },
        {
            "taskid": "square",
            "cmd": {"name": "square"},
            "inputs": [{"filename": "numbers.txt", "origin": "generate"}],
            "outputs": [{"filename": "squares.txt"}],
            "partinfo": {"input": "numbers.txt", "index": "line"},
            "totalwork": 4,
        },
        {
            "taskid": "merge",
            "cmd": {"name": "merge"},
            "inputs": [{"filename": "squares.txt", "origin": "square"}],
            "outputs": [{"filename": "total.txt"}],
        },
    ],
}


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class AweWorker:
    """The calls of AWE's worker, one client, against one server."""

    def __init__(self, server_url: str, name: str = "awe-worker") -> None:
        self.http = httpx.Client(base_url=server_url, timeout=30)
        _OPEN.append(self.http)
        profile = {"name": name, "group": "awe", "apps": ["*"], "host": "127.0.0.1", "cpus": 1}
        reply = self.http.post("/client", files={"profile": ("profile", json.dumps(profile))})
        assert reply.status_code == 200, reply.text
        self.id = reply.json()["data"]["id"]

    def checkout(self) -> dict[str, Any]:
        reply = self.http.get("/work", params={"client": self.id})
        assert reply.status_code == 200, reply.text
        workunit: dict[str, Any] = reply.json()["data"]
        return workunit

    def input_url(self, workunit: dict[str, Any], io: dict[str, Any]) -> str:
        """``IO.DataUrl`` + the part ``MoveInputIO`` appends for a split input."""
        url = io["url"] or f"{io['host']}/node/{io['node']}?download"
        parsed = urlsplit(url)
        assert parsed.scheme and parsed.netloc and parsed.path, f"Url2Shock: not a valid url: {url}"
        node = parsed.path.strip("/").removeprefix("node").strip("/")
        assert uuid.UUID(node), f"not a Shock node url: {url}"
        part = workunit.get("part")
        if workunit["rank"] > 0 and part and part["input"] == io["filename"]:
            units = awe_part(workunit["rank"], workunit["totalwork"], part["totalindex"])
            url = f"{url}&index={part['index']}&part={units}"
        return url

    def fetch(self, url: str, token: str = "") -> httpx.Response:
        headers = {"Authorization": f"OAuth {token}"} if token else {}
        return httpx.get(url, headers=headers, timeout=30)

    def upload(
        self, workunit: dict[str, Any], io: dict[str, Any], data: bytes, token: str = ""
    ) -> httpx.Response:
        field = "upload" if workunit["rank"] == 0 else str(workunit["rank"])
        return put_node(f"{io['host']}/node/{io['node']}", [(field, io["filename"], data)], token)

    def done(self, workunit: dict[str, Any]) -> None:
        body, content_type = go_multipart([], [("stdout", "stdout.txt", b"")])
        reply = self.http.put(
            f"/work/{workunit['id']}",
            params={"status": "done", "client": self.id, "computetime": "1", "report": ""},
            content=body,
            headers={"Content-Type": content_type},
        )
        assert reply.status_code == 200, reply.text


def others(server: ServerProcess, count: int) -> list[AweWorker]:
    return [AweWorker(server.url, f"awe-worker-{n}") for n in range(count)]


def go_multipart(params: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """What golib's ``httpclient.Form.Create`` writes with Go's ``mime/multipart``: parameters, then
    each file part (``CreateFormFile``: ``application/octet-stream``), then the closing boundary."""
    boundary = secrets.token_hex(30)
    out = b""
    for key, value in params:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    for field, filename, data in files:
        out += (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def put_node(
    url: str,
    files: list[tuple[str, str, bytes]],
    token: str = "",
    params: list[tuple[str, str]] | None = None,
) -> httpx.Response:
    """``CreateOrUpdate``'s PUT: the body is an ``io.MultiReader`` of unknown length, so Go sends it
    with ``Transfer-Encoding: chunked`` (its ``Content-Length`` header is dropped by ``net/http``)."""
    body, content_type = go_multipart(params or [], files)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"OAuth {token}"
    return httpx.put(url, content=chunks(), headers=headers, timeout=30)


def submit(server: ServerProcess, script: dict[str, Any], token: str = "") -> str:
    headers = {"Datatoken": token} if token else {}
    reply = httpx.post(
        server.url + "/job",
        files={"upload": ("job.json", json.dumps(script))},
        headers=headers,
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["data"]["id"])


def job(server: ServerProcess, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{server.url}/job/{job_id}", timeout=30).json()["data"]
    return data


def task_state(server: ServerProcess, job_id: str, taskid: str) -> str:
    return next(str(t["state"]) for t in job(server, job_id)["tasks"] if t["task_name"] == taskid)


def shock_error(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == status and body["data"] is None
    return str(body["error"][0])


def run_generate(server: ServerProcess, worker: AweWorker, job_id: str) -> dict[str, Any]:
    generate = worker.checkout()
    assert generate["task_name"] == "generate" and generate["rank"] == 0
    (out,) = generate["outputs"]
    assert out["host"] == server.url and uuid.UUID(out["node"])
    reply = worker.upload(generate, out, NUMBERS)
    assert reply.status_code == 200, reply.text
    node = reply.json()["data"]
    assert node["id"] == out["node"] and node["file"]["size"] == len(NUMBERS)
    assert node["file"]["name"] == "numbers.txt" and node["type"] == "basic"
    # rank 0 builds the output's shockindex (a Go form with no field: still multipart)
    index = put_node(f"{out['host']}/node/{out['node']}/index/{out['shockindex']}", [])
    assert index.status_code == 200, index.text
    assert index.json()["data"]["indexes"]["line"]["total_units"] == 2000
    worker.done(generate)
    wait_for(lambda: task_state(server, job_id, "square") == "queued", 30, "the split task queued")
    return out


# ---- the DAG --------------------------------------------------------------------------------------


def test_three_task_dag_moves_its_data_through_shock_nodes(server: ServerProcess) -> None:
    worker = AweWorker(server.url)
    job_id = submit(server, DAG)
    generated = run_generate(server, worker, job_id)

    # The split: AWE's PartInfo, the input as host + node and an absolute URL.
    # (a worker holds one workunit at a time: four of them, one per rank)
    slots = {w["rank"]: (slot, w) for slot in [worker, *others(server, 3)] for w in [slot.checkout()]}
    assert sorted(slots) == [1, 2, 3, 4]
    squares = [slots[rank][1] for rank in (1, 2, 3, 4)]
    expected = split_ranges(
        lambda o, n: NUMBERS[o : o + n], len(NUMBERS), totalwork=4, maxworksize_mb=0, index="line"
    )
    parts = []
    for workunit in squares:
        part = workunit["part"]
        assert {k: part[k] for k in ("input", "totalindex", "maxpartsize_mb")} == {
            "input": "numbers.txt",
            "totalindex": 4,
            "maxpartsize_mb": 0,
        }
        (io,) = workunit["inputs"]
        assert io["host"] == server.url and io["node"] == generated["node"]
        # The lease's data capability rides in the URL (issue 17); AWE's worker appends index and part.
        capability = f"captoken={workunit['captoken']}"
        assert io["url"] == f"{server.url}/node/{generated['node']}?download&{capability}"
        reply = worker.fetch(worker.input_url(workunit, io))
        assert reply.status_code == 200, reply.text
        offset, length = expected[workunit["rank"] - 1]
        assert reply.content == NUMBERS[offset : offset + length]  # its own records, nothing else
        parts.append(reply.content)
        (out,) = workunit["outputs"]
        squared = b"".join(b"%d\n" % (int(n) ** 2) for n in reply.content.split())
        assert worker.upload(workunit, out, squared).status_code == 200
    assert b"".join(parts) == NUMBERS  # the parts cover the file once, in order

    parts_node = httpx.get(f"{server.url}/node/{squares[0]['outputs'][0]['node']}").json()["data"]
    assert parts_node["type"] == "parts" and parts_node["parts"]["count"] == 4
    assert parts_node["parts"]["length"] == 4
    for slot, workunit in slots.values():
        slot.done(workunit)
    wait_for(lambda: task_state(server, job_id, "merge") == "queued", 30, "the merge task queued")

    # The merge reads the parts node, concatenated by rank.
    merge = worker.checkout()
    (io,) = merge["inputs"]
    assert io["node"] == squares[0]["outputs"][0]["node"] and io["host"] == server.url
    merged = worker.fetch(worker.input_url(merge, io))
    assert merged.status_code == 200
    assert merged.content == b"".join(b"%d\n" % (n * n) for n in range(1, 2001))
    total = str(sum(int(n) for n in merged.content.split())).encode()
    (out,) = merge["outputs"]
    assert worker.upload(merge, out, total).status_code == 200
    worker.done(merge)

    wait_for(lambda: job(server, job_id)["state"] == "completed", 30, "the job completed")
    final = httpx.get(f"{out['host']}/node/{out['node']}?download")
    assert final.content == str(sum(n * n for n in range(1, 2001))).encode()
    # The node's bytes are the job's outputs, as Perdure's own API shows them too.
    assert httpx.get(f"{server.url}/job/{job_id}/output/merge/total.txt").content == final.content


def test_a_part_beyond_the_last_is_an_error_not_the_whole_file(server: ServerProcess) -> None:
    worker = AweWorker(server.url)
    job_id = submit(server, DAG)
    generated = run_generate(server, worker, job_id)
    square = worker.checkout()
    url = f"{generated['host']}/node/{generated['node']}?download&index={square['part']['index']}"
    assert worker.fetch(url + "&part=4").status_code == 200
    for part in ("5", "4-5", "3-7"):
        message = shock_error(worker.fetch(f"{url}&part={part}"), 400)
        assert "beyond the last part (4)" in message
    assert "beyond the last part (2000)" in shock_error(
        worker.fetch(url[: url.index("&index")] + "&index=line&part=2001"), 400
    )
    for bad in ("0", "3-2", "x", ""):
        assert shock_error(worker.fetch(f"{url}&part={bad}"), 400)
    assert "index" in shock_error(
        worker.fetch(url.replace("index=chunkrecord", "index=bogus") + "&part=1"), 400
    )
    assert shock_error(worker.fetch(f"{server.url}/node/{uuid.uuid4()}?download"), 404) == "Node not found"


def test_an_upload_from_a_client_without_the_lease_is_refused(server: ServerProcess) -> None:
    worker = AweWorker(server.url)
    job_id = submit(server, DAG)
    run_generate(server, worker, job_id)
    first = worker.checkout()  # rank 1 of the split is leased; ranks 2-4 are still queued
    (out,) = first["outputs"]
    node_url = f"{out['host']}/node/{out['node']}"
    for rank in (2, 3, 4):
        message = shock_error(put_node(node_url, [(str(rank), "squares.txt", b"1\n")]), 403)
        assert "not checked out" in message
    other = AweWorker(server.url, "other")
    refused = put_node(node_url + f"?client={other.id}", [("1", "squares.txt", b"1\n")])
    assert "not checked out by client" in shock_error(refused, 403)
    # Wrong field forms are a clear 400: a parts node takes no 'upload', nor a rank it does not have.
    assert "parts node" in shock_error(put_node(node_url, [("upload", "squares.txt", b"1\n")]), 400)
    assert "no part 9" in shock_error(put_node(node_url, [("9", "squares.txt", b"1\n")]), 400)
    bad = httpx.put(node_url, content=b"not multipart", headers={"Content-Type": "text/plain"})
    assert "multipart" in shock_error(bad, 400)
    # Nothing refused reached the node.
    assert httpx.get(node_url).json()["data"]["parts"]["length"] == 0
    assert worker.upload(first, out, b"1\n").status_code == 200
    worker.done(first)
    # The lease ended with the report: the holder cannot write again either, and with no workunit
    # of the task leased, a parts node is refused before its body is read.
    assert "no workunit of task" in shock_error(worker.upload(first, out, b"2\n"), 403)
    assert httpx.get(f"{server.url}/job/{job_id}/output/square/squares.txt").content == b"1\n"


def test_a_job_with_a_data_token_takes_uploads_only_with_it(server: ServerProcess) -> None:
    worker = AweWorker(server.url)
    token = secrets.token_hex(16)
    job_id = submit(server, {**DAG, "tasks": DAG["tasks"][:1]}, token=token)
    generate = worker.checkout()
    (out,) = generate["outputs"]
    assert "data token" in shock_error(worker.upload(generate, out, NUMBERS), 403)
    assert "data token" in shock_error(worker.upload(generate, out, NUMBERS, token="wrong"), 403)
    assert worker.upload(generate, out, NUMBERS, token=token).status_code == 200
    worker.done(generate)
    wait_for(lambda: job(server, job_id)["state"] == "completed", 30, "the job completed")


def test_a_node_that_is_no_node_is_not_found(server: ServerProcess) -> None:
    for node in ("not-a-uuid", str(uuid.uuid4())):
        assert shock_error(httpx.get(f"{server.url}/node/{node}"), 404) == "Node not found"
        assert (
            shock_error(put_node(f"{server.url}/node/{node}", [("upload", "x", b"x")]), 404)
            == "Node not found"
        )
