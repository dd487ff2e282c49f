"""``perdure pools`` and ``perdure pool show``: the worker pools on EC2, their sizes and the scaler's
last decisions (issue 21)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from perdure.cli.common import (
    CaFile,
    Json,
    Server,
    Token,
    fetch,
    fit,
    out,
    print_json,
    short_time,
    table,
)
from perdure.sdk import Client

pool_app = typer.Typer(help="One worker pool on EC2.", no_args_is_help=True)


def _size(value: Any) -> str:
    return "-" if value is None else str(value)


def _decision(decision: dict[str, Any]) -> str:
    return (
        f"{short_time(str(decision.get('time', '')))}  {decision.get('action', '')} "
        f"{decision.get('from')} -> {decision.get('to')}: {decision.get('reason', '')}"
    )


def _short(decision: dict[str, Any] | None) -> str:
    if not decision:
        return "-"
    return f"{decision.get('action', '')} {decision.get('from')} -> {decision.get('to')}"


def pools(json_: Json = False, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Worker pools: the queue's demand, and the nodes it asks for, wants and has."""
    found = fetch(server, token, ca_file, Client.pools)
    if json_:
        print_json(found)
        return
    if not found:
        out.print("no pools (set pool.pools; see docs/aws.md)")
        return
    rows = []
    for pool in found:
        last = pool["decisions"][0] if pool.get("decisions") else None
        rows.append(
            [
                pool["name"],
                pool["clientgroup"],
                _size(pool.get("demand")),
                _size(pool.get("targetNodes")),
                _size(pool.get("desiredNodes")),
                _size(pool.get("actualNodes")),
                str(len(pool.get("draining") or [])),
                f"{pool['minNodes']}-{pool['maxNodes']}",
                "step failed" if pool.get("error") else _short(last),
            ]
        )
    columns = table(
        "pool", "group", "work", "target", "desired", "actual", "draining", "min-max", "last decision"
    )
    out.print(fit(columns, rows, [("group", 8), ("pool", 8), ("last decision", 12)], out.width))


@pool_app.command("show")
def pool_show(
    name: Annotated[str, typer.Argument(help="The pool's name (see perdure pools).", show_default=False)],
    json_: Json = False,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """One pool: its group, sizes, draining nodes and every scaling decision kept (newest first)."""
    pool = fetch(
        server,
        token,
        ca_file,
        lambda client: client.pool(name),
        f"no pool named {name!r} (see perdure pools)",
    )
    if json_:
        print_json(pool)
        return
    out.print(f"pool {pool['name']}: client group {pool['clientgroup']}, group {pool['autoScalingGroup']}")
    out.print(
        f"  work {_size(pool.get('demand'))}, nodes: target {_size(pool.get('targetNodes'))}, "
        f"desired {_size(pool.get('desiredNodes'))}, actual {_size(pool.get('actualNodes'))} "
        f"(min {pool['minNodes']}, max {pool['maxNodes']}, {pool['slotsPerNode']} slot(s) each)"
    )
    if pool.get("draining"):
        out.print(f"  draining: {', '.join(pool['draining'])}")
    if pool.get("error"):
        out.print(f"  last step failed: {pool['error']}")
    if not pool["enabled"]:
        out.print("  the scaler is off (pool.enabled=false)")
    for decision in pool.get("decisions") or []:
        out.print("  " + _decision(decision))
