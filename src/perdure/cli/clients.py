"""``perdure clients``, ``perdure client suspend|resume``, ``perdure nodes``, ``perdure node logs``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from perdure.cli.common import (
    CaFile,
    Json,
    Server,
    Token,
    api_errors,
    connect,
    err,
    fetch,
    fit,
    out,
    print_id_operation,
    print_json,
    short_time,
    table,
)
from perdure.sdk import Client
from perdure.states import ClientStatus

client_app = typer.Typer(help="Suspend or resume one client (a worker slot).", no_args_is_help=True)
node_app = typer.Typer(help="One worker machine.", no_args_is_help=True)

ClientId = Annotated[
    str,
    typer.Argument(
        help="The client's id, or a unique prefix of it (see perdure clients).", show_default=False
    ),
]
STATUS_STYLE: dict[str, str] = {
    ClientStatus.BUSY: "cyan",
    ClientStatus.ONLINE: "green",
    ClientStatus.SUSPENDED: "yellow",
    ClientStatus.OFFLINE: "dim",
}


def clients(
    group: Annotated[str | None, typer.Option(help="Only clients of this client group.")] = None,
    busy: Annotated[bool, typer.Option("--busy", help="Only clients running work now.")] = False,
    json_: Json = False,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """The clients (worker slots) the server knows: status, host, and work done."""
    found = fetch(server, token, ca_file, lambda client: client.clients(group=group, busy=busy))
    if json_:
        print_json([c.raw for c in found])
        return
    rows: list[list[str | Text]] = []
    for c in found:
        status = c.status.split("-")[-1]
        rows.append(
            [
                c.id,
                c.group,
                Text(c.status, style=STATUS_STYLE.get(status, "")),
                c.hostname,
                str(len(c.current_work)),
                str(c.total_completed),
                str(c.total_failed),
            ]
        )
    columns = table("id", "group", "status", "host", "work", "done", "failed")
    fitted = fit(columns, rows, [("host", 10), ("group", 8), ("id", 20), ("host", 4)], out.width)
    if found:
        out.print(fitted)
    err.print(f"{len(found)} client(s)", style="dim")


@client_app.command("suspend")
def suspend(client_id: ClientId, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Give the client no more work; what it holds goes back to the queue."""
    print_id_operation("client", "suspend", client_id, server, token, ca_file)


@client_app.command("resume")
def resume(client_id: ClientId, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Let a suspended client check out work again."""
    print_id_operation("client", "resume", client_id, server, token, ca_file)


def nodes(json_: Json = False, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Worker machines heard from recently: host, CPUs, memory, cloud instance."""
    found = fetch(server, token, ca_file, Client.nodes)
    if json_:
        print_json([n.raw for n in found])
        return
    rows: list[list[str | Text]] = []
    for node in found:
        instance = " ".join(
            str(node.instance.get(k) or "") for k in ("instanceType", "payType") if node.instance.get(k)
        )
        rows.append(
            [
                node.id,
                node.hostname,
                str(node.cores),
                f"{node.memory_mb / 1024:.1f} GiB" if node.memory_mb else "-",
                instance or node.cloud or "-",
                ",".join(_engines(node.raw)[0]) or "-",
                short_time(node.last_heartbeat)[11:] or "-",
            ]
        )
    columns = table("id", "host", "cores", "memory", "instance", "checkpoint", "last seen")
    shrink = [("host", 12), ("instance", 10), ("checkpoint", 10), ("id", 16), ("host", 4)]
    fitted = fit(columns, rows, shrink, out.width)
    if found:
        out.print(fitted)
    for node in found:  # why an engine cannot checkpoint there, one line each
        for engine, reason in _engines(node.raw)[1].items():
            out.print(f"{node.id}: no {engine}: {reason}", no_wrap=True, overflow="ellipsis", markup=False)
    err.print(f"{len(found)} node(s)", style="dim")


def _engines(document: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The checkpoint engines a node can use, and why not the others (``checkpointEngines``, from
    spot/capabilities.py); a node that does not say has only its chosen ``checkpointEngine``."""
    engines = document.get("checkpointEngines")
    if not isinstance(engines, dict):
        chosen = document.get("checkpointEngine")
        return ([str(chosen)] if chosen else []), {}
    available, missing = [], {}
    for name, state in engines.items():
        if isinstance(state, dict) and state.get("available"):
            available.append(str(name))
        elif isinstance(state, dict):
            missing[str(name)] = str(state.get("reason") or "not available")
    return available, missing


@node_app.command("logs")
def node_logs(
    node_id: Annotated[str, typer.Argument(help="The node's id (see perdure nodes).", show_default=False)],
    file: Annotated[
        str | None, typer.Argument(help="A file the node ships (its path on the node); list them if absent.")
    ] = None,
    json_: Json = False,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """List the log files a node ships, or print one of them."""
    client = connect(server, token, ca_file)
    if file is None:
        with api_errors(f"no node {node_id} on this server"):
            files = client.node_files(node_id)
        prefix = f"/nodes/{node_id}"
        paths = [f.removeprefix(prefix) for f in files]
        if json_:
            print_json(paths)
        else:
            for path in paths:
                out.print(path, markup=False)
        return
    with api_errors(f"node {node_id} ships no file {file}"):
        text = client.node_file(node_id, file)
    out.print(text, end="" if text.endswith("\n") or not text else "\n", markup=False, highlight=False)


__all__ = ["client_app", "clients", "node_app", "nodes"]
