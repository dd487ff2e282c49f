"""The work's process group: its peak memory over the whole tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from perdure.worker.process import PeakMemory
from tests.support import wait_for

# ---- peak memory: the whole process tree, sampled on the shared timers ------------------------------

TREE = """
import subprocess, sys, time
held = b"x" * (40 << 20)
child = subprocess.Popen([sys.executable, "-c", "import time; held = b'x' * (40 << 20); time.sleep(60)"])
time.sleep(60)
"""


def test_peak_memory_of_work_that_runs_a_while_counts_its_whole_process_tree() -> None:
    process = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    peak = PeakMemory(process.pid)
    try:
        wait_for(lambda: peak.value >= 80 << 20, 20, "a sample of both processes' 40 MiB")
    finally:
        peak.stop()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert peak._timer.cancelled  # stopped: no more samples
