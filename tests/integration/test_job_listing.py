"""``GET /job``: pages, order, state flags, ``?query`` filters, ``?distinct`` and ``?verbosity=minimal``."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.drive import (
    ZERO_TIME,
    checkout,
    get_job,
    put_job,
    register,
    run_job,
    submit,
)
from tests.jobs import script, task


def listing(client: TestClient, query: str = "") -> dict[str, Any]:
    response = client.get(f"/job{query}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == 200 and body["error"] is None
    return body


def ids(client: TestClient, query: str = "") -> list[str]:
    return [j["id"] for j in listing(client, query)["data"]]


def one_task_job(**info: Any) -> dict[str, Any]:
    return script(task("0"), **info)


# ---- pages and order -----------------------------------------------------------------------------


def test_limit_offset_and_total_count_page_through_every_job(client: TestClient) -> None:
    submitted = [submit(client, one_task_job(name=f"j{i}"))["id"] for i in range(5)]
    assert listing(client)["total_count"] == 5
    first = listing(client, "?limit=2")
    assert (first["limit"], first["offset"], first["total_count"]) == (2, 0, 5)
    assert len(first["data"]) == 2
    pages = [ids(client, f"?limit=2&offset={offset}") for offset in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(job for page in pages for job in page) == sorted(submitted)
    beyond = listing(client, "?limit=2&offset=10")
    assert beyond["data"] == [] and beyond["total_count"] == 5


def test_default_page_size_is_25(client: TestClient) -> None:
    for i in range(27):
        submit(client, one_task_job(name=f"j{i}"))
    page = listing(client)
    assert (page["limit"], page["offset"], page["total_count"], len(page["data"])) == (25, 0, 27, 25)


def test_default_order_is_last_updated_first(client: TestClient) -> None:
    a, b, c = (submit(client, one_task_job(name=n))["id"] for n in "abc")
    assert ids(client) == [c, b, a]
    assert put_job(client, a, "priority=2").status_code == 200  # touches a's updatetime
    assert ids(client) == [a, c, b]
    assert ids(client, "?direction=asc") == [b, c, a]


def test_order_by_submittime_ascending_ignores_later_updates(client: TestClient) -> None:
    a, b, c = (submit(client, one_task_job(name=n))["id"] for n in "abc")
    put_job(client, a, "priority=2")
    assert ids(client, "?order=info.submittime&direction=asc") == [a, b, c]
    assert ids(client, "?order=info.submittime&direction=desc") == [c, b, a]
    assert ids(client, "?order=info.submittime&direction=DESC") == [c, b, a]


def test_order_by_a_json_path_inside_info(client: TestClient) -> None:
    by_x = {x: submit(client, one_task_job(userattr={"x": x}))["id"] for x in ("m", "z", "a")}
    assert ids(client, "?order=info.userattr.x&direction=asc") == [by_x["a"], by_x["m"], by_x["z"]]
    assert ids(client, "?order=info.userattr.x&direction=desc") == [by_x["z"], by_x["m"], by_x["a"]]


def test_order_by_a_json_path_puts_jobs_without_it_lowest_on_both_databases(client: TestClient) -> None:
    a = submit(client, one_task_job(userattr={"x": "a"}))["id"]
    b = submit(client, one_task_job(userattr={"x": "b"}))["id"]
    missing = submit(client, one_task_job())["id"]
    assert ids(client, "?order=info.userattr.x&direction=asc") == [missing, a, b]
    assert ids(client, "?order=info.userattr.x&direction=desc") == [b, a, missing]


def test_order_by_other_columns(client: TestClient) -> None:
    low = submit(client, one_task_job(name="b", priority=1))["id"]
    high = submit(client, one_task_job(name="a", priority=7))["id"]
    assert ids(client, "?order=info.priority&direction=desc") == [high, low]
    assert ids(client, "?order=info.name&direction=asc") == [high, low]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?limit=abc", "limit must be an integer"),
        ("?limit=0", "limit must be at least 1"),
        ("?limit=-3", "limit must be at least 1"),
        ("?limit=100000", "limit must be between 1 and 1000"),
        ("?offset=-1", "offset must be at least 0"),
        ("?offset=x", "offset must be an integer"),
        ("?direction=sideways", "direction must be asc or desc"),
        ("?order=bogus", "unknown job field 'bogus'"),
        ("?order=info.user-attr", "unknown job field"),
        ("?order=info..x", "unknown job field"),
        ("?order=tasks.state", "unknown job field"),
    ],
)
def test_bad_page_parameters_are_refused_with_a_clear_message(
    client: TestClient, query: str, message: str
) -> None:
    submit(client, one_task_job())
    response = client.get(f"/job{query}")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == 400 and body["data"] is None
    assert message in body["error"][0]


# ---- state flags ---------------------------------------------------------------------------------


@pytest.fixture
def jobs_in_every_state(client: TestClient) -> dict[str, str]:
    """One job queued, in-progress, suspended, completed, deleted and failed-permanent."""
    register(client, "c1")
    done = submit(client, one_task_job(name="completed"))["id"]
    run_job(client, done, "c1")
    running = submit(client, one_task_job(name="in-progress"))["id"]
    assert checkout(client, "c1") is not None
    register(client, "c2")
    failing = submit(client, one_task_job(name="failed-permanent"))["id"]
    work = checkout(client, "c2")
    assert work is not None and work["jobid"] == failing
    assert client.put(f"/work/{work['id']}?status=failed-permanent&client=c2").status_code == 200
    queued = submit(client, one_task_job(name="queued"))["id"]
    held = submit(client, one_task_job(name="suspend"))["id"]
    assert put_job(client, held, "suspend").status_code == 200
    gone = submit(client, one_task_job(name="deleted"))["id"]
    assert client.delete(f"/job/{gone}").status_code == 200
    states = {
        "queued": queued,
        "in-progress": running,
        "suspend": held,
        "completed": done,
        "deleted": gone,
        "failed-permanent": failing,
    }
    for state, job_id in states.items():
        assert get_job(client, job_id)["state"] == state
    return states


def test_state_flags_select_active_suspended_and_registered_jobs(
    client: TestClient, jobs_in_every_state: dict[str, str]
) -> None:
    s = jobs_in_every_state
    active = listing(client, "?active")
    assert sorted(j["id"] for j in active["data"]) == sorted([s["queued"], s["in-progress"]])
    assert active["total_count"] == 2
    assert ids(client, "?suspend") == [s["suspend"]]
    assert listing(client, "?suspend")["total_count"] == 1
    registered = ids(client, "?registered")
    assert sorted(registered) == sorted([s["queued"], s["in-progress"], s["suspend"]])
    assert all(j["registered"] for j in listing(client, "?registered")["data"])
    # presence is what counts: ?active=0 still means active (AWE)
    assert sorted(ids(client, "?active=0")) == sorted([s["queued"], s["in-progress"]])
    # without a flag every job is listed, deleted ones included
    assert sorted(ids(client)) == sorted(s.values())


def test_query_state_takes_a_comma_list_of_any_states(
    client: TestClient, jobs_in_every_state: dict[str, str]
) -> None:
    s = jobs_in_every_state
    assert sorted(ids(client, "?query&state=completed,suspend")) == sorted([s["completed"], s["suspend"]])
    assert sorted(ids(client, "?query&state=deleted&state=failed-permanent")) == sorted(
        [s["deleted"], s["failed-permanent"]]
    )
    result = listing(client, "?query&state=in-progress")
    assert [j["id"] for j in result["data"]] == [s["in-progress"]] and result["total_count"] == 1
    assert ids(client, "?query&state=nonsense") == []


# ---- ?query field filters ------------------------------------------------------------------------


@pytest.fixture
def catalogue(client: TestClient) -> dict[str, str]:
    jobs = {
        "p1-alice": one_task_job(project="p1", user="alice", priority=1, userattr={"color": "red", "n": 5}),
        "p1-bob": one_task_job(project="p1", user="bob", priority=3, userattr={"color": "blue"}),
        "p2-alice": one_task_job(project="p2", user="alice", priority=3, clientgroups="mg_rast,docker"),
        "p3-carol": one_task_job(project="p3", user="carol", clientgroups="gpu"),
    }
    return {name: submit(client, document)["id"] for name, document in jobs.items()}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("info.project=p1", ["p1-alice", "p1-bob"]),
        ("info.project=p1,p3", ["p1-alice", "p1-bob", "p3-carol"]),
        ("info.project=p2&info.project=p3", ["p2-alice", "p3-carol"]),
        ("info.user=alice", ["p1-alice", "p2-alice"]),
        ("info.project=p1&info.user=alice", ["p1-alice"]),
        ("info.project=p9", []),
        ("info.priority=3", ["p1-bob", "p2-alice"]),
        ("info.priority=1,3", ["p1-alice", "p1-bob", "p2-alice", "p3-carol"]),
        ("info.userattr.color=red", ["p1-alice"]),
        ("info.userattr.color=red,blue", ["p1-alice", "p1-bob"]),
        ("info.clientgroups=docker", ["p2-alice"]),
        ("info.clientgroups=mg_rast", ["p2-alice"]),
        ("info.clientgroups=gpu,docker", ["p2-alice", "p3-carol"]),
        ("info.clientgroups=dock", []),
        ("state=queued&info.user=carol", ["p3-carol"]),
    ],
)
def test_query_filters_on_info_fields(
    client: TestClient, catalogue: dict[str, str], query: str, expected: list[str]
) -> None:
    result = listing(client, f"?query&{query}")
    assert sorted(j["id"] for j in result["data"]) == sorted(catalogue[name] for name in expected)
    assert result["total_count"] == len(expected)


def test_query_matches_a_numeric_userattr_value(client: TestClient, catalogue: dict[str, str]) -> None:
    assert ids(client, "?query&info.userattr.n=5") == [catalogue["p1-alice"]]
    assert ids(client, "?query&info.userattr.n=6") == []


def test_query_clientgroups_treats_underscore_literally(client: TestClient) -> None:
    """``_`` is common in group names (mgrast_inbox) and must not act as a LIKE wildcard."""
    lookalike = submit(client, one_task_job(clientgroups="mgXrast,docker"))["id"]
    real = submit(client, one_task_job(clientgroups="mg_rast,docker"))["id"]
    assert ids(client, "?query&info.clientgroups=mg_rast") == [real]
    assert lookalike not in ids(client, "?query&info.clientgroups=mg_rast")


def test_field_parameters_are_ignored_without_query(client: TestClient, catalogue: dict[str, str]) -> None:
    everything = sorted(catalogue.values())
    assert sorted(ids(client, "?info.project=p1")) == everything
    assert sorted(ids(client, "?state=completed&info.user=nobody")) == everything
    assert sorted(ids(client, "?date_start=2999-01-01")) == everything


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("info.priority=high", "info.priority must be an integer"),
        ("nonsense.field=1", "unknown job field 'nonsense.field'"),
        ("info.submittime=yesterday", "info.submittime"),
    ],
)
def test_query_with_a_bad_field_is_refused(client: TestClient, query: str, message: str) -> None:
    submit(client, one_task_job())
    response = client.get(f"/job?query&{query}")
    assert response.status_code == 400, response.text
    assert message in response.json()["error"][0]


# ---- dates ---------------------------------------------------------------------------------------


def test_date_window_matches_submit_or_completion_time(client: TestClient) -> None:
    register(client, "c1")
    early = submit(client, one_task_job(name="early"))["id"]
    run_job(client, early, "c1")  # submitted and completed before the window below
    middle = submit(client, one_task_job(name="middle"))
    late = submit(client, one_task_job(name="late"))["id"]
    start = middle["info"]["submittime"]
    end = get_job(client, late)["info"]["submittime"]

    assert ids(client, f"?query&date_start={start}&date_end={end}") == [middle["id"]]
    assert sorted(ids(client, f"?query&date_start={start}")) == sorted([middle["id"], late])
    assert sorted(ids(client, "?query&date_start=2000-01-01")) == sorted([early, middle["id"], late])
    assert ids(client, "?query&date_start=2999-01-01") == []
    assert ids(client, "?query&date_start=2000-01-01&date_end=2000-01-02") == []

    # A completed job matches by its completion time too.
    done_at = get_job(client, early)["info"]["completedtime"]
    resubmitted_early = put_job(client, early, "resubmit")
    assert resubmitted_early.status_code == 200
    run_job(client, early, "c1")
    later_done = get_job(client, early)["info"]["completedtime"]
    assert later_done > done_at
    assert early in ids(client, f"?query&date_start={end}")


def test_date_end_alone_does_not_match_unfinished_jobs_submitted_later(client: TestClient) -> None:
    first = submit(client, one_task_job(name="first"))["id"]
    second = submit(client, one_task_job(name="second"))
    assert ids(client, f"?query&date_end={second['info']['submittime']}") == [first]


@pytest.mark.parametrize(
    "query",
    [
        "date_start=yesterday",
        "date_end=2024-13-45",
        "date_start=2024-01-01T00:00:00",  # no zone
        "date_end=01/02/2024",
    ],
)
def test_malformed_dates_are_refused(client: TestClient, query: str) -> None:
    submit(client, one_task_job())
    response = client.get(f"/job?query&{query}")
    assert response.status_code == 400, response.text
    name = query.split("=")[0]
    assert response.json()["error"][0].startswith(f"{name}:")


def test_dates_accept_offsets_and_fractions(client: TestClient) -> None:
    job = submit(client, one_task_job())["id"]
    assert ids(client, "?query&date_start=2000-01-01T00:00:00.123456789%2B02:00") == [job]
    assert ids(client, "?query&date_start=1999-01-01&date_end=2000-01-01T00:00:00Z") == []


# ---- distinct and minimal ------------------------------------------------------------------------


def test_distinct_lists_each_value_once(client: TestClient, catalogue: dict[str, str]) -> None:
    assert listing(client, "?distinct=project")["data"] == ["p1", "p2", "p3"]
    assert listing(client, "?distinct=user")["data"] == ["alice", "bob", "carol"]
    assert sorted(listing(client, "?distinct=priority")["data"]) == [1, 3]
    assert listing(client, "?distinct=project&query&info.user=alice")["data"] == ["p1", "p2"]


def test_distinct_of_an_unknown_field_is_refused(client: TestClient) -> None:
    for field in ("state", "bogus", "", "info.project"):
        response = client.get(f"/job?distinct={field}")
        assert response.status_code == 400, (field, response.text)
        assert "distinct field must be one of" in response.json()["error"][0]


def test_minimal_verbosity_shows_per_task_remaining_work_and_states(client: TestClient) -> None:
    register(client, "c1")
    job = submit(
        client,
        script(
            task("0", totalwork=3, inputs={"a.fna": {"size": 100}, "b.fna": {"size": 23}}),
            task("1", depends=["0"]),
            name="mini",
            userattr={"keep": "k", "other": "o", "third": 3},
        ),
    )
    work = checkout(client, "c1")
    assert work is not None
    assert client.put(f"/work/{work['id']}?status=done&client=c1&computetime=7").status_code == 200

    body = listing(client, "?verbosity=minimal")
    assert body["total_count"] == 1
    (minimal,) = body["data"]
    assert set(minimal) >= {
        "id",
        "name",
        "size",
        "submittime",
        "completedtime",
        "computetime",
        "task",
        "state",
    }
    assert "tasks" not in minimal and "info" not in minimal
    assert minimal["id"] == job["id"] and minimal["name"] == "mini"
    assert minimal["size"] == 123
    assert minimal["task"] == [2, 1]
    assert minimal["state"] == ["in-progress", "pending"]
    assert minimal["computetime"] == 7
    assert minimal["submittime"] == job["info"]["submittime"]
    assert minimal["completedtime"] == ZERO_TIME
    assert minimal["userattr"] == {"keep": "k", "other": "o", "third": 3}

    filtered = listing(client, "?verbosity=minimal&userattr=keep&userattr=third")["data"][0]
    assert filtered["userattr"] == {"keep": "k", "third": 3}
    assert listing(client, "?verbosity=minimal&userattr=missing")["data"][0]["userattr"] == {}


def test_minimal_verbosity_combines_with_query_and_pages(
    client: TestClient, catalogue: dict[str, str]
) -> None:
    body = listing(client, "?verbosity=minimal&query&info.project=p1&limit=1&order=info.submittime")
    assert body["total_count"] == 2 and body["limit"] == 1
    assert [m["id"] for m in body["data"]] == [catalogue["p1-bob"]]
    assert body["data"][0]["state"] == ["queued"]
