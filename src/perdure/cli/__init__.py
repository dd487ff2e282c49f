"""The ``perdure`` command.

The server's libraries (uvicorn, SQLAlchemy and the store) are imported by the commands that need them
only, so ``perdure worker`` runs on a node that has the worker's dependencies alone (the wheelhouse
the server serves to its installer, ``perdure/wheelhouse.py``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from perdure import __version__
from perdure.cli import clients as cli_clients
from perdure.cli import jobs as cli_jobs
from perdure.cli import manage as cli_manage
from perdure.cli import metrics as metrics_cli
from perdure.cli import pools as cli_pools
from perdure.cli.common import OneLineErrors

if TYPE_CHECKING:
    from perdure.settings import Settings
    from perdure.store.database import Database

app = typer.Typer(
    help="Perdure: batch workflows that outlive their machines.", no_args_is_help=True, cls=OneLineErrors
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(cli_manage.config_app, name="config")
app.add_typer(cli_manage.security_app, name="security")
app.add_typer(metrics_cli.app, name="metrics")
app.command("logs")(cli_manage.logs)
app.command("login")(cli_manage.login)
app.command("submit")(cli_jobs.submit)
app.command("jobs")(cli_jobs.jobs)
app.add_typer(cli_jobs.job_app, name="job")
app.command("queue")(cli_jobs.queue)
app.command("clients")(cli_clients.clients)
app.add_typer(cli_clients.client_app, name="client")
app.command("nodes")(cli_clients.nodes)
app.add_typer(cli_clients.node_app, name="node")
app.command("pools")(cli_pools.pools)
app.add_typer(cli_pools.pool_app, name="pool")
console = Console(stderr=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Where the server keeps its files (and SQLite database).")
]
DbUrl = Annotated[
    str | None,
    typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db. Default: SQLite in --data-dir."),
]


def _settings(data_dir: Path, db: str | None) -> Settings:
    from perdure.settings import Settings

    try:
        return Settings.from_env(data_dir=data_dir, db_url=db)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _open(settings: Settings) -> Database:
    from perdure.store.database import Database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return Database(settings.database_url)
    except Exception as exc:  # a bad URL: say so in one line
        console.print(f"[red]error:[/red] cannot use database {settings.database_url!r}: {exc}")
        raise typer.Exit(2) from None


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8001,
    data_dir: DataDir = Path("./perdure-data"),
    db: DbUrl = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes sharing the port.")] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a configuration key: --set node.ttl=2m.")
    ] = None,
    self_signed: Annotated[
        bool, typer.Option("--self-signed", help="Serve HTTPS with a certificate made in DATA_DIR/tls.")
    ] = False,
) -> None:
    """Start the API server (migrating the database schema first)."""
    import uvicorn

    from perdure.config.keys import KEY_TYPES
    from perdure.config.values import ConfigError
    from perdure.configstore import ConfigStore
    from perdure.settings import process_overrides
    from perdure.store import migrate

    settings = _settings(data_dir, db)
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or key not in KEY_TYPES:
            console.print(f"[red]error:[/red] --set {item!r}: expected KEY=VALUE with a configuration key")
            raise typer.Exit(2)
        settings.config_overrides[key] = value
    if self_signed:
        from perdure.tls import self_signed as make_certificate

        cert, key_file = make_certificate(settings.data_dir.resolve() / "tls", [host])
        settings.config_overrides.update({"security.certFile": str(cert), "security.keyFile": str(key_file)})
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database = _open(settings)
    try:
        migrate.upgrade(database)
        store = ConfigStore(
            database,
            settings.data_dir / "config.json",
            overrides=process_overrides(settings, os.environ),
            fixed={},
        )
        effective = store.load()
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:
        console.print(f"[red]error:[/red] cannot prepare database: {exc}")
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    cert_file, key_path = effective.security.certFile, effective.security.keyFile
    if bool(cert_file) != bool(key_path):
        console.print("[red]error:[/red] security.certFile and security.keyFile must be set together")
        raise typer.Exit(2)
    scheme = "https" if cert_file else "http"
    console.print(
        f"Perdure {__version__} on {scheme}://{host}:{port}  data: {settings.data_dir.resolve()}  "
        f"database: {settings.database_url.split('@')[-1]}"
    )
    # Hand settings to the server processes through the environment the factory reads.
    os.environ["PERDURE_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ["PERDURE_DB_URL"] = settings.database_url
    settings.config_overrides["addr"] = f"{scheme}://{host}:{port}"
    for key, value in settings.config_overrides.items():
        os.environ["PERDURE_CFG_" + key.replace(".", "__")] = value
    os.environ["PERDURE_HEADER_TIMEOUT_S"] = str(effective.perdure.headerTimeout)  # issue 17: slowloris
    uvicorn.run(
        "perdure.api.app:app_from_env",
        factory=True,
        http="perdure.api.headertimeout:HeaderTimeoutProtocol",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        access_log=False,
        ssl_certfile=cert_file or None,
        ssl_keyfile=key_path or None,
    )


worker_app = typer.Typer(help="Run a worker, or drain one.")
app.add_typer(worker_app, name="worker")


@worker_app.callback(invoke_without_command=True)
def worker(
    context: typer.Context,
    server: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    group: Annotated[str | None, typer.Option(help="Client group.")] = None,
    name: Annotated[str | None, typer.Option(help="Node name (default: host name).")] = None,
    apps: Annotated[
        str | None, typer.Option(help="Commands this node runs, comma-separated, or '*'.")
    ] = None,
    workpath: Annotated[Path | None, typer.Option(help="Directory for work, caches and logs.")] = None,
    slots: Annotated[int | None, typer.Option(min=1, help="Workunits run at once.")] = None,
    token: Annotated[
        str | None, typer.Option(hidden=True, help="Refused: the token would show in ps; see --token-file.")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File (mode 0600) holding the clientgroup token; or set PERDURE_WORKER_TOKEN."),
    ] = None,
    allow_file_root: Annotated[
        list[Path] | None,
        typer.Option(help="A directory file:// inputs may be read from (repeat for more); none by default."),
    ] = None,
    ca_file: Annotated[str | None, typer.Option(help="CA bundle to trust for HTTPS.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file with worker settings.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run workunits from a server (flags > PERDURE_WORKER_* environment > --config file).

    SIGTERM hands running work over (final checkpoints, then the node leaves); SIGINT stops at once."""
    import signal

    if context.invoked_subcommand is not None:
        return

    from perdure.worker.config import WorkerConfig
    from perdure.worker.credentials import ARGV_REFUSED, TokenFileError, make_undumpable, resolve_token
    from perdure.worker.node import WorkerNode, WorkpathInUse, configure_logging

    if token is not None:
        console.print(f"[red]error:[/red] {ARGV_REFUSED}")
        raise typer.Exit(2)
    make_undumpable()
    try:
        settings = WorkerConfig.load(
            config,
            server=server,
            group=group,
            name=name,
            apps=apps,
            workpath=workpath,
            slots=slots,
            token_file=str(token_file) if token_file is not None else None,
            allow_file_root=[str(root) for root in allow_file_root] if allow_file_root else None,
            ca_file=ca_file,
        )
        settings = settings.model_copy(update={"token": resolve_token(settings.token, settings.token_file)})
        settings.validate()
    except (ValueError, TypeError, TokenFileError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    settings.workpath.mkdir(parents=True, exist_ok=True)
    configure_logging(settings.workpath, log_level)
    try:
        node = WorkerNode(settings)
    except WorkpathInUse as exc:
        console.print(f"[red]error:[/red] {exc}; give each worker its own --workpath")
        raise typer.Exit(2) from None
    from perdure.spot.interruption import Notice

    def on_sigterm(*_: object) -> None:
        deadline = time.monotonic() + settings.handover_deadline_s
        if node.handover_deadline is not None:
            node.shutdown()  # a second SIGTERM: stop now
            return
        node.notice(Notice("sigterm", "SIGTERM received", deadline))

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, lambda *_: node.shutdown())
    signal.signal(signal.SIGUSR1, lambda *_: node.wake_drain())
    node.run()
    if node.failure:
        console.print(f"[red]error:[/red] {node.failure}")
        raise typer.Exit(1)


@worker_app.command("drain")
def worker_drain(
    workpath: Annotated[Path, typer.Option(help="The work path of the worker to drain.")] = Path(
        "./perdure-work"
    ),
    finish: Annotated[
        bool, typer.Option("--finish", help="Let running work finish instead of handing it over.")
    ] = False,
    deadline: Annotated[float, typer.Option(min=1.0, help="Seconds to hand running work over in.")] = 120.0,
) -> None:
    """Drain the worker on WORKPATH: it takes no new work, hands running work over to other nodes
    (final checkpoints), and leaves. With --finish, running work completes first."""
    from perdure.spot.interruption import request_drain

    try:
        pid = request_drain(workpath.resolve(), finish=finish, deadline_s=deadline)
    except ProcessLookupError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    what = "finish its running work" if finish else "hand its running work over"
    console.print(f"asked worker {pid} on {workpath} to {what} and leave")


@app.command()
def up(
    data_dir: DataDir = Path("./perdure-data"),
    host: Annotated[str, typer.Option(help="Address for the server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port for the server.")] = 8001,
    slots: Annotated[int, typer.Option(min=1, help="Worker slots.")] = 2,
    example: Annotated[Path | None, typer.Option(help="A job script to submit and follow.")] = None,
    keep_running: Annotated[bool, typer.Option(help="Keep serving after the example finishes.")] = True,
) -> None:
    """Start a server and a local worker (SQLite in --data-dir); submit and follow --example."""
    from perdure import up as stack

    if example is not None and not example.is_file():
        console.print(f"[red]error:[/red] no such job script: {example}")
        raise typer.Exit(2)
    raise typer.Exit(stack.run(data_dir, host, port, slots, example, keep_running))


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = Path("./perdure-data"), db: DbUrl = None) -> None:
    """Create or migrate the database schema to the newest version."""
    from perdure.store import migrate

    settings = _settings(data_dir, db)
    database = _open(settings)
    try:
        revision = migrate.upgrade_to_head(database, settings.database_url)
        console.print(f"database at revision {revision}")
    except migrate.DatabaseUnusable as exc:  # one line, no traceback
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        database.dispose()


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
