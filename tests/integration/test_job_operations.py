"""``PUT /job/<id>?op``, ``PUT /job?...``, ``DELETE /job[/<id>]``, expiration reaping and ``start_at``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from perdure.api.context import ServerContext
from perdure.settings import Settings
from perdure.store.schema import jobs as jobs_table
from perdure.timeutil import now_us
from tests.integration.drive import (
    ZERO_TIME,
    checkout,
    get_job,
    put_job,
    queued_workunits,
    register,
    report,
    run_job,
    submit,
    task_states,
)
from tests.jobs import diamond, script, task

NOT_FOUND = {"status": 404, "data": None, "error": ["Not Found"]}


def ctx(client: TestClient) -> ServerContext:
    context: ServerContext = client.app.state.ctx  # type: ignore[attr-defined]
    return context


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == 200 and body["error"] is None
    return body["data"]


def refused(response: Any, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["data"] is None
    message: str = body["error"][0]
    return message


def completed_diamond(client: TestClient, client_id: str = "c1") -> str:
    register(client, client_id)
    job_id: str = submit(client, diamond())["id"]
    run_job(client, job_id, client_id)
    return job_id


def failed_permanently(client: TestClient, client_id: str = "c1") -> str:
    """A diamond whose first task exited 42."""
    register(client, client_id)
    job_id: str = submit(client, diamond())["id"]
    work = checkout(client, client_id)
    assert work is not None and work["jobid"] == job_id
    report(client, work["id"], client_id, status="failed-permanent")
    assert get_job(client, job_id)["state"] == "failed-permanent"
    return job_id


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---- suspend and resume --------------------------------------------------------------------------


def test_suspend_holds_queued_tasks_and_says_why(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, diamond())["id"]
    assert ok(put_job(client, job_id, "suspend")) == f"job suspended: {job_id}"
    job = get_job(client, job_id)
    assert job["state"] == "suspend"
    assert job["registered"] is True
    assert job["error"]["servernotes"] == "manually suspended"
    assert job["error"]["status"] == "suspend"
    assert task_states(client, job_id) == {"0": "suspend", "1": "pending", "2": "pending", "3": "pending"}
    assert queued_workunits(client, job_id) == []
    held = ok(client.get("/work?state=suspend&limit=100"))
    assert [w["id"] for w in held] == [f"{job_id}_0_0"]
    assert checkout(client, "c1") is None


def test_suspend_twice_is_refused(client: TestClient) -> None:
    job_id = submit(client, diamond())["id"]
    ok(put_job(client, job_id, "suspend"))
    assert "already suspended" in refused(put_job(client, job_id, "suspend"))
    assert get_job(client, job_id)["error"]["servernotes"] == "manually suspended"


def test_suspend_of_an_in_progress_job_holds_its_checked_out_work(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, script(task("0", totalwork=2)))["id"]
    work = checkout(client, "c1")
    assert work is not None
    ok(put_job(client, job_id, "suspend"))
    assert task_states(client, job_id) == {"0": "suspend"}
    states = {w["id"]: w["state"] for w in ok(client.get("/work?state=suspend&limit=100"))}
    assert states == {f"{job_id}_0_1": "suspend", f"{job_id}_0_2": "suspend"}


@pytest.mark.parametrize("state", ["completed", "deleted"])
def test_suspend_of_a_finished_job_is_refused(client: TestClient, state: str) -> None:
    if state == "completed":
        job_id = completed_diamond(client)
    else:
        job_id = submit(client, diamond())["id"]
        ok(client.delete(f"/job/{job_id}"))
    assert "cannot be suspended" in refused(put_job(client, job_id, "suspend"))
    assert get_job(client, job_id)["state"] == state


@pytest.mark.parametrize("state", ["queued", "completed", "failed-permanent"])
def test_resume_only_from_suspend(client: TestClient, state: str) -> None:
    if state == "queued":
        job_id = submit(client, diamond())["id"]
    elif state == "completed":
        job_id = completed_diamond(client)
    else:
        job_id = failed_permanently(client)
    assert refused(put_job(client, job_id, "resume")) == f"job {job_id} is not in 'suspend' status"
    assert get_job(client, job_id)["state"] == state
    assert get_job(client, job_id)["resumed"] == 0


def test_resume_requeues_a_suspended_job(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, diamond())["id"]
    ok(put_job(client, job_id, "suspend"))
    assert ok(put_job(client, job_id, "resume")) == f"job resumed: {job_id}"
    job = get_job(client, job_id)
    assert (job["state"], job["error"], job["resumed"], job["remaintasks"]) == ("queued", None, 1, 4)
    assert task_states(client, job_id) == {"0": "queued", "1": "pending", "2": "pending", "3": "pending"}
    run_job(client, job_id, "c1")
    assert get_job(client, job_id)["resumed"] == 1


def test_resume_keeps_done_workunits_and_reruns_only_the_rest(client: TestClient) -> None:
    register(client, "c1")
    register(client, "c2")
    job_id = submit(client, script(task("0", totalwork=3), task("1", depends=["0"])))["id"]
    first = checkout(client, "c1")
    assert first is not None
    report(client, first["id"], "c1")
    running = checkout(client, "c2")  # held when the job is suspended
    assert running is not None
    ok(put_job(client, job_id, "suspend"))
    split = get_job(client, job_id)["tasks"][0]
    assert (split["state"], split["remainwork"]) == ("suspend", 2)

    ok(put_job(client, job_id, "resume"))
    job = get_job(client, job_id)
    split = job["tasks"][0]
    assert (split["state"], split["remainwork"], split["totalwork"]) == ("in-progress", 2, 3)
    assert job["resumed"] == 1
    unfinished = {f"{job_id}_0_{rank}" for rank in (1, 2, 3)} - {first["id"]}
    assert {w["id"] for w in queued_workunits(client, job_id)} == unfinished

    rerun = run_job(client, job_id, "c1")
    assert set(rerun[:2]) == unfinished and rerun[2:] == [f"{job_id}_1_0"]
    done = get_job(client, job_id)
    assert done["state"] == "completed" and done["tasks"][0]["remainwork"] == 0


def test_resumeall_resumes_every_suspended_job(client: TestClient) -> None:
    held = [submit(client, diamond())["id"] for _ in range(2)]
    running = submit(client, diamond())["id"]
    for job_id in held:
        ok(put_job(client, job_id, "suspend"))
    assert ok(client.put("/job?resumeall")) == "2 suspended jobs resumed"
    assert [get_job(client, j)["state"] for j in [*held, running]] == ["queued"] * 3
    assert [get_job(client, j)["resumed"] for j in [*held, running]] == [1, 1, 0]
    assert ok(client.put("/job?resumeall")) == "0 suspended jobs resumed"


# ---- resubmit and recompute ----------------------------------------------------------------------


def test_resubmit_reruns_every_task_of_a_completed_job(client: TestClient) -> None:
    job_id = completed_diamond(client)
    first_completion = get_job(client, job_id)["info"]["completedtime"]
    assert ok(put_job(client, job_id, "resubmit")) == f"job resubmitted: {job_id}"
    job = get_job(client, job_id)
    assert (job["state"], job["remaintasks"], job["resumed"]) == ("queued", 4, 1)
    assert job["info"]["completedtime"] == ZERO_TIME
    assert task_states(client, job_id) == {"0": "queued", "1": "pending", "2": "pending", "3": "pending"}
    assert all(t["remainwork"] == t["totalwork"] for t in job["tasks"])
    assert all(t["completeddate"] == ZERO_TIME for t in job["tasks"])

    rerun = run_job(client, job_id, "c1")
    assert sorted(rerun) == sorted(f"{job_id}_{t}_0" for t in "0123")
    again = get_job(client, job_id)
    assert again["state"] == "completed" and again["remaintasks"] == 0 and again["resumed"] == 1
    assert again["info"]["completedtime"] > first_completion


@pytest.mark.parametrize(("start", "reset"), [("1", {"1", "3"}), ("2", {"2", "3"}), ("0", set("0123"))])
def test_recompute_resets_the_task_and_everything_downstream_of_it(
    client: TestClient, start: str, reset: set[str]
) -> None:
    """Task 3 depends on 1 *and* 2: recompute follows every dependency, not only the first (AWE bug)."""
    job_id = completed_diamond(client)
    reply = ok(put_job(client, job_id, f"recompute={start}"))
    assert reply == f"job recompute started at task {start}: {job_id}"
    job = get_job(client, job_id)
    assert (job["state"], job["remaintasks"], job["resumed"]) == ("queued", len(reset), 1)
    states = task_states(client, job_id)
    assert {name for name, state in states.items() if state == "completed"} == set("0123") - reset
    assert states[start] == "queued"
    assert all(states[name] == "pending" for name in reset - {start})

    rerun = run_job(client, job_id, "c1")
    assert sorted(rerun) == sorted(f"{job_id}_{name}_0" for name in reset)
    assert get_job(client, job_id)["state"] == "completed"


def test_recompute_accepts_the_full_task_id(client: TestClient) -> None:
    job_id = completed_diamond(client)
    ok(put_job(client, job_id, f"recompute={job_id}_2"))
    states = task_states(client, job_id)
    assert states == {"0": "completed", "1": "completed", "2": "queued", "3": "pending"}
    assert get_job(client, job_id)["remaintasks"] == 2


@pytest.mark.parametrize("taskid", ["9", "x_1", "other-job_1"])
def test_recompute_of_an_unknown_task_is_refused(client: TestClient, taskid: str) -> None:
    job_id = completed_diamond(client)
    assert "not found in job" in refused(put_job(client, job_id, f"recompute={taskid}"))
    job = get_job(client, job_id)
    assert (job["state"], job["resumed"], job["remaintasks"]) == ("completed", 0, 0)


def test_recompute_without_a_task_is_refused(client: TestClient) -> None:
    job_id = completed_diamond(client)
    assert "needs a task id" in refused(put_job(client, job_id, "recompute"))


@pytest.mark.parametrize("op", ["resubmit", "recompute=0"])
def test_rerun_of_an_active_or_deleted_job_is_refused(client: TestClient, op: str) -> None:
    register(client, "c1")
    queued = submit(client, diamond())["id"]
    running = submit(client, diamond())["id"]
    deleted = submit(client, diamond())["id"]
    ok(client.delete(f"/job/{deleted}"))
    work = checkout(client, "c1")
    assert work is not None and work["jobid"] == queued
    assert get_job(client, queued)["state"] == "in-progress"
    for job_id, state in ((queued, "in-progress"), (running, "queued"), (deleted, "deleted")):
        message = refused(put_job(client, job_id, op))
        assert "needs a completed, suspended or failed-permanent job" in message
        assert get_job(client, job_id)["state"] == state
        assert get_job(client, job_id)["resumed"] == 0


def suspended_diamond(client: TestClient) -> str:
    """A diamond job suspended once its first task is done (client ``c1`` ran it); its id."""
    register(client, "c1")
    job_id: str = submit(client, diamond())["id"]
    first = checkout(client, "c1")
    assert first is not None
    report(client, first["id"], "c1")
    ok(put_job(client, job_id, "suspend"))
    return job_id


def test_recompute_of_a_suspended_job_also_resets_its_unfinished_tasks(client: TestClient) -> None:
    job_id = suspended_diamond(client)
    assert task_states(client, job_id) == {"0": "completed", "1": "suspend", "2": "suspend", "3": "pending"}

    ok(put_job(client, job_id, "recompute=1"))
    job = get_job(client, job_id)
    assert (job["state"], job["error"], job["remaintasks"], job["resumed"]) == ("queued", None, 3, 1)
    assert task_states(client, job_id) == {"0": "completed", "1": "queued", "2": "queued", "3": "pending"}
    rerun = run_job(client, job_id, "c1")
    assert sorted(rerun) == sorted(f"{job_id}_{t}_0" for t in "123")


def test_resubmit_of_a_suspended_job_reruns_everything(client: TestClient) -> None:
    job_id = suspended_diamond(client)
    ok(put_job(client, job_id, "resubmit"))
    job = get_job(client, job_id)
    assert (job["state"], job["error"], job["remaintasks"], job["resumed"]) == ("queued", None, 4, 1)
    assert task_states(client, job_id) == {"0": "queued", "1": "pending", "2": "pending", "3": "pending"}
    assert len(run_job(client, job_id, "c1")) == 4


@pytest.mark.parametrize(("op", "reruns"), [("resubmit", 4), ("recompute=0", 4)])
def test_rerun_of_a_failed_permanent_job(client: TestClient, op: str, reruns: int) -> None:
    job_id = failed_permanently(client)
    job = get_job(client, job_id)
    assert job["error"]["status"] == "failed-permanent"
    assert task_states(client, job_id)["0"] == "failed-permanent"

    ok(put_job(client, job_id, op))
    job = get_job(client, job_id)
    assert (job["state"], job["error"], job["remaintasks"], job["resumed"]) == ("queued", None, 4, 1)
    assert task_states(client, job_id) == {"0": "queued", "1": "pending", "2": "pending", "3": "pending"}
    assert len(run_job(client, job_id, "c1")) == reruns
    assert get_job(client, job_id)["state"] == "completed"


# ---- clientgroup, priority, pipeline -------------------------------------------------------------


def test_clientgroup_change_moves_work_to_the_new_group(client: TestClient) -> None:
    register(client, "old-1", group="old")
    register(client, "new-1", group="new")
    job_id = submit(client, script(task("0"), task("1", depends=["0"]), clientgroups="old"))["id"]
    reply = ok(put_job(client, job_id, "clientgroup=new"))
    assert reply == f"job clientgroup updated: {job_id} (new)"
    assert get_job(client, job_id)["info"]["clientgroups"] == "new"
    assert checkout(client, "old-1") is None
    work = checkout(client, "new-1")
    assert work is not None and work["id"] == f"{job_id}_0_0"
    assert work["info"]["clientgroups"] == "new"
    report(client, work["id"], "new-1")
    # the task queued after the change carries the new group too
    assert checkout(client, "old-1") is None
    follow_up = checkout(client, "new-1")
    assert follow_up is not None and follow_up["id"] == f"{job_id}_1_0"


def test_clientgroup_list_and_empty_value(client: TestClient) -> None:
    register(client, "a-1", group="a")
    register(client, "b-1", group="b")
    register(client, "z-1", group="z")
    job_id = submit(client, script(task("0", totalwork=3), clientgroups="x"))["id"]
    ok(put_job(client, job_id, "clientgroup=a, b"))
    assert get_job(client, job_id)["info"]["clientgroups"] == "a,b"
    assert checkout(client, "z-1") is None
    assert checkout(client, "a-1") is not None
    assert checkout(client, "b-1") is not None
    assert ok(put_job(client, job_id, "clientgroup=")) == f"job clientgroup updated: {job_id} (any)"
    assert get_job(client, job_id)["info"]["clientgroups"] == ""
    assert checkout(client, "z-1") is not None


def test_clientgroup_underscore_is_not_a_wildcard_at_checkout(client: TestClient) -> None:
    register(client, "lookalike", group="mg_rast")
    job_id = submit(client, script(task("0")))["id"]
    ok(put_job(client, job_id, "clientgroup=mgXrast,docker"))
    assert checkout(client, "lookalike") is None


@pytest.mark.parametrize("value", ["high", "1.5", "0", "-2", ""])
def test_priority_must_be_a_positive_integer(client: TestClient, value: str) -> None:
    job_id = submit(client, diamond())["id"]
    message = refused(put_job(client, job_id, f"priority={value}"))
    assert "priority must be" in message
    assert get_job(client, job_id)["info"]["priority"] == 1


def test_priority_change_reorders_checkout(client: TestClient) -> None:
    register(client, "c1")
    first = submit(client, script(task("0")))["id"]
    second = submit(client, script(task("0")))["id"]
    assert ok(put_job(client, second, "priority=7")) == f"job priority updated: {second} (7)"
    assert get_job(client, second)["info"]["priority"] == 7
    work = checkout(client, "c1")
    assert work is not None and work["jobid"] == second
    report(client, work["id"], "c1")
    work = checkout(client, "c1")
    assert work is not None and work["jobid"] == first


def test_pipeline_change_shows_in_info_and_queries(client: TestClient) -> None:
    job_id = submit(client, diamond())["id"]
    assert (
        ok(put_job(client, job_id, "pipeline=mgrast-prod")) == f"job pipeline updated: {job_id} (mgrast-prod)"
    )
    assert get_job(client, job_id)["info"]["pipeline"] == "mgrast-prod"
    assert [j["id"] for j in ok(client.get("/job?query&info.pipeline=mgrast-prod"))] == [job_id]


@pytest.mark.parametrize("op", ["clientgroup=g", "priority=3", "pipeline=p"])
def test_field_changes_of_a_deleted_job_are_refused(client: TestClient, op: str) -> None:
    job_id = submit(client, diamond())["id"]
    ok(client.delete(f"/job/{job_id}"))
    assert "is deleted" in refused(put_job(client, job_id, op))


# ---- expiration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "duration"),
    [("30M", timedelta(minutes=30)), ("12H", timedelta(hours=12)), ("7D", timedelta(days=7))],
)
def test_expiration_of_a_completed_job_is_now_plus_the_duration(
    client: TestClient, value: str, duration: timedelta
) -> None:
    job_id = completed_diamond(client)
    assert get_job(client, job_id)["expiration"] == ZERO_TIME
    before = datetime.now(UTC)
    reply = ok(put_job(client, job_id, f"expiration={value}"))
    after = datetime.now(UTC)
    expiration = get_job(client, job_id)["expiration"]
    assert reply == f"job expiration set: {job_id} ({expiration})"
    assert before + duration - timedelta(seconds=1) <= parse_time(expiration) <= after + duration


@pytest.mark.parametrize("value", ["7d", "abc", "", "7", "D", "-1D", "1.5H", "7W"])
def test_malformed_expiration_is_refused(client: TestClient, value: str) -> None:
    job_id = completed_diamond(client)
    assert "expiration must look like 30M, 12H or 7D" in refused(
        put_job(client, job_id, f"expiration={value}")
    )
    assert get_job(client, job_id)["expiration"] == ZERO_TIME


def test_expiration_applies_only_to_completed_or_deleted_jobs(client: TestClient) -> None:
    queued = submit(client, diamond())["id"]
    assert "expiration applies to completed or deleted jobs" in refused(
        put_job(client, queued, "expiration=1D")
    )
    assert get_job(client, queued)["expiration"] == ZERO_TIME
    ok(put_job(client, queued, "suspend"))
    refused(put_job(client, queued, "expiration=1D"))
    ok(client.delete(f"/job/{queued}"))
    ok(put_job(client, queued, "expiration=1D"))
    assert get_job(client, queued)["expiration"] != ZERO_TIME


def test_resubmit_clears_the_expiration(client: TestClient) -> None:
    job_id = completed_diamond(client)
    ok(put_job(client, job_id, "expiration=1D"))
    ok(put_job(client, job_id, "resubmit"))
    assert get_job(client, job_id)["expiration"] == ZERO_TIME


def _expire_now(client: TestClient, job_id: str) -> None:
    with ctx(client).db.write() as conn:
        conn.execute(
            update(jobs_table).where(jobs_table.c.id == job_id).values(expiration=now_us() - 1_000_000)
        )


def test_a_job_is_not_reaped_before_its_expiration(client: TestClient) -> None:
    job_id = completed_diamond(client)
    ok(put_job(client, job_id, "expiration=30M"))
    ctx(client).jobs.reap_expired()
    assert get_job(client, job_id)["state"] == "completed"


def test_a_job_past_its_expiration_is_reaped(client: TestClient) -> None:
    job_id = completed_diamond(client)
    keep = completed_diamond(client, "c2")
    ok(put_job(client, job_id, "expiration=30M"))
    _expire_now(client, job_id)
    ctx(client).jobs.reap_expired()
    assert client.get(f"/job/{job_id}").json() == NOT_FOUND
    assert client.get(f"/job/{job_id}?report").status_code == 404
    assert [j["id"] for j in ok(client.get("/job"))] == [keep]
    assert ctx(client).jobs.reap_expired() == 0


def test_only_completed_or_deleted_jobs_are_reaped(client: TestClient) -> None:
    deleted = submit(client, diamond())["id"]
    ok(client.delete(f"/job/{deleted}"))
    ok(put_job(client, deleted, "expiration=1H"))
    suspended = submit(client, diamond())["id"]
    ok(put_job(client, suspended, "suspend"))
    queued = submit(client, diamond())["id"]
    for job_id in (deleted, suspended, queued):
        _expire_now(client, job_id)
    ctx(client).jobs.reap_expired()
    assert client.get(f"/job/{deleted}").status_code == 404
    assert get_job(client, suspended)["state"] == "suspend"
    assert get_job(client, queued)["state"] == "queued"


def test_a_completed_job_without_expiration_is_kept(client: TestClient) -> None:
    job_id = completed_diamond(client)
    ctx(client).jobs.reap_expired()
    assert get_job(client, job_id)["expiration"] == ZERO_TIME


class TestConfiguredExpiration:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        settings.global_expire = "2D"
        settings.pipeline_expire = {"short": "1H"}
        return settings

    @staticmethod
    def _lifetime(client: TestClient, job_id: str) -> timedelta:
        job = get_job(client, job_id)
        return parse_time(job["expiration"]) - parse_time(job["info"]["completedtime"])

    def test_completed_job_gets_the_global_or_pipeline_expiration(self, client: TestClient) -> None:
        register(client, "c1")
        default = submit(client, diamond())["id"]
        short = submit(client, script(task("0"), pipeline="short"))["id"]
        assert get_job(client, default)["expiration"] == ZERO_TIME
        run_job(client, default, "c1")
        run_job(client, short, "c1")
        assert self._lifetime(client, default) == timedelta(days=2)
        assert self._lifetime(client, short) == timedelta(hours=1)

    def test_an_explicit_expiration_wins_until_the_job_reruns(self, client: TestClient) -> None:
        register(client, "c1")
        job_id = submit(client, diamond())["id"]
        run_job(client, job_id, "c1")
        ok(put_job(client, job_id, "expiration=30M"))
        assert timedelta(minutes=29) < self._lifetime(client, job_id) < timedelta(minutes=31)
        ok(put_job(client, job_id, "recompute=3"))
        assert get_job(client, job_id)["expiration"] == ZERO_TIME
        run_job(client, job_id, "c1")
        assert self._lifetime(client, job_id) == timedelta(days=2)


# ---- settoken ------------------------------------------------------------------------------------


def test_settoken_needs_a_datatoken_header(client: TestClient) -> None:
    job_id = submit(client, diamond())["id"]
    assert "missing Datatoken header" in refused(put_job(client, job_id, "settoken"))
    assert get_job(client, job_id)["info"]["auth"] is False


def test_settoken_sets_auth_and_never_shows_the_token(client: TestClient) -> None:
    token = "tok-3c9a5e-secret"
    register(client, "c1")
    job_id = submit(client, diamond())["id"]
    reply = put_job(client, job_id, "settoken", headers={"Datatoken": token})
    assert ok(reply) == f"data token set for job: {job_id}"
    assert get_job(client, job_id)["info"]["auth"] is True
    work = checkout(client, "c1")
    assert work is not None
    for response in (
        reply,
        client.get(f"/job/{job_id}"),
        client.get("/job"),
        client.get("/job?verbosity=minimal"),
        client.get(f"/job/{job_id}?report"),
        client.get(f"/work/{work['id']}"),
    ):
        assert response.status_code == 200
        assert token not in response.text and token not in str(response.headers)
    # the worker holding the lease is the one who gets it
    assert client.get(f"/work/{work['id']}?datatoken&client=c1").headers["Datatoken"] == token


# ---- PUT /job ------------------------------------------------------------------------------------


def test_recoverall_on_a_healthy_server_recovers_nothing(client: TestClient) -> None:
    register(client, "c1")
    completed_diamond(client)
    submit(client, diamond())
    submit(client, script(task("0"), start_at="2999-01-01T00:00:00Z"))
    held = submit(client, diamond())["id"]
    ok(put_job(client, held, "suspend"))
    running = submit(client, script(task("0", totalwork=2)))["id"]
    assert checkout(client, "c1") is not None
    assert ok(client.put("/job?recoverall")) == "0 missing jobs recovered"
    assert get_job(client, running)["state"] in ("queued", "in-progress")


@pytest.mark.parametrize("query", ["", "?bogus", "?resume", "?suspend"])
def test_unknown_put_on_all_jobs_is_not_implemented(client: TestClient, query: str) -> None:
    assert refused(client.put(f"/job{query}"), 501) == "Not Implemented"


def test_unknown_operation_on_a_job_is_not_implemented(client: TestClient) -> None:
    job_id = submit(client, diamond())["id"]
    assert refused(put_job(client, job_id, "frobnicate"), 501) == "requested job operation not supported"
    assert refused(client.put(f"/job/{job_id}"), 501) == "requested job operation not supported"
    assert get_job(client, job_id)["state"] == "queued"


# ---- delete --------------------------------------------------------------------------------------


def test_soft_delete_keeps_the_job_but_stops_its_work(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, script(task("0", totalwork=2), task("1", depends=["0"])))["id"]
    assert ok(client.delete(f"/job/{job_id}")) == f"job deleted: {job_id}"
    job = get_job(client, job_id)
    assert job["state"] == "deleted" and job["registered"] is False
    assert task_states(client, job_id) == {"0": "suspend", "1": "suspend"}
    assert queued_workunits(client, job_id) == []
    assert checkout(client, "c1") is None
    assert [j["id"] for j in ok(client.get("/job"))] == [job_id]
    assert ok(client.get(f"/job/{job_id}?report"))["state"] == "deleted"
    # deleting again is harmless
    assert ok(client.delete(f"/job/{job_id}")) == f"job deleted: {job_id}"


def test_full_delete_removes_the_job(client: TestClient) -> None:
    register(client, "c1")
    job_id = submit(client, diamond())["id"]
    other = submit(client, diamond())["id"]
    assert ok(client.delete(f"/job/{job_id}?full")) == f"job deleted: {job_id}"
    for suffix in ("", "?report", "?perf", "?position"):
        assert client.get(f"/job/{job_id}{suffix}").json() == NOT_FOUND
    assert [j["id"] for j in ok(client.get("/job"))] == [other]
    work = checkout(client, "c1")
    assert work is not None and work["jobid"] == other
    assert client.delete(f"/job/{job_id}").json() == NOT_FOUND


def test_delete_suspended_deletes_only_suspended_jobs(client: TestClient) -> None:
    held = [submit(client, diamond())["id"] for _ in range(2)]
    queued = submit(client, diamond())["id"]
    for job_id in held:
        ok(put_job(client, job_id, "suspend"))
    assert ok(client.delete("/job?suspend")) == "deleted 2 suspended jobs"
    assert [get_job(client, j)["state"] for j in held] == ["deleted", "deleted"]
    assert get_job(client, queued)["state"] == "queued"
    assert ok(client.delete("/job?suspend")) == "deleted 0 suspended jobs"


def test_delete_suspended_full_removes_them(client: TestClient) -> None:
    held = submit(client, diamond())["id"]
    queued = submit(client, diamond())["id"]
    ok(put_job(client, held, "suspend"))
    assert ok(client.delete("/job?suspend&full")) == "deleted 1 suspended jobs"
    assert client.get(f"/job/{held}").status_code == 404
    assert get_job(client, queued)["state"] == "queued"


def test_delete_zombies_on_a_healthy_server_deletes_nothing(client: TestClient) -> None:
    register(client, "c1")
    done = completed_diamond(client)
    running = submit(client, script(task("0", totalwork=2)))["id"]
    work = checkout(client, "c1")
    assert work is not None and work["jobid"] == running
    queued = submit(client, diamond())["id"]
    waiting = submit(client, script(task("0"), start_at="2999-01-01T00:00:00Z"))["id"]
    assert ok(client.delete("/job?zombie")) == "deleted 0 zombie jobs"
    states = [get_job(client, j)["state"] for j in (done, queued, waiting)]
    assert states == ["completed", "queued", "queued"]
    assert get_job(client, running)["state"] == "in-progress"


@pytest.mark.parametrize("query", ["", "?bogus", "?full"])
def test_unknown_delete_on_all_jobs_is_not_implemented(client: TestClient, query: str) -> None:
    job_id = submit(client, diamond())["id"]
    assert refused(client.delete(f"/job{query}"), 501) == "Not Implemented"
    assert get_job(client, job_id)["state"] == "queued"


# ---- unknown jobs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("GET", "?report"),
        ("GET", "?perf"),
        ("GET", "?position"),
        ("PUT", "?suspend"),
        ("PUT", "?resume"),
        ("PUT", "?resubmit"),
        ("PUT", "?recompute=0"),
        ("PUT", "?clientgroup=g"),
        ("PUT", "?priority=2"),
        ("PUT", "?pipeline=p"),
        ("PUT", "?expiration=1D"),
        ("DELETE", ""),
        ("DELETE", "?full"),
    ],
)
def test_unknown_job_is_not_found(client: TestClient, method: str, path: str) -> None:
    submit(client, diamond())
    response = client.request(method, f"/job/00000000-0000-4000-8000-000000000000{path}")
    assert response.status_code == 404, response.text
    assert response.json() == NOT_FOUND


def test_settoken_on_an_unknown_job_is_not_found(client: TestClient) -> None:
    response = put_job(client, "no-such-job", "settoken", headers={"Datatoken": "t"})
    assert response.json() == NOT_FOUND


# ---- start_at ------------------------------------------------------------------------------------


def test_future_start_at_keeps_tasks_pending_through_the_sweep(client: TestClient) -> None:
    register(client, "c1")
    job = submit(client, script(task("0"), task("1", depends=["0"]), start_at="2999-06-01T12:00:00Z"))
    assert job["state"] == "queued"
    assert job["info"]["start_at"] == "2999-06-01T12:00:00Z"
    assert task_states(client, job["id"]) == {"0": "pending", "1": "pending"}
    ctx(client).jobs.promote_due()
    assert task_states(client, job["id"]) == {"0": "pending", "1": "pending"}
    assert queued_workunits(client, job["id"]) == []
    assert checkout(client, "c1") is None


def test_start_at_queues_the_tasks_once_it_passes(client: TestClient) -> None:
    register(client, "c1")
    start = datetime.now(UTC) + timedelta(seconds=1)
    start_text = start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    job_id = submit(client, script(task("0", totalwork=2), task("1", depends=["0"]), start_at=start_text))[
        "id"
    ]
    if datetime.now(UTC) < start - timedelta(milliseconds=200):
        ctx(client).jobs.promote_due()
        assert task_states(client, job_id) == {"0": "pending", "1": "pending"}
        assert checkout(client, "c1") is None
    time.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()) + 0.05)
    ctx(client).jobs.promote_due()
    assert task_states(client, job_id) == {"0": "queued", "1": "pending"}
    assert sorted(w["rank"] for w in queued_workunits(client, job_id)) == [1, 2]
    run_job(client, job_id, "c1")
    assert get_job(client, job_id)["state"] == "completed"


def test_start_at_in_the_past_queues_at_once(client: TestClient) -> None:
    job = submit(client, script(task("0"), start_at="2001-01-01T00:00:00Z"))
    assert task_states(client, job["id"]) == {"0": "queued"}
