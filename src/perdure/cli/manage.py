"""Management commands: ``perdure config``, ``perdure security``, ``perdure logs``, ``perdure login``."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from perdure.cli.common import CaFile, Server, Token, connect
from perdure.sdk import Client, PerdureError
from perdure.sdk.connection import save_login

# soft_wrap: lines go out whole (a log line, a long value), never folded at the terminal width.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
config_app = typer.Typer(help="Read and change the server's configuration.", no_args_is_help=True)
security_app = typer.Typer(help="Token security (AWS Cognito or any OIDC provider).", no_args_is_help=True)


def _remote(server: str | None, token: str | None, ca_file: str | None) -> Client:
    return connect(server, token, ca_file)


def _fail(exc: PerdureError) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(1)


@config_app.command("get")
def config_get(
    key: Annotated[str | None, typer.Argument(help="A key such as node.ttl; all of it when absent.")] = None,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Print the configuration, or one key of it."""
    try:
        config = _remote(server, token, ca_file).config()
    except PerdureError as exc:
        raise _fail(exc) from None
    if key is None:
        out.print_json(data=config.document)
        return
    try:
        value = config.get(key)
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
        config = _remote(server, token, ca_file).set_config(kv)
    except PerdureError as exc:
        raise _fail(exc) from None
    for key in kv:
        out.print(f"{key} = {json.dumps(config.get(key))}")


@security_app.command("show")
def security_show(server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Print the Cognito/OIDC settings (secrets are never shown)."""
    try:
        out.print_json(data=_remote(server, token, ca_file).security().raw)
    except PerdureError as exc:
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
    try:
        enabled = remote.enable_security(
            client_id=client_id,
            admin_groups=admin_groups,
            region=region,
            user_pool_id=user_pool_id,
            identity_pool_id=identity_pool_id,
            issuer=issuer,
            jwks_url=jwks_url,
        )
        out.print_json(data=enabled.raw)
    except PerdureError as exc:
        raise _fail(exc) from None


@security_app.command("disable")
def security_disable(server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Turn token security off (admins only)."""
    try:
        _remote(server, token, ca_file).disable_security()
    except PerdureError as exc:
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
        shown = ""
        while True:
            text = remote.server_log(access=access)
            if text.startswith(shown):
                out.print(text[len(shown) :], end="", markup=False, highlight=False)
            else:  # rotated: start over
                out.print(text, end="", markup=False, highlight=False)
            shown = text
            if not follow:
                return
            time.sleep(interval)
    except PerdureError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        return


def login(
    token: Annotated[str, typer.Option("--token", prompt=True, hide_input=True, help="Your bearer token.")],
    server: Annotated[str, typer.Option("--server", help="Server URL.")] = "http://127.0.0.1:8001",
    ca_file: CaFile = None,
) -> None:
    """Remember a server and token for later commands (in a file only you can read)."""
    remote = _remote(server, token, ca_file)
    try:
        remote.security()  # proves the token (with security on, every request needs a valid one)
    except PerdureError as exc:
        raise _fail(exc) from None
    path = save_login(remote.url, token, ca_file or "")
    out.print(f"logged in to {remote.url}; saved to {path}")
