"""``/api/v1`` configuration, security and logging (management-api.txt), and the log files.

Errors here use the management API's shape ``{"statusCode","errorCode","message","fields"}``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse

from perdure.api import openapi as oa
from perdure.api.auth import require_admin
from perdure.api.context import ctx
from perdure.config.documents import MASK, to_document
from perdure.config.keys import apply_kv
from perdure.config.model import ServerConfig
from perdure.config.values import ConfigError
from perdure.errors import BadRequest, Invalid, NotFound
from perdure.security import TokenError, Verifier

router = APIRouter()
log_files = APIRouter()

#: How tokens are verified changes only through /api/v1/security/cognito, which checks a token against
#: the new settings first: through configKV one typo would lock everybody out.
_SECURITY_ONLY = frozenset(
    {
        "security.cognito.enabled",
        "security.cognito.clientID",
        "security.cognito.issuer",
        "security.cognito.jwksURL",
        "security.cognito.region",
        "security.cognito.userPoolID",
    }
)
_COGNITO_FIELDS = (
    "region",
    "userPoolID",
    "clientID",
    "identityPoolID",
    "issuer",
    "jwksURL",
    "accessKey",
    "secretKey",
)


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > 1024 * 1024:
        raise BadRequest("request body is too large")
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise Invalid("request body is not JSON", {"body": "not JSON"}) from None


def _invalid(exc: ConfigError) -> Invalid:
    return Invalid(str(exc), exc.fields)


@router.get("/api/v1/config", responses=oa.errors(401, 403, management=True))
def get_config(request: Request) -> JSONResponse:
    return JSONResponse(to_document(ctx(request).config.effective))


@router.put(
    "/api/v1/configKV",
    openapi_extra=oa.query(body=oa.json_body('{"kvMap": {"<key>": "<value>"}}', oa.KV_SCHEMA)),
    responses=oa.errors(400, 401, 403, 422, management=True),
)
async def put_config_kv(request: Request) -> JSONResponse:
    caller = require_admin(request, "change the configuration")
    body = await _json_body(request)
    kv = body.get("kvMap") if isinstance(body, dict) else None
    if not isinstance(kv, dict) or not kv:
        raise Invalid('body must be {"kvMap": {"<key>": "<value>", ...}}', {"kvMap": "missing or empty"})
    blocked = {k: "change it with PUT /api/v1/security/cognito" for k in kv if k in _SECURITY_ONLY}
    if blocked:
        raise Invalid("Invalid argument", blocked)
    context = ctx(request)

    def change(config: ServerConfig) -> ServerConfig:
        updated = apply_kv(config, kv)
        _refuse_lockout(updated, caller)
        return updated

    try:
        effective = await run_in_threadpool(context.config.modify, change)
    except ConfigError as exc:
        raise _invalid(exc) from None
    return JSONResponse(to_document(effective))


def _refuse_lockout(config: ServerConfig, caller: Any) -> None:
    """An admin may not take away the last admin group they are in while security is on."""
    cognito = config.security.cognito
    if cognito.enabled and caller.kind == "user" and not set(caller.groups) & set(cognito.adminGroups):
        raise ConfigError(
            "Invalid argument",
            {"security.cognito.adminGroups": "the new admin groups would exclude you and lock you out"},
        )


# ---- security ---------------------------------------------------------------------------------


def _cognito_view(config: ServerConfig) -> dict[str, Any]:
    cognito = config.security.cognito
    view = {
        "enabled": cognito.enabled,
        "region": cognito.region,
        "userPoolID": cognito.userPoolID,
        "clientID": cognito.clientID,
        "identityPoolID": cognito.identityPoolID,
        "adminGroups": list(cognito.adminGroups),
    }
    if cognito.issuer or cognito.jwksURL:
        view.update(issuer=cognito.issuer, jwksURL=cognito.jwksURL)
    return view


@router.get("/api/v1/security/cognito")  # public: how to sign in
def get_cognito(request: Request) -> JSONResponse:
    return JSONResponse(_cognito_view(ctx(request).config.effective))


@router.put(
    "/api/v1/security/cognito",
    openapi_extra=oa.query(
        body=oa.json_body("The Cognito (or OIDC) settings and an admin `token` that passes them")
    ),
    responses=oa.errors(400, 401, 403, 422, management=True),
)
async def enable_cognito(request: Request) -> JSONResponse:
    """Enable (or re-point) token security; the body's ``token`` must pass the new settings as an admin."""
    context = ctx(request)
    if context.config.effective.security.cognito.enabled:
        require_admin(request, "change security")
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise Invalid("Invalid argument", {"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name in _COGNITO_FIELDS:
        value = body.get(name, "")
        if not isinstance(value, str):
            errors[name] = "must be a string"
        values[name] = value
    groups = body.get("adminGroups", "")
    if isinstance(groups, str):
        values["adminGroups"] = [g.strip() for g in groups.split(",") if g.strip()]
    elif isinstance(groups, list) and all(isinstance(g, str) for g in groups):
        values["adminGroups"] = groups
    else:
        errors["adminGroups"] = "must be a comma-separated string or a list of strings"
    if not values.get("adminGroups"):
        errors.setdefault("adminGroups", "at least one admin group is required")
    if not values.get("clientID"):
        errors["clientID"] = "required"
    if not values.get("issuer") and not (values.get("region") and values.get("userPoolID")):
        errors["userPoolID"] = "region and userPoolID (or an OIDC issuer) are required"
    token = body.get("token")
    if not isinstance(token, str):
        token = ""
    if not token:
        errors["token"] = "an admin's access token is required, so enabling cannot lock everyone out"
    if errors:
        raise Invalid("Invalid argument", errors)
    current = context.config.effective
    candidate = current.security.cognito.model_copy(update={**values, "enabled": True})
    try:
        caller = await run_in_threadpool(Verifier(candidate).verify, token)
    except TokenError as exc:
        raise Invalid(
            "Invalid argument", {"token": f"does not verify against these settings: {exc}"}
        ) from None
    if not caller.admin:
        raise Invalid("Invalid argument", {"token": "carries no admin group; enabling would lock you out"})

    def change(config: ServerConfig) -> ServerConfig:
        cognito = config.security.cognito.model_copy(update={**values, "enabled": True})
        return config.model_copy(update={"security": config.security.model_copy(update={"cognito": cognito})})

    effective = await run_in_threadpool(context.config.modify, change)
    reply = {
        name: effective.security.cognito.model_dump()[name] for name in ("region", "userPoolID", "clientID")
    }
    reply.update(
        identityPoolID=effective.security.cognito.identityPoolID,
        adminGroups=",".join(effective.security.cognito.adminGroups),
        accessKey=MASK if values.get("accessKey") else "",
        secretKey=MASK if values.get("secretKey") else "",
        token=MASK,
    )
    return JSONResponse(reply)


@router.delete("/api/v1/security/cognito", responses=oa.errors(401, 403, management=True))
async def disable_cognito(request: Request) -> JSONResponse:
    require_admin(request, "disable cognito")
    context = ctx(request)

    def change(config: ServerConfig) -> ServerConfig:
        cognito = config.security.cognito.model_copy(update={"enabled": False})
        return config.model_copy(update={"security": config.security.model_copy(update={"cognito": cognito})})

    effective = await run_in_threadpool(context.config.modify, change)
    return JSONResponse(to_document(effective))


# ---- logging ----------------------------------------------------------------------------------


def _log_view(config: ServerConfig) -> dict[str, Any]:
    return {"level": config.log.level, "maxSizeMB": config.log.maxSizeMB, "maxBackups": config.log.maxBackups}


@router.get("/api/v1/log/config", responses=oa.errors(401, 403, management=True))
def get_log_config(request: Request) -> JSONResponse:
    return JSONResponse(_log_view(ctx(request).config.effective))


@router.put(
    "/api/v1/log/config",
    openapi_extra=oa.query(body=oa.json_body("The logging fields to change", oa.LOG_SCHEMA)),
    responses=oa.errors(400, 401, 403, 422, management=True),
)
async def put_log_config(request: Request) -> JSONResponse:
    require_admin(request, "change logging")
    body = await _json_body(request)
    if not isinstance(body, dict) or not body:
        raise Invalid("body must be an object of the fields to change", {"body": "empty or not an object"})
    allowed = {"level", "maxSizeMB", "maxBackups", "file"}
    unknown = {k: "unknown logging field" for k in body if k not in allowed}
    if unknown:
        raise Invalid("Invalid argument", unknown)
    kv = {f"log.{k}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in body.items()}
    try:
        effective = await run_in_threadpool(ctx(request).config.update, kv)
    except ConfigError as exc:
        raise _invalid(exc) from None
    return JSONResponse(_log_view(effective))


@log_files.get("/{name}")
def get_log_file(name: str, request: Request) -> PlainTextResponse:
    """``/<base>.log`` and ``/<base>-access.log``, following ``log.file``; nothing else. Admins only:
    the access log shows every user's requests."""
    require_admin(request, "read the server's logs")
    logs = ctx(request).logs
    path = logs.paths().get(name)
    if path is None:
        raise NotFound("Not Found")
    return PlainTextResponse(logs.read(path))
