"""``perdure metrics``: the per-queue summary as a table, and one metric as a sparkline.

Talks HTTP to a running server (``--server``, or ``PERDURE_SERVER``), so it works against any server
of a cluster and needs no database access.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from perdure.metrics.definitions import BY_NAME, SUMMARY_METRICS, SYSTEM, Kind, definition
from perdure.metrics.levels import parse_duration
from perdure.sdk.client import Client
from perdure.sdk.errors import ApiError, ServerUnavailable
from perdure.timeutil import format_us, now_us, parse_time

app = typer.Typer(help="Metrics: per-queue summary and time series.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

DEFAULT_SERVER = "http://127.0.0.1:8001"
SPARKS = "▁▂▃▄▅▆▇█"
Server = Annotated[
    str, typer.Option("--server", envvar="PERDURE_SERVER", help="The server's URL.", show_default=True)
]
Since = Annotated[
    str, typer.Option("--since", help="How far back: a duration (7d, 12h, 30m) or an RFC 3339 time.")
]


def since_us(since: str, now: int) -> int:
    """``7d``/``12h``/``90m`` before now, or an absolute RFC 3339 time."""
    try:
        return now - int(parse_duration(since) * 1_000_000)
    except ValueError:
        pass
    try:
        return parse_time(since)
    except ValueError:
        raise typer.BadParameter(f"{since!r} is neither a duration (7d, 12h) nor an RFC 3339 time") from None


def _get(server: str, path: str, params: dict[str, str]) -> httpx.Response:
    """A management endpoint's answer, through the SDK (with the saved login's token, if any)."""
    client = Client.from_config(server)
    try:
        response = client.transport.send("GET", path, params=params, timeout=30.0)
        response.read()
        return response
    except ServerUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc.status}: {exc.message}")
        raise typer.Exit(1) from None
    finally:
        client.close()


def human(value: float, kind: str) -> str:
    """Seconds as ``2h 05m``, bytes as ``1.5 GiB``, counts as integers where they are whole."""
    if kind == "duration":
        seconds = abs(value)
        if seconds < 60:
            return f"{value:.3g}s" if seconds < 10 else f"{value:.0f}s"
        minutes, secs = divmod(round(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        days, hours = divmod(hours, 24)
        if days:
            return f"{days}d {hours:02d}h"
        return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
    if kind == "bytes":
        size = float(value)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(size) < 1024 or unit == "TiB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1024
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


@app.command()
def summary(since: Since = "7d", server: Server = DEFAULT_SERVER) -> None:
    """Jobs submitted, runtime, spot protections and time saved, per queue."""
    now = now_us()
    start = since_us(since, now)
    body = _get(server, "/api/v1/metrics/summary", {"start": format_us(start)}).json()
    items: dict[str, list[dict[str, Any]]] = body.get("items", {})
    rows: dict[str, dict[str, float]] = {}
    for name in SUMMARY_METRICS:
        for entry in items.get(name, []):
            queue = entry.get("metaData", {}).get("queueName", "?")
            rows.setdefault(queue, {})[name] = float(entry.get("point", {}).get("value", 0))
    table = Table(title=f"Metrics since {format_us(start)}", title_justify="left")
    table.add_column("Queue")
    for header in ("Jobs submitted", "Runtime", "Spot protections", "Time saved"):
        table.add_column(header, justify="right")
    for queue in sorted(rows):
        values = rows[queue]
        table.add_row(
            queue,
            *(human(values.get(name, 0.0), BY_NAME[name].labels[0]) for name in SUMMARY_METRICS),
        )
    if not rows:
        out.print("no queues yet")
        return
    out.print(table)


def object_id(ref: str) -> str:
    """``system-total``, ``queue-<name>``, ``node-<id>``, or a bare queue name."""
    if ref == SYSTEM or ref.startswith(("queue-", "node-")):
        return ref
    return f"queue-{ref}"


def sparkline(values: list[float | None]) -> str:
    """One character per value (a gap is a space), scaled from the smallest to the largest."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    lo, hi = min(present), max(present)
    span = hi - lo
    chars = []
    for v in values:
        if v is None:
            chars.append(" ")
        elif span == 0:
            chars.append(SPARKS[0] if hi == 0 else SPARKS[len(SPARKS) // 2])
        else:
            chars.append(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))])
    return "".join(chars)


def resample(
    points: list[tuple[int, float]], lo: int, hi: int, step: int, width: int, additive: bool
) -> tuple[list[float | None], int]:
    """Points on a regular grid of ``step`` from ``lo`` to ``hi``, merged into at most ``width`` cells:
    counters add up (a missing bucket is 0), averages average (a missing bucket is a gap)."""
    by_time = dict(points)
    grid = list(range(lo - lo % step, hi + 1, step)) or [lo - lo % step]
    per_cell = max(1, -(-len(grid) // width))
    cells: list[float | None] = []
    for i in range(0, len(grid), per_cell):
        chunk = [by_time[t] for t in grid[i : i + per_cell] if t in by_time]
        if additive:
            cells.append(sum(chunk))
        else:
            cells.append(sum(chunk) / len(chunk) if chunk else None)
    return cells, per_cell * step


@app.command()
def show(
    metric: Annotated[str, typer.Argument(help="A metric name, e.g. jobSubmitted or runtime.")],
    object_ref: Annotated[
        str, typer.Option("--object", help="system-total, a queue name, queue-<name> or node-<id>.")
    ] = SYSTEM,
    since: Since = "1d",
    interval: Annotated[str | None, typer.Option(help="A level: 1m, 30m, 24h (default: finest).")] = None,
    server: Server = DEFAULT_SERVER,
) -> None:
    """One metric over time, as a sparkline with its total, minimum and maximum."""
    found = definition(metric)
    if found is None:
        err.print(f"[red]error:[/red] unknown metric {metric!r}; known: {', '.join(BY_NAME)}")
        raise typer.Exit(2)
    now = now_us()
    start = since_us(since, now)
    params = {"start": format_us(start), "end": format_us(now)}
    if interval:
        params["interval"] = interval
    response = _get(server, f"/api/v1/metricValue/{object_id(object_ref)}/{found.id}", params)
    body = response.json()
    points = [(parse_time(p["time"]), float(p["value"])) for p in body.get("points", [])]
    step_s = parse_duration(response.headers.get("X-Perdure-Interval") or interval or "1m")
    additive = found.kind in (Kind.COUNTER, Kind.TOTAL)
    width = max(10, min(120, out.width - 2))
    cells, cell_us = resample(points, start, now, int(step_s * 1_000_000), width, additive)
    unit = found.labels[0]
    out.print(f"[bold]{found.name}[/bold] on {body.get('id', '').split('.', 1)[-1]}: {found.description}")
    out.print(
        f"{format_us(start)} .. {format_us(now)}, one column per {human(cell_us / 1_000_000, 'duration')}"
    )
    if not points:
        out.print("no data in this range")
        return
    out.print(sparkline(cells))
    values = [v for _t, v in points]
    first = datetime.fromtimestamp(points[0][0] / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M")
    if additive:
        stats = f"total {human(sum(values), unit)}"
    else:
        stats = f"average {human(sum(values) / len(values), unit)}"
    low, high = human(min(values), unit), human(max(values), unit)
    out.print(f"{stats}, min {low}, max {high} (first point {first})")
