"""A deterministic long-running program that keeps its state in checkpoint files.

``counter.py STEPS STEP_SECONDS OUTPUT``: each step folds the step number into a running SHA-256 and
saves ``state.json`` atomically (temporary file, then rename), as self-checkpointing codes do. Started
with ``PERDURE_RESTORED=1`` it resumes from the saved state. On SIGTERM it finishes the step it is in,
saves, and exits (unless ``COUNTER_IGNORE_TERM`` is set: then it will not stop, so its final checkpoint
cannot be trusted). With ``COUNTER_STEP_LOG`` set, every executed step is appended to that file
(outside the work directory) with the worker's client id, so a test can count redone steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

STATE = Path("state.json")


def main() -> int:
    steps, step_s, output = int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("COUNTER_IGNORE_TERM") else on_term)
    step, digest = 0, hashlib.sha256(b"start").hexdigest()
    if os.environ.get("PERDURE_RESTORED") == "1" and STATE.exists():
        saved = json.loads(STATE.read_text())
        step, digest = saved["step"], saved["digest"]
    log_path = os.environ.get("COUNTER_STEP_LOG")
    while step < steps:
        time.sleep(step_s)
        step += 1
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step, "digest": digest}))
        os.replace(tmp, STATE)
        if log_path:
            with open(log_path, "a") as log:
                log.write(f"{step} {os.environ.get('PERDURE_WORKUNIT_ID', '')} {os.getpid()}\n")
        if stop:
            return 143
    output.write_text(f"{steps} {digest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
