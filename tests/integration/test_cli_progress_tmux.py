"""``perdure submit --wait`` in a real terminal: a tmux pane of 80 columns, captured as a person sees it.

The live display redraws in place, so the captured pane must show one header line and one line per task
(no leftovers of earlier frames), every line inside 80 columns, each task's bar, count and state, and the
job id alone on stdout at the end. Skipped where tmux is not installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_sdk import Stack, squares, stack

__all__ = ["stack"]
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"),
]


def tmux(socket: Path, *args: str) -> str:
    done = subprocess.run(
        ["tmux", "-S", str(socket), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


def test_progress_display_in_an_80_column_terminal(stack: Stack, tmp_path: Path) -> None:
    flow = squares("tmux-progress", 2000)
    flow.tasks[1].args[-1] = "sleep 1; " + flow.tasks[1].args[-1]  # long enough to be seen running
    script = flow.save(tmp_path / "job.json")
    socket = tmp_path / "tmux.sock"
    exit_file = tmp_path / "exit-code"
    env = {"PERDURE_SERVER": stack.server.url, "XDG_CONFIG_HOME": str(tmp_path), "TERM": "xterm-256color"}
    command = " ".join(
        [
            *(f"{k}={shlex.quote(v)}" for k, v in env.items()),
            shlex.quote(sys.executable), "-m", "perdure", "submit", shlex.quote(str(script)), "--wait",
            f"; echo $? > {shlex.quote(str(exit_file))}; sleep 600",
        ]
    )  # fmt: skip
    tmux(socket, "-f", os.devnull, "new-session", "-d", "-x", "80", "-y", "30", "sh", "-c", command)
    try:
        seen_running = False
        deadline = time.monotonic() + 120
        while not exit_file.exists():
            assert time.monotonic() < deadline, tmux(socket, "capture-pane", "-p")
            pane = tmux(socket, "capture-pane", "-p")
            seen_running = seen_running or ("in-progress" in pane and "━" in pane)
            time.sleep(0.2)
        time.sleep(0.3)
        pane = tmux(socket, "capture-pane", "-p", "-J")
    finally:
        subprocess.run(
            ["tmux", "-S", str(socket), "kill-server"], capture_output=True, check=False, timeout=30
        )
    assert exit_file.read_text().strip() == "0", pane
    assert seen_running, "the display never showed a running task"
    lines = [line.rstrip() for line in pane.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), pane
    assert lines[0].startswith("submitted job ")
    job_id = lines[0].removeprefix("submitted job ")
    header = [line for line in lines if line.startswith("tmux-progress")]
    assert len(header) == 1 and "completed" in header[0] and job_id[:8] in header[0], pane
    rows = {line.split()[0]: line for line in lines if line.split()[0] in ("generate", "square", "sum")}
    assert len([line for line in lines if line.split()[0] == "square"]) == 1, pane  # redrawn in place
    assert rows["square"].split()[-2:] == ["3/3", "completed"], pane
    assert "━" * 20 in rows["square"], pane
    assert lines[-1] == job_id, pane
