"""A long-running program that keeps its state only in memory, as most pipeline software does.

``memcounter.py STEPS STEP_SECONDS OUTPUT [RESIDENT_MIB]``: each step folds the step number (and a byte
of its resident ballast, when it has one) into a running SHA-256 held in memory and logs ``step N`` to
stdout; the checksum goes to OUTPUT (and stdout) at the end, and nowhere before. Killed part-way, it can
only start again from zero, unless something restores its memory (the ``criu`` engine). With
``COUNTER_STEP_LOG`` set, it appends ``start`` when it starts and the number of every step it executes
to that file (outside the work directory; opened for each line, so no descriptor stays open), so a test
can count redone steps and restarts.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from pathlib import Path


def note(line: str) -> None:
    path = os.environ.get("COUNTER_STEP_LOG")
    if path:
        with open(path, "a") as log:
            log.write(line + "\n")


def main() -> int:
    steps, step_s, output = int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
    resident = int(sys.argv[4]) << 20 if len(sys.argv) > 4 else 0
    # Pseudo-random (so a store cannot deduplicate it away), the same in every run; every page resident.
    block = random.Random(resident).randbytes(1 << 20)
    ballast = bytearray(b"".join(block[i:] + block[:i] for i in range(0, resident >> 20)))
    note("start")
    digest = hashlib.sha256(b"start").hexdigest()
    for step in range(1, steps + 1):
        time.sleep(step_s)
        extra = ballast[(step << 20) % resident] if resident else 0
        digest = hashlib.sha256(f"{digest}:{step}:{extra}".encode()).hexdigest()
        note(str(step))
        print(f"step {step}", flush=True)  # a log that grows while it runs (CRIU checks its size)
    output.write_text(f"{steps} {digest}\n")
    print(f"{steps} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
