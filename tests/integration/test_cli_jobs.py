"""``perdure submit|jobs|job ...|queue`` as a user runs them, against a real server and worker.

Commands run in-process through Typer's runner (the same ``main`` as the installed command, with a
private environment: no ``PERDURE_*`` of the caller, ``COLUMNS`` unset so tables get 80 columns); the
exit code of ``submit --wait`` and the server-down case also run as real subprocesses. What is checked is
what a person reads and a script parses: tables inside 80 columns, ``--json`` equal to the API's
documents, errors as one ``error:`` line on stderr with exit code 1 (server) or 2 (command line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from perdure.cli import app
from tests.idp import Issuer
from tests.integration.test_manage_cli import Cli, Run
from tests.integration.test_sdk import PARKED, Stack, squares, stack
from tests.integration.test_security import enable_body
from tests.support import ServerProcess, free_port

__all__ = ["stack"]  # the module's server and worker (a fixture)
pytestmark = pytest.mark.timeout(300)
CLEARED = ("PERDURE_SERVER", "PERDURE_TOKEN", "PERDURE_CA_FILE", "PERDURE_LOGIN_FILE", "COLUMNS", "LINES")


class Perdure:
    """``perdure ARGS`` in-process, against ``server`` unless ``--server`` is given."""

    def __init__(self, server: str, home: Path) -> None:
        self.server = server
        self.env: dict[str, str | None] = {k: None for k in CLEARED}
        self.env.update(XDG_CONFIG_HOME=str(home), PERDURE_SERVER=server)

    def __call__(self, *args: str, **env: str) -> Run:
        result = CliRunner().invoke(app, list(args), env={**self.env, **env}, catch_exceptions=False)
        return Run(args, result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def perdure(stack: Stack, tmp_path: Path) -> Perdure:
    return Perdure(stack.server.url, tmp_path / "home")


def ok(run: Run) -> str:
    assert run.code == 0, run
    return run.out


def one_error_line(run: Run, code: int = 1) -> str:
    assert run.code == code, run
    assert run.out == "", run
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run
    return lines[0]


def fits(text: str, width: int = 80) -> list[str]:
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    return lines


def api(stack: Stack, path: str) -> object:
    return httpx.get(stack.server.url + path, timeout=60).json()["data"]


def job_script(tmp_path: Path, name: str, *, fail: bool = False, parked: bool = False) -> Path:
    flow = squares(name, 100)
    if fail:
        flow.tasks[2].args = ["-c", "echo 'the sum went wrong' >&2; exit 42"]
    if parked:
        flow.clientgroups = PARKED
    return flow.save(tmp_path / f"{name}.json")


# ---- submit -----------------------------------------------------------------------------------------


def test_submit_wait_shows_progress_and_exits_0_when_the_job_completed(
    stack: Stack, perdure: Perdure, tmp_path: Path
) -> None:
    run = perdure("submit", str(job_script(tmp_path, "cli-ok")), "--wait", "--timeout", "120")
    job_id = ok(run).strip()
    assert api(stack, f"/job/{job_id}")["state"] == "completed"  # type: ignore[index]
    lines = fits(run.err)
    assert lines[0] == f"submitted job {job_id}"
    assert any(line.startswith("cli-ok") and "completed" in line and job_id[:8] in line for line in lines)
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.split()}
    assert rows["square"][-2:] == ["3/3", "completed"]
    assert rows["generate"][-2:] == ["1/1", "completed"] and rows["sum"][-2:] == ["1/1", "completed"]


def test_submit_wait_on_a_failing_job_shows_its_stderr_and_exits_1(
    stack: Stack, perdure: Perdure, tmp_path: Path
) -> None:
    run = perdure("submit", str(job_script(tmp_path, "cli-fail", fail=True)), "--wait")
    assert run.code == 1, run
    job_id = run.out.strip()
    assert api(stack, f"/job/{job_id}")["state"] == "failed-permanent"  # type: ignore[index]
    lines = fits(run.err, 200)
    failure = next(line for line in lines if line.startswith("error: "))
    assert failure.startswith(f"error: job {job_id} ended failed-permanent in task sum")
    assert lines[-1] == "the sum went wrong"
    assert "last 1 line(s) of stderr" in lines[-2]


def test_submit_wait_exit_code_in_a_real_process(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    good = cli("submit", str(job_script(tmp_path, "proc-ok")), "--wait", "--server", stack.server.url)
    assert good.code == 0 and len(good.out.strip()) == 36, good
    bad = cli("submit", str(job_script(tmp_path, "proc-bad", fail=True)), "-w", "--server", stack.server.url)
    assert bad.code == 1 and "the sum went wrong" in bad.err, bad


def test_submit_prints_the_id_or_the_document(stack: Stack, perdure: Perdure, tmp_path: Path) -> None:
    script = job_script(tmp_path, "cli-parked", parked=True)
    job_id = ok(perdure("submit", str(script))).strip()
    assert api(stack, f"/job/{job_id}")["info"]["name"] == "cli-parked"  # type: ignore[index]
    document = json.loads(ok(perdure("submit", str(script), "--json")))
    assert document["info"]["name"] == "cli-parked" and document["id"] != job_id
    assert document == api(stack, f"/job/{document['id']}") | {"updatetime": document["updatetime"]}
    # A missing file is a command-line mistake; a bad script is the server's refusal.
    assert "no such job script" in one_error_line(perdure("submit", str(tmp_path / "nope.json")), 2)
    (tmp_path / "bad.json").write_text('{"info": {}, "tasks": []}')
    assert (
        one_error_line(perdure("submit", str(tmp_path / "bad.json"))) == "error: 400: job script has no tasks"
    )


def test_submit_wait_gives_up_after_the_timeout(perdure: Perdure, tmp_path: Path) -> None:
    run = perdure("submit", str(job_script(tmp_path, "never", parked=True)), "--wait", "--timeout", "1")
    assert run.code == 1, run
    assert run.err.splitlines()[-1].endswith("did not finish within 1s"), run


# ---- listing ----------------------------------------------------------------------------------------


def test_jobs_table_fits_80_columns_and_json_round_trips(
    stack: Stack, perdure: Perdure, tmp_path: Path
) -> None:
    for name in ("list-a", "list-b-with-a-name-much-too-long-for-an-eighty-column-table"):
        ok(perdure("submit", str(job_script(tmp_path, name, parked=True))))
    run = perdure("jobs", "--limit", "100")
    lines = fits(ok(run))
    assert lines[0].split() == ["id", "state", "tasks", "submitted", "name"]
    listed = [line.split()[0] for line in lines[1:]]
    expected = [job["id"] for job in api(stack, "/job?limit=100")]  # type: ignore[union-attr]
    assert listed == expected
    assert any("list-b" in line and line.rstrip().endswith("…") for line in lines)
    assert run.err.strip() == f"1-{len(expected)} of {len(expected)} job(s)"

    documents = json.loads(ok(perdure("jobs", "--limit", "100", "--json")))
    assert [d["id"] for d in documents] == expected
    assert documents[0] == api(stack, f"/job/{documents[0]['id']}")

    parked = json.loads(ok(perdure("jobs", "--project", "sdk-test", "--state", "queued", "--json")))
    assert parked and all(d["state"] == "queued" and d["info"]["project"] == "sdk-test" for d in parked)
    one = ok(perdure("jobs", "--limit", "1")).splitlines()
    assert len(one) == 2
    assert ok(perdure("jobs", "--user", "nobody-at-all")) == ""


def test_jobs_refuses_bad_arguments_in_one_line(perdure: Perdure) -> None:
    assert "--limit" in one_error_line(perdure("jobs", "--limit", "0"), 2)
    assert "exclude each other" in one_error_line(perdure("jobs", "--active", "--suspended"), 2)
    assert "--bogus" in one_error_line(perdure("jobs", "--bogus"), 2)
    assert "Missing argument" in one_error_line(perdure("job", "show"), 2)


# ---- one job ----------------------------------------------------------------------------------------


def test_job_show_outputs_download_and_logs(stack: Stack, perdure: Perdure, tmp_path: Path) -> None:
    job_id = ok(perdure("submit", str(job_script(tmp_path, "cli-show")), "--wait")).strip()
    shown = fits(ok(perdure("job", "show", job_id)))
    assert shown[0].split() == ["id", job_id] and shown[2].split() == ["state", "completed"]
    tasks = {
        line.split()[0]: line.split()
        for line in shown[shown.index(next(x for x in shown if x.startswith("task"))) + 1 :]
    }
    assert tasks["square"][1:3] == ["completed", "3/3"]
    assert json.loads(ok(perdure("job", "show", job_id, "--json"))) == api(stack, f"/job/{job_id}")

    outputs = fits(ok(perdure("job", "outputs", job_id)))
    assert [line.split()[:2] for line in outputs[1:]] == [
        ["generate", "numbers.txt"], ["square", "squares.txt"], ["sum", "total.txt"],
    ]  # fmt: skip
    assert json.loads(ok(perdure("job", "outputs", job_id, "--json"))) == api(stack, f"/job/{job_id}/outputs")

    saved = ok(perdure("job", "download", job_id, "--dest", str(tmp_path / "out"))).split()
    assert sorted(saved) == sorted(
        str(tmp_path / "out" / p) for p in ("generate/numbers.txt", "square/squares.txt", "sum/total.txt")
    )
    total = sum(i * i for i in range(1, 101))
    assert (tmp_path / "out" / "sum" / "total.txt").read_text() == f"{total}\n"
    one = ok(
        perdure(
            "job", "download", job_id, "-d", str(tmp_path / "one"), "--task", "sum", "--file", "total.txt"
        )
    )
    assert one.split() == [str(tmp_path / "one" / "sum" / "total.txt")]
    assert "no output" in one_error_line(perdure("job", "download", job_id, "--file", "nope.txt"))

    assert ok(perdure("job", "logs", job_id, "square", "--rank", "2", "--stderr")) == "squared\n"
    assert ok(perdure("job", "logs", job_id, "sum")) == "summed\n"
    assert "no task missing" in one_error_line(perdure("job", "logs", job_id, "missing")).lower()
    assert "(rank 9)" in one_error_line(perdure("job", "logs", job_id, "square", "--rank", "9"))


def test_job_logs_prints_a_workunits_output(perdure: Perdure, tmp_path: Path) -> None:
    failing = job_script(tmp_path, "cli-logs", fail=True)
    job_id = perdure("submit", str(failing), "--wait").out.strip()
    assert ok(perdure("job", "logs", job_id, "sum", "--stderr")) == "the sum went wrong\n"
    assert ok(perdure("job", "logs", job_id, "square", "--rank", "1", "--stderr")) == "squared\n"
    empty = one_error_line(perdure("job", "logs", job_id, "square", "--rank", "1"))  # it printed nothing
    assert empty == f"error: no stdout recorded for task square of job {job_id} yet"


def test_job_operations_change_the_job(stack: Stack, perdure: Perdure, tmp_path: Path) -> None:
    job_id = ok(perdure("submit", str(job_script(tmp_path, "cli-ops", parked=True)))).strip()

    def state() -> str:
        return str(api(stack, f"/job/{job_id}")["state"])  # type: ignore[index]

    assert ok(perdure("job", "suspend", job_id)).strip()
    assert state() == "suspend"
    assert job_id in {
        d["id"] for d in json.loads(ok(perdure("jobs", "--suspended", "--json", "--limit", "500")))
    }
    assert (
        one_error_line(perdure("job", "suspend", job_id)) == f"error: 400: job {job_id} is already suspended"
    )
    ok(perdure("job", "resume", job_id))
    assert state() == "queued"
    assert job_id in {
        d["id"] for d in json.loads(ok(perdure("jobs", "--active", "--json", "--limit", "500")))
    }
    refused = one_error_line(perdure("job", "resubmit", job_id))
    assert refused.startswith(f"error: 400: job {job_id} is queued: resubmit needs")
    ok(perdure("job", "suspend", job_id))
    ok(perdure("job", "resubmit", job_id))
    assert state() == "queued"
    ok(perdure("job", "suspend", job_id))
    ok(perdure("job", "recompute", job_id, "square"))
    assert state() == "queued"
    refused = one_error_line(perdure("job", "recompute", job_id, "square"))
    assert refused.startswith(f"error: 400: job {job_id} is queued: recompute needs")
    ok(perdure("job", "delete", job_id))
    assert state() == "deleted"
    ok(perdure("job", "delete", job_id, "--full"))
    missing = one_error_line(perdure("job", "show", job_id))
    assert missing == f"error: no job {job_id} on this server"


def test_unknown_jobs_are_one_line_each(perdure: Perdure) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    for command in ("show", "suspend", "resume", "resubmit", "delete", "outputs", "download"):
        assert one_error_line(perdure("job", command, unknown)) == f"error: no job {unknown} on this server"
    assert unknown in one_error_line(perdure("job", "recompute", unknown, "t"))
    assert unknown in one_error_line(perdure("job", "logs", unknown, "t"))


# ---- the queue ----------------------------------------------------------------------------------------


def test_queue_table_and_json(stack: Stack, perdure: Perdure) -> None:
    lines = fits(ok(perdure("queue")))
    assert [line.split()[0] for line in lines[1:]] == ["jobs", "tasks", "workunits", "clients"]
    summary = json.loads(ok(perdure("queue", "--json")))
    assert set(summary) == {"jobs", "tasks", "workunits", "clients"}
    jobs_row = lines[1].split()
    assert jobs_row[1] == str(summary["jobs"]["total"])


# ---- failures -------------------------------------------------------------------------------------------


def test_server_down_is_one_line(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    cli = Cli(tmp_path / "home")
    for args in (("jobs",), ("queue", "--json"), ("job", "show", "x"), ("submit", __file__)):
        run = cli(*args, "--server", nowhere)
        assert run.code == 1 and run.out == "", run
        assert run.err.splitlines() == [run.err.strip()] and f"error: cannot reach {nowhere}" in run.err, run


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


def test_tokens_from_flags_env_and_login(tmp_path: Path, issuer: Issuer) -> None:
    server = ServerProcess(tmp_path / "secured", f"sqlite:///{tmp_path / 's.db'}").start()
    try:
        admin, user = issuer.token("root", ("admin",)), issuer.token("alice", ("users",))
        enabled = httpx.put(
            server.url + "/api/v1/security/cognito", json=enable_body(issuer, admin), timeout=60
        )
        assert enabled.status_code == 200, enabled.text
        perdure = Perdure(server.url, tmp_path / "home")
        line = one_error_line(perdure("jobs"))
        assert line.startswith("error: 401: ")
        assert one_error_line(perdure("jobs", "--token", "not-a-token")).startswith("error: 401: ")
        assert ok(perdure("jobs", "--token", user)) == ""
        assert ok(perdure("queue", "--json", PERDURE_TOKEN=user))
        # perdure login's file serves later commands; clients need an admin to list or change.
        ok(perdure("login", "--token", user, "--server", server.url))
        assert json.loads(ok(perdure("jobs", "--json"))) == []
        assert one_error_line(perdure("clients")).startswith("error: 403: ")
        assert one_error_line(perdure("client", "suspend", "nobody")).startswith("error: 403: ")
    finally:
        server.stop()


def test_job_events_tell_the_story_within_80_columns(stack: Stack, perdure: Perdure, tmp_path: Path) -> None:
    job_id = ok(perdure("submit", str(job_script(tmp_path, "cli-events")), "--wait")).strip()
    lines = fits(ok(perdure("job", "events", job_id)))
    assert lines[0].split() == ["time", "code", "event"]
    # "2026-11-24 09:10  TQ  task square queued": date, time, code, message
    codes = [line.split()[2] for line in lines[1:-1] if len(line.split()) > 2]
    assert codes[0] == "JQ" and codes[-1] == "JD"
    assert lines[-1] == "spot: 0 preempted, 0 restored (0s saved), 0 checkpoints (0 failed), 0 refused"
    document = json.loads(ok(perdure("job", "events", job_id, "--json")))
    report = api(stack, f"/job/{job_id}?report")
    assert isinstance(report, dict)
    assert document == {"events": report["events"], "spot": report["spot"]}
    # Not a whole id, so a prefix of one: matching none is a command-line error (exit 2).
    assert "unknown-job" in one_error_line(perdure("job", "events", "unknown-job"), 2)
