"""``perdure submit``, ``perdure jobs``, ``perdure job ...`` and ``perdure queue``."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.text import Text

from perdure.cli.common import (
    CaFile,
    Json,
    Server,
    Token,
    api_errors,
    comma_list,
    connect,
    err,
    fail,
    fetch,
    fit,
    human_bytes,
    out,
    print_id_operation,
    print_json,
    print_outcome,
    resolve_job_id,
    short_time,
    table,
    usage,
)
from perdure.sdk import Client, Job, PerdureError, WaitTimeout
from perdure.sdk.errors import ServerUnavailable
from perdure.states import JobState, ReportStatus, TaskState, WorkunitState

job_app = typer.Typer(help="Look at and operate on one job.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="The job's id, or a unique prefix of it.", show_default=False)]
T = TypeVar("T")
#: How many lines of the failing task's stderr ``submit --wait`` shows.
STDERR_TAIL_LINES = 15
#: State colours in tables and the progress display.
STATE_STYLE: dict[str, str] = {
    JobState.COMPLETED: "green",
    JobState.IN_PROGRESS: "cyan",
    JobState.QUEUED: "cyan",
    WorkunitState.CHECKOUT: "cyan",
    JobState.SUSPEND: "red",
    JobState.FAILED_PERMANENT: "red",
    ReportStatus.FAIL: "red",
    JobState.DELETED: "dim",
    TaskState.PENDING: "dim",
    JobState.INIT: "dim",
}


def _state(state: str, *, short: bool = False) -> Text:
    """A coloured state; ``short`` names ``failed-permanent`` just ``failed`` (no job state is called
    that), which keeps the job list inside 80 columns."""
    label = "failed" if short and state == JobState.FAILED_PERMANENT else state
    return Text(label, style=STATE_STYLE.get(state, ""))


def _no_job(job_id: str) -> str:
    return f"no job {job_id} on this server"


def _fetch(
    given: str, server: str | None, token: str | None, ca_file: str | None, get: Callable[[Client, str], T]
) -> tuple[str, T]:
    """The whole id of the job ``given`` names (or starts), and what ``get`` fetches about it; any
    error as one line."""
    client = connect(server, token, ca_file)
    job_id = resolve_job_id(client, given)
    with api_errors(_no_job(job_id)):
        return job_id, get(client, job_id)


# ---- submit -----------------------------------------------------------------------------------------


def submit(
    script: Annotated[Path, typer.Argument(help="The job script (JSON), or - for standard input.")],
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the job until it finishes.")] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="With --wait: give up after this many seconds.")
    ] = None,
    datatoken: Annotated[
        str | None, typer.Option(help="A token workers use to fetch the job's inputs (never shown).")
    ] = None,
    json_: Json = False,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Submit a job script and print its id.

    With --wait, show each task's progress and exit 0 only if the job completed."""
    if str(script) == "-":
        body: bytes | Path = sys.stdin.buffer.read()
    elif not script.is_file():
        usage(f"no such job script: {script}")
    else:
        body = script
    client = connect(server, token, ca_file)
    with api_errors():
        job = client.submit(body, datatoken=datatoken)
    for warning in job.warnings:
        err.print(f"warning: {warning}")
    if not wait:
        if json_:
            print_json(job.raw)
        else:
            out.print(job.id)
        return
    err.print(f"submitted job {job.id}")
    try:
        final = follow(client, job, timeout)
    except KeyboardInterrupt:
        fail(f"stopped following; job {job.id} keeps running (perdure job show {job.id})", 130)
    if json_:
        print_json(final.raw)
    else:
        out.print(final.id)
    if not final.completed_ok:
        _explain_failure(client, final)
        raise typer.Exit(1)


#: How long ``--wait`` keeps trying to reach a server that went away (a restart, an upgrade).
RECONNECT_S = 300.0


def _wait_across_restarts(job: Job, timeout: float | None, show: Callable[[Job], None]) -> Job:
    """``Job.wait``, but a server that cannot be reached for a while (restarted, upgraded) is tried
    again for up to ``RECONNECT_S`` instead of ending the wait: the job lives in the database."""
    deadline = None if timeout is None else time.monotonic() + timeout
    current, lost_since = job, None
    while True:
        try:
            current = current.refresh()
        except ServerUnavailable:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > RECONNECT_S:
                raise
        else:
            lost_since = None
            show(current)
            if current.finished:
                return current
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(current, timeout or 0.0)
        time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))


def follow(client: Client, job: Job, timeout: float | None) -> Job:
    """Redraw the progress display until the job finishes (or ``timeout``); return its last state."""
    started = time.monotonic()
    remaining = timeout
    live = Live(progress_view(job, 0.0), console=err, refresh_per_second=4, transient=False)

    def show(current: Job) -> None:
        live.update(progress_view(current, time.monotonic() - started))

    with api_errors(_no_job(job.id)):  # errors are printed after the display's last frame
        try:
            try:
                with live:
                    return _wait_across_restarts(job, remaining, show)
            finally:
                if not err.is_terminal:
                    err.print()  # on a pipe, Live prints its last frame without ending the line
        except WaitTimeout:
            fail(f"job {job.id} did not finish within {timeout:g}s")


def progress_view(job: Job, elapsed: float) -> RenderableType:
    """The job's name, state and elapsed time, then one line per task: name, bar, done/total, state.
    Sized for 80 columns."""
    header = Text.assemble(
        (job.name or job.id, "bold"),
        "  ",
        _state(job.state),
        f"  {_elapsed(elapsed)}",
        ("  " + job.id, "dim"),
    )
    header.truncate(80, overflow="ellipsis")
    rows = table("task", "progress", "done", "state")
    rows.columns[1].no_wrap = True
    for task in job.tasks:
        total = max(task.totalwork, 1)
        bar = ProgressBar(total=total, completed=task.done, width=24, complete_style="green")
        rows.add_row(task.name[:24], bar, f"{task.done}/{task.totalwork}", _state(task.state))
    return Group(header, rows)


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _explain_failure(client: Client, job: Job) -> None:
    """Why the job stopped, with the failing task's stderr tail, on stderr."""
    task = job.failed_task()
    error = job.error if isinstance(job.error, dict) else {}
    where = f" in task {task.name}" if task else ""
    notes = str(error.get("servernotes") or "").strip()
    err.print(
        f"[red]error:[/red] job {job.id} ended {job.state}{where}" + (f": {escape(notes)}" if notes else "")
    )
    # The worker's account ("command exited with 3", a missing output), and what to do next.
    worknotes = str(error.get("worknotes") or "").strip()
    if worknotes and worknotes not in notes:
        err.print(f"worker: {worknotes}", markup=False)
    if job.state == "suspend" and "perdure job resume" not in notes:
        err.print(f"next: fix the cause, then: perdure job resume {job.id}", markup=False)
    stderr = str(error.get("apperror") or "")
    failed = str(error.get("workfailed") or "")
    if failed:
        with contextlib.suppress(PerdureError):
            stderr = client.workunit_log(failed, "stderr") or stderr
    lines = stderr.rstrip("\n").splitlines()[-STDERR_TAIL_LINES:]
    if lines:
        err.print(f"--- last {len(lines)} line(s) of stderr of {failed or 'the failed workunit'} ---")
        for line in lines:
            err.print(line, markup=False)
    # The worker's account ("command exited with 3", a missing output), and what to do next.
    worknotes = str(error.get("worknotes") or "").strip()
    if worknotes and worknotes not in notes:
        err.print(f"worker: {worknotes}", markup=False)
    if job.state == "suspend" and "perdure job resume" not in notes:
        err.print(f"next: fix the cause, then: perdure job resume {job.id}", markup=False)


# ---- listing ----------------------------------------------------------------------------------------


def jobs(
    active: Annotated[bool, typer.Option("--active", help="Only jobs in the queue or running.")] = False,
    suspended: Annotated[bool, typer.Option("--suspended", help="Only suspended jobs.")] = False,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only jobs in these states (repeat, or a,b).")
    ] = None,
    project: Annotated[str | None, typer.Option(help="Only jobs of this project.")] = None,
    user: Annotated[str | None, typer.Option(help="Only jobs of this user.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many jobs.")] = 25,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many jobs first.")] = 0,
    json_: Json = False,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """List jobs, most recently updated first."""
    if active and suspended:
        usage("--active and --suspended exclude each other")
    known = [s.value for s in JobState]
    for given in comma_list(state):
        if given not in known:
            usage(f"--state {given!r} is no job state: use one of {', '.join(known)}")
    page = fetch(
        server,
        token,
        ca_file,
        lambda client: client.jobs(
            active=active,
            suspended=suspended,
            states=comma_list(state),
            project=project,
            user=user,
            limit=limit,
            offset=offset,
        ),
    )
    if json_:
        print_json([job.raw for job in page])
        return
    # The id whole (it is what other commands take), then the state, then the name in what is left.
    rows: list[list[str | Text]] = [
        [
            job.id,
            _state(job.state, short=True),
            f"{sum(1 for t in job.tasks if t.state == 'completed')}/{len(job.tasks)}",
            short_time(job.submitted)[5:],
            job.name,
        ]
        for job in page
    ]
    fitted = fit(
        table("id", "state", "tasks", "submitted", "name"),
        rows,
        [("name", 10), ("submitted", 5), ("name", 4)],
        out.width,
    )
    if page.items:
        out.print(fitted)
    shown = f"{offset + 1}-{offset + len(page)}" if page.items else "none"
    err.print(f"{shown} of {page.total} job(s)", style="dim")


# ---- one job ----------------------------------------------------------------------------------------


@job_app.command("show")
def show(
    job_id: JobId, json_: Json = False, server: Server = None, token: Token = None, ca_file: CaFile = None
) -> None:
    """The job's state and each task's progress."""
    _, job = _fetch(job_id, server, token, ca_file, Client.job)
    if json_:
        print_json(job.raw)
        return
    for label, value in (
        ("id", job.id),
        ("name", job.name),
        ("state", job.state),
        ("project", job.project),
        ("user", job.user),
        ("pipeline", job.pipeline),
        ("submitted", short_time(job.submitted)),
        ("completed", short_time(job.completed)),
    ):
        out.print(Text.assemble((f"{label:<10}", "bold"), value))
    if isinstance(job.error, dict) and job.error:
        out.print(Text.assemble(("error     ", "bold red"), str(job.error.get("servernotes") or job.error)))
    rows: list[list[str | Text]] = []
    for task in job.tasks:
        cmd = task.raw.get("cmd") or {}
        args = " ".join(map(str, cmd.get("args_array") or [])) or str(cmd.get("args") or "")
        command = f"{cmd.get('name', '')} {args}".strip()
        rows.append([task.name, _state(task.state), f"{task.done}/{task.totalwork}", command])
    shrink = [("command", 12), ("task", 12), ("command", 4)]
    out.print(fit(table("task", "state", "workunits", "command"), rows, shrink, out.width))


@job_app.command("suspend")
def suspend(job_id: JobId, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Stop handing out the job's work; running workunits are recalled."""
    print_id_operation("job", "suspend", job_id, server, token, ca_file)


@job_app.command("resume")
def resume(job_id: JobId, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Queue a suspended job's work again."""
    print_id_operation("job", "resume", job_id, server, token, ca_file)


@job_app.command("resubmit")
def resubmit(job_id: JobId, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Run the whole job again from its first task."""
    print_id_operation("job", "resubmit", job_id, server, token, ca_file)


@job_app.command("recompute")
def recompute(
    job_id: JobId,
    task: Annotated[str, typer.Argument(help="The task to run again (with every task after it).")],
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Run one task, and everything that depends on it, again."""
    print_outcome(
        server,
        token,
        ca_file,
        lambda client: client.recompute_task(resolve_job_id(client, job_id), task),
        _no_job(job_id),
    )


@job_app.command("delete")
def delete(
    job_id: JobId,
    full: Annotated[bool, typer.Option("--full", help="Remove it and its files for good.")] = False,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Delete a job (soft, unless --full)."""

    def delete_it(client: Client) -> str:
        return client.delete_job(resolve_job_id(client, job_id), full=full)

    print_outcome(server, token, ca_file, delete_it, _no_job(job_id))


@job_app.command("outputs")
def outputs(
    job_id: JobId, json_: Json = False, server: Server = None, token: Token = None, ca_file: CaFile = None
) -> None:
    """The job's output files in the server's data store."""
    job_id, files = _fetch(job_id, server, token, ca_file, Client.outputs)
    if json_:
        print_json([f.raw for f in files])
        return
    rows = [
        [f.task, f.filename, human_bytes(f.size), str(len(f.parts)), (f.sha256 or "-")[:12]] for f in files
    ]
    fitted = fit(
        table("task", "file", "size", "parts", "sha256"), rows, [("file", 12), ("task", 8)], out.width
    )
    if files:
        out.print(fitted)
    else:
        err.print(f"job {job_id} has no outputs yet", style="dim")


@job_app.command("download")
def download(
    job_id: JobId,
    dest: Annotated[Path, typer.Option("--dest", "-d", help="Directory to save into (as TASK/FILE).")] = Path(
        "."
    ),
    task: Annotated[str | None, typer.Option(help="Only this task's outputs.")] = None,
    file: Annotated[str | None, typer.Option("--file", help="Only this file.")] = None,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """Save the job's outputs (all, one task's, or one file) under --dest; print each path."""
    if dest.exists() and not dest.is_dir():
        usage(f"--dest {dest} is not a directory")
    job_id, paths = _fetch(
        job_id,
        server,
        token,
        ca_file,
        lambda client, whole: client.job(whole).download(dest, task=task, filename=file),
    )
    for path in paths:
        out.print(str(path), markup=False)
    if not paths:
        err.print(f"job {job_id} has no outputs yet", style="dim")


@job_app.command("events")
def events(
    job_id: JobId, json_: Json = False, server: Server = None, token: Token = None, ca_file: CaFile = None
) -> None:
    """What happened to the job, in order (submitted, preempted, restored, failed...), and its spot
    protection: preemptions, restores and the run time they saved."""
    _, report = _fetch(job_id, server, token, ca_file, Client.job_report)
    spot = report.raw.get("spot") or {}
    if json_:
        print_json({"events": report.events, "spot": spot})
        return
    listing = table("time", "code", "event")
    listing.columns[2].overflow = "fold"  # the whole story: a preemption's message says what was kept
    listing.columns[2].no_wrap = False
    for event in report.events:
        time_, code = short_time(str(event.get("time", ""))), str(event.get("code", ""))
        listing.add_row(time_, code, escape(str(event.get("message", ""))))
    out.print(listing)
    if spot:
        out.print(
            f"spot: {spot.get('preemptions', 0)} preempted, {spot.get('spotProtection', 0)} restored "
            f"({spot.get('timeSaved', 0):.0f}s saved), {spot.get('checkpoints', 0)} checkpoints "
            f"({spot.get('checkpointFailures', 0)} failed), {spot.get('restoreFailures', 0)} refused"
        )


@job_app.command("logs")
def logs(
    job_id: JobId,
    task: Annotated[str, typer.Argument(help="The task's id in the job script.")],
    rank: Annotated[
        int | None, typer.Option(min=0, help="Which workunit of a split task (1..N; default: the first).")
    ] = None,
    stderr: Annotated[
        bool, typer.Option("--stderr", help="Standard error instead of standard output.")
    ] = False,
    worknotes: Annotated[bool, typer.Option("--worknotes", help="The worker's notes instead.")] = False,
    server: Server = None,
    token: Token = None,
    ca_file: CaFile = None,
) -> None:
    """A workunit's stdout (or --stderr, --worknotes), as its last report sent it."""
    kind = "worknotes" if worknotes else "stderr" if stderr else "stdout"
    client = connect(server, token, ca_file)
    job_id = resolve_job_id(client, job_id)
    with api_errors(f"no task {task} (rank {rank if rank is not None else 'default'}) in job {job_id}"):
        try:
            text = client.task_log(job_id, task, rank=rank, kind=kind)
        except KeyError:
            fail(f"job {job_id} has no task {task}")
        except PerdureError as exc:
            if f"log type '{kind}' not found" in str(exc):
                fail(f"no {kind} recorded for task {task} of job {job_id} yet")
            raise
    out.print(text, end="" if text.endswith("\n") or not text else "\n", markup=False, highlight=False)


# ---- the queue --------------------------------------------------------------------------------------


def queue(json_: Json = False, server: Server = None, token: Token = None, ca_file: CaFile = None) -> None:
    """Counts of jobs, tasks, workunits and clients by state."""
    summary = fetch(server, token, ca_file, Client.queue)
    if json_:
        print_json(summary.raw)
        return
    rows = table("", "total", "by state")
    for label, counts in (
        ("jobs", summary.jobs.get("by_state", {})),
        ("tasks", {k: v for k, v in summary.tasks.items() if k != "total"}),
        ("workunits", summary.workunits.get("by_state", {})),
        ("clients", {k: v for k, v in summary.clients.items() if k not in ("total", "idle") and v}),
    ):
        total = (
            sum(int(v) for v in counts.values()) if label != "clients" else summary.clients.get("total", 0)
        )
        text = ", ".join(f"{state} {count}" for state, count in sorted(counts.items()) if count) or "-"
        rows.add_row(label, str(total), text)
    rows.columns[2].overflow = "fold"
    rows.columns[2].no_wrap = False
    out.print(rows)


__all__ = ["follow", "job_app", "jobs", "progress_view", "queue", "submit"]
