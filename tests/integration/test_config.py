"""The configuration (management-api.txt "Checkpoint Configuration" and "Logging"): configKV and its effects.

* ``PUT /api/v1/configKV``: every value type (duration, bool, int, string list, string map, plain
  string), every error (unknown key, a bad value of each type, read-only keys, ``security.cognito.
  enabled``, empty ``kvMap``, non-string values, a body that is not JSON) as 422 errorCode 1003 with
  ``fields`` naming the key; several keys at once applied all or none; Go-style durations in GET.
* persistence: across a restart of a real server (same data directory and database), in
  ``<data-dir>/config.json`` (mode 0600), and a file edited while the server was down wins at start;
* two servers on one PostgreSQL database see each other's changes within a few sweeps;
* live effects without a restart: ``node.ttl`` on the lease logic, the log level on the server log,
  ``log.file`` on the ``/<base>.log`` paths, and the heartbeat replies (``ckpt``, ``heartbeat``, ``ttl``).

In-process tests use the ``client`` fixture (SQLite and PostgreSQL); the restart, two-server, TTL and
log-level tests run real ``perdure server`` processes. A server given ``PERDURE_NODE_TTL_S`` would
override ``node.ttl`` for itself, so the live-TTL server is started without it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.integration.clientloop import Worker
from tests.jobs import script, task, upload
from tests.support import ServerProcess, postgres_database
from tests.support import wait_for as _wait_for

KV = "/api/v1/configKV"
SWEEP_ENV = {"PERDURE_SWEEP_INTERVAL_S": "0.3"}


#: Each poll here asks a server something, so polls are spaced out.
wait_for = partial(_wait_for, interval=0.2)


# ---- helpers ----------------------------------------------------------------------------------------


def put_kv(http: Any, kv: Any) -> httpx.Response:
    return http.put(KV, json={"kvMap": kv})


def applied(http: Any, kv: dict[str, str]) -> dict[str, Any]:
    """PUT the pairs; the answer is the whole configuration, the same as a GET right after."""
    response = put_kv(http, kv)
    assert response.status_code == 200, f"{kv}: {response.text}"
    document: dict[str, Any] = response.json()
    assert document == http.get("/api/v1/config").json()
    return document


def invalid(response: httpx.Response) -> dict[str, str]:
    """A 422 in the management shape with errorCode 1003; returns its ``fields``."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"statusCode", "errorCode", "message", "fields"}, body
    assert (body["statusCode"], body["errorCode"]) == (422, 1003), body
    assert isinstance(body["message"], str) and body["message"], body
    fields: dict[str, str] = body["fields"]
    assert fields and all(isinstance(v, str) and v for v in fields.values()), body
    return fields


def lookup(document: dict[str, Any], key: str) -> Any:
    value: Any = document
    for part in key.split("."):
        value = value[part]
    return value


def without_addr(document: dict[str, Any]) -> dict[str, Any]:
    """The configuration minus what names this process (its listen address)."""
    return {k: v for k, v in document.items() if k != "addr"}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers a test starts; every one is stopped at the end."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


# ---- types ------------------------------------------------------------------------------------------

#: (key, the string sent, what GET shows) for every kind of value.
TYPED_VALUES = [
    # durations: Go's time.ParseDuration in, Duration.String() out
    ("node.ttl", "90s", "1m30s"),
    ("node.ttl", "2h", "2h0m0s"),
    ("node.ttl", "1h30m", "1h30m0s"),
    ("node.ttl", "1.5h", "1h30m0s"),
    ("node.ttl", "300", "5m0s"),
    ("node.heartbeat", "500ms", "500ms"),
    ("node.heartbeat", "45s", "45s"),
    ("ckpt.ckptInterval", "15m", "15m0s"),
    # booleans
    ("ckpt.rootFSDiff", "false", False),
    ("ckpt.rootFSDiff", "true", True),
    ("ckpt.tcpClose", "false", False),
    ("ckpt.diagnosisMode", "true", True),
    ("job.ebsPerJob", "false", False),  # "true" is refused: not implemented (test_pools.py)
    # integers
    ("job.diskSizeGB", "500", 500),
    ("job.diskThroughputMB", "250", 250),
    ("log.maxSizeMB", "20", 20),
    ("log.maxBackups", "0", 0),
    ("perdure.maxWorkFailure", "7", 7),
    # string lists: comma-separated; empty is null where the document shows null
    ("security.cognito.adminGroups", "admin,root", ["admin", "root"]),
    ("ckpt.ckptFiles", "/etc/hosts,/opt/app/state", ["/etc/hosts", "/opt/app/state"]),
    ("ckpt.ckptFiles", "", None),
    ("ckpt.IRMapScanPaths", "/usr/lib", ["/usr/lib"]),
    # string maps: key:value pairs, comma-separated
    ("job.customTags", "owner:name,team:engineer", {"owner": "name", "team": "engineer"}),
    ("job.customTags", "owner:engineer", {"owner": "engineer"}),
    ("perdure.pipelineExpire", "nightly:2D,adhoc:12H", {"nightly": "2D", "adhoc": "12H"}),
    # plain strings (one with a fixed set of values)
    ("job.diskType", "io2", "io2"),
    ("job.ebsMountPath", "/mnt/mmab", "/mnt/mmab"),
    ("ckpt.ckptImagePath", "/mmc-checkpoint", "/mmc-checkpoint"),
    ("ckpt.ckptMode", "none", "none"),
    ("ckpt.ckptMode", "iterative", "iterative"),
    ("staticFolder", "mmabWeb", "mmabWeb"),
    ("perdure.globalExpire", "30D", "30D"),
]


def test_every_value_type(client: TestClient) -> None:
    problems = []
    for key, sent, shown in TYPED_VALUES:
        document = applied(client, {key: sent})
        if lookup(document, key) != shown:
            problems.append(f"{key}={sent!r}: shown as {lookup(document, key)!r}, expected {shown!r}")
    assert problems == []


def test_go_style_durations(client: TestClient) -> None:
    """The defaults, as the document shows them; a value in another spelling comes back in Go's."""
    document = client.get("/api/v1/config").json()
    assert document["ckpt"]["ckptInterval"] == "1h0m0s"
    assert (document["node"]["heartbeat"], document["node"]["ttl"]) == ("30s", "5m0s")
    assert document["perdure"]["sweepInterval"] == "200ms"  # this process's override (settings fixture)
    document = applied(client, {"node.ttl": "300s", "node.heartbeat": "0.5m", "ckpt.ckptInterval": "3600s"})
    assert (document["node"]["ttl"], document["node"]["heartbeat"]) == ("5m0s", "30s")
    assert document["ckpt"]["ckptInterval"] == "1h0m0s"


def test_the_document_examples_of_configkv(client: TestClient) -> None:
    """The three spellings the document gives: "5m", "true", "500", and its list and map examples."""
    document = applied(
        client,
        {
            "node.ttl": "5m",
            "ckpt.rootFSDiff": "true",
            "job.diskSizeGB": "500",
            "security.cognito.adminGroups": "admin,root",
            "job.customTags": "owner:name,team:engineer",
        },
    )
    assert document["node"]["ttl"] == "5m0s"
    assert document["ckpt"]["rootFSDiff"] is True
    assert document["job"]["diskSizeGB"] == 500
    assert document["security"]["cognito"]["adminGroups"] == ["admin", "root"]
    assert document["job"]["customTags"] == {"owner": "name", "team": "engineer"}


# ---- errors -----------------------------------------------------------------------------------------

#: (kvMap, the key ``fields`` must name) for every error of a single key.
BAD_PAIRS: list[tuple[Any, str]] = [
    # unknown keys: a typo, a section, a key of the document's that we do not have, an empty key
    ({"node.tll": "5m"}, "node.tll"),
    ({"node": "5m"}, "node"),
    ({"ckpt.ckptinterval": "5m"}, "ckpt.ckptinterval"),
    ({"": "x"}, ""),
    # bad durations
    ({"node.ttl": "five minutes"}, "node.ttl"),
    ({"node.ttl": "5 m"}, "node.ttl"),
    ({"node.ttl": "8d"}, "node.ttl"),  # days are read (7d), but a TTL is at most 7 days
    ({"node.ttl": ""}, "node.ttl"),
    ({"node.ttl": "0"}, "node.ttl"),
    ({"node.ttl": "-5m"}, "node.ttl"),
    ({"node.heartbeat": "0s"}, "node.heartbeat"),
    ({"ckpt.ckptInterval": "500ms"}, "ckpt.ckptInterval"),
    # bad booleans
    ({"ckpt.rootFSDiff": "maybe"}, "ckpt.rootFSDiff"),
    ({"job.ebsPerJob": ""}, "job.ebsPerJob"),
    ({"ckpt.tcpClose": "2"}, "ckpt.tcpClose"),
    # bad integers
    ({"job.diskSizeGB": "lots"}, "job.diskSizeGB"),
    ({"job.diskSizeGB": "12.5"}, "job.diskSizeGB"),
    ({"job.diskSizeGB": "0"}, "job.diskSizeGB"),
    ({"job.diskSizeGB": "-1"}, "job.diskSizeGB"),
    ({"log.maxSizeMB": "1e3"}, "log.maxSizeMB"),
    ({"log.maxBackups": ""}, "log.maxBackups"),
    # bad maps
    ({"job.customTags": "owner"}, "job.customTags"),
    ({"job.customTags": "owner:a,team"}, "job.customTags"),
    ({"job.customTags": ":engineer"}, "job.customTags"),
    # strings with a fixed set of values or a pattern
    ({"ckpt.ckptMode": "sometimes"}, "ckpt.ckptMode"),
    ({"log.level": "verbose"}, "log.level"),
    ({"perdure.globalExpire": "5X"}, "perdure.globalExpire"),
    # read-only keys
    ({"id": "1e6c7914-9f0a-497f-96a8-de9abc41bd2e"}, "id"),
    ({"perdure.databaseURL": "sqlite:///elsewhere.db"}, "perdure.databaseURL"),
    ({"perdure.dataDir": "/tmp"}, "perdure.dataDir"),
    # security is switched through /api/v1/security/cognito only
    ({"security.cognito.enabled": "true"}, "security.cognito.enabled"),
    ({"security.cognito.enabled": "false"}, "security.cognito.enabled"),
    # values must be strings ("the string version of the value")
    ({"job.diskSizeGB": 500}, "job.diskSizeGB"),
    ({"ckpt.rootFSDiff": True}, "ckpt.rootFSDiff"),
    ({"node.ttl": None}, "node.ttl"),
    ({"ckpt.ckptFiles": ["/a", "/b"]}, "ckpt.ckptFiles"),
    ({"job.customTags": {"owner": "x"}}, "job.customTags"),
]


def test_every_error_is_422_naming_the_key(client: TestClient) -> None:
    before = client.get("/api/v1/config").json()
    problems = []
    for kv, key in BAD_PAIRS:
        response = put_kv(client, kv)
        try:
            fields = invalid(response)
            assert list(fields) == [key], fields
        except AssertionError as exc:
            problems.append(f"{kv}: {exc}")
    assert problems == []
    assert client.get("/api/v1/config").json() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b"{not json", "body", id="not JSON"),
        pytest.param(b"", "kvMap", id="empty body"),
        pytest.param(b"null", "kvMap", id="null"),
        pytest.param(b'["node.ttl", "5m"]', "kvMap", id="an array"),
        pytest.param(b'{"node.ttl": "5m"}', "kvMap", id="no kvMap"),
        pytest.param(b'{"kvMap": {}}', "kvMap", id="empty kvMap"),
        pytest.param(b'{"kvMap": []}', "kvMap", id="kvMap an array"),
        pytest.param(b'{"kvMap": "node.ttl=5m"}', "kvMap", id="kvMap a string"),
    ],
)
def test_a_body_that_is_not_a_kvmap_is_422(client: TestClient, body: bytes, field: str) -> None:
    before = client.get("/api/v1/config").json()
    response = client.put(KV, content=body, headers={"Content-Type": "application/json"})
    assert field in invalid(response)
    assert client.get("/api/v1/config").json() == before


def test_several_keys_are_applied_all_or_none(client: TestClient) -> None:
    before = client.get("/api/v1/config").json()
    good = {"node.ttl": "2m", "job.diskType": "io2", "job.customTags": "owner:me"}
    attempts = {
        "an unknown key": ({**good, "job.bogus": "1"}, {"job.bogus"}),
        "a bad duration": ({**good, "node.heartbeat": "soon"}, {"node.heartbeat"}),
        "a value out of range": ({**good, "job.diskSizeGB": "0"}, {"job.diskSizeGB"}),
        "a read-only key": ({**good, "id": "mine"}, {"id"}),
        "the security switch": ({**good, "security.cognito.enabled": "true"}, {"security.cognito.enabled"}),
        "a non-string value": ({**good, "job.diskSizeGB": 5}, {"job.diskSizeGB"}),
        "three bad keys": (
            {**good, "nope": "1", "ckpt.rootFSDiff": "perhaps", "job.diskSizeGB": "x"},
            {"nope", "ckpt.rootFSDiff", "job.diskSizeGB"},
        ),
    }
    for name, (kv, named) in attempts.items():
        fields = invalid(put_kv(client, kv))
        assert set(fields) == named, f"{name}: {fields}"
        assert client.get("/api/v1/config").json() == before, f"{name}: something was applied"
    document = applied(client, good)
    assert (document["node"]["ttl"], document["job"]["diskType"]) == ("2m0s", "io2")
    assert document["job"]["customTags"] == {"owner": "me"}
    # The same key twice in one body: JSON's last one wins, as with any object.
    response = client.put(
        KV,
        content=b'{"kvMap": {"job.diskType": "st1", "job.diskType": "sc1"}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200 and response.json()["job"]["diskType"] == "sc1"


# ---- heartbeats carry the settings workers follow ----------------------------------------------------


def register(client: TestClient, client_id: str) -> None:
    document = {"id": client_id, "name": client_id, "group": "default", "apps": ["*"], "hostname": "h"}
    files = {"profile": ("profile.json", json.dumps(document), "application/json")}
    assert client.post("/client", files=files).status_code == 200


def instructions(client: TestClient, client_id: str) -> list[dict[str, Any]]:
    """The heartbeat reply, as a worker's PUT and the document's GET form both get it."""
    replies = [
        client.put(f"/client/{client_id}?heartbeat", json={"busy": False, "current_work": {"data": []}}),
        client.get(f"/client/{client_id}?heartbeat"),
    ]
    for reply in replies:
        assert reply.status_code == 200, reply.text
    return [reply.json()["data"] for reply in replies]


def test_heartbeat_replies_carry_ckpt_heartbeat_and_ttl(client: TestClient) -> None:
    register(client, "hb-1")
    for data in instructions(client, "hb-1"):
        assert json.loads(data["ckpt"]) == client.get("/api/v1/config").json()["ckpt"]
        assert (data["heartbeat"], data["ttl"]) == ("30s", "5m0s")
        assert all(isinstance(v, str) for v in data.values()), data  # AWE's instruction map: strings
    applied(
        client,
        {
            "ckpt.ckptInterval": "15m",
            "ckpt.ckptMode": "none",
            "ckpt.ckptFiles": "/a,/b",
            "node.heartbeat": "10s",
            "node.ttl": "2m",
        },
    )
    for data in instructions(client, "hb-1"):
        ckpt = json.loads(data["ckpt"])
        assert ckpt == client.get("/api/v1/config").json()["ckpt"]
        assert (ckpt["ckptInterval"], ckpt["ckptMode"], ckpt["ckptFiles"]) == ("15m0s", "none", ["/a", "/b"])
        assert (data["heartbeat"], data["ttl"]) == ("10s", "2m0s")


# ---- logging ----------------------------------------------------------------------------------------


def test_log_config_get_and_put(client: TestClient) -> None:
    assert client.get("/api/v1/log/config").json() == {"level": "info", "maxSizeMB": 10, "maxBackups": 10}
    reply = client.put("/api/v1/log/config", json={"level": "debug"})
    assert reply.status_code == 200
    assert reply.json() == {"level": "debug", "maxSizeMB": 10, "maxBackups": 10}
    reply = client.put("/api/v1/log/config", json={"maxSizeMB": 20, "maxBackups": 3})
    assert reply.json() == {"level": "debug", "maxSizeMB": 20, "maxBackups": 3}
    assert reply.json() == client.get("/api/v1/log/config").json()
    assert client.get("/api/v1/config").json()["log"]["maxSizeMB"] == 20
    for body, field in (
        ({"level": "loud"}, "log.level"),
        ({"maxSizeMB": 0}, "log.maxSizeMB"),
        ({"maxBackups": "many"}, "log.maxBackups"),
        ({"colour": "red"}, "colour"),
        ({}, "body"),
    ):
        assert field in invalid(client.put("/api/v1/log/config", json=body)), body
    assert client.get("/api/v1/log/config").json() == {"level": "debug", "maxSizeMB": 20, "maxBackups": 3}


def test_log_file_change_moves_the_log_paths(client: TestClient, settings: Any) -> None:
    data_dir = Path(settings.data_dir)
    assert client.get("/perdure.log").status_code == 200
    assert "GET /perdure.log" in client.get("/perdure-access.log").text

    reply = client.put("/api/v1/log/config", json={"file": "mmab.log"})
    assert reply.status_code == 200, reply.text
    assert client.get("/api/v1/config").json()["log"]["file"] == "mmab.log"
    access = client.get("/mmab-access.log")
    assert access.status_code == 200
    assert "GET /api/v1/config" in access.text
    assert client.get("/mmab.log").status_code == 200
    assert (data_dir / "mmab.log").exists() and (data_dir / "mmab-access.log").exists()
    for gone in ("/perdure.log", "/perdure-access.log"):
        response = client.get(gone)
        assert response.status_code == 404
        assert response.json()["statusCode"] == 404

    # Through configKV too, to a subdirectory and to an absolute path.
    applied(client, {"log.file": "logs/server/mgmt.log"})
    assert client.get("/mgmt.log").status_code == 200
    assert "GET /mgmt.log" in client.get("/mgmt-access.log").text
    assert (data_dir / "logs" / "server" / "mgmt-access.log").exists()
    elsewhere = data_dir.parent / "var-log" / "other.log"
    applied(client, {"log.file": str(elsewhere)})
    assert "GET /api/v1/config" in client.get("/other-access.log").text
    assert elsewhere.with_name("other-access.log").exists()
    assert client.get("/mgmt.log").status_code == 404
    # Only the two log files are served, nothing else by name.
    for other in ("/config.json", "/perdure.db", "/other.txt", "/mmab.log"):
        assert client.get(other).status_code == 404, other


# ---- real servers -----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_changes_persist_across_a_restart_and_in_config_json(
    tmp_path: Path, db_url: str, servers: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "server"
    first = ServerProcess(data_dir, db_url).start()
    servers.append(first)
    changes = {
        "node.ttl": "2m",
        "ckpt.rootFSDiff": "false",
        "job.diskSizeGB": "300",
        "ckpt.ckptFiles": "/a,/b",
        "job.customTags": "owner:name,team:engineer",
        "job.diskType": "io2",
        "security.cognito.secretKey": "stored-but-never-shown",
    }
    with httpx.Client(base_url=first.url, timeout=60) as http:
        before = applied(http, changes)
    assert before["security"]["cognito"]["secretKey"] == "****"

    stored_path = data_dir / "config.json"
    assert stored_path.stat().st_mode & 0o777 == 0o600
    stored = json.loads(stored_path.read_text())
    assert stored["id"] == before["id"]
    assert stored["node"]["ttl"] == "2m0s"
    assert stored["ckpt"]["rootFSDiff"] is False
    assert stored["job"]["customTags"] == {"owner": "name", "team": "engineer"}
    assert stored["security"]["cognito"]["secretKey"] == "stored-but-never-shown"
    first.stop()

    second = ServerProcess(data_dir, db_url).start()
    servers.append(second)
    after = httpx.get(second.url + "/api/v1/config", timeout=60).json()
    assert without_addr(after) == without_addr(before)
    assert after["addr"] == second.url
    second.stop()

    # The file, edited while the server was down, is newer than the database's copy: it wins at start.
    stored = json.loads(stored_path.read_text())
    stored["job"]["diskType"] = "st1"
    stored["node"]["heartbeat"] = "45s"
    stored_path.write_text(json.dumps(stored))
    third = ServerProcess(data_dir, db_url).start()
    servers.append(third)
    edited = httpx.get(third.url + "/api/v1/config", timeout=60).json()
    assert (edited["job"]["diskType"], edited["node"]["heartbeat"], edited["node"]["ttl"]) == (
        "st1",
        "45s",
        "2m0s",
    )
    assert edited["id"] == before["id"]
    assert stored_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_two_servers_on_one_postgresql_database_share_changes(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    with postgres_database() as url:
        one = ServerProcess(tmp_path / "one", url, env=SWEEP_ENV).start()
        servers.append(one)
        two = ServerProcess(tmp_path / "two", url, env=SWEEP_ENV).start()
        servers.append(two)
        a, b = httpx.Client(base_url=one.url, timeout=60), httpx.Client(base_url=two.url, timeout=60)
        try:
            assert a.get("/api/v1/config").json()["id"] == b.get("/api/v1/config").json()["id"]
            applied(a, {"node.ttl": "7m", "job.customTags": "team:one"})

            def seen_by_two() -> bool:
                document = b.get("/api/v1/config").json()
                return bool(
                    document["node"]["ttl"] == "7m0s" and document["job"]["customTags"] == {"team": "one"}
                )

            wait_for(seen_by_two, 30.0, "server two to see server one's change")
            wait_for(
                lambda: json.loads((tmp_path / "two" / "config.json").read_text())["node"]["ttl"] == "7m0s",
                30.0,
                "server two's config.json to follow",
            )
            # And back, through the log endpoint this time; a refused change reaches nobody.
            assert b.put("/api/v1/log/config", json={"level": "warning", "maxBackups": 4}).status_code == 200
            assert put_kv(b, {"job.diskType": "io2", "bogus": "x"}).status_code == 422
            wait_for(
                lambda: (
                    a.get("/api/v1/log/config").json()
                    == {"level": "warning", "maxSizeMB": 10, "maxBackups": 4}
                ),
                30.0,
                "server one to see server two's change",
            )
            assert a.get("/api/v1/config").json()["job"]["diskType"] == "gp3"
            # Each keeps its own data directory and address.
            assert a.get("/api/v1/config").json()["perdure"]["dataDir"] == str((tmp_path / "one").resolve())
            assert b.get("/api/v1/config").json()["addr"] == two.url
        finally:
            a.close()
            b.close()
            for server in servers:
                server.stop()


def server_log(server: ServerProcess) -> str:
    path = server.data_dir / "logs" / "perdure.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.timeout(300)
def test_node_ttl_and_log_level_changes_take_effect_without_a_restart(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path / "server", f"sqlite:///{tmp_path / 'p.db'}", env=SWEEP_ENV).start()
    servers.append(server)
    http = httpx.Client(base_url=server.url, timeout=60)
    made: list[Worker] = []

    def worker() -> Worker:
        made.append(Worker(server.url, timeout=60))
        assert made[-1].register().status_code == 200
        return made[-1]

    def state(wu_id: str) -> str:
        reply = http.get(f"/work/{wu_id}")
        assert reply.status_code == 200, reply.text
        return str(reply.json()["data"]["state"])

    try:
        assert http.put("/api/v1/log/config", json={"level": "error"}).status_code == 200
        job_id = http.post("/job", files=upload(script(task("0")))).json()["data"]["id"]
        first = worker()
        assert first.instructions()["ttl"] == "5m0s"
        wu_id = first.checkout_id()
        assert wu_id.startswith(job_id)
        time.sleep(2.0)  # silent, but well within the 5 minute TTL
        assert state(wu_id) == "checkout"

        # A shorter TTL applies to the next sweep: the silent client is lost, its work re-queued.
        applied(http, {"node.ttl": "1s"})
        wait_for(lambda: state(wu_id) == "queued", 30.0, "the workunit to be re-queued after the new TTL")
        beat = first.instructions([wu_id])
        assert beat["ttl"] == "1s"
        assert wu_id in beat.get("discard", ""), beat
        assert "re-queued" not in server_log(server)  # a warning, and the level is error

        # Level warning: the next re-queue is in the server log.
        assert http.put("/api/v1/log/config", json={"level": "warning"}).status_code == 200
        second = worker()
        assert second.checkout_id() == wu_id
        wait_for(lambda: state(wu_id) == "queued", 30.0, "the workunit to be re-queued again")
        wait_for(lambda: "re-queued" in server_log(server), 30.0, "the re-queue warning in the server log")
        assert "WARNING" in server_log(server)

        # A long TTL again: a silent holder keeps its work.
        applied(http, {"node.ttl": "5m"})
        third = worker()
        assert third.checkout_id() == wu_id
        time.sleep(3.0)
        assert state(wu_id) == "checkout"
        assert third.report(wu_id).status_code == 200
        assert http.get(f"/job/{job_id}").json()["data"]["state"] == "completed"
    finally:
        http.close()
        for made_worker in made:
            made_worker.close()


@pytest.mark.timeout(300)
def test_log_level_debug_adds_debug_lines(tmp_path: Path, servers: list[ServerProcess]) -> None:
    server = ServerProcess(tmp_path / "server", f"sqlite:///{tmp_path / 'p.db'}", env=SWEEP_ENV).start()
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.put("/api/v1/log/config", json={"level": "debug"}).status_code == 200
        # Something for the server to talk about: a change, a job, a worker taking and finishing it.
        applied(http, {"job.diskType": "io2"})
        job_id = http.post("/job", files=upload(script(task("0")))).json()["data"]["id"]
        worker = Worker(server.url, timeout=60)
        try:
            assert worker.register().status_code == 200
            wu_id = worker.checkout_id()
            worker.instructions([wu_id])
            assert worker.report(wu_id).status_code == 200
        finally:
            worker.close()
        assert http.get(f"/job/{job_id}").json()["data"]["state"] == "completed"
        wait_for(lambda: " DEBUG " in server_log(server), 10.0, "a DEBUG line in the server log")
