"""The ``podman`` engine's figures (``bench/spot.py --sections podman``, or this file alone).

1. **Checkpoint and restore by size.** A busybox container (an image made here from
   ``/bin/busybox``, no registry) whose awk holds about 64 MiB, 256 MiB and 1 GiB of base64 text in
   memory (``--podman-sizes``): the engine's iterative checkpoint (``podman container checkpoint
   --export --leave-running``, then the archive and the work directory into a ``DirectoryStore``),
   its archive size, then the final checkpoint, and the restore on a new attempt (the store read
   back, then ``podman container restore --import``).
2. **Notice to handed over.** A real server and a worker with 4 slots running 1, then 4 container
   workunits (in-memory loops) that each have an iterative checkpoint; ``perdure worker drain``: the
   time until the server holds every one as ``preempted``.
3. **Interrupted at 80 %.** A container job (400 steps of 0.1 s, state in memory only) uninterrupted,
   then drained at 80 % with a second idle worker restoring it; wall time from the submit to
   ``completed``, and the ratio (target <= 1.15).

Containers use ``--network none``; every container, image and file made is removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from common import Server, stop_process
from perdure.spot import policy as policies
from perdure.spot.engine import Run
from perdure.spot.manifest import Identity
from perdure.spot.podman import PodmanEngine, container_checkpoint_status, container_name, podman_status
from perdure.spot.snapshot import Snapshotter
from perdure.spot.store import DirectoryStore
from perdure.worker.container import Container

ROOT = Path(__file__).resolve().parents[1]
CRIU = ROOT / ".cache" / "criu" / "criu"
MiB = 1024 * 1024
STEPS = 400
STEP_S = 0.1
TARGET = 1.15
APPLETS = ("sh", "cat", "echo", "sleep", "awk", "head")


def podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{CRIU.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["podman", "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def make_image(base: Path) -> str:
    root = base / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    name = f"localhost/perdure-bench-{uuid.uuid4().hex[:10]}:1"
    with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
        done = subprocess.run(
            ["podman", "import", "-", name], stdin=tar.stdout, capture_output=True, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"podman import failed: {done.stderr.decode(errors='replace')}")
    return name


def remove_image(name: str) -> None:
    for ctr in podman("ps", "-a", "-q", "--filter", f"ancestor={name}").stdout.split():
        podman("rm", "-f", "--time", "0", ctr)
    podman("rmi", "-f", name)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# ---- 1. checkpoint and restore by size -----------------------------------------------------------


def random_text(path: Path, size: int) -> None:
    """Base64 text of random bytes in lines of 64 KiB: what awk holds (compresses like real data)."""
    line = 64 * 1024
    with path.open("wb") as out:
        written = 0
        while written < size:
            out.write(base64.b64encode(os.urandom(line * 3 // 4)) + b"\n")
            written += line + 1


def wait_ready(log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if b"ready" in log.read_bytes():
                return
        time.sleep(0.2)
    raise RuntimeError(f"the container did not load its data within {timeout:.0f}s")


def resident(name: str) -> int:
    found = podman("inspect", "--format", "{{.State.CgroupPath}}", name).stdout.strip()
    for candidate in (
        f"/sys/fs/cgroup/memory{found}/memory.usage_in_bytes",
        f"/sys/fs/cgroup{found}/memory.current",
    ):
        with contextlib.suppress(OSError, ValueError):
            return int(Path(candidate).read_text())
    return 0


def size_row(base: Path, image: str, size: int) -> str:
    case = base / f"size-{size // MiB}"
    data, work, store_dir, scratch = case / "data", case / "work", case / "store", case / "scratch"
    for path in (data, work, store_dir, scratch):
        path.mkdir(parents=True)
    random_text(data / "random.txt", size)
    wu = f"bench_{uuid.uuid4().hex[:8]}_t_0"
    policy = policies.from_system({"ckptInterval": "1h"})
    store = DirectoryStore(store_dir)
    first = Identity(job="bench", task="t", rank=0, workunit=wu, attempt=1)
    run = Run(first, work, policy, Snapshotter(store, first, "podman"), scratch=scratch / "1")
    engine = PodmanEngine(str(CRIU))
    container = Container(image, wu, 1, criu=str(CRIU), network="none")
    program = [
        "awk",
        '{ a[NR] = $0 } END { print "ready"; while (1) system("sleep 1") }',
        str(data / "random.txt"),
    ]
    restored_name = container_name(wu, 2)
    try:
        container.start(program, work, {}, (data,))
        wait_ready(work / ".perdure-container.log", 600)
        rss = resident(container.name)
        # As the runner's ``podman wait`` does: the engine learns the container has stopped.
        waiter = threading.Thread(
            target=lambda: (podman("wait", container.name, timeout=3600), run.exited.set()), daemon=True
        )
        waiter.start()
        run.started = time.monotonic()
        t0 = time.perf_counter()
        taken = engine.checkpoint(run, threading.Event())
        iterative_s = time.perf_counter() - t0
        stats = engine.stats()
        archive = (scratch / "1" / "podman-archive" / "checkpoint.tar.zst").stat().st_size
        t0 = time.perf_counter()
        final = engine.final(run, time.monotonic() + 600)
        final_s = time.perf_counter() - t0
        podman("rm", "-f", "--time", "0", container.name)
        second = Identity(job="bench", task="t", rank=0, workunit=wu, attempt=2)
        run2 = Run(second, work, policy, Snapshotter(store, second, "podman"), scratch=scratch / "2")
        t0 = time.perf_counter()
        engine.restore(run2, final.manifest)
        restore_s = time.perf_counter() - t0
        restore_stats = engine.stats()
        running = podman("inspect", "--format", "{{.State.Running}}", restored_name).stdout.strip() == "true"
        rss_after = resident(restored_name)
    finally:
        podman("rm", "-f", "--time", "0", container.name)
        podman("rm", "-f", "--time", "0", restored_name)
        shutil.rmtree(case, ignore_errors=True)
    return (
        f"  {human(size):>9} {human(rss):>10} {iterative_s:8.2f} {stats.get('podman_s', 0):9.2f} "
        f"{human(archive):>10} {human(taken.manifest.size):>10} {final_s:7.2f} {restore_s:8.2f} "
        f"{restore_stats.get('podman_restore_s', 0):9.2f} {'yes' if running else 'NO':>8} "
        f"{human(rss_after):>10}"
    )


def section_sizes(base: Path, image: str, sizes: list[int]) -> list[str]:
    print("\n=== podman 1. checkpoint and restore of a container by resident size ===")
    print(
        f"  {'data':>9} {'resident':>10} {'ckpt s':>8} {'podman s':>9} {'archive':>10} {'snapshot':>10} "
        f"{'final s':>7} {'restore s':>8} {'podman s':>9} {'running':>8} {'resident':>10}"
    )
    failed = []
    for size in sizes:
        row = size_row(base, image, size)
        print(row, flush=True)
        if " NO " in row:
            failed.append(f"the container restored at {human(size)} is not running")
    print(
        "  ckpt s: the engine's iterative checkpoint (podman checkpoint --leave-running, zstd archive, then\n"
        "  the archive and work directory into a DirectoryStore); podman s: podman's part of it; archive:\n"
        "  its size; final s: the final checkpoint (stops the container); restore s: store read back +\n"
        "  podman container restore --import (podman s: podman's part); running/resident: after restore"
    )
    return failed


# ---- 2. and 3. with a server and workers ---------------------------------------------------------


def worker_env() -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_WORKER_")}
    return {
        **inherited,
        "PERDURE_WORKER_IMDS_ENDPOINT": "",
        "PERDURE_WORKER_CHECKPOINT_ENGINE": "workdir",
        "PERDURE_WORKER_CRIU_PATH": str(CRIU),
        "PERDURE_WORKER_CONTAINER_NETWORK": "none",
        "PERDURE_WORKER_CHECKOUT_WAIT_S": "1",
        "PERDURE_WORKER_HEARTBEAT_S": "1",
    }


class Worker:
    def __init__(self, base: Path, label: str, url: str, slots: int = 1) -> None:
        self.workpath = base / label
        self.log = base / f"{label}.log"
        cmd = [sys.executable, "-m", "perdure", "worker", "--server", url, "--name", label]
        cmd += ["--workpath", str(self.workpath), "--slots", str(slots)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env())

    def drain(self) -> None:
        cmd = [sys.executable, "-m", "perdure", "worker", "drain", "--workpath", str(self.workpath)]
        done = subprocess.run(
            [*cmd, "--deadline", "120"], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"drain failed: {done.stdout}{done.stderr}")

    def step(self) -> int:
        best = 0
        for log in self.workpath.glob("work/*/.perdure-container.log"):
            with contextlib.suppress(OSError):
                found = re.findall(rb"step (\d+)", log.read_bytes())
                if found:
                    best = max(best, int(found[-1]))
        return best

    def stop(self) -> None:
        stop_process(self.proc)


def loop_job(image: str, steps: int, interval: str) -> dict[str, Any]:
    program = (
        f"acc=7; i=0; while [ $i -lt {steps} ]; do i=$((i+1)); acc=$(( (acc * 31 + i) % 1000003 ));"
        f" echo step $i >&2; sleep {STEP_S}; done; echo $acc > result.txt"
    )
    task = {
        "taskid": "t",
        "cmd": {"name": "sh", "args_array": ["-c", program], "Dockerimage": image},
        "outputs": [{"filename": "result.txt"}],
    }
    info = {"pipeline": "bench", "name": "podman", "project": "bench", "user": "bench"}
    return {"info": {**info, "userattr": {"ckptInterval": interval}}, "tasks": [task]}


def submit(client: httpx.Client, document: dict[str, Any]) -> str:
    response = client.post("/job", json=document)
    response.raise_for_status()
    return str(response.json()["data"]["id"])


def workunit(client: httpx.Client, job_id: str) -> dict[str, Any]:
    work = client.get("/work", params={"limit": "1000"}).json().get("data") or []
    ids = [w["id"] for w in work if w.get("jobid") == job_id]
    if not ids:
        return {}
    found: dict[str, Any] = client.get(f"/work/{ids[0]}").json().get("data") or {}
    return found


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def job_state(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/job/{job_id}").json()["data"]["state"])


def section_handover(base: Path, image: str) -> list[str]:
    print(
        "\n=== podman 2. notice to handed over (perdure worker drain; server: every workunit preempted) ==="
    )
    failed: list[str] = []
    for count in (1, 4):
        case = base / f"handover-{count}"
        server = Server(case / "server", None, 1)
        server.start()
        worker = Worker(case, "w", server.url, slots=4)
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                jobs = [submit(client, loop_job(image, 100000, "3s")) for _ in range(count)]
                for job_id in jobs:
                    wait(
                        lambda j=job_id: (
                            (workunit(client, j).get("checkpoint") or {}).get("kind") == "iterative"
                        ),
                        300,
                        "an iterative checkpoint of every workunit",
                    )
                t0 = time.perf_counter()
                worker.drain()
                wait(
                    lambda jobs=jobs: all(workunit(client, j).get("state") == "preempted" for j in jobs),
                    300,
                    "every workunit handed over",
                )
                took = time.perf_counter() - t0
                kinds = [(workunit(client, j).get("checkpoint") or {}).get("kind") for j in jobs]
                print(f"  {count} running: {took:.2f} s from the drain to all preempted; checkpoints {kinds}")
                if any(k != "final" for k in kinds):
                    failed.append(
                        f"hand-over of {count}: not every workunit has a final checkpoint ({kinds})"
                    )
        finally:
            worker.stop()
            server.stop()
            for job_state_dir in case.glob("w/work/*"):
                shutil.rmtree(job_state_dir, ignore_errors=True)
    return failed


def run_loop(base: Path, image: str, label: str, interrupted: bool) -> tuple[float, bytes, dict[str, Any]]:
    case = base / label
    server = Server(case / "server", None, 1)
    server.start()
    workers = [Worker(case, "w1", server.url)]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wait(
                lambda: len(client.get("/client").json().get("data") or []) >= 1, 60, "the worker to register"
            )
            if interrupted:
                workers.append(Worker(case, "w2", server.url))
                wait(lambda: len(client.get("/client").json().get("data") or []) >= 2, 60, "two workers")
            t0 = time.perf_counter()
            job_id = submit(client, loop_job(image, STEPS, f"{0.1 * STEPS * STEP_S:g}s"))
            drained = False
            while True:
                state = job_state(client, job_id)
                if state == "completed":
                    wall = time.perf_counter() - t0
                    break
                if state in ("suspend", "failed-permanent", "deleted"):
                    raise RuntimeError(f"the job ended {state}")
                if interrupted and not drained:
                    for worker in workers:
                        if worker.step() >= int(STEPS * 0.8):
                            worker.drain()
                            drained = True
                            break
                time.sleep(0.1)
            output = client.get(f"/job/{job_id}/output/t/result.txt").content
            spot = client.get(f"/job/{job_id}", params={"report": ""}).json()["data"].get("spot") or {}
            return wall, output, spot
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


def section_interrupted(base: Path, image: str) -> list[str]:
    print(f"\n=== podman 3. a container job ({STEPS} x {STEP_S} s, state in memory) interrupted at 80 % ===")
    plain, out_a, _ = run_loop(base, image, "uninterrupted", False)
    cut, out_b, spot = run_loop(base, image, "interrupted", True)
    ratio = cut / plain
    print(
        f"  uninterrupted {plain:.2f} s; interrupted at 80 % and restored elsewhere {cut:.2f} s: "
        f"{ratio:.2f} x"
    )
    print(
        f"  spotProtection {spot.get('spotProtection')}, timeSaved {spot.get('timeSaved')} s; "
        f"outputs {'identical' if out_a == out_b and out_a else 'DIFFER'} ({out_a!r})"
    )
    failed = []
    print(f"  target <= {TARGET:.2f} x: {'MET' if ratio <= TARGET else 'NOT MET'}")
    if ratio > TARGET:
        failed.append(f"podman: interrupted job {ratio:.2f} x > {TARGET} x")
    if out_a != out_b or not out_a:
        failed.append("podman: the outputs differ")
    return failed


def problem() -> str:
    usable, why = podman_status()
    if not usable:
        return why
    if not Path("/bin/busybox").is_file():
        return "busybox-static is not installed"
    usable, why = container_checkpoint_status(str(CRIU))
    return "" if usable else why


def section_podman(base: Path, sizes: list[int], parts: set[str]) -> list[str]:
    """The podman figures (parts: sizes, handover, interrupted); the targets not met."""
    why = problem()
    if why:
        print(f"\n=== podman engine: SKIPPED ({why}) ===")
        return [f"podman skipped: {why}"]
    base.mkdir(parents=True, exist_ok=True)
    image = make_image(base)
    failed: list[str] = []
    try:
        if "sizes" in parts:
            failed += section_sizes(base, image, sizes)
        if "handover" in parts:
            failed += section_handover(base, image)
        if "interrupted" in parts:
            failed += section_interrupted(base, image)
    finally:
        remove_image(image)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--podman-sizes", default="64,256,1024", help="resident sizes in MiB (64,256,1024)")
    parser.add_argument("--parts", default="sizes,handover,interrupted")
    args = parser.parse_args()
    sizes = [int(s) * MiB for s in args.podman_sizes.split(",") if s.strip()]
    base = Path(tempfile.mkdtemp(prefix="perdure-bench-podman-"))
    try:
        failed = section_podman(base, sizes, set(args.parts.split(",")))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\n  all podman targets met" if not failed else "\n".join(f"  NOT MET: {f}" for f in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
