"""The command environment (worker/environment.py), token files and local-file roots (issue 17)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perdure.worker.credentials import TokenFileError, read_token_file, resolve_token
from perdure.worker.environment import DEFAULT_PATH, command_environment, container_environment
from perdure.worker.localfiles import LocalFileRefused, local_path

WU = {
    "id": "j_0_1",
    "jobid": "j",
    "task_name": "t",
    "rank": 1,
    "totalwork": 2,
    "cmd": {"name": "sh", "environ": {"public": {"GREETING": "hi", "PERDURE_JOB_ID": "forged"}}},
}
WORKER = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/worker",
    "LANG": "C.UTF-8",
    "PERDURE_WORKER_TOKEN": "name=g|id=1|sig=secret",
    "PERDURE_TOKEN": "name=g|id=1|sig=secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "PERDURE_WORKER_SERVER": "http://s:8001",
}


def test_only_the_documented_variables_reach_the_command(tmp_path: Path) -> None:
    env = command_environment(WU, tmp_path, {"SECRET": "private"}, inherited=WORKER)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/worker",
        "LANG": "C.UTF-8",
        "GREETING": "hi",
        "SECRET": "private",
        "PERDURE_JOB_ID": "j",  # a job cannot override Perdure's own variables
        "PERDURE_TASK_ID": "t",
        "PERDURE_WORKUNIT_ID": "j_0_1",
        "PERDURE_RANK": "1",
        "PERDURE_TOTALWORK": "2",
        "PERDURE_WORKDIR": str(tmp_path),
    }


def test_a_worker_without_path_gives_the_command_a_default_one(tmp_path: Path) -> None:
    assert command_environment(WU, tmp_path, inherited={})["PATH"] == DEFAULT_PATH


def test_a_container_sees_what_the_job_set_never_what_the_worker_passed_through(tmp_path: Path) -> None:
    wu = {**WU, "cmd": {"name": "sh", "environ": {"public": {"GREETING": "hi", "HOME": "/home/job"}}}}
    env = command_environment(wu, tmp_path, {"SECRET": "private"}, inherited=WORKER)
    seen = container_environment(env, inherited=WORKER)
    assert set(seen) == {"GREETING", "HOME", "SECRET", *(k for k in env if k.startswith("PERDURE_"))}
    assert seen["HOME"] == "/home/job"  # the job's own value of a pass-through variable is the job's
    # A worker without PATH gave the command the default one: that is not the job's either.
    assert "PATH" not in container_environment(command_environment(WU, tmp_path, inherited={}), inherited={})


def test_token_file_must_be_private_regular_and_non_empty(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("tok-1\n")
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        with pytest.raises(TokenFileError, match="chmod 600"):
            read_token_file(path)
    path.chmod(0o600)
    assert read_token_file(path) == "tok-1"
    path.chmod(0o400)
    assert read_token_file(path) == "tok-1"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(TokenFileError, match="empty"):
        read_token_file(empty)
    with pytest.raises(TokenFileError, match="cannot read"):
        read_token_file(tmp_path / "absent")
    with pytest.raises(TokenFileError, match="not a regular file"):
        read_token_file(tmp_path)


def test_resolve_token_prefers_the_file_refuses_both_and_scrubs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    path.chmod(0o600)
    monkeypatch.setenv("PERDURE_TOKEN", "legacy")
    assert resolve_token("", str(path)) == "from-file"
    assert "PERDURE_TOKEN" not in os.environ
    with pytest.raises(TokenFileError, match="not both"):
        resolve_token("from-env", str(path))
    monkeypatch.setenv("PERDURE_TOKEN", "legacy")
    assert resolve_token("", "") == "legacy"
    assert resolve_token("configured", "") == "configured"


def test_local_files_only_below_the_allowed_roots(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    (root / "ok.txt").write_text("x")
    (root / "out").symlink_to(tmp_path)
    assert local_path(f"file://{root}/ok.txt", [root]) == (root / "ok.txt").resolve()
    assert local_path(f"file://localhost{root}/ok.txt", [str(root)]) == (root / "ok.txt").resolve()
    for url in (
        f"file://{tmp_path}/x",
        f"file://{root}/../x",
        f"file://{root}/out/x",
        "file://host/etc/passwd",
    ):
        with pytest.raises(LocalFileRefused):
            local_path(url, [root])
    with pytest.raises(LocalFileRefused, match="--allow-file-root"):
        local_path(f"file://{root}/ok.txt", [])
