"""Worker nodes in the management API: the running-node list, node log listing, shipping and reading."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi.testclient import TestClient

from perdure.settings import Settings
from perdure.store.nodes import canonical_path
from tests.support import ServerProcess

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
INFO = {
    "ips": ["172.31.1.234"],
    "hostName": "ip-172-31-1-234.us-west-1.compute.internal",
    "cloud": "aws",
    "arch": "x86_64",
    "cores": 2,
    "cpuModel": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
    "cpuVendor": "GenuineIntel",
    "memoryInMB": 7638,
    "instance": {
        "zone": "us-west-1a",
        "instanceId": "i-044f3323bfd228fd6",
        "instanceType": "m6i.large",
        "region": "us-west-1",
        "createTime": "2025-03-11T23:05:22Z",
        "payType": "Spot",
    },
}
FILES = ["/var/log/cloud-init-output.log", "/var/log/perdure/worker.log"]


def register_client(client: TestClient, client_id: str = "n1-0", node_id: str = "n1") -> None:
    profile = {"id": client_id, "node_id": node_id, "group": "default", "apps": ["*"]}
    reply = client.post("/client", files={"profile": ("profile", json.dumps(profile))})
    assert reply.status_code == 200, reply.text


def put_node(client: TestClient, node_id: str = "n1", info: Any = None, files: Any = None) -> httpx.Response:
    body = {"info": INFO if info is None else info, "files": FILES if files is None else files}
    return client.put(f"/api/v1/nodes/{node_id}", json=body)


def upload(client: TestClient, node_id: str, path: str, data: bytes) -> httpx.Response:
    return client.put(f"/api/v1/nodes/{node_id}/files", params={"path": path}, content=data)


def assert_mgmt_error(reply: httpx.Response, status: int) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["statusCode"] == status
    assert isinstance(body["errorCode"], int)
    assert isinstance(body["message"], str)


def raw_get(client: TestClient, raw_path: bytes) -> httpx.Response:
    """A GET whose path reaches the app byte for byte, percent-decoded as uvicorn does.

    httpx resolves ``..`` in every URL it sends, so this talks ASGI to the app directly.
    """

    async def call() -> httpx.Response:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        start: dict[str, Any] = {}
        body = bytearray()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await client.app(scope, receive, send)
        headers = [(k.decode(), v.decode()) for k, v in start["headers"]]
        return httpx.Response(start["status"], headers=headers, content=bytes(body))

    assert client.portal is not None
    return client.portal.call(call)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """The conftest settings without the background sweep, which nothing here needs.

    A sweep still running in its thread when the app shuts down checks connections out of the
    disposed engine's replacement pool; PostgreSQL connections then get garbage-collected open, and
    the ResourceWarning fails whichever test is running (app.py's lifespan; reported upstream).
    """
    return Settings(data_dir=tmp_path / "data", db_url=db_url, sweep_interval_s=3600)


@pytest.fixture
def node(client: TestClient) -> str:
    register_client(client)
    assert put_node(client).status_code == 200
    return "n1"


def test_running_nodes_are_listed_in_the_documents_shape(client: TestClient, node: str) -> None:
    reply = client.get("/api/v1/node")
    assert reply.status_code == 200, reply.text
    [listed] = reply.json()
    assert list(listed) == [
        "id",
        "ips",
        "hostName",
        "cloud",
        "arch",
        "cores",
        "cpuModel",
        "cpuVendor",
        "memoryInMB",
        "instance",
        "lastHeartbeat",
    ]
    assert listed["id"] == node
    assert {k: v for k, v in listed.items() if k not in ("id", "lastHeartbeat")} == INFO
    assert RFC3339_UTC.match(listed["lastHeartbeat"])
    assert listed["lastHeartbeat"] == client.get("/client/n1-0").json()["data"]["last_heartbeat"]


def test_extra_keys_a_node_reports_are_kept_and_missing_instance_is_empty(client: TestClient) -> None:
    register_client(client)
    info = {k: v for k, v in INFO.items() if k != "instance"} | {"criu": "3.19", "id": "ignored"}
    reply = put_node(client, info=info)
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == "n1"
    [listed] = client.get("/api/v1/node").json()
    assert listed["instance"] == {}
    assert listed["criu"] == "3.19"
    assert listed["id"] == "n1"


def test_a_report_replaces_the_previous_one(client: TestClient, node: str) -> None:
    assert put_node(client, info={**INFO, "cores": 8}).status_code == 200
    [listed] = client.get("/api/v1/node").json()
    assert listed["cores"] == 8


def test_nodes_without_a_live_client_are_not_listed(client: TestClient, node: str) -> None:
    register_client(client, "n2-0", "n2")
    assert put_node(client, "n2").status_code == 200
    assert put_node(client, "n3").status_code == 200  # no client at all
    assert [n["id"] for n in client.get("/api/v1/node").json()] == ["n1", "n2"]
    client.delete("/client/n2-0")
    assert [n["id"] for n in client.get("/api/v1/node").json()] == ["n1"]
    client.app.state.ctx.settings.node_ttl_s = 0.000001  # type: ignore[attr-defined]
    assert client.get("/api/v1/node").json() == []
    # Files of a node that stopped stay readable: that is when they are wanted.
    assert client.get("/api/v1/nodes/n1/files").status_code == 200


def test_files_are_listed_as_readable_paths(client: TestClient, node: str) -> None:
    reply = client.get(f"/api/v1/nodes/{node}/files")
    assert reply.status_code == 200
    assert reply.json() == [
        "/nodes/n1/var/log/cloud-init-output.log",
        "/nodes/n1/var/log/perdure/worker.log",
    ]


def test_a_shipped_file_reads_back_as_text(client: TestClient, node: str) -> None:
    reply = upload(client, node, "/var/log/perdure/worker.log", b"line 1\nline 2\n")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"path": "/nodes/n1/var/log/perdure/worker.log", "size": 14}
    read = client.get("/nodes/n1/var/log/perdure/worker.log")
    assert read.status_code == 200
    assert read.headers["content-type"].startswith("text/plain")
    assert read.text == "line 1\nline 2\n"
    assert upload(client, node, "/var/log/perdure/worker.log", b"rotated\n").status_code == 200
    assert client.get("/nodes/n1/var/log/perdure/worker.log").text == "rotated\n"


def test_only_the_last_mebibyte_is_kept(client: TestClient, node: str) -> None:
    data = b"x" * 1000 + b"y" * (1024 * 1024)
    reply = upload(client, node, "/var/log/cloud-init-output.log", data)
    assert reply.status_code == 200, reply.text
    assert reply.json()["size"] == 1024 * 1024
    assert client.get("/nodes/n1/var/log/cloud-init-output.log").content == b"y" * (1024 * 1024)


def test_oversized_upload_is_refused(client: TestClient, node: str) -> None:
    reply = upload(client, node, "/var/log/perdure/worker.log", b"z" * (2 * 1024 * 1024))
    assert_mgmt_error(reply, 400)
    assert_mgmt_error(client.get("/nodes/n1/var/log/perdure/worker.log"), 404)


def test_advertised_but_never_shipped_file_is_not_found(client: TestClient, node: str) -> None:
    assert_mgmt_error(client.get("/nodes/n1/var/log/perdure/worker.log"), 404)


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/nodes/n1/../../etc/passwd",
        b"/nodes/n1/var/log/perdure/../../../etc/passwd",
        b"/nodes/n1/%2e%2e/%2e%2e/etc/passwd",
        b"/nodes/n1/var/log/perdure/%2e%2e/perdure/worker.log",
        b"/nodes/n1/var/log/perdure/./worker.log",
        b"/nodes/n1//var/log/perdure/worker.log",
        b"/nodes/n1/var//log/perdure/worker.log",
        b"/nodes/n1//etc/passwd",
        b"/nodes/n1/etc/passwd",
        b"/nodes/n1/var/log/perdure/worker.log/",
        b"/nodes/n1/var/log/perdure/worker.log%00",
        b"/nodes/../nodes/n1/var/log/perdure/worker.log",
        b"/nodes/%2e%2e/n1/var/log/perdure/worker.log",
        b"/nodes/n1",
        b"/nodes/n1/",
        b"/nodes/",
    ],
)
def test_traversal_and_unadvertised_paths_are_not_found(
    client: TestClient, node: str, raw_path: bytes
) -> None:
    assert upload(client, node, "/var/log/perdure/worker.log", b"secret-ish\n").status_code == 200
    reply = raw_get(client, raw_path)
    if b"%00" in raw_path:  # the app refuses NUL anywhere in a path before routing
        assert reply.status_code in (400, 404)
        assert_mgmt_error(reply, reply.status_code)
    else:
        assert_mgmt_error(reply, 404)
    assert "root:" not in reply.text and "secret-ish" not in reply.text


def test_encoded_slashes_name_the_same_advertised_file(client: TestClient, node: str) -> None:
    assert upload(client, node, "/var/log/perdure/worker.log", b"ok\n").status_code == 200
    assert raw_get(client, b"/nodes/n1/var%2Flog%2Fperdure%2Fworker.log").text == "ok\n"


def test_uploads_of_unadvertised_or_odd_paths_are_not_found(client: TestClient, node: str) -> None:
    for path in ["/etc/passwd", "/var/log/perdure/../perdure/worker.log", "var/log/perdure/worker.log"]:
        assert_mgmt_error(upload(client, node, path, b"x"), 404)
    assert_mgmt_error(client.put("/api/v1/nodes/n1/files", content=b"x"), 400)


def test_withdrawn_files_are_no_longer_readable(client: TestClient, node: str) -> None:
    assert upload(client, node, "/var/log/perdure/worker.log", b"old\n").status_code == 200
    assert put_node(client, files=["/var/log/cloud-init-output.log"]).status_code == 200
    assert_mgmt_error(client.get("/nodes/n1/var/log/perdure/worker.log"), 404)
    assert client.get("/api/v1/nodes/n1/files").json() == ["/nodes/n1/var/log/cloud-init-output.log"]
    assert put_node(client).status_code == 200  # advertised again, but the old copy is gone
    assert_mgmt_error(client.get("/nodes/n1/var/log/perdure/worker.log"), 404)


def test_unknown_node_is_not_found(client: TestClient) -> None:
    assert_mgmt_error(client.get("/api/v1/nodes/nope/files"), 404)
    assert_mgmt_error(upload(client, "nope", "/var/log/perdure/worker.log", b"x"), 404)
    assert_mgmt_error(client.get("/nodes/nope/var/log/perdure/worker.log"), 404)


@pytest.mark.parametrize("node_id", ["..", ".", "a" * 65, "bad id", "semi;colon", "ünï"])
def test_bad_node_ids_are_refused(client: TestClient, node_id: str) -> None:
    quoted = httpx.URL(f"http://testserver/api/v1/nodes/{node_id}").raw_path
    reply = client.send(
        client.build_request("PUT", httpx.URL("http://testserver").copy_with(raw_path=quoted))
    )
    if node_id in (".", ".."):
        # A client resolves these before sending; sent raw they are still refused.
        reply = client.put(f"/api/v1/nodes/{node_id.replace('.', '%2e')}", json={"info": INFO, "files": []})
    assert_mgmt_error(reply, 400)
    files = client.get(f"/api/v1/nodes/{node_id.replace('.', '%2e')}/files")
    assert_mgmt_error(files, 400)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not an object"),
        (b'{"info": {"cores": NaN}}', "NaN"),
        (json.dumps({"info": [], "files": []}).encode(), "info not an object"),
        (json.dumps({"info": {"cores": "two"}}).encode(), "cores not an integer"),
        (json.dumps({"info": {"ips": "1.2.3.4"}}).encode(), "ips not a list"),
        (json.dumps({"info": {}, "files": "/var/log/x"}).encode(), "files not a list"),
        (json.dumps({"info": {}, "files": ["relative.log"]}).encode(), "relative path"),
        (json.dumps({"info": {}, "files": ["/var/log/../../etc/passwd"]}).encode(), "dot-dot"),
        (json.dumps({"info": {}, "files": ["/var//log/x"]}).encode(), "empty component"),
        (json.dumps({"info": {}, "files": ["/" + "a" * 1024]}).encode(), "too long"),
        (json.dumps({"info": {}, "files": [f"/f{i}" for i in range(101)]}).encode(), "too many"),
        (json.dumps({"info": {}, "group": "bad group"}).encode(), "bad group"),
    ],
)
def test_bad_reports_are_refused(client: TestClient, body: bytes, why: str) -> None:
    reply = client.put("/api/v1/nodes/n1", content=body, headers={"content-type": "application/json"})
    assert_mgmt_error(reply, 400)


def test_worker_tokens_are_checked(client: TestClient) -> None:
    group = client.post("/cgroup/g1")
    assert group.status_code == 200, group.text
    token = group.json()["data"]["token"]
    bad = {"Authorization": "CG_TOKEN name=g1|id=x|sig=wrong"}
    assert_mgmt_error(client.put("/api/v1/nodes/n1", json={"info": INFO, "files": FILES}, headers=bad), 401)
    good = {"Authorization": f"CG_TOKEN {token}"}
    body = {"info": INFO, "files": FILES, "group": "g1"}
    assert client.put("/api/v1/nodes/n1", json=body, headers=good).status_code == 200
    body["group"] = "other"
    assert_mgmt_error(client.put("/api/v1/nodes/n1", json=body, headers=good), 401)
    reply = client.put("/api/v1/nodes/n1/files", params={"path": FILES[1]}, content=b"x", headers=bad)
    assert_mgmt_error(reply, 401)
    reply = client.put("/api/v1/nodes/n1/files", params={"path": FILES[1]}, content=b"x", headers=good)
    assert reply.status_code == 200
    client.app.state.ctx.settings.client_auth_required = True  # type: ignore[attr-defined]
    assert_mgmt_error(client.put("/api/v1/nodes/n1", json={"info": INFO, "files": FILES}), 401)
    assert (
        client.put("/api/v1/nodes/n1", json={"info": INFO, "files": FILES}, headers=good).status_code == 200
    )


def test_traversal_over_a_real_socket(server: ServerProcess) -> None:
    """uvicorn hands ``..`` and ``%2e%2e`` through undecoded by any client: still only 404s."""
    with httpx.Client(base_url=server.url) as api:
        profile = {"id": "n1-0", "node_id": "n1", "group": "default", "apps": ["*"]}
        assert api.post("/client", files={"profile": ("profile", json.dumps(profile))}).status_code == 200
        assert api.put("/api/v1/nodes/n1", json={"info": INFO, "files": FILES}).status_code == 200
        reply = api.put("/api/v1/nodes/n1/files", params={"path": FILES[1]}, content=b"worker log\n")
        assert reply.status_code == 200
    port = int(server.url.rsplit(":", 1)[1])
    for raw in [
        "/nodes/n1/../../etc/passwd",
        "/nodes/n1/%2e%2e/%2e%2e/etc/passwd",
        "/nodes/n1/var/log/perdure/../../../../etc/passwd",
        "/nodes/n1//etc/passwd",
        "/nodes/n1/etc/passwd",
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", raw)
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        assert answer.status == 404, (raw, body)
        assert json.loads(body)["statusCode"] == 404
    with httpx.Client(base_url=server.url) as api:
        assert api.get("/nodes/n1/var/log/perdure/worker.log").text == "worker log\n"


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/var/log/x.log", True),
        ("/x", True),
        ("/", False),
        ("", False),
        ("var/log/x", False),
        ("//var/log/x", False),
        ("/var//log/x", False),
        ("/var/log/./x", False),
        ("/var/log/../x", False),
        ("/var/log/x/", False),
        ("/var/log/x\x00", False),
        ("/" + "a" * 1023, True),
        ("/" + "a" * 1024, False),
    ],
)
def test_only_canonical_absolute_paths_can_be_advertised(path: str, ok: bool) -> None:
    assert canonical_path(path) is ok
