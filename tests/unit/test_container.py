"""Task containers without podman: the commands built, the log split, the environment passed, and the
figures kept (the end-to-end tests run real containers: tests/integration/test_containers_e2e.py)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from perdure.spot import policy as policies
from perdure.spot.engine import Run
from perdure.spot.manifest import Identity
from perdure.spot.podman import PodmanEngine, _stats_json, container_name
from perdure.spot.snapshot import Snapshotter
from perdure.spot.store import DirectoryStore
from perdure.worker.container import Container, container_image, split_log


def test_the_image_is_dockerimage_or_dockerpull_and_none_for_host_commands() -> None:
    assert container_image({"cmd": {"name": "sh", "Dockerimage": " img:1 "}}) == "img:1"
    assert container_image({"cmd": {"name": "sh", "Dockerimage": "", "dockerPull": "other:2"}}) == "other:2"
    assert container_image({"cmd": {"name": "sh", "Dockerimage": "", "dockerPull": ""}}) == ""
    assert container_image({"cmd": {"name": "sh"}}) == ""


def test_container_names_differ_by_attempt_and_workunit() -> None:
    names = {container_name("job_t_0", 1), container_name("job_t_0", 2), container_name("job_t_1", 1)}
    assert len(names) == 3
    assert all(n.startswith("perdure-") and len(n) < 64 for n in names)


def test_the_run_command_mounts_the_work_directory_at_its_path_with_runc_limits_and_network(
    tmp_path: Path,
) -> None:
    container = Container("img:1", "job_t_0", 3, network="none", node_id="n1")
    env_file = tmp_path / "env"
    command = container.run_command(["sh", "-c", "echo hi"], tmp_path / "w", env_file, (tmp_path / "pre",))
    assert command[:2] == ["run", "--detach"]
    assert command[command.index("--name") + 1] == container_name("job_t_0", 3)
    assert f"{tmp_path / 'w'}:{tmp_path / 'w'}" in command
    assert f"{tmp_path / 'pre'}:{tmp_path / 'pre'}:ro" in command
    assert command[command.index("--workdir") + 1] == str(tmp_path / "w")
    assert command[command.index("--network") + 1] == "none"
    assert command[command.index("--env-file") + 1] == str(env_file)
    assert command[command.index("--entrypoint") + 1] == "sh"
    assert command[-3:] == ["img:1", "-c", "echo hi"]
    assert command[command.index("--label") + 1] == "io.perdure.node=n1"  # a restarted node removes it
    limits = [command[i + 1] for i, word in enumerate(command) if word == "--ulimit"]
    assert [limit.split("=")[0] for limit in limits] == ["nofile", "nproc"]


def test_the_log_is_split_into_stdout_and_stderr_byte_for_byte_across_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_bytes(
        b"2026-01-01T00:00:00.1+00:00 stdout F hello\n"
        b"2026-01-01T00:00:00.2+00:00 stderr P part one \n"
        b"2026-01-01T00:00:00.3+00:00 stderr F and two\n"
        b"2026-01-01T00:00:00.4+00:00 stdout F \n"
    )
    second.write_bytes(b"2026-01-01T00:00:01.0+00:00 stdout F after restore\nnot a log line\n")
    out, err = tmp_path / "out", tmp_path / "err"
    split_log([first, tmp_path / "missing.log", second], out, err)
    assert out.read_bytes() == b"hello\n\nafter restore\n"
    assert err.read_bytes() == b"part one and two\n"


def _run(tmp_path: Path, **changes: object) -> Run:
    identity = Identity(job="j", task="t", rank=0, workunit="j_t_0", attempt=1)
    policy = replace(policies.from_system({}), **changes)  # type: ignore[arg-type]
    snapshotter = Snapshotter(DirectoryStore(tmp_path / "store"), identity, "podman")
    return Run(identity, tmp_path / "w", policy, snapshotter, scratch=tmp_path / "scratch")


def test_checkpoint_options_follow_the_policy(tmp_path: Path) -> None:
    engine = PodmanEngine()
    name, archive = "ctr", tmp_path / "a.tar.zst"
    default = engine.checkpoint_command(_run(tmp_path), name, archive, leave_running=True)
    assert default[:3] == ["container", "checkpoint", "ctr"]
    assert default[default.index("--export") + 1] == str(archive)
    assert "--leave-running" in default and "--tcp-established" in default
    assert "--ignore-rootfs" not in default
    final = engine.checkpoint_command(
        _run(tmp_path, rootfs_diff=False, tcp_close=False), name, archive, leave_running=False
    )
    assert "--ignore-rootfs" in final
    assert "--leave-running" not in final and "--tcp-established" not in final
    assert "--with-previous" not in final  # no pre-checkpoint was taken


def test_podman_statistics_are_flattened_into_figures_the_server_keeps() -> None:
    printed = "noise\n" + json.dumps(
        {
            "podman_checkpoint_duration": 922276,
            "container_statistics": [
                {
                    "Id": "abc",
                    "runtime_checkpoint_duration": 757895,
                    "criu_statistics": {"frozen_time": 450406, "pages_written": 16},
                }
            ],
        }
    )
    assert _stats_json(printed) == {
        "podman_checkpoint_duration": 922276,
        "runtime_checkpoint_duration": 757895,
        "criu_frozen_time": 450406,
        "criu_pages_written": 16,
    }
    assert _stats_json("no json") == {}
    assert _stats_json("{broken") == {}


def test_a_node_that_cannot_checkpoint_containers_says_why(tmp_path: Path) -> None:
    from perdure.spot.manifest import CheckpointError

    engine = PodmanEngine(available=(False, "criu is not installed"))
    with pytest.raises(CheckpointError, match="criu is not installed"):
        engine.checkpoint(_run(tmp_path), threading.Event())


def test_the_containers_setting_is_auto_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from perdure.worker.config import WorkerConfig

    monkeypatch.setenv("PERDURE_WORKER_CONTAINERS", "off")
    monkeypatch.setenv("PERDURE_WORKER_CONTAINER_NETWORK", "none")
    config = WorkerConfig.load()
    assert (config.containers, config.container_network) == ("off", "none")
    config.validate()
    with pytest.raises(ValueError, match=r"worker setting containers: Input should be 'auto' or 'off'"):
        WorkerConfig.load(containers="sometimes").validate()
