"""The configuration model: every key once with a comment, bounds, the one coercer, source order,
stored values of an older version, and what the worker follows from the server."""

from __future__ import annotations

import ast
import inspect
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from perdure.config.documents import from_document, to_document
from perdure.config.keys import apply_kv, get_key
from perdure.config.model import DEFAULTS, NodeConfig, ServerConfig, WorkerConfig
from perdure.config.values import ConfigError
from perdure.settings import Settings, process_overrides
from perdure.spot.policy import CheckpointPolicy
from perdure.worker.config import ServerTiming


def _sections() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [WorkerConfig]
    pending: list[type[BaseModel]] = [ServerConfig]
    while pending:
        model = pending.pop()
        found.append(model)
        for info in model.model_fields.values():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                pending.append(info.annotation)
    return found


@pytest.mark.parametrize("model", _sections(), ids=lambda m: m.__name__)
def test_every_setting_has_a_comment(model: type[BaseModel]) -> None:
    """A ``#:`` comment (or the last line of one) right above each setting; sections need none."""
    source = inspect.getsource(model)
    lines = source.splitlines()
    undocumented = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            info = model.model_fields.get(node.target.id)
            if info is None or (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
                continue
            if not lines[node.lineno - 2].strip().startswith("#"):
                undocumented.append(node.target.id)
    assert undocumented == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("node.ttl", "99999999999999999999999"),
        ("node.ttl", "8d"),
        ("node.ttl", "500ms"),
        ("node.heartbeat", "2h"),
        ("perdure.maxWorkFailure", "0"),
        ("perdure.maxWorkFailure", "1000000"),
        ("perdure.maxClientFailure", "-1"),
        ("perdure.maxUploadBytes", "99999999999999999999"),
        ("perdure.maxOutputBytes", "-5"),
        ("perdure.sweepInterval", "1ms"),
        ("job.diskSizeGB", "100000"),
        ("ckpt.ckptInterval", "31d"),
        ("perdure.pipelineExpire", "nightly:soon"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        apply_kv(DEFAULTS, {key: value})
    assert list(caught.value.fields) == [key]
    assert caught.value.fields[key]


def test_the_refusal_says_the_bounds_in_the_keys_units() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_kv(DEFAULTS, {"node.ttl": "8d"})
    assert (
        caught.value.fields["node.ttl"]
        == "'192h0m0s' is out of range: must be at least 1s and at most 168h0m0s"
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("node.ttl", "7d", 7 * 86400.0), ("node.ttl", "1s", 1.0), ("perdure.maxClientFailure", "0", 0)],
)
def test_the_bounds_themselves_are_allowed(key: str, value: str, expected: Any) -> None:
    assert get_key(apply_kv(DEFAULTS, {key: value}), key) == expected


@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", "on", "false", "0", "no", "Off"])
def test_every_boolean_setting_takes_the_same_words(word: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = word.lower() in ("true", "1", "yes", "on")
    assert apply_kv(DEFAULTS, {"ckpt.tcpClose": word}).ckpt.tcpClose is expected
    monkeypatch.setenv("PERDURE_CLIENT_AUTH_REQUIRED", word)
    assert Settings.from_env().client_auth_required is expected


def test_a_stored_value_an_older_version_allowed_is_clamped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = to_document(DEFAULTS, mask=False)
    document["node"]["ttl"] = "2562047h"  # within Go's range, beyond today's 7 days
    document["node"]["heartbeat"] = "10ms"
    document["perdure"]["maxWorkFailure"] = 0
    document["ckpt"]["ckptMode"] = "sometimes"
    with pytest.raises(ValueError):
        from_document(document)
    with caplog.at_level(logging.WARNING, logger="perdure.config"):
        config = from_document(document, lenient=True)
    assert (config.node.ttl, config.node.heartbeat) == (7 * 86400.0, 0.1)
    assert config.perdure.maxWorkFailure == 1
    assert config.ckpt.ckptMode == "iterative"  # unreadable: the default
    warned = caplog.text
    for key in ("node.ttl", "node.heartbeat", "perdure.maxWorkFailure", "ckpt.ckptMode"):
        assert key in warned


def test_each_default_is_the_models() -> None:
    settings = Settings()
    assert settings.node_ttl_s == DEFAULTS.node.ttl == 300.0
    assert settings.node_heartbeat_s == DEFAULTS.node.heartbeat == 30.0
    assert settings.max_work_failure == DEFAULTS.perdure.maxWorkFailure
    assert settings.sweep_interval_s == DEFAULTS.perdure.sweepInterval
    policy = CheckpointPolicy()
    assert (policy.mode, policy.interval_s, policy.rootfs_diff) == (
        DEFAULTS.ckpt.ckptMode,
        DEFAULTS.ckpt.ckptInterval,
        DEFAULTS.ckpt.rootFSDiff,
    )


def test_an_environment_setting_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERDURE_NODE_TTL_S", "99999999999999999999999")
    with pytest.raises(ValueError, match=r"node\.ttl"):
        Settings.from_env()
    monkeypatch.setenv("PERDURE_NODE_TTL_S", "5m")  # durations are read the one way everywhere
    assert Settings.from_env().node_ttl_s == 300.0


def test_sources_in_order_environment_then_command_line() -> None:
    settings = Settings(node_ttl_s=60.0, config_overrides={"node.heartbeat": "5s"})
    environ = {"PERDURE_CFG_node__heartbeat": "7s", "PERDURE_CFG_job__diskType": "io2"}
    overrides = process_overrides(settings, environ)
    # --set (the command line) beats PERDURE_CFG_ (the environment) for node.heartbeat
    assert overrides == {"node.ttl": "60.0", "node.heartbeat": "5s", "job.diskType": "io2"}


def test_configurations_are_immutable() -> None:
    config = apply_kv(DEFAULTS, {"node.ttl": "2m"})
    with pytest.raises(ValueError):
        config.node.ttl = 5.0  # type: ignore[misc]
    assert DEFAULTS.node.ttl == 300.0


# ---- what the worker follows from the server ---------------------------------------------------------


def worker(tmp_path: Path, **flags: Any) -> WorkerConfig:
    return WorkerConfig.load(workpath=tmp_path, **flags)


def test_the_worker_adopts_the_servers_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERDURE_WORKER_HEARTBEAT_S", raising=False)
    timing = ServerTiming(worker(tmp_path))
    assert timing.interval() == ServerTiming.FIRST_BEAT_S  # soon, to learn the server's values
    assert timing.interval() == 10.0  # no reply yet: the worker's own default
    assert timing.adopt({"heartbeat": "30s", "ttl": "5m0s", "ckpt": "{}"})
    assert timing.interval() == 30.0
    assert timing.adopt({"heartbeat": "2s", "ttl": "5m0s"})
    assert timing.interval() == 2.0


def test_the_worker_never_beats_less_often_than_a_third_of_the_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PERDURE_WORKER_HEARTBEAT_S", raising=False)
    timing = ServerTiming(worker(tmp_path))
    assert timing.adopt({"heartbeat": "30s", "ttl": "3s"})
    assert timing.interval() == 1.0


def test_a_heartbeat_the_worker_was_given_wins_over_the_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERDURE_WORKER_HEARTBEAT_S", "0.5")
    timing = ServerTiming(worker(tmp_path))
    assert timing.adopt({"heartbeat": "30s", "ttl": "5m"})
    assert timing.interval() == 0.5


@pytest.mark.parametrize(
    "reply",
    [
        {"heartbeat": "0s", "ttl": "5m"},
        {"heartbeat": "30s", "ttl": "99999999999999999999999"},
        {"heartbeat": "soon", "ttl": "5m"},
        {"heartbeat": "30s", "ttl": "30d"},
    ],
)
def test_the_worker_refuses_node_settings_out_of_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reply: dict[str, str]
) -> None:
    monkeypatch.delenv("PERDURE_WORKER_HEARTBEAT_S", raising=False)
    timing = ServerTiming(worker(tmp_path))
    assert timing.adopt({"heartbeat": "20s", "ttl": "5m"})
    with caplog.at_level(logging.WARNING, logger="perdure.worker"):
        assert not timing.adopt(reply)
    assert "refusing the server's node settings" in caplog.text
    assert timing.interval() == 20.0
    assert timing.node == NodeConfig(heartbeat=20.0, ttl=300.0)
