"""Checkpoint policy: the system's ckpt settings, overridden per job, refused at submit when invalid."""

from __future__ import annotations

import signal

import pytest

from perdure.jobscript import JobScriptError, parse_job_script
from perdure.spot.policy import CheckpointPolicy, check_overrides, from_system, resolve

SYSTEM = {
    "ckptMode": "iterative",
    "ckptInterval": "15m0s",
    "ckptImagePath": "/mmc-checkpoint",
    "ckptFiles": None,
    "IRMapScanPaths": ["/opt"],
    "rootFSDiff": True,
    "tcpClose": False,
    "diagnosisMode": False,
}


def test_system_settings_as_the_config_document_shows_them() -> None:
    policy = from_system(SYSTEM)
    assert policy.mode == "iterative" and policy.enabled
    assert policy.interval_s == 900.0
    assert policy.image_path == "/mmc-checkpoint"
    assert policy.irmap_scan_paths == ("/opt",)
    assert policy.tcp_close is False and policy.files is None and policy.signal == signal.SIGTERM


def test_environment_overrides_userattr_which_overrides_the_system() -> None:
    policy = resolve(
        SYSTEM,
        {"ckptInterval": "30s", "diagnosisMode": "true", "ckptMode": "none"},
        {"PERDURE_CHECKPOINT_MODE": "iterative", "PERDURE_CHECKPOINT_FILES": "state/*.dat, model.ckpt"},
    )
    assert policy.mode == "iterative"  # env beat userattr
    assert policy.interval_s == 30.0  # userattr beat the system
    assert policy.diagnosis is True
    assert policy.files == ("state/*.dat", "model.ckpt")


def test_signal_and_grace_overrides() -> None:
    policy = resolve({}, {"ckptSignal": "USR1"}, {"PERDURE_CHECKPOINT_GRACE": "45"})
    assert policy.signal == signal.SIGUSR1 and policy.grace_s == 45.0
    assert resolve({}, {"ckptSignal": 2}, {}).signal == signal.SIGINT


@pytest.mark.parametrize(
    ("userattr", "environ", "message"),
    [
        ({"ckptMode": "sometimes"}, {}, "ckptMode"),
        ({"ckptInterval": "soon"}, {}, "ckptInterval"),
        ({}, {"PERDURE_CHECKPOINT_INTERVAL": "0.1s"}, "at least"),
        ({"diagnosisMode": "maybe"}, {}, "true or false"),
        ({"ckptFiles": ["../escape"]}, {}, "inside the work directory"),
        ({"ckptSignal": "NOPE"}, {}, "signal"),
        ({"ckptGrace": "10m"}, {}, "grace"),
        ({"ckptInterval": True}, {}, "duration"),
    ],
)
def test_bad_overrides_are_refused_with_the_setting_named(
    userattr: dict[str, object], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_overrides(userattr, environ)


def test_a_job_script_with_a_bad_override_is_refused_at_submit() -> None:
    script = b"""{"info": {"userattr": {"ckptInterval": "every now and then"}},
        "tasks": [{"taskid": "t", "cmd": {"name": "true"}}]}"""
    with pytest.raises(JobScriptError, match=r"task 't'.*ckptInterval"):
        parse_job_script(script)
    env_script = b"""{"tasks": [{"taskid": "t", "cmd": {"name": "true",
        "environ": {"public": {"PERDURE_CHECKPOINT_MODE": "always"}}}}]}"""
    with pytest.raises(JobScriptError, match="PERDURE_CHECKPOINT_MODE"):
        parse_job_script(env_script)


def test_an_odd_system_document_falls_back_to_defaults() -> None:
    assert from_system({"ckptInterval": "garbage"}) == CheckpointPolicy()
