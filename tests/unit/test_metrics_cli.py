"""``perdure metrics``: the summary table and the sparkline, against canned server answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from perdure.cli import metrics as cli
from perdure.sdk.client import Client

runner = CliRunner()


def fake_server(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[int, Any, dict[str, str]]]
) -> list[Any]:
    """Answer the CLI's requests with canned (status, JSON, headers) by path; returns the requests seen."""
    seen: list[Any] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body, headers = answers[request.url.path]
        return httpx.Response(status, json=body, headers=headers)

    real = Client.from_config

    def from_config(server: str | None = None, *args: Any, **kwargs: Any) -> Client:
        client = real(server, *args, **kwargs)
        client.transport.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handle))
        return client

    monkeypatch.setattr(cli.Client, "from_config", from_config)
    return seen


def entry(metric: str, queue: str, value: float) -> dict[str, Any]:
    return {
        "id": metric,
        "point": {"time": "2031-03-11T00:00:00Z", "value": value},
        "metaData": {"queueName": queue},
    }


def test_summary_prints_one_row_per_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    items = {
        "jobSubmitted": [entry("jobSubmitted", "gpu", 150), entry("jobSubmitted", "cpu", 3)],
        "runtime": [entry("runtime", "gpu", 7260.0), entry("runtime", "cpu", 42.0)],
        "spotProtection": [entry("spotProtection", "gpu", 3), entry("spotProtection", "cpu", 0)],
        "timeSaved": [entry("timeSaved", "gpu", 120.5), entry("timeSaved", "cpu", 0)],
    }
    seen = fake_server(monkeypatch, {"/api/v1/metrics/summary": (200, {"items": items}, {})})
    result = runner.invoke(cli.app, ["summary", "--since", "7d", "--server", "http://perdure:8001"])
    assert result.exit_code == 0, result.output
    assert "gpu" in result.output and "cpu" in result.output
    assert "150" in result.output and "2h 01m" in result.output and "2m 00s" in result.output
    assert seen[0].url.host == "perdure" and "start" in seen[0].url.params


def test_show_draws_a_sparkline_with_the_totals(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [{"time": f"2031-03-11T00:0{i}:00Z", "value": float(v)} for i, v in enumerate([1, 5, 0, 9])]
    body = {"id": "metricDef-jobSubmitted.queue-gpu", "points": points, "metaData": {"queueName": "gpu"}}
    seen = fake_server(
        monkeypatch,
        {"/api/v1/metricValue/queue-gpu/metricDef-jobSubmitted": (200, body, {"X-Perdure-Interval": "1m0s"})},
    )
    result = runner.invoke(cli.app, ["show", "jobSubmitted", "--object", "gpu", "--since", "1h"])
    assert result.exit_code == 0, result.output
    assert "total 15" in result.output and "max 9" in result.output
    assert any(c in result.output for c in cli.SPARKS)
    assert seen[0].url.params["start"].endswith("Z")


def test_show_reports_the_servers_error(monkeypatch: pytest.MonkeyPatch) -> None:
    error = {"statusCode": 404, "errorCode": 1004, "message": "metric object 'queue-x' not found"}
    fake_server(monkeypatch, {"/api/v1/metricValue/queue-x/metricDef-runtime": (404, error, {})})
    result = runner.invoke(cli.app, ["show", "runtime", "--object", "queue-x"])
    assert result.exit_code == 1
    assert "not found" in result.output
    assert runner.invoke(cli.app, ["show", "nonsense"]).exit_code == 2


def test_sparkline_and_resampling() -> None:
    assert cli.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert cli.sparkline([2.0, None, 2.0]) == "▅ ▅"  # flat: mid-height; a gap is blank
    assert cli.sparkline([]) == ""
    minute = 60_000_000
    points = [(0, 1.0), (minute, 2.0), (3 * minute, 4.0)]
    cells, width = cli.resample(points, 0, 3 * minute, minute, 2, additive=True)
    assert (cells, width) == ([3.0, 4.0], 2 * minute)
    cells, _ = cli.resample(points, 0, 3 * minute, minute, 4, additive=False)
    assert cells == [1.0, 2.0, None, 4.0]


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (42.0, "count", "42"),
        (3725, "duration", "1h 02m"),
        (90061, "duration", "1d 01h"),
        (2.5, "duration", "2.5s"),
        (1536, "bytes", "1.5 KiB"),
    ],
)
def test_human_units(value: float, kind: str, text: str) -> None:
    assert cli.human(value, kind) == text


def test_since_takes_durations_or_times() -> None:
    now = 10 * 86_400_000_000
    assert cli.since_us("7d", now) == 3 * 86_400_000_000
    assert cli.since_us("1970-01-02T00:00:00Z", now) == 86_400_000_000
    assert cli.object_id("gpu") == "queue-gpu" and cli.object_id("node-n1") == "node-n1"
