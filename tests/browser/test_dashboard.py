"""The dashboard in a real browser, against real server and worker processes on SQLite and PostgreSQL.

Each test drives headless Chromium the way a person would (navigating by URL, clicking, typing) and
checks what the page shows against what the API says; each saves screenshots for review under
``test-output/browser/<test>/``. Pages must update without a reload while workers run (the server's
change stream), and have no serious accessibility violations (axe-core).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import serious_violations
from tests.idp import Issuer
from tests.integration.cluster import Api, Cluster, sh
from tests.jobs import upload
from tests.support import wait_for


def gate(path: Path) -> str:
    """A shell command that waits until the test creates ``path``."""
    return f"while [ ! -e {path} ]; do sleep 0.05; done"


def nodes(api: Api) -> list[dict[str, Any]]:
    """``GET /api/v1/node``: the management API answers bare, not in AWE's envelope."""
    reply = api.http.get("/api/v1/node")
    assert reply.status_code == 200, reply.text
    listed: list[dict[str, Any]] = reply.json()
    return listed


def states_on_graph(page: Any) -> dict[str, str]:
    states: dict[str, str] = page.eval_on_selector("#dag", "node => JSON.parse(node.dataset.states || '{}')")
    return states


def test_overview_matches_the_api_and_every_page_is_accessible(
    cluster: Cluster, page: Any, tmp_path: Path
) -> None:
    server, api, _workers = cluster.start()
    done = api.submit({"info": {"name": "finished", "project": "ui"}, "tasks": [sh("one", "echo hi")]})
    api.wait_job(done)
    held = api.submit(
        {"info": {"name": "held", "project": "ui"}, "tasks": [sh("wait", gate(tmp_path / "g"))]}
    )
    wait_for(lambda: api.job(held)["state"] == "in-progress", 30, "the gated job to start")
    node_id = wait_for(lambda: (listed := nodes(api)) and listed[0]["id"], 30, "the worker's node")

    page.goto(f"{server.url}/ui/")
    queue = api.data("GET", "/queue?json")
    for state in ("completed", "in-progress"):
        expected = str(queue["jobs"]["by_state"].get(state, 0))
        card = page.locator(f'[data-metric="jobs-{state}"] .value')
        assert card.inner_text() == expected, state
    assert page.locator('[data-metric="workunits-running"] .value').inner_text() == str(
        queue["workunits"]["checkout"]
    )
    assert page.locator('[data-metric="nodes"] .value').inner_text() == str(len(nodes(api)))
    page.screens.shot("overview")

    pages = [
        "/ui/",
        "/ui/jobs",
        f"/ui/jobs/{done}",
        "/ui/nodes",
        f"/ui/nodes/{node_id}",
        "/ui/metrics",
        "/ui/settings",
    ]
    for path in pages:
        page.goto(f"{server.url}{path}")
        page.wait_for_selector("main[data-ready]")
        assert serious_violations(page) == [], path
    (tmp_path / "g").touch()
    api.wait_job(held)


def test_a_dag_is_drawn_and_changes_live_and_a_failure_shows_its_stderr(
    cluster: Cluster, page: Any, tmp_path: Path
) -> None:
    server, api, _workers = cluster.start()
    job = api.submit(
        {
            "info": {"name": "three-steps", "project": "ui"},
            "tasks": [
                sh("first", gate(tmp_path / "first")),
                sh("second", "echo second", dependsOn=["first"]),
                sh("third", "echo 'the disk is full' >&2; exit 42", dependsOn=["second"]),
            ],
        }
    )
    page.goto(f"{server.url}/ui/jobs")
    page.get_by_role("link", name="three-steps").click()
    page.wait_for_url(f"**/ui/jobs/{job}")
    page.wait_for_function("() => document.querySelector('#dag canvas') !== null")
    wait_for(
        lambda: states_on_graph(page).get("first") == "in-progress", 20, "the graph to show first running"
    )
    assert states_on_graph(page)["third"] in ("pending", "init", "queued")
    page.screens.shot("first-running")

    (tmp_path / "first").touch()  # the worker goes on; the page must follow without a reload
    wait_for(lambda: states_on_graph(page).get("second") == "completed", 30, "the graph to show second done")
    wait_for(lambda: states_on_graph(page).get("third") == "failed-permanent", 30, "the failure on the graph")
    assert page.locator('[data-task="third"] .badge').inner_text() == "failed-permanent"
    page.screens.shot("third-failed")

    page.locator('[data-wu$="_third_0"] [data-log="stderr"]').click()
    assert "the disk is full" in page.locator("#log-stderr").inner_text()
    page.screens.shot("stderr")


def test_suspend_and_resume_from_the_job_page(cluster: Cluster, page: Any, tmp_path: Path) -> None:
    server, api, _workers = cluster.start()
    job = api.submit({"info": {"name": "long"}, "tasks": [sh("wait", gate(tmp_path / "g"))]})
    wait_for(lambda: api.job(job)["state"] == "in-progress", 30, "the job to start")
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{server.url}/ui/jobs/{job}")
    page.locator('[data-op="suspend"]').click()
    wait_for(lambda: api.job(job)["state"] == "suspend", 20, "the job to be suspended")
    page.locator("h1 .badge", has_text="suspend").wait_for()
    page.screens.shot("suspended")
    page.locator('[data-op="resume"]').click()
    wait_for(lambda: api.job(job)["state"] in ("queued", "in-progress"), 20, "the job to be resumed")
    page.locator("h1 .badge", has_text="suspend").wait_for(state="detached")
    (tmp_path / "g").touch()
    api.wait_job(job)
    page.locator("h1 .badge", has_text="completed").wait_for()
    page.screens.shot("completed")


def test_a_node_shows_its_facts_and_a_metric_chart_has_points(cluster: Cluster, page: Any) -> None:
    server, api, _workers = cluster.start()
    api.wait_job(api.submit({"info": {"name": "count-me"}, "tasks": [sh("one", "true")]}))
    node = wait_for(lambda: (listed := nodes(api)) and listed[0], 20, "the node")

    page.goto(f"{server.url}/ui/nodes")
    row = page.locator(f'[data-node="{node["id"]}"]')
    assert node["hostName"] in row.inner_text()
    assert str(node["cores"]) in row.inner_text()
    row.get_by_role("link").click()
    facts = page.locator("#node-facts")
    facts.wait_for()
    assert f"memoryInMB\n{node['memoryInMB']}" in facts.inner_text()
    page.screens.shot("node")

    page.goto(
        f"{server.url}/ui/metrics?metric=metricDef-jobSubmitted&object=system-total&interval=1m&period=1h"
    )
    page.wait_for_function("() => Number(document.querySelector('#chart')?.dataset.points) > 0")
    page.screens.shot("metrics")


def test_a_bad_configuration_value_shows_the_apis_error_next_to_the_field(
    cluster: Cluster, page: Any
) -> None:
    server, _api, _workers = cluster.start(workers=())
    expected = httpx.put(f"{server.url}/api/v1/configKV", json={"kvMap": {"node.ttl": "soon"}}).json()
    page.goto(f"{server.url}/ui/settings")
    page.fill("#cfg-node-ttl", "soon")
    page.get_by_role("button", name="Save changes").click()
    error = page.locator('[data-error-for="node.ttl"]')
    error.wait_for()
    page.wait_for_function("() => document.querySelector('[data-error-for=\"node.ttl\"]').textContent !== ''")
    assert error.inner_text() == expected["fields"]["node.ttl"]
    assert httpx.get(f"{server.url}/api/v1/config").json()["node"]["ttl"] != "soon"
    page.screens.shot("config-error")


@pytest.fixture
def provider() -> Any:
    idp = Issuer(None, "perdure-dashboard", {"ada": ("admin",), "bob": ("users",)})
    try:
        yield idp
    finally:
        idp.close()


def secure(api: Api, provider: Issuer) -> None:
    body = {
        "clientID": provider.client_id,
        "issuer": provider.issuer,
        "jwksURL": provider.jwks_url,
        "adminGroups": "admin",
        "token": provider.id_token("ada"),
    }
    response = api.http.put("/api/v1/security/cognito", json=body)
    assert response.status_code == 200, response.text


def test_sign_in_with_the_identity_provider_and_users_see_only_their_jobs(
    cluster: Cluster, page: Any, provider: Issuer
) -> None:
    server, api, _workers = cluster.start(workers=())
    secure(api, provider)
    as_bob = {"Authorization": f"Bearer {provider.id_token('bob')}"}
    as_ada = {"Authorization": f"Bearer {provider.id_token('ada')}"}
    bobs = api.http.post(
        "/job", files=upload({"info": {"name": "bobs-job"}, "tasks": [sh("a", "true")]}), headers=as_bob
    )
    adas = api.http.post(
        "/job", files=upload({"info": {"name": "adas-job"}, "tasks": [sh("a", "true")]}), headers=as_ada
    )
    assert bobs.status_code == adas.status_code == 200

    page.goto(f"{server.url}/ui/jobs")
    page.get_by_role("heading", name="Sign in").wait_for()
    page.screens.shot("sign-in")
    page.get_by_role("button", name="Sign in with").click()
    page.fill("#username", "bob")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/ui/jobs")
    page.locator("#jobs").wait_for()
    text = page.locator("#jobs").inner_text()
    assert "bobs-job" in text and "adas-job" not in text
    assert page.locator("#who").inner_text().startswith("bob")
    assert page.get_by_role("link", name="Settings").is_hidden()
    assert provider.token_requests == 1
    page.screens.shot("bob-jobs")

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in").wait_for()
    page.fill("#token", provider.id_token("ada"))
    page.get_by_role("button", name="Use this token").click()
    page.locator("#jobs").wait_for()
    text = page.locator("#jobs").inner_text()
    assert "bobs-job" in text and "adas-job" in text
    assert page.get_by_role("link", name="Settings").is_visible()
    page.screens.shot("ada-jobs")


def test_pages_open_directly_and_the_api_docs_need_no_internet(cluster: Cluster, page: Any) -> None:
    server, _api, _workers = cluster.start(workers=())
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    for path, heading in [
        ("/ui/metrics", "Metrics"),
        ("/ui/nodes", "Nodes and clients"),
        ("/ui/nope", "Not found"),
    ]:
        page.goto(f"{server.url}{path}")
        page.get_by_role("heading", name=heading, exact=True).wait_for()
    page.goto(f"{server.url}/")
    page.wait_for_url(f"{server.url}/ui/")
    assert httpx.get(f"{server.url}/").json()["id"] == "Perdure"  # API clients still get AWE's document
    page.goto(f"{server.url}/docs")
    page.locator(".swagger-ui .info").wait_for()
    page.screens.shot("api-docs")
    assert outside == []
