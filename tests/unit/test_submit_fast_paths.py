"""The short cuts that make big submits fast keep what users see: the reply to a submit is the document
``GET /job/<id>`` shows, dependencies keep their order without duplicates, unstorable strings are still
refused, and the garbage collector comes back on after every paused section."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from perdure.api.gcpause import gc_paused
from perdure.jobscript import JobScriptError, parse_job_script
from perdure.store import transitions
from perdure.store.jobs import PG_ONE_STATEMENT_ROWS, Submission
from tests.domain import World, open_world
from tests.jobs import script, task


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    with open_world(db_url, tmp_path) as opened:
        yield opened


def test_the_submit_reply_is_the_stored_document_for_split_queued_and_waiting_tasks(world: World) -> None:
    document = script(
        task("split", totalwork=4, outputs=[{"filename": "a.dat"}], userattr={"k": "v"}),
        task("solo", name="other"),
        *(
            task(f"w{i}", depends=["split"], inputs=[{"filename": "a.dat", "origin": "split"}])
            for i in range(20)
        ),
        task(
            "merge",
            depends=[f"w{i}" for i in range(20)],
            cmd={"name": "m", "environ": {"private": {"K": "s"}}},
        ),
    )
    raw = json.dumps(document)
    reply = world.jobs.submit(parse_job_script(raw.encode()), raw, None)
    assert reply == world.jobs.get(reply["id"])
    states = {t["task_name"]: (t["state"], t["totalwork"]) for t in reply["tasks"]}
    assert states["split"] == ("queued", 4) and states["solo"] == ("queued", 1)
    assert states["w0"] == ("pending", 1) and states["merge"] == ("pending", 1)
    assert "K" not in json.dumps(reply)  # the private environment is never shown


def test_a_job_that_starts_later_queues_no_task_and_its_reply_is_still_the_stored_document(
    world: World,
) -> None:
    raw = json.dumps(
        script(task("a", outputs=[{"filename": "x"}]), task("b"), start_at="2999-01-01T00:00:00Z")
    )
    reply = world.jobs.submit(parse_job_script(raw.encode()), raw, "a-token")
    assert reply == world.jobs.get(reply["id"])
    assert reply["state"] == "queued"
    assert [t["state"] for t in reply["tasks"]] == ["pending", "pending"]
    assert reply["tasks"][0]["outputs"][0]["node"] == "-"  # AWE's "no node yet": made when queued


def test_dependencies_keep_script_order_once_each_with_origins_after() -> None:
    document = script(
        task("a", outputs=[{"filename": "x"}]),
        task("b"),
        task("c", depends=["b", "a", "b"], inputs=[{"filename": "x", "origin": "a"}]),
        task("d", depends=["c"], inputs=[{"filename": "y", "origin": "e"}]),
        task("e", outputs=[{"filename": "y"}]),
    )
    spec = parse_job_script(json.dumps(document).encode())
    assert [t.depends_on for t in spec.tasks] == [[], [], ["b", "a"], ["c", "e"], []]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"n\\u0000"', "must not contain NUL"),
        ('"\\ud800"', "lone surrogate"),
        ('"\\uDBFF x"', "lone surrogate"),
    ],
)
def test_unstorable_strings_are_still_refused_where_they_are(text: str, message: str) -> None:
    raw = '{"info": {"name": ' + text + '}, "tasks": [{"taskid": "0", "cmd": {"name": "true"}}]}'
    with pytest.raises(JobScriptError, match=message) as caught:
        parse_job_script(raw.encode())
    assert "info.name" in str(caught.value)


def test_an_escaped_backslash_before_u0000_and_a_surrogate_pair_are_accepted() -> None:
    raw = '{"info": {"name": "C:\\\\u0000 \\ud83d\\ude00"}, "tasks": [{"taskid": "0", "cmd": {"name": "t"}}]}'
    assert parse_job_script(raw.encode()).info["name"] == "C:\\u0000 \U0001f600"


def test_gc_comes_back_only_when_the_last_paused_section_ends() -> None:
    assert gc.isenabled()
    first_inside, release, second_done = threading.Event(), threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            first_inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert first_inside.wait(5)
    with gc_paused():
        assert not gc.isenabled()
    second_done.set()
    assert not gc.isenabled()  # the other section is still running
    release.set()
    thread.join(5)
    assert gc.isenabled()
    with gc_paused(False):
        assert gc.isenabled()


def test_gc_left_disabled_by_someone_else_stays_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_jobs_submitted_together_are_each_stored_as_if_submitted_alone(world: World) -> None:
    documents = [
        script(task("split", totalwork=3, outputs=[{"filename": "a.dat"}]), task("next", depends=["split"])),
        script(task("a", cmd={"name": "x", "environ": {"private": {"K": "s"}}}), name="second"),
        script(task("later", outputs=[{"filename": "y"}]), start_at="2999-01-01T00:00:00Z"),
    ]
    submissions = [
        Submission(parse_job_script(json.dumps(d).encode()), json.dumps(d), token, "public")
        for d, token in zip(documents, [None, "a-token", None], strict=True)
    ]
    replies = world.jobs.submit_all(submissions)
    assert len({document["id"] for document, _ in replies}) == 3
    for document, warnings in replies:
        assert document == world.jobs.get(document["id"])
        assert warnings == []
    states = [[(t["state"], t["totalwork"]) for t in d["tasks"]] for d, _ in replies]
    assert states == [[("queued", 3), ("pending", 1)], [("queued", 1)], [("pending", 1)]]
    events = [[e["code"] for e in world.jobs.report(d["id"])["events"]] for d, _ in replies]
    assert events == [["JQ", "TQ"], ["JQ", "TQ"], ["JQ"]]
    assert world.jobs.report(replies[0][0]["id"])["tasks"][0]["workunits"][2]["rank"] == 3


def test_a_submit_too_big_for_one_statement_is_stored_the_same(world: World) -> None:
    """On PostgreSQL a submit of more rows than ``PG_ONE_STATEMENT_ROWS`` is written table by table."""
    wide = PG_ONE_STATEMENT_ROWS + 1
    raw = json.dumps(script(task("wide", totalwork=wide), task("after", depends=["wide"])))
    reply = world.jobs.submit(parse_job_script(raw.encode()), raw, None)
    assert reply == world.jobs.get(reply["id"])
    assert [(t["state"], t["totalwork"]) for t in reply["tasks"]] == [
        ("queued", wide),
        ("pending", 1),
    ]


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_the_submit_moves_find_new_rows_by_key_whatever_the_statistics(world: World) -> None:
    """PostgreSQL: statistics taken when no task was pending and no job new (autovacuum off, the sweep
    not yet run) make those states look rare; the moves must still find a submit's rows by their keys
    rather than read every pending task or new job through the state indexes (a cost that grew with
    the store)."""
    raw = json.dumps(script(task("only")))
    spec = parse_job_script(raw.encode())
    for _ in range(10):
        world.jobs.submit_all([Submission(spec, raw, None)] * 20)
    with world.db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE tasks")
        conn.exec_driver_sql("ANALYZE jobs")
        conn.commit()
        job_ids = [f"{n:08d}-new" for n in range(32)]
        params = {"now": 1, "tasks": [f"{j}_only" for j in job_ids], "works": [1] * 32, "jobs": job_ids}
        raw_conn = conn.connection.driver_connection
        assert raw_conn is not None
        plan = "\n".join(row[0] for row in raw_conn.execute(f"EXPLAIN {transitions._QUEUE_NEW_PG}", params))
        conn.rollback()
    assert "ix_tasks_state" not in plan and "ix_jobs_state" not in plan, plan
