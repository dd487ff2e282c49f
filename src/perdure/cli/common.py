"""What every client-side command shares: where the server is, one-line errors, JSON and tables.

Exit codes: 0 success, 1 the server refused or could not be reached (or a job did not complete), 2 the
command line itself was wrong. Every error is one line on stderr starting ``error:``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from perdure.sdk import Client, PerdureError

try:  # typer >= 0.20 carries its own copy of click; older versions use click itself
    from typer._click import exceptions as click_errors
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover
    import click.exceptions as click_errors  # type: ignore[no-redef]
    from click import get_current_context  # type: ignore[no-redef]
from perdure.sdk.connection import Connection

T = TypeVar("T")

# soft_wrap: lines go out whole (a long id, a log line), never folded at the terminal width.
err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

Server = Annotated[
    str | None, typer.Option("--server", help="Server URL (or PERDURE_SERVER, or perdure login).")
]
Token = Annotated[
    str | None, typer.Option("--token", help="Bearer token (or PERDURE_TOKEN, or perdure login).")
]
CaFile = Annotated[
    str | None, typer.Option("--ca-file", help="CA bundle to trust for HTTPS (or PERDURE_CA_FILE).")
]
Json = Annotated[bool, typer.Option("--json", help="Print the server's documents as JSON.")]


class OneLineErrors(TyperGroup):
    """Usage errors as one ``error:`` line and exit code 2, like every other error of the CLI
    (click's default is a usage block and a framed message)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kwargs: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **kwargs)
        try:
            result = super().main(args, prog_name, complete_var, False, **kwargs)
        except click_errors.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "perdure"
            usage(f"{exc.format_message()} (see: {command} --help)")
        except click_errors.ClickException as exc:
            err.print(f"[red]error:[/red] {escape(exc.format_message())}")
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("[red]error:[/red] aborted")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def usage(message: str) -> NoReturn:
    """A command-line mistake: one line, exit code 2."""
    err.print(f"[red]error:[/red] {escape(message)}")
    raise SystemExit(2)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(' '.join(message.split()))}")
    raise typer.Exit(code)


def connect(server: str | None, token: str | None, ca_file: str | None) -> Client:
    conn = Connection.resolve(server, token, ca_file)
    try:
        # Few, quick retries: a person is waiting, and a server that is down stays down for a while.
        client = Client(conn.server, conn.token or None, conn.ca_file or None, retries=2)
    except OSError as exc:  # an unreadable --ca-file
        usage(f"cannot use CA file {conn.ca_file}: {exc.strerror or exc}")
    context = get_current_context(silent=True)
    if context is not None:
        context.call_on_close(client.close)
    return client


def fetch(
    server: str | None,
    token: str | None,
    ca_file: str | None,
    get: Callable[[Client], T],
    not_found: str | None = None,
) -> T:
    """What a command shows, fetched from the server; any error as one line (``not_found`` for a 404)."""
    client = connect(server, token, ca_file)
    with api_errors(not_found):
        return get(client)


def print_outcome(
    server: str | None,
    token: str | None,
    ca_file: str | None,
    operation: Callable[[Client], str],
    not_found: str | None = None,
) -> None:
    """Run one operation (suspend, resume, delete...) and print the server's message about it."""
    out.print(fetch(server, token, ca_file, operation, not_found))


def print_id_operation(
    kind: str, what: str, given: str, server: str | None, token: str | None, ca_file: str | None
) -> None:
    """``perdure <kind> <what> ID`` (suspend, resume...): ``Client.<what>_<kind>`` on the whole id that
    ``given`` is or starts, and the server's message about it."""
    resolve = {"job": resolve_job_id, "client": resolve_client_id}[kind]
    operation = getattr(Client, f"{what}_{kind}")
    print_outcome(
        server,
        token,
        ca_file,
        lambda client: operation(client, resolve(client, given)),
        f"no {kind} {given} on this server",
    )


@contextmanager
def api_errors(not_found: str | None = None) -> Iterator[None]:
    """Any SDK error as one line and exit 1; ``not_found`` replaces the API's terse 404 text."""
    from perdure.cli.hints import hint
    from perdure.sdk import NotFoundError

    try:
        yield
    except NotFoundError as exc:
        fail(not_found or hint(exc))
    except PerdureError as exc:
        fail(hint(exc))


#: A whole id as the server makes them (a UUID): used as it is, without looking for it first.
_FULL_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
#: Jobs listed per request while resolving a job id prefix.
PREFIX_PAGE = 1000
#: How many candidates an ambiguous prefix names.
PREFIX_CANDIDATES = 5


def unique_prefix(kind: str, given: str, ids: Iterable[str]) -> str:
    """The one id in ``ids`` that is ``given`` or starts with it (as git does with commits); otherwise
    one line naming the candidates, and exit code 2."""
    if not given:
        usage(f"a {kind} id cannot be empty")
    matches: list[str] = []
    for candidate in ids:
        if candidate == given:
            return candidate
        if candidate.startswith(given):
            matches.append(candidate)
    if not matches:
        usage(f"no {kind} id starts with {given!r} (see: perdure {kind}s)")
    if len(matches) > 1:
        matches.sort()
        shown = ", ".join(matches[:PREFIX_CANDIDATES])
        more = f" and {len(matches) - PREFIX_CANDIDATES} more" if len(matches) > PREFIX_CANDIDATES else ""
        usage(f"{kind} id prefix {given!r} is ambiguous: {shown}{more}")
    return matches[0]


def resolve_job_id(client: Client, given: str) -> str:
    """A job id, or a unique prefix of one, as the job's whole id (a whole id costs no request)."""
    if _FULL_ID.match(given):
        return given

    def job_ids() -> Iterator[str]:
        offset = 0
        while True:
            with api_errors():
                page = client.jobs(
                    limit=PREFIX_PAGE, offset=offset, order="id", descending=False, minimal=True
                )
            yield from (job.id for job in page.items)
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    return unique_prefix("job", given, job_ids())


def resolve_client_id(client: Client, given: str) -> str:
    """A client id, or a unique prefix of one, as the client's whole id (a UUID costs no request)."""
    if _FULL_ID.match(given):
        return given
    with api_errors():
        found = client.clients()
    return unique_prefix("client", given, (c.id for c in found))


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping), for ``jq`` and friends."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def table(*columns: str, **kwargs: Any) -> Table:
    """A borderless table; ``fit`` makes it fit the terminal."""
    made = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", **kwargs)
    for name in columns:
        made.add_column(name, no_wrap=True, overflow="ellipsis")
    return made


def fit(
    made: Table, rows: Sequence[Sequence[str | Text]], shrink: Sequence[tuple[str, int]], width: int
) -> Table:
    """Add ``rows`` and size the columns to fit ``width`` (80 on a pipe): each ``(column, narrowest)`` of
    ``shrink`` in turn gives up width down to ``narrowest`` (an ellipsis marks the cut). Rich's own
    squeezing can drop a column whole."""
    naturals = [cell_len(str(c.header)) for c in made.columns]
    for row in rows:
        made.add_row(*row)
        for i, cell in enumerate(row):
            naturals[i] = max(naturals[i], cell.cell_len if isinstance(cell, Text) else cell_len(cell))
    excess = sum(naturals) + 2 * (len(naturals) - 1) - width
    names = [str(c.header) for c in made.columns]
    for name, narrowest in shrink:
        if excess <= 0:
            break
        i = names.index(name)
        cut = min(excess, max(0, naturals[i] - narrowest))
        naturals[i] -= cut
        excess -= cut
    for column, natural in zip(made.columns, naturals, strict=True):
        column.width = natural
    return made


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_time(stamp: str) -> str:
    """``2026-11-24T08:24:28.15Z`` as ``2026-11-24 08:24``; AWE's zero time as ``-``."""
    if not stamp or stamp.startswith("0001-"):
        return "-"
    return stamp[:16].replace("T", " ")


def comma_list(values: Sequence[str] | None) -> list[str]:
    return [v for raw in values or [] for v in raw.split(",") if v]
