"""Acceptance: every curl example in the job section of workflow-api.txt ("AWE APIs"), run for real.

Each command below is the document's line with its placeholders filled in (``<awe_api_url>`` with the
server's host:port, ``<job_id>`` and the like with ids from earlier steps), run as
``curl -s -w '\\n%{http_code}' ...`` without a shell, so the ``&`` in a URL stays part of it. The
tests assert the HTTP status and the body a user sees. Corrections to the document follow
``spec/README.md``: ``DELETE /job?suspend`` deletes every suspended job, the query example's second
``?`` is ``&``, and lists default to ``updatetime`` descending.

Steps are grouped into a few scenarios, so the server starts only a few times. Each scenario runs once on
SQLite and once on PostgreSQL, through the ``server`` fixture.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from perdure.store.database import Database
from perdure.store.schema import jobs, tasks, workunits
from tests.acceptance.curl import Curl, Reply
from tests.jobs import script, task
from tests.support import ServerProcess

# ---- the document's examples (workflow-api.txt, "AWE APIs") ------------------------------------------
# Verbatim, except where the document is wrong (see spec/README.md) or repeats one placeholder name.

SUBMIT = "curl -X POST -F upload=@job_script http://<awe_api_url>/job"
SUBMIT_WITH_TOKEN = (
    'curl -H "Datatoken: <TokenString>" -X POST -F upload=@job_script http://<awe_api_url>/job'
)
SHOW_ALL = "curl -X GET http://<awe_api_url>/job"
SHOW_PAGE = "curl -X GET http://<awe_api_url>/job?limit=<limit>&offset=<offset>&order=<job_field>&direction=<direction>"
SHOW_ACTIVE = "curl -X GET http://<awe_api_url>/job?active"
SHOW_SUSPENDED = "curl -X GET http://<awe_api_url>/job?suspend"
SHOW_REGISTERED = "curl -X GET http://<awe_api_url>/job?registered"
#: The optional part of the three examples above: ``[&limit=25&offset=0&order=updatetime&direction=desc]``.
PAGE_OPTIONS = "&limit=25&offset=0&order=updatetime&direction=desc"
SHOW_ONE = "curl -X GET http://<awe_api_url>/job/<job_id>"
QUERY = "curl -X GET http://<awe_api_url>/job?query&state=<state>&info.project=<project>&info.user=<user>"
#: The query example's optional paging, its second ``?`` read as ``&`` (spec/README.md).
PAGED_QUERY = QUERY + "&limit=<limit>&offset=<offset>&order=<job_field>&direction=<direction>"
SUSPEND = "curl -X PUT http://<awe_api_url>/job/<job_id>?suspend"
RESUME = "curl -X PUT http://<awe_api_url>/job/<job_id>?resume"
RESUME_ALL = "curl -X PUT http://<awe_api_url>/job?resumeall"
RESUBMIT = "curl -X PUT http://<awe_api_url>/job/<job_id>?resubmit"
RECOMPUTE = "curl -X PUT http://<awe_api_url>/job/<job_id>?recompute=<int>"
CLIENTGROUP = "curl -X PUT http://<awe_api_url>/job/<job_id>?clientgroup=<new_cliengroup>"
DELETE_SUSPENDED = "curl -X DELETE http://<awe_api_url>/job?suspend"  # document: /job/<job_id>?suspend
DELETE_ZOMBIES = "curl -X DELETE http://<awe_api_url>/job?zombie"

TOKEN = "secret"


# ---- running curl (tests/acceptance/curl.py) ----------------------------------------------------


@pytest.fixture
def curl(server: ServerProcess, tmp_path: Path) -> Curl:
    return Curl(server, tmp_path, {"<awe_api_url>": server.url.removeprefix("http://")})


# ---- what a user sees ----------------------------------------------------------------------------


def data_of(reply: Reply) -> Any:
    """The ``data`` of a successful reply, after checking AWE's envelope around it."""
    assert reply.status == 200, reply
    body = reply.json
    assert set(body) == {"status", "data", "error"}, reply
    assert body["status"] == 200, reply
    assert body["error"] is None, reply
    return body["data"]


def page_of(reply: Reply, *, limit: int, offset: int, total: int) -> list[dict[str, Any]]:
    """The jobs of a list reply, after checking the paginated envelope and the page size."""
    assert reply.status == 200, reply
    body = reply.json
    assert set(body) == {"status", "data", "error", "limit", "offset", "total_count"}, reply
    assert (body["status"], body["error"]) == (200, None), reply
    assert (body["limit"], body["offset"], body["total_count"]) == (limit, offset, total), reply
    assert isinstance(body["data"], list), reply
    assert len(body["data"]) == max(0, min(limit, total - offset)), reply
    return list(body["data"])


def error_of(reply: Reply, status: int) -> str:
    """The message of an error reply: ``{"status": <status>, "data": null, "error": ["<message>"]}``."""
    assert reply.status == status, reply
    body = reply.json
    assert set(body) == {"status", "data", "error"}, reply
    assert body["status"] == status, reply
    assert body["data"] is None, reply
    assert isinstance(body["error"], list) and len(body["error"]) == 1, reply
    message = body["error"][0]
    assert isinstance(message, str) and message, reply
    return message


def ids(page: list[dict[str, Any]]) -> list[str]:
    return [job["id"] for job in page]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def submit(curl: Curl, document: dict[str, Any], *, token: str | None = None) -> dict[str, Any]:
    """Write the script to ./job_script and run the document's submit command on it."""
    (curl.cwd / "job_script").write_text(json.dumps(document))
    reply = curl(SUBMIT_WITH_TOKEN, TokenString=token) if token else curl(SUBMIT)
    job = data_of(reply)
    uuid.UUID(job["id"])
    # AWE answers before enqueueing (init); Perdure enqueues in the submitting transaction (queued).
    assert job["state"] in ("init", "queued"), reply
    for key in ("name", "project", "user", "pipeline"):
        assert job["info"][key] == document["info"][key], reply
    short_ids = [t["taskid"] for t in document["tasks"]]
    assert [t["taskid"] for t in job["tasks"]] == [f"{job['id']}_{s}" for s in short_ids], reply
    assert [t["task_name"] for t in job["tasks"]] == short_ids, reply
    assert job["remaintasks"] == len(short_ids), reply
    assert job["resumed"] == 0, reply
    assert job["error"] is None, reply
    return job


def show(curl: Curl, job_id: str) -> dict[str, Any]:
    job = data_of(curl(SHOW_ONE, job_id=job_id))
    assert job["id"] == job_id
    return job


def task_states(job: dict[str, Any]) -> list[str]:
    return [t["state"] for t in job["tasks"]]


def chain(**info: Any) -> dict[str, Any]:
    """0 -> 1 -> 2"""
    return script(task("0"), task("1", depends=["0"]), task("2", depends=["1"]), **{"name": "chain", **info})


# ---- scenarios -----------------------------------------------------------------------------------


def test_submit_show_paginate_and_query(curl: Curl) -> None:
    """Submit (also with a data token), show all, paginate, show one, query by fields, reject bad scripts."""
    fillers = [
        submit(curl, script(task("0"), name=f"filler-{i}", project="filler", user="f")) for i in range(21)
    ]
    a = submit(curl, script(task("0"), name="a", project="xxx", user="yyy"), token=TOKEN)
    b = submit(curl, script(task("0"), name="b", project="xxx", user="zzz"))
    c = submit(curl, script(task("0"), name="c", project="other", user="yyy"))
    d = submit(curl, chain(name="d", project="xxx", user="yyy"))
    e = submit(curl, script(task("0"), name="e", project="zzz", user="yyy"))
    submitted = [j["id"] for j in [*fillers, a, b, c, d, e]]
    assert len(set(submitted)) == 26
    assert a["info"]["auth"] is True
    assert b["info"]["auth"] is False

    # Suspending the oldest named job makes it the most recently updated.
    assert data_of(curl(SUSPEND, job_id=d["id"])) == f"job suspended: {d['id']}"
    by_update = [d["id"], e["id"], c["id"], b["id"], a["id"], *reversed(ids(fillers))]

    # Show all jobs: the first page of 25, most recently updated first, and the total.
    page = page_of(curl(SHOW_ALL), limit=25, offset=0, total=26)
    assert ids(page) == by_update[:25]
    times = [when(j["updatetime"]) for j in page]
    assert times == sorted(times, reverse=True)
    assert all(j["tasks"] and j["info"] for j in page)

    # "to show all jobs, you can set limit=total_counts and offset = 0"
    everything = curl(SHOW_PAGE, limit="26", offset="0", job_field="updatetime", direction="desc")
    assert ids(page_of(everything, limit=26, offset=0, total=26)) == by_update

    # Paginated, by submit time.
    asc = curl(SHOW_PAGE, limit="3", offset="20", job_field="info.submittime", direction="asc")
    assert ids(page_of(asc, limit=3, offset=20, total=26)) == submitted[20:23]
    first_page = curl(SHOW_PAGE, limit="25", offset="0", job_field="info.submittime", direction="asc")
    oldest_first = page_of(first_page, limit=25, offset=0, total=26)
    assert ids(oldest_first) == submitted[:25]
    submit_times = [when(j["info"]["submittime"]) for j in oldest_first]
    assert submit_times == sorted(submit_times)
    desc = curl(SHOW_PAGE, limit="2", offset="1", job_field="info.submittime", direction="desc")
    assert ids(page_of(desc, limit=2, offset=1, total=26)) == [d["id"], c["id"]]
    last = curl(SHOW_PAGE, limit="25", offset="25", job_field="updatetime", direction="desc")
    assert ids(page_of(last, limit=25, offset=25, total=26)) == [fillers[0]["id"]]

    # Show one job; the data token is taken but never shown.
    one = show(curl, a["id"])
    assert one["state"] == "queued"
    assert one["registered"] is True
    assert one["info"]["auth"] is True
    assert (one["info"]["project"], one["info"]["user"]) == ("xxx", "yyy")
    assert "datatoken" not in one["info"]
    assert [t["state"] for t in one["tasks"]] == ["queued"]

    # An unknown job is 404 in the envelope.
    missing = curl(SHOW_ONE, job_id=str(uuid.uuid4()))
    assert missing.status == 404
    assert missing.json == {"status": 404, "data": None, "error": ["Not Found"]}

    # Query by fields: every parameter must match; a comma means any of.
    exact = curl(QUERY, state="queued", project="xxx", user="yyy")
    assert ids(page_of(exact, limit=25, offset=0, total=1)) == [a["id"]]
    any_of = curl(QUERY, state="queued,suspend", project="xxx,zzz", user="yyy")
    matches = page_of(any_of, limit=25, offset=0, total=3)
    assert ids(matches) == [d["id"], e["id"], a["id"]]
    for job in matches:
        assert job["state"] in ("queued", "suspend")
        assert job["info"]["project"] in ("xxx", "zzz")
        assert job["info"]["user"] == "yyy"
    # With the optional paging, total_count still counts every match.
    paged = curl(
        PAGED_QUERY,
        state="queued,suspend",
        project="xxx,zzz",
        user="yyy",
        limit="1",
        offset="1",
        job_field="updatetime",
        direction="desc",
    )
    assert ids(page_of(paged, limit=1, offset=1, total=3)) == [e["id"]]
    nothing = curl(QUERY, state="completed", project="xxx", user="yyy")
    assert page_of(nothing, limit=25, offset=0, total=0) == []

    # Bad job scripts: 400 in the envelope, and nothing is stored.
    (curl.cwd / "job_script").write_text("{not json")
    assert "JSON" in error_of(curl(SUBMIT), 400)
    (curl.cwd / "job_script").write_text(json.dumps(script(task("0", depends=["9"]))))
    assert "9" in error_of(curl(SUBMIT), 400)
    (curl.cwd / "job_script").write_text(json.dumps({"info": {"name": "no tasks"}}))
    error_of(curl(SUBMIT), 400)
    no_upload = curl("curl -X POST -F awesome=@job_script http://<awe_api_url>/job")
    assert error_of(no_upload, 400) == "No job script or awf is submitted"
    page_of(curl(SHOW_ALL), limit=25, offset=0, total=26)

    # The token never shows up in anything the server said, though the job it came with often did.
    assert len([r for r in curl.replies if a["id"] in r.text]) >= 6
    assert [r.command for r in curl.replies if TOKEN in r.text] == []


def test_active_suspended_and_registered_lists(curl: Curl) -> None:
    """?active, ?suspend and ?registered, with and without the document's optional paging."""
    q1 = submit(curl, script(task("0"), name="q1"))
    s1 = submit(curl, script(task("0"), name="s1"))
    q2 = submit(curl, script(task("0"), name="q2"))
    gone = submit(curl, script(task("0"), name="gone"))
    s2 = submit(curl, script(task("0"), name="s2"))
    for job in (s1, s2):
        assert data_of(curl(SUSPEND, job_id=job["id"])) == f"job suspended: {job['id']}"
    deleted = curl("curl -X DELETE http://<awe_api_url>/job/<job_id>", job_id=gone["id"])
    assert data_of(deleted) == f"job deleted: {gone['id']}"

    for command in (SHOW_ACTIVE, SHOW_ACTIVE + PAGE_OPTIONS):
        active = page_of(curl(command), limit=25, offset=0, total=2)
        assert ids(active) == [q2["id"], q1["id"]]
        assert {j["state"] for j in active} == {"queued"}

    for command in (SHOW_SUSPENDED, SHOW_SUSPENDED + PAGE_OPTIONS):
        suspended = page_of(curl(command), limit=25, offset=0, total=2)
        assert ids(suspended) == [s2["id"], s1["id"]]
        for job in suspended:
            assert job["state"] == "suspend"
            assert job["error"]["servernotes"] == "manually suspended"

    for command in (SHOW_REGISTERED, SHOW_REGISTERED + PAGE_OPTIONS):
        registered = page_of(curl(command), limit=25, offset=0, total=4)
        assert ids(registered) == [s2["id"], s1["id"], q2["id"], q1["id"]]
        assert all(j["registered"] is True for j in registered)
    by_submit = curl(SHOW_REGISTERED + "&limit=2&offset=0&order=info.submittime&direction=asc")
    assert ids(page_of(by_submit, limit=2, offset=0, total=4)) == [q1["id"], s1["id"]]

    # Without a filter the list still has the deleted job, which is not registered.
    everything = {j["id"]: j for j in page_of(curl(SHOW_ALL), limit=25, offset=0, total=5)}
    assert everything[gone["id"]]["state"] == "deleted"
    assert everything[gone["id"]]["registered"] is False


def test_suspend_resume_and_resume_all(curl: Curl) -> None:
    """Suspend, resume (only from suspend), and resume every suspended job at once."""
    j1 = submit(curl, chain())
    j2 = submit(curl, script(task("0"), name="j2"))
    j3 = submit(curl, script(task("0"), name="j3"))

    # Resuming a job that is not suspended is refused.
    assert "is not in 'suspend' status" in error_of(curl(RESUME, job_id=j1["id"]), 400)
    assert show(curl, j1["id"])["state"] == "queued"

    before = show(curl, j1["id"])
    assert data_of(curl(SUSPEND, job_id=j1["id"])) == f"job suspended: {j1['id']}"
    held = show(curl, j1["id"])
    assert held["state"] == "suspend"
    assert held["error"]["servernotes"] == "manually suspended"
    assert held["error"]["status"] == "suspend"
    assert task_states(held) == ["suspend", "pending", "pending"]
    assert held["registered"] is True
    assert when(held["updatetime"]) > when(before["updatetime"])

    assert data_of(curl(RESUME, job_id=j1["id"])) == f"job resumed: {j1['id']}"
    resumed = show(curl, j1["id"])
    assert resumed["state"] == "queued"
    assert resumed["error"] is None
    assert resumed["resumed"] == 1
    assert task_states(resumed) == ["queued", "pending", "pending"]
    assert "is not in 'suspend' status" in error_of(curl(RESUME, job_id=j1["id"]), 400)

    for job in (j2, j3):
        data_of(curl(SUSPEND, job_id=job["id"]))
    page_of(curl(SHOW_SUSPENDED), limit=25, offset=0, total=2)
    assert data_of(curl(RESUME_ALL)) == "2 suspended jobs resumed"
    for job in (j2, j3):
        again = show(curl, job["id"])
        assert (again["state"], again["resumed"], again["error"]) == ("queued", 1, None)
    assert show(curl, j1["id"])["resumed"] == 1
    page_of(curl(SHOW_SUSPENDED), limit=25, offset=0, total=0)
    assert data_of(curl(RESUME_ALL)) == "0 suspended jobs resumed"

    # Operations on an unknown job are 404 in the envelope.
    unknown = str(uuid.uuid4())
    for command in (SUSPEND, RESUME):
        assert curl(command, job_id=unknown).json == {"status": 404, "data": None, "error": ["Not Found"]}


def mark_completed(db_url: str, job_id: str, short_ids: list[str]) -> None:
    """Stand in for a worker finishing tasks (this server has no /work API yet): write it to the database."""
    db = Database(db_url)
    try:
        with db.write() as conn:
            done = [f"{job_id}_{s}" for s in short_ids]
            conn.execute(update(tasks).where(tasks.c.id.in_(done)).values(state="completed", remainwork=0))
            conn.execute(update(workunits).where(workunits.c.task_id.in_(done)).values(state="done"))
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(remaintasks=jobs.c.remaintasks - len(done))
            )
    finally:
        db.dispose()


def test_resubmit_recompute_and_clientgroup(curl: Curl, db_url: str) -> None:
    """Resubmit and recompute a suspended chain job; change its client groups."""
    job = submit(curl, chain())
    job_id = job["id"]

    # Both need a job that is not active.
    error_of(curl(RESUBMIT, job_id=job_id), 400)
    error_of(curl(RECOMPUTE, job_id=job_id, int="1"), 400)
    assert show(curl, job_id)["state"] == "queued"

    data_of(curl(SUSPEND, job_id=job_id))
    assert data_of(curl(RESUBMIT, job_id=job_id)) == f"job resubmitted: {job_id}"
    again = show(curl, job_id)
    assert (again["state"], again["resumed"], again["error"], again["remaintasks"]) == ("queued", 1, None, 3)
    assert task_states(again) == ["queued", "pending", "pending"]

    # Recompute from an unknown task is refused, and the job stays as it was.
    data_of(curl(SUSPEND, job_id=job_id))
    assert "9" in error_of(curl(RECOMPUTE, job_id=job_id, int="9"), 400)
    assert show(curl, job_id)["state"] == "suspend"

    # Recompute from task 1: nothing had completed, so every task starts over.
    recompute = curl(RECOMPUTE, job_id=job_id, int="1")
    assert data_of(recompute) == f"job recompute started at task 1: {job_id}"
    fresh = show(curl, job_id)
    assert (fresh["state"], fresh["resumed"], fresh["error"], fresh["remaintasks"]) == ("queued", 2, None, 3)
    assert task_states(fresh) == ["queued", "pending", "pending"]

    # Tasks 0 and 1 complete, then the job is suspended: recompute from 1 reruns 1 and 2, not 0.
    mark_completed(db_url, job_id, ["0", "1"])
    data_of(curl(SUSPEND, job_id=job_id))
    assert task_states(show(curl, job_id)) == ["completed", "completed", "pending"]
    assert data_of(curl(RECOMPUTE, job_id=job_id, int="1")) == f"job recompute started at task 1: {job_id}"
    partial = show(curl, job_id)
    assert (partial["state"], partial["resumed"], partial["remaintasks"]) == ("queued", 3, 2)
    assert task_states(partial) == ["completed", "queued", "pending"]

    # Change the client groups: a single group, then a comma list.
    for groups in ("docker", "mgrast_inbox,docker"):
        reply = data_of(curl(CLIENTGROUP, job_id=job_id, new_cliengroup=groups))
        assert isinstance(reply, str) and job_id in reply and groups in reply
        assert show(curl, job_id)["info"]["clientgroups"] == groups
    by_group = curl("curl -X GET http://<awe_api_url>/job?query&info.clientgroups=mgrast_inbox")
    assert ids(page_of(by_group, limit=25, offset=0, total=1)) == [job_id]


def test_delete_suspended_and_zombies_and_unsupported_operations(curl: Curl) -> None:
    """DELETE /job?suspend and ?zombie; unsupported operations answer 501 in the envelope, a wrong
    method 405."""
    jobs_ = [submit(curl, script(task("0"), name=f"j{i}")) for i in range(4)]
    held, kept = [jobs_[0], jobs_[2]], [jobs_[1], jobs_[3]]
    for job in held:
        data_of(curl(SUSPEND, job_id=job["id"]))

    assert data_of(curl(DELETE_SUSPENDED)) == "deleted 2 suspended jobs"
    for job in held:
        gone = show(curl, job["id"])
        assert (gone["state"], gone["registered"]) == ("deleted", False)
    for job in kept:
        assert show(curl, job["id"])["state"] == "queued"
    page_of(curl(SHOW_SUSPENDED), limit=25, offset=0, total=0)
    page_of(curl(SHOW_ALL), limit=25, offset=0, total=4)  # soft delete: still listed
    assert data_of(curl(DELETE_SUSPENDED)) == "deleted 0 suspended jobs"

    # A healthy server has no zombies: every active job has work queued.
    assert data_of(curl(DELETE_ZOMBIES)) == "deleted 0 zombie jobs"
    assert ids(page_of(curl(SHOW_ACTIVE), limit=25, offset=0, total=2)) == [kept[1]["id"], kept[0]["id"]]

    # Unsupported operations.
    target = kept[0]["id"]
    error_of(curl("curl -X PUT http://<awe_api_url>/job/<job_id>?frobnicate", job_id=target), 501)
    assert show(curl, target)["state"] == "queued"
    # A method the path does not serve at all is 405 with Allow (issue 18), not AWE's 501.
    wrong_method = curl("curl -X PATCH http://<awe_api_url>/job")
    assert wrong_method.status == 405, wrong_method
    assert wrong_method.json["error"] == ["Method Not Allowed: PATCH; allowed: GET, POST, PUT, DELETE"]
    not_implemented = {"status": 501, "data": None, "error": ["Not Implemented"]}
    for command in (
        "curl -X PUT http://<awe_api_url>/job?frobnicate",
        "curl -X DELETE http://<awe_api_url>/job",
    ):
        reply = curl(command)
        assert (reply.status, reply.json) == (501, not_implemented), reply
