"""Management commands: ``perdure config``, ``perdure security``, ``perdure logs``, ``perdure login``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from perdure.remote import Remote, RemoteError, save_login

# soft_wrap: lines go out whole (a log line, a long value), never folded at the terminal width.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
config_app = typer.Typer(help="Read and change the server's configuration.", no_args_is_help=True)
security_app = typer.Typer(help="Token security (AWS Cognito or any OIDC provider).", no_args_is_help=True)

Server = Annotated[
    str | None, typer.Option("--server", help="Server URL (or PERDURE_SERVER, or perdure login).")
]
Token = Annotated[
    str | None, typer.Option("--token", help="Bearer token (or PERDURE_TOKEN, or perdure login).")
]
CaFile = Annotated[str | None, typer.Option("--ca-file", help="CA bundle to trust for HTTPS.")]


def _remote(server: str | None, token: str | None, ca_file: str | None) -> Remote:
    return Remote(server, token, ca_file)


def _fail(exc: RemoteError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


def _lookup(document: Any, key: str) -> Any:
    value = document
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


@config_app.command("get")
def config_get(
    key: Annotated[str | None, typer.Argument(help="A key such as node.ttl; all of it when absent.")] = None,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Print the configuration, or one key of it."""
    try:
        document = _remote(server, token, ca_file).json("GET", "/api/v1/config")
    except RemoteError as exc:
        raise _fail(exc) from None
    if key is None:
        out.print_json(data=document)
        return
    try:
        value = _lookup(document, key)
    except KeyError:
        console.print(f"[red]error:[/red] no configuration key {key!r}")
        raise typer.Exit(1) from None
    out.print(json.dumps(value) if not isinstance(value, str) else value)


@config_app.command("set")
def config_set(
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs, applied all or none.")],
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Change configuration keys (strings parsed by type: 5m, true, 500, a,b, k:v,k2:v2)."""
    kv: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            console.print(f"[red]error:[/red] {pair!r} is not KEY=VALUE")
            raise typer.Exit(2)
        kv[key] = value
    try:
        document = _remote(server, token, ca_file).json("PUT", "/api/v1/configKV", json={"kvMap": kv})
    except RemoteError as exc:
        raise _fail(exc) from None
    for key in kv:
        out.print(f"{key} = {json.dumps(_lookup(document, key))}")


@security_app.command("show")
def security_show(server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Print the Cognito/OIDC settings (secrets are never shown)."""
    try:
        out.print_json(data=_remote(server, token, ca_file).json("GET", "/api/v1/security/cognito"))
    except RemoteError as exc:
        raise _fail(exc) from None


@security_app.command("enable")
def security_enable(
    client_id: Annotated[str, typer.Option(help="The app client id tokens must be issued for.")],
    admin_groups: Annotated[str, typer.Option(help="Comma-separated admin groups.")] = "admin",
    region: Annotated[str, typer.Option(help="Cognito region.")] = "",
    user_pool_id: Annotated[str, typer.Option(help="Cognito user pool id.")] = "",
    identity_pool_id: Annotated[str, typer.Option(help="Cognito identity pool id.")] = "",
    issuer: Annotated[str, typer.Option(help="Any OIDC issuer instead of Cognito.")] = "",
    jwks_url: Annotated[str, typer.Option(help="JWKS URL (default: the issuer's).")] = "",
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Turn token security on; your token must verify against the new settings and be an admin's."""
    remote = _remote(server, token, ca_file)
    if not remote.token:
        console.print(
            "[red]error:[/red] enabling needs your admin token (--token, PERDURE_TOKEN or perdure login)"
        )
        raise typer.Exit(2)
    body = {
        "region": region,
        "userPoolID": user_pool_id,
        "clientID": client_id,
        "identityPoolID": identity_pool_id,
        "adminGroups": admin_groups,
        "issuer": issuer,
        "jwksURL": jwks_url,
        "token": remote.token,
    }
    try:
        out.print_json(data=remote.json("PUT", "/api/v1/security/cognito", json=body))
    except RemoteError as exc:
        raise _fail(exc) from None


@security_app.command("disable")
def security_disable(server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Turn token security off (admins only)."""
    try:
        _remote(server, token, ca_file).json("DELETE", "/api/v1/security/cognito")
    except RemoteError as exc:
        raise _fail(exc) from None
    out.print("token security disabled")


def logs(
    access: Annotated[
        bool, typer.Option("--access", help="The access log instead of the server log.")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing what is added.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between polls with --follow.")] = 2.0,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Print the server's log (base name from log.file in the configuration)."""
    remote = _remote(server, token, ca_file)
    try:
        config = remote.json("GET", "/api/v1/config")
        base = Path(config["log"]["file"] or "perdure.log").stem
        path = f"/{base}-access.log" if access else f"/{base}.log"
        shown = ""
        while True:
            text = remote.request("GET", path).text
            if text.startswith(shown):
                out.print(text[len(shown) :], end="", markup=False, highlight=False)
            else:  # rotated: start over
                out.print(text, end="", markup=False, highlight=False)
            shown = text
            if not follow:
                return
            time.sleep(interval)
    except RemoteError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        return


def login(
    token: Annotated[str, typer.Option("--token", prompt=True, hide_input=True, help="Your bearer token.")],
    server: Annotated[str, typer.Option("--server", help="Server URL.")] = "http://127.0.0.1:8001",
    ca_file: CaFile = None,
) -> None:
    """Remember a server and token for later commands (in a file only you can read)."""
    remote = Remote(server, token, ca_file)
    try:
        remote.json("GET", "/api/v1/security/cognito")
    except RemoteError as exc:
        raise _fail(exc) from None
    path = save_login(remote.server, token, ca_file or "")
    out.print(f"logged in to {remote.server}; saved to {path}")
