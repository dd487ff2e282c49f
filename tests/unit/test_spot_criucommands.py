"""The criu engine's command lines, and the PID namespace a bare workunit is started in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from perdure.spot.criucommands import (
    dump_command,
    isolated_command,
    namespace_init,
    pre_dump_command,
    restore_command,
)
from perdure.spot.manifest import CheckpointError
from perdure.spot.policy import CheckpointPolicy

# ---- commands -------------------------------------------------------------------------------------

DUMP_COMMON = [
    "--log-file",
    "dump.log",
    "-v4",
    "--track-mem",
    "--file-locks",
    "--manage-cgroups=ignore",
]


def test_first_pre_dump_has_no_parent() -> None:
    argv = pre_dump_command("criu", 42, Path("/s/images/1"), None, CheckpointPolicy())
    assert argv == ["criu", "pre-dump", "-t", "42", "-D", "/s/images/1", *DUMP_COMMON]


def test_pre_dump_on_a_parent_with_irmap_paths() -> None:
    policy = CheckpointPolicy(irmap_scan_paths=("/data", "/opt/app"))
    argv = pre_dump_command("/usr/sbin/criu", 42, Path("/s/images/3"), "../2", policy)
    assert argv == [
        "/usr/sbin/criu",
        "pre-dump",
        "-t",
        "42",
        "-D",
        "/s/images/3",
        *DUMP_COMMON,
        "--prev-images-dir",
        "../2",
        "--irmap-scan-path",
        "/data",
        "--irmap-scan-path",
        "/opt/app",
    ]


def test_dump_keeps_established_connections_only_when_they_are_closed_at_restore() -> None:
    images = Path("/s/images/final")
    with_tcp = dump_command("criu", 7, images, "../1", CheckpointPolicy(tcp_close=True))
    assert with_tcp == [
        "criu",
        "dump",
        "-t",
        "7",
        "-D",
        "/s/images/final",
        *DUMP_COMMON,
        "--prev-images-dir",
        "../1",
        "--tcp-established",
    ]
    without = dump_command(
        "criu", 7, images, None, CheckpointPolicy(tcp_close=False, irmap_scan_paths=("/d",))
    )
    assert without == [
        "criu",
        "dump",
        "-t",
        "7",
        "-D",
        "/s/images/final",
        *DUMP_COMMON,
        "--irmap-scan-path",
        "/d",
    ]


def test_previous_images_must_be_relative() -> None:
    with pytest.raises(ValueError, match="relative"):
        pre_dump_command("criu", 1, Path("/s/images/2"), "/s/images/1", CheckpointPolicy())


@pytest.mark.parametrize("tcp_close", [True, False])
def test_restore_command(tcp_close: bool) -> None:
    argv = restore_command(
        "criu",
        Path("/s/images/final"),
        Path("/s/images/final/restore.pid"),
        CheckpointPolicy(tcp_close=tcp_close),
    )
    expected = [
        "criu",
        "restore",
        "-D",
        "/s/images/final",
        "--log-file",
        "restore.log",
        "-v4",
        "--file-locks",
        "--manage-cgroups=ignore",
        "--pidfile",
        "/s/images/final/restore.pid",
    ]
    assert argv == [*expected, "--tcp-close"] if tcp_close else expected


# ---- the namespace a bare workunit runs in -----------------------------------------------------------


def test_work_not_started_in_a_namespace_of_its_own_is_not_dumped(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        with pytest.raises(CheckpointError, match="not started by the criu engine"):
            namespace_init(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(CheckpointError, match="is gone"):
        namespace_init(proc.pid)


def test_the_isolated_command_reports_the_exit_status_and_opens_its_own_streams(tmp_path: Path) -> None:
    argv = isolated_command(
        ["sh", "-c", 'echo "pid $$"; echo oops >&2; exit 7'],
        tmp_path / "out",
        tmp_path / "err",
        tmp_path / "status",
    )
    subprocess.run(argv, check=False, timeout=30, stdin=subprocess.DEVNULL)
    assert (tmp_path / "out").read_text() == "pid 2\n"  # the namespace's second process
    assert (tmp_path / "err").read_text() == "oops\n"
    assert (tmp_path / "status").read_text() == "7\n"
