"""Token security (management-api.txt "Authentication"; spec/README.md corrections) against forged tokens.

Every key is made by the test identity provider (``tests/idp.py``): an ``Issuer`` generates RSA keys
with ``cryptography``, serves their JWKS from a ``http.server`` thread on loopback, and mints tokens
with PyJWT (or by hand, for the forgeries PyJWT refuses to make: ``alg: none`` and HS256 signed with
the public key PEM). Security is enabled the way
a user does it, ``PUT /api/v1/security/cognito`` with an admin's token, pointed at the loopback JWKS
with ``jwksURL`` (the issuer stays Cognito's ``https://cognito-idp.<region>.amazonaws.com/<pool>``
unless a test sets ``issuer``, the any-OIDC-provider mode).

* the matrix: valid admin, valid non-admin, expired, not yet valid, wrong issuer, wrong audience, wrong
  ``token_use``, unknown ``kid``, ``alg: none``, HS256 with the public key, tampered payload, missing
  token - each on a read and a change, on ``/api/v1`` (management error shape) and ``/job`` (AWE's);
* enabling with a token that does not verify or is not an admin's is 422 and security stays off;
  disabling needs an admin (403 errorCode 2005 with ``adminGroups`` and ``groupsInToken``);
* non-admin users see only their own jobs; clientgroup tokens work on worker routes only;
* a signing key added to the JWKS after the server started is picked up;
* secrets (accessKey, secretKey, the PUT token, a job's Datatoken) never appear in a response body or
  in the server's log files - checked against a real server process.

In-process tests use the ``client`` fixture (SQLite and PostgreSQL); the leak check and the JWKS
rotation run against a real ``perdure server`` process on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from perdure.api.app import create_app
from perdure.security import Verifier
from perdure.settings import Settings
from tests.idp import CLIENT_ID, COGNITO_ISSUER, POOL, REGION, Issuer
from tests.jobs import script, task, upload
from tests.support import ServerProcess
from tests.support import wait_for as _wait_for

OIDC_ISSUER = "https://idp.example.test/realms/perdure"

MGMT_ERROR_KEYS = {"statusCode", "errorCode", "message"}
AWE_ERROR_KEYS = {"status", "data", "error"}


#: Each poll here asks a server something, so polls are spaced out.
wait_for = partial(_wait_for, interval=0.5)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enable_body(issuer: Issuer, token: str, **changes: Any) -> dict[str, Any]:
    """The document's "Enable AWS Cognito" body, pointed at our JWKS (``changes`` override fields)."""
    body: dict[str, Any] = {
        "region": REGION,
        "userPoolID": POOL,
        "clientID": issuer.client_id,
        "identityPoolID": f"{REGION}:{uuid.uuid4()}",
        "adminGroups": "admin",
        "accessKey": "",
        "secretKey": "",
        "token": token,
        "jwksURL": issuer.jwks_url,
    }
    if issuer.issuer != COGNITO_ISSUER:
        body["issuer"] = issuer.issuer
    body.update(changes)
    return body


# ---- response shapes ---------------------------------------------------------------------------------


def mgmt_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """``{"statusCode","errorCode","message"[,"fields"]}`` with the given status and code."""
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert MGMT_ERROR_KEYS <= set(body) <= MGMT_ERROR_KEYS | {"fields"}, f"{where}: {body}"
    assert (body["statusCode"], body["errorCode"]) == (status, code), f"{where}: {body}"
    assert isinstance(body["message"], str) and body["message"], f"{where}: {body}"
    return body


def awe_error(response: httpx.Response, status: int) -> str:
    """AWE's envelope ``{"status": <status>, "data": null, "error": ["<message>"]}``."""
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
    body = response.json()
    assert set(body) == AWE_ERROR_KEYS, f"{where}: {body}"
    assert (body["status"], body["data"]) == (status, None), f"{where}: {body}"
    assert isinstance(body["error"], list) and len(body["error"]) == 1, f"{where}: {body}"
    message: str = body["error"][0]
    assert message, f"{where}: {body}"
    return message


def data_of(response: httpx.Response) -> Any:
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code == 200, f"{where}: {response.status_code} {response.text}"
    body = response.json()
    assert (body["status"], body["error"]) == (200, None), f"{where}: {body}"
    return body["data"]


def submit(http: Any, headers: dict[str, str], name: str = "job", **extra: str) -> str:
    """Submit a one-task job; ``extra`` headers (e.g. a Datatoken) are sent along."""
    response = http.post("/job", files=upload(script(task("0"), name=name)), headers={**headers, **extra})
    job_id: str = data_of(response)["id"]
    return job_id


def listed(http: Any, headers: dict[str, str]) -> set[str]:
    response = http.get("/job", params={"limit": 1000}, headers=headers)
    return {job["id"] for job in data_of(response)}


def config_of(http: Any, headers: dict[str, str]) -> dict[str, Any]:
    response = http.get("/api/v1/config", headers=headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def profile(client_id: str, group: str) -> dict[str, Any]:
    document = {"id": client_id, "name": client_id, "group": group, "apps": ["*"], "hostname": "localhost"}
    return {"profile": ("profile.json", json.dumps(document), "application/json")}


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


@pytest.fixture(scope="module")
def oidc_issuer() -> Iterator[Issuer]:
    made = Issuer(issuer=OIDC_ISSUER, client_id="perdure-oidc")
    yield made
    made.close()


def enable(http: Any, issuer: Issuer, admin_token: str, **changes: Any) -> dict[str, Any]:
    response = http.put("/api/v1/security/cognito", json=enable_body(issuer, admin_token, **changes))
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


@pytest.fixture
def secured(client: TestClient, issuer: Issuer) -> TestClient:
    """The in-process app with Cognito enabled against ``issuer`` (admin group ``admin``)."""
    enable(client, issuer, issuer.token("root", ("admin",)))
    assert client.get("/api/v1/config").status_code == 401
    return client


@pytest.fixture
def sqlite_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", db_url=f"sqlite:///{tmp_path / 'p.db'}", sweep_interval_s=0.2
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# ---- the token matrix -------------------------------------------------------------------------------


def forged_tokens(issuer: Issuer) -> dict[str, str]:
    """Every token that must be refused (401), by what is wrong with it."""
    now = int(time.time())
    unpublished = issuer.new_key(publish=False)
    return {
        "expired": issuer.token(exp=now - 3600, iat=now - 7200, auth_time=now - 7200),
        "not yet valid (nbf in an hour)": issuer.token(nbf=now + 3600),
        "wrong issuer": issuer.token(iss="https://cognito-idp.us-east-1.amazonaws.com/us-east-1_other"),
        "wrong audience (access token client_id)": issuer.token(client_id="someone-elses-app"),
        "wrong audience (id token aud)": issuer.token(
            client_id=None, aud="someone-elses-app", token_use="id"
        ),
        "wrong token_use (refresh)": issuer.token(token_use="refresh"),
        "unknown kid": issuer.token(kid=unpublished),
        "alg none": issuer.alg_none(issuer.claims()),
        "HS256 signed with the public key": issuer.hs256_with_public_key(issuer.claims()),
        "tampered payload (non-admin made admin)": issuer.tampered(
            issuer.token("mallory", ("users",)), **{"cognito:groups": ["admin"]}
        ),
        "signed by an unpublished key under the published kid": issuer.token(signer=unpublished),
        "not a JWT": "not-a-jwt",
    }


def four_requests(http: Any, headers: dict[str, str], job_id: str) -> dict[str, httpx.Response]:
    """A read and a change on each API: /api/v1 (management shape) and /job (AWE's envelope)."""
    return {
        "GET /api/v1/config": http.get("/api/v1/config", headers=headers),
        "PUT /api/v1/configKV": http.put(
            "/api/v1/configKV", json={"kvMap": {"node.ttl": "7m"}}, headers=headers
        ),
        "GET /job": http.get("/job", headers=headers),
        "PUT /job/<id>?suspend": http.put(f"/job/{job_id}?suspend", headers=headers),
    }


def shape_problems(name: str, replies: dict[str, httpx.Response], status: int) -> list[str]:
    """What is wrong with ``replies`` if each should be a ``status`` error in its API's shape."""
    problems = []
    for what, response in replies.items():
        try:
            if what.startswith(("GET /api", "PUT /api")):
                mgmt_error(response, status, 2001 if status == 401 else 2005)
            else:
                awe_error(response, status)
        except AssertionError as exc:
            problems.append(f"{name}: {what}: {exc}")
    return problems


def test_token_matrix_on_reads_and_changes(secured: TestClient, issuer: Issuer) -> None:
    admin = bearer(issuer.token("root", ("admin",)))
    job_id = submit(secured, admin, name="admins-job")

    # Every bad token, and no token at all, is 401 on both APIs, reads and changes alike.
    problems: list[str] = []
    cases = {**{k: bearer(v) for k, v in forged_tokens(issuer).items()}, "missing token": {}}
    cases |= {
        "not a bearer token": {"Authorization": "Basic cm9vdDpyb290"},
        "empty bearer": {"Authorization": "Bearer "},
    }
    for name, headers in cases.items():
        problems += shape_problems(name, four_requests(secured, headers, job_id), 401)
    assert problems == []
    # ... and none of those changes happened.
    assert config_of(secured, admin)["node"]["ttl"] == "5m0s"
    assert data_of(secured.get(f"/job/{job_id}", headers=admin))["state"] == "queued"

    # A valid non-admin reads its own jobs only; the configuration is an admin's to read (issue 17)
    # and to change: 403 errorCode 2005 with the groups.
    user = bearer(issuer.token("alice", ("users", "lab")))
    replies = four_requests(secured, user, job_id)
    for what in ("GET /api/v1/config", "PUT /api/v1/configKV"):
        refused = mgmt_error(replies[what], 403, 2005)
        assert refused["fields"] == {"adminGroups": ["admin"], "groupsInToken": ["users", "lab"]}
    assert data_of(replies["GET /job"]) == []
    assert awe_error(replies["PUT /job/<id>?suspend"], 404) == "Not Found"
    assert config_of(secured, admin)["node"]["ttl"] == "5m0s"
    assert data_of(secured.get(f"/job/{job_id}", headers=admin))["state"] == "queued"

    # The admin does both (access token, and an id token whose aud is the client).
    id_token = bearer(issuer.token("root", ("admin",), client_id=None, aud=CLIENT_ID, token_use="id"))
    for headers in (admin, id_token):
        replies = four_requests(secured, headers, job_id)
        assert replies["GET /api/v1/config"].status_code == 200
        assert replies["PUT /api/v1/configKV"].status_code == 200, replies["PUT /api/v1/configKV"].text
        assert replies["PUT /api/v1/configKV"].json()["node"]["ttl"] == "7m0s"
        assert [job["id"] for job in data_of(replies["GET /job"])] == [job_id]
        assert data_of(replies["PUT /job/<id>?suspend"]) == f"job suspended: {job_id}"
        assert data_of(secured.put(f"/job/{job_id}?resume", headers=admin)) == f"job resumed: {job_id}"

    # The scheme is case-insensitive; "/" stays public.
    assert (
        secured.get("/api/v1/config", headers={"Authorization": f"bearer {issuer.token()}"}).status_code
        == 200
    )
    # (/openapi.json is checked on the real server: in-process, FastAPI's duplicate-operation-id warning
    # for api/nodes.py's GET+HEAD route is an error under filterwarnings=error.)
    assert secured.get("/").status_code == 200


def test_cognito_mode_requires_token_use(secured: TestClient, issuer: Issuer) -> None:
    """A Cognito pool's tokens say what they are: one without ``token_use`` is refused."""
    reply = secured.get("/api/v1/config", headers=bearer(issuer.token(token_use=None)))
    assert "token_use" in mgmt_error(reply, 401, 2001)["message"]
    reply = secured.get("/api/v1/config", headers=bearer(issuer.token(client_id=None)))
    mgmt_error(reply, 401, 2001)


def test_any_oidc_provider_with_issuer_and_jwks_url(client: TestClient, oidc_issuer: Issuer) -> None:
    """``issuer`` + ``jwksURL``: ``token_use`` is checked only when present, ``groups`` names the groups."""
    admin = oidc_issuer.token("root", ("admin",), group_claim="groups", token_use=None)
    reply = enable(client, oidc_issuer, admin, region="", userPoolID="")
    assert reply["token"] == "****"
    view = client.get("/api/v1/security/cognito", headers=bearer(admin)).json()
    assert (view["enabled"], view["issuer"], view["jwksURL"]) == (True, OIDC_ISSUER, oidc_issuer.jwks_url)

    assert (
        client.put(
            "/api/v1/configKV", json={"kvMap": {"job.diskType": "io2"}}, headers=bearer(admin)
        ).status_code
        == 200
    )
    user = oidc_issuer.token(
        "alice", ("users",), group_claim="groups", token_use=None, aud="perdure-oidc", client_id=None
    )
    assert client.get("/job", headers=bearer(user)).status_code == 200  # verified, not an admin:
    mgmt_error(client.get("/api/v1/config", headers=bearer(user)), 403, 2005)  # admin-only (issue 17)
    mgmt_error(
        client.put("/api/v1/configKV", json={"kvMap": {"job.diskType": "st1"}}, headers=bearer(user)),
        403,
        2005,
    )
    for bad in (
        oidc_issuer.token(token_use="refresh"),
        oidc_issuer.token(iss=COGNITO_ISSUER),
        oidc_issuer.token(client_id="other"),
        oidc_issuer.token(exp=int(time.time()) - 3600),
    ):
        mgmt_error(client.get("/api/v1/config", headers=bearer(bad)), 401, 2001)


# ---- enabling and disabling -------------------------------------------------------------------------


def test_enabling_needs_an_admin_token_that_verifies_against_the_new_settings(
    client: TestClient, issuer: Issuer
) -> None:
    now = int(time.time())
    refusals: dict[str, tuple[dict[str, Any], str]] = {
        "a non-admin's token": (enable_body(issuer, issuer.token("alice", ("users",))), "token"),
        "a token without groups": (enable_body(issuer, issuer.token("alice", None)), "token"),
        "an expired admin token": (enable_body(issuer, issuer.token(exp=now - 3600)), "token"),
        "an admin token for another client": (
            enable_body(issuer, issuer.token(), clientID="other-app"),
            "token",
        ),
        "an admin token from another pool": (
            enable_body(issuer, issuer.token(), userPoolID="us-west-1_other"),
            "token",
        ),
        "admin groups that exclude the token's": (
            enable_body(issuer, issuer.token(), adminGroups="ops"),
            "token",
        ),
        "an admin token signed by an unknown key": (
            enable_body(issuer, issuer.token(kid=issuer.new_key(publish=False))),
            "token",
        ),
        "a forged alg-none token": (enable_body(issuer, issuer.alg_none(issuer.claims())), "token"),
        "no token": (enable_body(issuer, ""), "token"),
        "no token field": ({k: v for k, v in enable_body(issuer, "x").items() if k != "token"}, "token"),
        "no clientID": (enable_body(issuer, issuer.token(), clientID=""), "clientID"),
        "no user pool": (enable_body(issuer, issuer.token(), userPoolID="", region=""), "userPoolID"),
        "empty admin groups": (enable_body(issuer, issuer.token(), adminGroups=""), "adminGroups"),
        "a JWKS nobody serves": (
            enable_body(issuer, issuer.token(), jwksURL="http://127.0.0.1:9/jwks.json"),
            "token",
        ),
    }
    for name, (body, field) in refusals.items():
        reply = client.put("/api/v1/security/cognito", json=body)
        refused = mgmt_error(reply, 422, 1003)
        assert field in refused.get("fields", {}), f"{name}: {refused}"
        if body.get("token"):
            assert body["token"] not in reply.text, name
        view = client.get("/api/v1/security/cognito")
        assert view.status_code == 200, f"{name}: security came on: {view.text}"
        assert view.json()["enabled"] is False, name
    cognito = config_of(client, {})["security"]["cognito"]
    assert (cognito["enabled"], cognito["clientID"], cognito["userPoolID"]) == (False, "", "")

    # Not JSON, or not an object.
    mgmt_error(client.put("/api/v1/security/cognito", content=b"{not json"), 422, 1003)
    mgmt_error(client.put("/api/v1/security/cognito", json=["region"]), 422, 1003)
    # And it cannot be switched on behind the endpoint's back.
    reply = client.put("/api/v1/configKV", json={"kvMap": {"security.cognito.enabled": "true"}})
    assert "security.cognito.enabled" in mgmt_error(reply, 422, 1003)["fields"]
    assert client.get("/api/v1/security/cognito").json()["enabled"] is False


def test_disabling_and_repointing_need_an_admin(secured: TestClient, issuer: Issuer) -> None:
    user, nobody = issuer.token("alice", ("users",)), issuer.token("carol", None)
    mgmt_error(secured.delete("/api/v1/security/cognito"), 401, 2001)
    refused = mgmt_error(secured.delete("/api/v1/security/cognito", headers=bearer(user)), 403, 2005)
    assert refused["message"] == "User is not privileged, only admin can disable cognito"
    assert refused["fields"] == {"adminGroups": ["admin"], "groupsInToken": ["users"]}
    # The document's example: a token without groups shows groupsInToken null.
    refused = mgmt_error(secured.delete("/api/v1/security/cognito", headers=bearer(nobody)), 403, 2005)
    assert refused["fields"] == {"adminGroups": ["admin"], "groupsInToken": None}
    # A non-admin cannot re-point security at an issuer of their own either, even with an admin token.
    body = enable_body(issuer, issuer.token(), adminGroups="admin,users")
    mgmt_error(secured.put("/api/v1/security/cognito", json=body, headers=bearer(user)), 403, 2005)
    mgmt_error(secured.put("/api/v1/security/cognito", json=body), 401, 2001)
    # Nor lock the admins out through configKV, nor take the admins' group away from themselves.
    mgmt_error(
        secured.put(
            "/api/v1/configKV",
            json={"kvMap": {"security.cognito.adminGroups": "users"}},
            headers=bearer(user),
        ),
        403,
        2005,
    )
    reply = secured.put(
        "/api/v1/configKV",
        json={"kvMap": {"security.cognito.adminGroups": "ops"}},
        headers=bearer(issuer.token()),
    )
    assert "security.cognito.adminGroups" in mgmt_error(reply, 422, 1003)["fields"]
    assert secured.get("/api/v1/security/cognito", headers=bearer(user)).json()["enabled"] is True

    # The admin disables; the answer is the whole configuration (spec/README.md), cognito off.
    reply = secured.delete("/api/v1/security/cognito", headers=bearer(issuer.token()))
    assert reply.status_code == 200, reply.text
    document = reply.json()
    assert document["security"]["cognito"]["enabled"] is False
    assert document == config_of(secured, {})
    assert secured.get("/api/v1/security/cognito").json()["enabled"] is False


# ---- who sees what ----------------------------------------------------------------------------------


def test_non_admin_users_see_only_their_own_jobs(secured: TestClient, issuer: Issuer) -> None:
    alice, bob = bearer(issuer.token("alice", ("users",))), bearer(issuer.token("bob", ("users",)))
    admin = bearer(issuer.token("root", ("admin",)))
    a_job, b_job = submit(secured, alice, "alices"), submit(secured, bob, "bobs")
    admin_job = submit(secured, admin, "admins")

    assert listed(secured, alice) == {a_job}
    assert listed(secured, bob) == {b_job}
    assert listed(secured, admin) == {a_job, b_job, admin_job}
    queried = secured.get("/job", params={"query": "", "info.name": "alices"}, headers=bob)
    assert data_of(queried) == []

    # Another user's job does not exist, whatever bob does with it.
    for method, path in (
        ("GET", f"/job/{a_job}"),
        ("GET", f"/job/{a_job}?report"),
        ("PUT", f"/job/{a_job}?suspend"),
        ("PUT", f"/job/{a_job}?clientgroup=bobs"),
        ("DELETE", f"/job/{a_job}"),
        ("GET", f"/work/{a_job}_0_0"),
    ):
        assert awe_error(secured.request(method, path, headers=bob), 404), (method, path)
    assert awe_error(secured.put("/job?resumeall", headers=bob), 403)
    assert awe_error(secured.delete("/job?suspend", headers=bob), 403)

    # alice's job is as it was; she and the admin can act on it.
    job = data_of(secured.get(f"/job/{a_job}", headers=alice))
    assert (job["state"], job["info"]["clientgroups"]) == ("queued", "")
    assert data_of(secured.put(f"/job/{a_job}?suspend", headers=alice)) == f"job suspended: {a_job}"
    assert data_of(secured.put(f"/job/{a_job}?resume", headers=admin)) == f"job resumed: {a_job}"
    assert data_of(secured.get(f"/job/{b_job}", headers=admin))["id"] == b_job


def test_a_non_admin_user_token_cannot_take_other_users_work_or_datatoken(
    secured: TestClient, issuer: Issuer
) -> None:
    admin = bearer(issuer.token("root", ("admin",)))
    job_id = submit(secured, admin, "admins", Datatoken="DT-" + secrets.token_hex(8))
    bob = bearer(issuer.token("bob", ("users",)))
    client_id = "bobs-laptop"
    secured.post("/client", files=profile(client_id, "default"), headers=bob)
    checkout = secured.get("/work", params={"client": client_id}, headers=bob)
    taken = checkout.json().get("data") if checkout.status_code == 200 else None
    datatoken = None
    if taken:
        reply = secured.get(
            f"/work/{taken['id']}", params={"datatoken": "", "client": client_id}, headers=bob
        )
        datatoken = reply.headers.get("Datatoken")
    problems = []
    if taken and taken["jobid"] == job_id:
        problems.append(f"bob checked out the admin's workunit {taken['id']} (cmd {taken['cmd']['name']!r})")
    if datatoken is not None:
        problems.append("bob read the admin's job's Datatoken")
    assert problems == []


def test_clientgroup_tokens_work_on_worker_routes_only(secured: TestClient, issuer: Issuer) -> None:
    admin = bearer(issuer.token("root", ("admin",)))
    created = data_of(secured.post("/cgroup/lab", headers=admin))
    token = created["token"]
    other = data_of(secured.post("/cgroup/other", headers=admin))["token"]
    mgmt_error(secured.get("/api/v1/config", headers={"Authorization": f"CG_TOKEN {token}"}), 401, 2001)
    awe_error(secured.post("/cgroup/mine", headers=bearer(issuer.token("alice", ("users",)))), 403)
    job_id = submit(secured, admin, "for-workers")
    worker = {"Authorization": f"CG_TOKEN {token}"}

    # The worker protocol: register, heartbeat, check out, report.
    assert data_of(secured.post("/client", files=profile("lab-1", "lab"), headers=worker))["id"] == "lab-1"
    beat = data_of(secured.put("/client/lab-1?heartbeat", json={"busy": False}, headers=worker))
    assert {"ckpt", "heartbeat", "ttl"} <= set(beat)
    workunit = data_of(secured.get("/work", params={"client": "lab-1"}, headers=worker))
    assert workunit["jobid"] == job_id
    data_of(
        secured.put(
            "/client/lab-1?heartbeat",
            json={"busy": True, "current_work": {"data": [workunit["id"]]}},
            headers=worker,
        )
    )
    files = {"stdout": ("stdout", b"ran\n", "text/plain")}
    report = secured.put(
        f"/work/{workunit['id']}", params={"status": "done", "client": "lab-1"}, files=files, headers=worker
    )
    data_of(report)
    assert data_of(secured.get(f"/job/{job_id}", headers=admin))["state"] == "completed"

    # Refused: the token off the worker routes, a wrong or foreign token, no token.
    mgmt_error(secured.get("/api/v1/config", headers=worker), 401, 2001)
    mgmt_error(secured.put("/api/v1/configKV", json={"kvMap": {"node.ttl": "1s"}}, headers=worker), 401, 2001)
    mgmt_error(secured.get("/api/v1/security/cognito", headers=worker), 401, 2001)
    mgmt_error(secured.delete("/api/v1/security/cognito", headers=worker), 401, 2001)
    awe_error(secured.get("/job", headers=worker), 401)
    awe_error(secured.get(f"/job/{job_id}", headers=worker), 401)
    awe_error(secured.post("/job", files=upload(script(task("0"))), headers=worker), 401)
    awe_error(secured.post("/cgroup/evil", headers=worker), 401)
    awe_error(
        secured.post("/client", files=profile("lab-2", "lab"), headers={"Authorization": "CG_TOKEN nope"}),
        401,
    )
    awe_error(
        secured.post(
            "/client", files=profile("lab-3", "lab"), headers={"Authorization": f"CG_TOKEN {other}"}
        ),
        401,
    )
    awe_error(secured.post("/client", files=profile("lab-4", "lab")), 401)
    awe_error(
        secured.put("/client/lab-1?heartbeat", json={}, headers={"Authorization": f"CG_TOKEN {other}"}), 401
    )
    assert token not in json.dumps(data_of(secured.get("/cgroup", headers=admin)))
    assert config_of(secured, admin)["node"]["ttl"] == "5m0s"


def test_configkv_cannot_change_token_verification_behind_the_token_check(
    secured: TestClient, issuer: Issuer
) -> None:
    admin = bearer(issuer.token("root", ("admin",)))
    reply = secured.put(
        "/api/v1/configKV", json={"kvMap": {"security.cognito.clientID": "typo"}}, headers=admin
    )
    still_in = secured.get("/api/v1/config", headers=admin)
    assert reply.status_code == 422 or still_in.status_code == 200, (
        f"configKV answered {reply.status_code}; afterwards the admin gets {still_in.status_code}: locked out"
    )


def test_the_log_endpoints_never_serve_the_stored_secrets(
    secured: TestClient, issuer: Issuer, settings: Settings
) -> None:
    admin, user = bearer(issuer.token("root", ("admin",))), bearer(issuer.token("bob", ("users",)))
    secret = "sk-" + secrets.token_urlsafe(24)
    kv = {"security.cognito.secretKey": secret}
    assert secured.put("/api/v1/configKV", json={"kvMap": kv}, headers=admin).status_code == 200
    config_json = Path(settings.data_dir).resolve() / "config.json"
    assert secret in config_json.read_text()
    moved = secured.put("/api/v1/configKV", json={"kvMap": {"log.file": str(config_json)}}, headers=admin)
    served = {
        who: secured.get("/config.log", headers=headers) for who, headers in (("admin", admin), ("bob", user))
    }
    leaked = [who for who, response in served.items() if secret in response.text]
    assert leaked == [], f"log.file change answered {moved.status_code}; the secret was served to {leaked}"


# ---- JWKS rotation ----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_key_added_to_the_jwks_later_is_picked_up(
    sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotation: the server fetched the JWKS at enabling; a token signed with a key published afterwards
    is accepted once the server fetches again (PyJWT refetches on an unknown kid, at most once per
    cooldown: 30 s in service, 2 s here)."""
    monkeypatch.setattr(Verifier, "refetch_cooldown_s", 2.0)
    rotating = Issuer()
    try:
        old = rotating.token("root", ("admin",))
        enable(sqlite_client, rotating, old)
        fetched = len(rotating.fetches)
        assert fetched >= 1
        new_kid = rotating.new_key(publish=True)
        started = time.monotonic()
        new = rotating.token("root", ("admin",), kid=new_kid)

        def accepted() -> bool:
            status = sqlite_client.get("/api/v1/config", headers=bearer(new)).status_code
            assert status in (200, 401)
            return status == 200

        wait_for(accepted, 60.0, "a token signed with the newly published key to be accepted")
        assert len(rotating.fetches) > fetched
        assert time.monotonic() - started < 20.0, "the refetch did not follow the configured cooldown"
        # The old key still works (both are published), and an unpublished one still does not.
        assert sqlite_client.get("/api/v1/config", headers=bearer(old)).status_code == 200
        stray = rotating.token(kid=rotating.new_key(publish=False))
        mgmt_error(sqlite_client.get("/api/v1/config", headers=bearer(stray)), 401, 2001)
    finally:
        rotating.close()


# ---- secrets never leak (a real server process) --------------------------------------------------------


class Recorder:
    """An httpx client that keeps every response, to search them all for secrets afterwards."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60.0)
        self.responses: list[httpx.Response] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        self.responses.append(response)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.http.close()


@pytest.mark.timeout(300)
def test_secrets_never_appear_in_responses_or_log_files(tmp_path: Path, issuer: Issuer) -> None:
    access_key = "AKIA" + secrets.token_hex(8).upper()
    secret_key = "sk-" + secrets.token_urlsafe(24)
    second_secret = "sk2-" + secrets.token_urlsafe(24)
    datatoken = "DT-" + secrets.token_urlsafe(24)
    query_secret = "q-" + secrets.token_urlsafe(16)
    admin_token = issuer.token("root", ("admin",))
    wrong_token = issuer.token("root", ("admin",), exp=int(time.time()) - 3600)
    secret_values = {
        "accessKey": access_key,
        "secretKey": secret_key,
        "secretKey (set through configKV)": second_secret,
        "Datatoken": datatoken,
        "secret query value": query_secret,
        "the PUT token": admin_token,
        "a refused token": wrong_token,
    }

    server = ServerProcess(tmp_path / "server", f"sqlite:///{tmp_path / 'p.db'}").start()
    http = Recorder(server.url)
    try:
        admin = bearer(admin_token)
        assert http.put("/api/v1/log/config", json={"level": "debug"}).status_code == 200
        body = enable_body(issuer, admin_token, accessKey=access_key, secretKey=secret_key)
        reply = http.put("/api/v1/security/cognito", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {
            "region": REGION,
            "userPoolID": POOL,
            "clientID": CLIENT_ID,
            "identityPoolID": body["identityPoolID"],
            "adminGroups": "admin",
            "accessKey": "****",
            "secretKey": "****",
            "token": "****",
        }
        cognito = http.get("/api/v1/config", headers=admin).json()["security"]["cognito"]
        assert (cognito["accessKey"], cognito["secretKey"]) == ("****", "****")
        view = http.get("/api/v1/security/cognito", headers=admin).json()
        assert view["enabled"] is True
        # Public without a token: the self-description, the API schema, and the Cognito settings a
        # login page needs (no secrets in them); changing them still needs a token.
        assert http.get("/").status_code == http.get("/openapi.json").status_code == 200
        public = http.get("/api/v1/security/cognito")
        assert public.status_code == 200
        assert "secretKey" not in public.text and "accessKey" not in public.text
        assert http.delete("/api/v1/security/cognito").status_code == 401
        assert http.get("/perdure.log").status_code == 401
        reply = http.put(
            "/api/v1/configKV", json={"kvMap": {"security.cognito.secretKey": second_secret}}, headers=admin
        )
        assert reply.status_code == 200 and reply.json()["security"]["cognito"]["secretKey"] == "****"
        # A refused token, and secrets in query strings (which the access log redacts).
        assert http.get("/api/v1/config", headers=bearer(wrong_token)).status_code == 401
        query = {
            "token": query_secret,
            "secretKey": query_secret,
            "password": query_secret,
            "api_key": query_secret,
        }
        assert http.get("/api/v1/config", params=query, headers=admin).status_code == 200

        # A job with a Datatoken, run by a worker with a clientgroup token.
        group_token = http.post("/cgroup/lab", headers=admin).json()["data"]["token"]
        worker = {"Authorization": f"CG_TOKEN {group_token}"}
        job_id = submit(http, admin, "with-token", Datatoken=datatoken)
        assert http.post("/client", files=profile("lab-1", "lab"), headers=worker).status_code == 200
        workunit = data_of(http.get("/work", params={"client": "lab-1"}, headers=worker))
        # The lease holder gets the Datatoken - in a header, never in a body.
        handed = http.get(
            f"/work/{workunit['id']}", params={"datatoken": "", "client": "lab-1"}, headers=worker
        )
        assert handed.headers.get("Datatoken") == datatoken
        assert data_of(handed) is None
        http.responses.remove(handed)
        files = {"stdout": ("stdout", b"ok\n", "text/plain")}
        data_of(
            http.put(
                f"/work/{workunit['id']}",
                params={"status": "done", "client": "lab-1"},
                files=files,
                headers=worker,
            )
        )
        for path in (
            f"/job/{job_id}",
            f"/job/{job_id}?report",
            "/job",
            f"/work/{workunit['id']}",
            "/client",
            "/",
        ):
            assert http.get(path, headers=admin).status_code == 200, path
        # The log files over HTTP, and disabling (whose answer is the whole configuration).
        server_log = http.get("/perdure.log", headers=admin)
        access_log = http.get("/perdure-access.log", headers=admin)
        assert server_log.status_code == access_log.status_code == 200
        assert "token=****" in access_log.text and "secretKey=****" in access_log.text
        assert "GET /api/v1/config" in access_log.text
        disabled = http.delete("/api/v1/security/cognito", headers=admin)
        assert disabled.status_code == 200
        assert disabled.json()["security"]["cognito"]["secretKey"] == "****"
    finally:
        http.close()
        server.stop()

    leaks = []
    for response in http.responses:
        seen = response.text + json.dumps(dict(response.headers))
        leaks += [
            f"{name} in {response.request.method} {response.request.url}"
            for name, v in secret_values.items()
            if v in seen
        ]
    files = [*sorted((server.data_dir / "logs").glob("*.log*")), server.log_path]
    assert len(files) >= 3
    for path in files:
        text = path.read_text(errors="replace")
        leaks += [f"{name} in {path.name}" for name, value in secret_values.items() if value in text]
    assert leaks == []
    # They are stored, though: in config.json, which only the server's user may read.
    stored = server.data_dir / "config.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert secret_key not in stored.read_text() and second_secret in stored.read_text()
    assert admin_token not in stored.read_text()


def test_clientgroup_tokens_reach_the_spot_protection_routes_of_their_own_work(
    secured: TestClient, issuer: Issuer
) -> None:
    admin = bearer(issuer.token("root", ("admin",)))
    token = data_of(secured.post("/cgroup/lab", headers=admin))["token"]
    other = {"Authorization": f"CG_TOKEN {data_of(secured.post('/cgroup/other', headers=admin))['token']}"}
    job_id = submit(secured, admin, "spot")
    worker = {"Authorization": f"CG_TOKEN {token}"}
    data_of(secured.post("/client", files=profile("lab-1", "lab"), headers=worker))
    held = data_of(secured.get("/work", params={"client": "lab-1"}, headers=worker))
    wu = held["id"]
    chunk = b"checkpointed state"
    digest = hashlib.sha256(chunk).hexdigest()
    lab = {"client": "lab-1"}

    data_of(secured.put(f"/work/{wu}/ckpt/chunks/{digest}", params=lab, content=chunk, headers=worker))
    assert secured.head(f"/work/{wu}/ckpt/chunks/{digest}", params=lab, headers=worker).status_code == 200
    # A read needs the lease's data capability too (issue 17, tests/security/test_data_capabilities.py).
    reading = {**lab, "captoken": held["captoken"]}
    got = secured.get(f"/work/{wu}/ckpt/chunks/{digest}", params=reading, headers=worker)
    assert got.status_code == 200 and got.content == chunk
    record = {"ok": False, "error": "disk full"}
    assert data_of(secured.post(f"/work/{wu}/checkpoints", params=lab, json=record, headers=worker)) == "ok"
    assert data_of(secured.get("/checkpoints/collectable", params={"jobs": job_id}, headers=worker)) == []
    data_of(secured.delete(f"/work/{wu}/ckpt", params=lab, headers=worker))

    # Another group's token, or none, reaches none of it.
    awe_error(secured.get(f"/work/{wu}/ckpt/chunks/{digest}", params=lab, headers=other), 401)
    awe_error(secured.post(f"/work/{wu}/checkpoints", params=lab, json=record, headers=other), 401)
    awe_error(secured.post(f"/work/{wu}/restores", params=lab, json={"ok": True}), 401)
    # and a clientgroup token still opens no other route under /work/<id>/...
    awe_error(secured.get(f"/work/{wu}/other", headers=worker), 401)
