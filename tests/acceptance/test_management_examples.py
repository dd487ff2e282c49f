"""Acceptance: the curl examples of management-api.txt's "Authentication", "Checkpoint Configuration" and
"Logging" sections, run for real against a ``perdure server`` process.

Each command is the document's, run as ``curl -s -w '\\n%{http_code}' ...`` without a shell, with
``https://<ip>:<port>`` replaced by the server's (plain HTTP) address and the other placeholders filled
in. Where the document has a continuation typo (``\\`` before a space, which a shell reads as an
escaped space) the backslash is dropped. Where a section gives an endpoint and a body but no curl line
(Set Checkpoint Configuration, and the four Logging endpoints), the command is written in the
document's style from exactly what it gives. Corrections follow spec/README.md: ``PUT /api/v1/log/config``
sets logging; the Enable reply masks ``accessKey``, ``secretKey`` and ``token`` as ``"****"``; Disable
answers the whole configuration; the log paths follow ``log.file``.

Enabling needs a token the server can verify: the test generates an RSA key, serves its JWKS from a
loopback ``http.server`` thread (``tests.integration.test_security.Issuer``), and adds ``jwksURL`` to the
document's body; the issuer stays the Cognito pool's, ``https://cognito-idp.<region>.amazonaws.com/<pool>``.

Each scenario runs once on SQLite and once on PostgreSQL, through the ``server`` fixture.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.curl import Curl, Reply
from tests.integration.test_security import Issuer
from tests.support import ServerProcess

# ---- the document's examples -------------------------------------------------------------------------

# Authentication
GET_COGNITO = "curl -X GET https://<ip>:<port>/api/v1/security/cognito"
ENABLE_COGNITO_AS_PRINTED = (
    "curl -X PUT https://<ip>:<port>/api/v1/security/cognito \\ \n"
    '        -H "Content-Type: application/json" \\ \n'
    """        -d '{"region": "<region>", "userPoolID": "<user-pool-id>", "clientID": "<client-id>", """
    """"identityPoolID": "<identity-pool-id>", "adminGroups":"<admin-groups>", """
    """"accessKey": "<access-key>", "secretKey": "<secret-key>", "token":"<access-token>"}'"""
)
#: The same, plus where our loopback JWKS is (any OIDC provider may be named with issuer/jwksURL).
ENABLE_COGNITO = ENABLE_COGNITO_AS_PRINTED.replace(
    """"token":"<access-token>"}'""", """"token":"<access-token>", "jwksURL": "<jwks-url>"}'"""
)
DISABLE_COGNITO = (
    "curl -X DELETE https://<ip>:<port>/api/v1/security/cognito \\ "
    '-H "Content-Type: application/json" \\ -H "Authorization: bearer <access-token>"'
)

# Checkpoint Configuration ("Set" has no curl line: its endpoint and body, in the same style)
GET_CONFIG = "curl -X GET https://<ip>:<port>/api/v1/config"
SET_CONFIG = (
    "curl -X PUT https://<ip>:<port>/api/v1/configKV "
    """-H "Content-Type: application/json" -d '{"kvMap": {"<key>":"<value>"}}'"""
)
SET_ADMIN_GROUPS = (
    "curl -X PUT https://<ip>:<port>/api/v1/configKV "
    """-H "Content-Type: application/json" -d '{"kvMap": {"security.cognito.adminGroups":"admin,root"}}'"""
)
SET_CUSTOM_TAGS = (
    "curl -X PUT https://<ip>:<port>/api/v1/configKV "
    """-H "Content-Type: application/json" -d '{"kvMap": {"job.customTags": "owner:name,team:engineer"}}'"""
)

# Logging (no curl lines: the endpoints and bodies it gives; "Set" is PUT per spec/README.md)
GET_LOG_CONFIG = "curl -X GET https://<ip>:<port>/api/v1/log/config"
SET_LOG_CONFIG = (
    "curl -X PUT https://<ip>:<port>/api/v1/log/config "
    """-H "Content-Type: application/json" -d '{"level": "debug"}'"""
)
GET_SERVER_LOG = "curl -X GET https://<ip>:<port>/mmab.log"
GET_ACCESS_LOG = "curl -X GET https://<ip>:<port>/mmab-access.log"

#: Server start-up is slow on a busy machine; the whole scenario gets this long.
pytestmark = pytest.mark.timeout(300)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# ---- running curl (tests/acceptance/curl.py) ----------------------------------------------------


@pytest.fixture
def curl(server: ServerProcess, tmp_path: Path) -> Curl:
    return Curl(server, tmp_path, {"https://<ip>:<port>": server.url})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


# ---- what a user sees --------------------------------------------------------------------------------


def ok(reply: Reply) -> Any:
    assert reply.status == 200, reply
    return reply.json


def mgmt_error(reply: Reply, status: int, code: int) -> dict[str, Any]:
    """``{"statusCode": <status>, "errorCode": <code>, "message": "..."[, "fields": {...}]}``."""
    assert reply.status == status, reply
    body: dict[str, Any] = reply.json
    assert (
        {"statusCode", "errorCode", "message"}
        <= set(body)
        <= {"statusCode", "errorCode", "message", "fields"}
    )
    assert (body["statusCode"], body["errorCode"]) == (status, code), reply
    return body


def keys_in(document: Any, example: Any, where: str = "") -> list[str]:
    """Keys of the document's example response that our answer lacks (recursively)."""
    if not isinstance(example, dict):
        return []
    if not isinstance(document, dict):
        return [where or "."]
    missing = []
    for key, value in example.items():
        if key not in document:
            missing.append(f"{where}{key}")
        else:
            missing += keys_in(document[key], value, f"{where}{key}.")
    return missing


#: The document's "Get Checkpoint Configuration" answer (placeholders' values aside).
CONFIG_EXAMPLE = {
    "addr": "",
    "id": "",
    "staticFolder": "",
    "security": {
        "certFile": "",
        "keyFile": "",
        "cognito": {
            "enabled": False,
            "userPoolID": "",
            "identityPoolID": "",
            "clientID": "",
            "adminGroups": [],
        },
    },
    "ckpt": {
        "ckptMode": "",
        "ckptImagePath": "",
        "ckptInterval": "",
        "ckptFiles": None,
        "IRMapScanPaths": None,
        "rootFSDiff": True,
        "tcpClose": True,
    },
    "node": {"heartbeat": "", "ttl": ""},
    "job": {
        "ebsPerJob": True,
        "customTags": {},
        "ebsMountPath": "",
        "diskType": "",
        "diskSizeGB": 0,
        "diskThroughputMB": 0,
    },
}
#: The "Disable AWS Cognito" answer adds the log section (and diagnosisMode).
DISABLE_EXAMPLE = {
    **CONFIG_EXAMPLE,
    "log": {"file": "", "level": "", "maxSizeMB": 0, "maxBackups": 0},
    "ckpt": {"ckptMode": "", "ckptInterval": "", "diagnosisMode": False},
}


# ---- scenarios ---------------------------------------------------------------------------------------


def test_checkpoint_configuration_examples(curl: Curl, server: ServerProcess) -> None:
    """Get the configuration; set keys with the document's value spellings, lists and maps."""
    document = ok(curl(GET_CONFIG))
    assert keys_in(document, CONFIG_EXAMPLE) == []
    assert document["addr"] == server.url
    assert UUID.match(document["id"]), document["id"]
    assert document["security"]["cognito"] == {
        **document["security"]["cognito"],
        "enabled": False,
        "userPoolID": "",
        "identityPoolID": "",
        "clientID": "",
        "adminGroups": ["admin"],
    }
    ckpt = document["ckpt"]
    assert (ckpt["ckptMode"], ckpt["ckptInterval"], ckpt["ckptFiles"], ckpt["IRMapScanPaths"]) == (
        "iterative",
        "1h0m0s",
        None,
        None,
    )
    assert (ckpt["rootFSDiff"], ckpt["tcpClose"]) == (True, True)
    assert document["node"] == {"heartbeat": "30s", "ttl": "5m0s"}
    job = document["job"]
    assert (job["diskType"], job["diskSizeGB"], job["diskThroughputMB"]) == ("gp3", 120, 125)

    # "Use the full path of the configuration key such as node.ttl": "5m", "true", "500".
    changed = ok(curl(SET_CONFIG, key="node.ttl", value="10m"))
    assert changed["node"]["ttl"] == "10m0s"
    assert changed == ok(curl(GET_CONFIG))  # "Same as GET request."
    assert ok(curl(SET_CONFIG, key="node.ttl", value="5m"))["node"]["ttl"] == "5m0s"
    # A boolean ("true"). Not job.ebsPerJob: Perdure keeps no per-job volume, and refuses to be told to
    # rather than ignore it (issue 21).
    refused = mgmt_error(curl(SET_CONFIG, key="job.ebsPerJob", value="true"), 422, 1003)
    assert "job.ebsPerJob" in str(refused), refused
    assert ok(curl(SET_CONFIG, key="ckpt.tcpClose", value="false"))["ckpt"]["tcpClose"] is False
    assert ok(curl(SET_CONFIG, key="ckpt.tcpClose", value="true"))["ckpt"]["tcpClose"] is True
    assert ok(curl(SET_CONFIG, key="job.diskSizeGB", value="500"))["job"]["diskSizeGB"] == 500
    assert ok(curl(SET_CONFIG, key="ckpt.ckptInterval", value="15m"))["ckpt"]["ckptInterval"] == "15m0s"
    assert ok(curl(SET_ADMIN_GROUPS))["security"]["cognito"]["adminGroups"] == ["admin", "root"]
    assert ok(curl(SET_CUSTOM_TAGS))["job"]["customTags"] == {"owner": "name", "team": "engineer"}
    # "You can specify multiple keys and values in the same map."
    several = SET_CONFIG.replace(
        '"<key>":"<value>"', '"job.ebsMountPath":"/mnt/mmab", "ckpt.ckptMode":"none"'
    )
    both = ok(curl(several))
    assert (both["job"]["ebsMountPath"], both["ckpt"]["ckptMode"]) == ("/mnt/mmab", "none")

    # A key or value the configuration cannot take: the document's 422 "Invalid argument", naming it.
    before = ok(curl(GET_CONFIG))
    for key, value in (
        ("node.tll", "5m"),
        ("node.ttl", "5 minutes"),
        ("job.diskSizeGB", "lots"),
        ("id", "x"),
    ):
        refused = mgmt_error(curl(SET_CONFIG, key=key, value=value), 422, 1003)
        assert refused["message"] == "Invalid argument", refused
        assert list(refused["fields"]) == [key], refused
    assert ok(curl(GET_CONFIG)) == before


def test_logging_examples(curl: Curl, server: ServerProcess) -> None:
    """Get and set the logging configuration; read the server and access logs, following log.file."""
    assert ok(curl(GET_LOG_CONFIG)) == {"level": "info", "maxSizeMB": 10, "maxBackups": 10}
    assert ok(curl(SET_LOG_CONFIG)) == {"level": "debug", "maxSizeMB": 10, "maxBackups": 10}
    assert ok(curl(GET_LOG_CONFIG)) == {"level": "debug", "maxSizeMB": 10, "maxBackups": 10}
    assert ok(curl(GET_CONFIG))["log"]["level"] == "debug"
    refused = mgmt_error(curl(SET_LOG_CONFIG.replace('"debug"', '"chatty"')), 422, 1003)
    assert "log.level" in refused["fields"]

    # Our default base name is perdure: /perdure.log and /perdure-access.log.
    assert curl(GET_SERVER_LOG.replace("mmab", "perdure")).status == 200
    access = curl(GET_ACCESS_LOG.replace("mmab", "perdure"))
    assert access.status == 200
    assert '"PUT /api/v1/log/config" 200' in access.text
    assert '"PUT /api/v1/log/config" 422' in access.text
    assert mgmt_error(curl(GET_SERVER_LOG), 404, 1004)

    # "If you change the log file name in the log config, the path will also be changed."
    renamed = SET_LOG_CONFIG.replace('"level": "debug"', f'"file": "{server.data_dir / "mmab.log"}"')
    assert ok(curl(renamed))["level"] == "debug"
    assert ok(curl(GET_CONFIG))["log"]["file"] == str(server.data_dir / "mmab.log")
    server_log = curl(GET_SERVER_LOG)
    assert server_log.status == 200
    assert server_log.text == (server.data_dir / "mmab.log").read_text()
    access = curl(GET_ACCESS_LOG)
    assert access.status == 200
    assert re.search(r'127\.0\.0\.1 public "GET /mmab\.log" 200 \d+ [\d.]+ms', access.text), access
    for gone in (GET_SERVER_LOG, GET_ACCESS_LOG):
        mgmt_error(curl(gone.replace("mmab", "perdure")), 404, 1004)


def test_get_cognito_example_works_without_a_token_when_enabled(curl: Curl, issuer: Issuer) -> None:
    admin = issuer.token("root", ("admin",))
    values = enable_values(issuer, admin)
    ok(curl(ENABLE_COGNITO, **values))
    shown = ok(curl(GET_COGNITO))
    assert shown["enabled"] is True
    assert (shown["region"], shown["userPoolID"], shown["clientID"]) == (
        values["region"],
        values["user-pool-id"],
        values["client-id"],
    )


def enable_values(issuer: Issuer, token: str, **changes: str) -> dict[str, str]:
    """Values for the Enable example's placeholders (the token's issuer is this pool's)."""
    return {
        "region": "us-west-1",
        "user-pool-id": "us-west-1_perdureTest",
        "client-id": issuer.client_id,
        "identity-pool-id": f"us-west-1:{uuid.uuid4()}",
        "admin-groups": "admin",
        "access-key": "AKIA" + uuid.uuid4().hex[:16].upper(),
        "secret-key": uuid.uuid4().hex + uuid.uuid4().hex,
        "access-token": token,
        "jwks-url": issuer.jwks_url,
        **changes,
    }


def test_authentication_examples(curl: Curl, issuer: Issuer) -> None:
    """Get, enable (refused, then accepted) and disable Cognito, as the document shows them."""
    assert ok(curl(GET_COGNITO)) == {
        "enabled": False,
        "region": "",
        "userPoolID": "",
        "clientID": "",
        "identityPoolID": "",
        "adminGroups": ["admin"],
    }
    admin, user, nobody = (
        issuer.token("root", ("admin",)),
        issuer.token("alice", ("users",)),
        issuer.token("carol", None),
    )

    # 422 Invalid input: a token that is not an admin's, or does not verify, or no clientID.
    for values in (
        enable_values(issuer, user),
        enable_values(issuer, issuer.token("root", ("admin",), client_id="another-app")),
        enable_values(issuer, admin, **{"client-id": ""}),
    ):
        refused = mgmt_error(curl(ENABLE_COGNITO, **values), 422, 1003)
        assert refused["message"] == "Invalid argument"
        assert values["secret-key"] not in json.dumps(refused)
    assert ok(curl(GET_COGNITO))["enabled"] is False

    # 200: the document's fields come back, the secrets masked (spec/README.md).
    values = enable_values(issuer, admin)
    assert ok(curl(ENABLE_COGNITO, **values)) == {
        "region": values["region"],
        "userPoolID": values["user-pool-id"],
        "clientID": values["client-id"],
        "identityPoolID": values["identity-pool-id"],
        "adminGroups": values["admin-groups"],
        "accessKey": "****",
        "secretKey": "****",
        "token": "****",
    }
    # Security is on: the other examples, as printed without a token, are refused.
    mgmt_error(curl(GET_CONFIG), 401, 2001)
    mgmt_error(curl(SET_LOG_CONFIG), 401, 2001)

    # 403 Not privileged: exactly the document's example for a token without groups.
    assert curl(DISABLE_COGNITO, **{"access-token": nobody}).json == {
        "statusCode": 403,
        "errorCode": 2005,
        "message": "User is not privileged, only admin can disable cognito",
        "fields": {"adminGroups": ["admin"], "groupsInToken": None},
    }
    refused = mgmt_error(curl(DISABLE_COGNITO, **{"access-token": user}), 403, 2005)
    assert refused["fields"] == {"adminGroups": ["admin"], "groupsInToken": ["users"]}

    # 200: the whole configuration, cognito disabled, secrets masked.
    document = ok(curl(DISABLE_COGNITO, **{"access-token": admin}))
    assert keys_in(document, DISABLE_EXAMPLE) == []
    cognito = document["security"]["cognito"]
    assert cognito["enabled"] is False
    assert (
        cognito["userPoolID"],
        cognito["identityPoolID"],
        cognito["clientID"],
        cognito["adminGroups"],
    ) == (
        values["user-pool-id"],
        values["identity-pool-id"],
        values["client-id"],
        ["admin"],
    )
    assert (cognito["accessKey"], cognito["secretKey"]) == ("****", "****")
    assert document == ok(curl(GET_CONFIG))
    shown = ok(curl(GET_COGNITO))
    assert (shown["enabled"], shown["userPoolID"], shown["clientID"]) == (
        False,
        values["user-pool-id"],
        values["client-id"],
    )

    # No reply ever carried a secret or the admin's token (the commands did, in their arguments).
    for reply in curl.replies:
        for secret in (values["access-key"], values["secret-key"], admin):
            assert secret not in reply.text, reply
