"""The ``criu`` engine's figures for ``bench/spot.py --sections criu`` (a module of its own, so the engines'
benchmarks do not touch each other's lines).

4. **criu: checkpoint and restore by resident size.** ``tests/programs/memcounter.py`` holding about
   64 MiB, 256 MiB and 1 GiB resident (``--criu-sizes``), started as the engine starts bare work (its own
   PID namespace): an iterative checkpoint (a full ``criu dump --leave-running`` where the kernel has no
   dirty-page tracking, else a pre-dump), then the final ``criu dump``, each with its snapshot into a
   ``DirectoryStore``; then the restore on a "second node" (the work directory and images put back from
   the store, and ``criu restore`` until the tree runs again). Durations and sizes.
5. **criu: notice to handed over.** A real server and a 4-slot worker with the ``criu`` engine run 1,
   then 4, memcounter workunits (64 MiB resident each); ``perdure worker drain`` is sent once each has an
   iterative checkpoint: the time until every workunit is ``preempted`` with a final checkpoint.
6. **criu: a job interrupted at 80 %.** memcounter (memory only: without a restore it starts again from
   zero), uninterrupted on one worker, then drained once it reached 80 % of its steps with a second
   worker restoring it: wall time over uninterrupted (target <= 1.15 x); outputs identical.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from common import Server, postgres_database, postgres_problem, stop_process
from perdure.spot.capabilities import probe_criu
from perdure.spot.criu import CriuEngine
from perdure.spot.criucommands import isolated_command, namespace_init
from perdure.spot.engine import Run
from perdure.spot.manifest import Identity
from perdure.spot.policy import CheckpointPolicy
from perdure.spot.snapshot import Snapshotter
from perdure.spot.store import DirectoryStore

ROOT = Path(__file__).resolve().parents[1]
MEMCOUNTER = ROOT / "tests" / "programs" / "memcounter.py"
MiB = 1024 * 1024
TARGET_INTERRUPTED = 1.15
POLL_S = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--criu-sizes", default="64,256,1024", help="criu section: resident MiB of each measured process"
    )
    parser.add_argument(
        "--criu-job-seconds", type=float, default=40.0, help="criu section: the interrupted job's run (40 s)"
    )


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size:.0f} B"
        size /= 1024
    return f"{size:.1f} GiB"


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _tree_rss(init: int) -> int:
    total = _rss(init)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{init}/task/{init}/children").read_text().split():
            total += _rss(int(child))
    return total


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# ---- 4. checkpoint and restore by resident size ----------------------------------------------------------


def _measure_size(criu: str, pre_dump: bool, mib: int, base: Path) -> dict[str, float]:
    node1, node2 = base / f"n1-{mib}", base / f"n2-{mib}"
    workdir = node1 / "work"
    workdir.mkdir(parents=True)
    store = DirectoryStore(base / f"store-{mib}")
    identity = Identity("bench", "criu", 0, f"wu-{mib}", 1)
    run = Run(
        identity, workdir, CheckpointPolicy(), Snapshotter(store, identity, "criu"), scratch=node1 / "s"
    )
    argv = isolated_command(
        [sys.executable, str(MEMCOUNTER), "100000", "0.05", "out.txt", str(mib)],
        workdir / "awe_stdout.txt",
        workdir / "awe_stderr.txt",
        workdir / ".exit",
    )
    proc = subprocess.Popen(argv, cwd=workdir, start_new_session=True, stdin=subprocess.DEVNULL)
    threading.Thread(target=lambda: (proc.wait(), run.exited.set()), daemon=True).start()
    restored: subprocess.Popen[bytes] | None = None
    try:
        run.pid = proc.pid
        out = workdir / "awe_stdout.txt"
        # Its first step logged: the ballast is built (not half-way, with a transient copy).
        _wait(lambda: out.exists() and out.read_text().startswith("step"), 120, f"{mib} MiB resident")
        figures: dict[str, float] = {"rss": _tree_rss(_init(proc.pid))}
        engine = CriuEngine(criu, pre_dump=pre_dump)
        t0 = time.perf_counter()
        iterative = engine.checkpoint(run, threading.Event())
        figures["iter_s"] = time.perf_counter() - t0
        figures["iter_criu_s"] = float(engine.stats().get("criu_s", 0.0))
        figures["iter_size"] = iterative.manifest.size
        t0 = time.perf_counter()
        final = engine.final(run, time.monotonic() + 300)
        figures["final_s"] = time.perf_counter() - t0
        figures["final_criu_s"] = float(engine.stats().get("criu_s", 0.0))
        figures["final_size"] = final.manifest.size
        figures["final_written"] = final.written
        shutil.rmtree(node1)  # the first node is gone
        identity2 = Identity("bench", "criu", 0, f"wu-{mib}", 2)
        run2 = Run(
            identity2,
            node2 / "work",
            CheckpointPolicy(),
            Snapshotter(store, identity2, "criu"),
            scratch=node2 / "s",
        )
        run2.workdir.mkdir(parents=True)
        engine2 = CriuEngine(criu, pre_dump=pre_dump)
        t0 = time.perf_counter()
        launch = engine2.restore(run2, run2.snapshotter.load(final.manifest.name))
        figures["restore_files_s"] = time.perf_counter() - t0
        assert launch.argv is not None and launch.pidfile is not None
        pidfile = launch.pidfile
        restored = subprocess.Popen(
            launch.argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        _wait(lambda: pidfile.exists() or restored.poll() is not None, 300, "criu restore")
        figures["restore_s"] = time.perf_counter() - t0
        if not pidfile.exists():
            raise RuntimeError(f"criu restore failed (exit {restored.returncode}); see {pidfile.parent}")
        return figures
    finally:
        for process in (proc, restored):
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait(30)
        shutil.rmtree(node1, ignore_errors=True)
        shutil.rmtree(node2, ignore_errors=True)
        shutil.rmtree(base / f"store-{mib}", ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _init(pid: int) -> int:
    with contextlib.suppress(Exception):
        return namespace_init(pid)
    return pid


def section_sizes(args: argparse.Namespace, criu: str, pre_dump: bool, base: Path) -> list[str]:
    sizes = [int(s) for s in args.criu_sizes.split(",") if s.strip()]
    how = "pre-dump chain" if pre_dump else "full dump --leave-running (no mem_dirty_track here)"
    print(f"\n=== 4. criu engine: checkpoint and restore by resident size ({criu}; iterative: {how}) ===")
    print(
        f"  {'resident':>9} {'iter s':>7} {'(criu)':>7} {'iter size':>10} {'final s':>7} {'(criu)':>7} "
        f"{'final size':>10} {'written':>10} {'restore s':>9} {'(files)':>7}"
    )
    failed: list[str] = []
    for mib in sizes:
        try:
            f = _measure_size(criu, pre_dump, mib, base)
        except Exception as exc:  # a size that fails must not hide the others
            print(f"  {mib:>5} MiB  FAILED: {exc}")
            failed.append(f"criu {mib} MiB: {exc}")
            continue
        print(
            f"  {human(f['rss']):>9} {f['iter_s']:7.2f} {f['iter_criu_s']:7.2f} {human(f['iter_size']):>10} "
            f"{f['final_s']:7.2f} {f['final_criu_s']:7.2f} {human(f['final_size']):>10} "
            f"{human(f['final_written']):>10} {f['restore_s']:9.2f} {f['restore_files_s']:7.2f}",
            flush=True,
        )
    print(
        "  iter/final s: the whole checkpoint (criu dump, then the snapshot into the store); "
        "(criu): the dump alone;\n  size: the checkpoint's bytes (images + work directory); "
        "written: bytes the final one wrote (chunks the iterative one had stored are not written "
        "again);\n  restore s: from the store "
        "to the tree running again on the second node; (files): putting the images and files back"
    )
    return failed


# ---- 5. and 6.: real server and workers ------------------------------------------------------------------


class _Worker:
    def __init__(self, base: Path, label: str, url: str, env: dict[str, str], slots: int) -> None:
        self.label, self.workpath, self.log = label, base / label, base / f"{label}.log"
        cmd = [sys.executable, "-m", "perdure", "worker", "--server", url, "--name", label]
        cmd += ["--workpath", str(self.workpath), "--slots", str(slots), "--apps", "*"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def registered(self, client: httpx.Client, slots: int) -> bool:
        node = self.workpath / "node-id"
        if not node.exists():
            return False
        ids = {f"{node.read_text().strip()}-{k}" for k in range(slots)}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return ids <= {c.get("id") for c in client.get("/client").json().get("data") or []}
        return False

    def node_id(self) -> str:
        node = self.workpath / "node-id"
        return node.read_text().strip() if node.exists() else "(not yet)"

    def drain(self, deadline: float = 120.0) -> None:
        cmd = [sys.executable, "-m", "perdure", "worker", "drain", "--workpath", str(self.workpath)]
        done = subprocess.run(
            [*cmd, "--deadline", f"{deadline:g}"], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"drain failed: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        stop_process(self.proc)
        # Work a stopped worker left behind (its own sessions) must not outlive the bench.
        for pid_dir in Path("/proc").iterdir():
            if pid_dir.name.isdigit():
                with contextlib.suppress(OSError):
                    if Path(os.readlink(pid_dir / "cwd")).is_relative_to(self.workpath):
                        os.kill(int(pid_dir.name), 9)


def _env(criu: str, step_log: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_WORKER_")}
    env.update(
        PERDURE_WORKER_IMDS_ENDPOINT="",
        PERDURE_WORKER_CHECKPOINT_ENGINE="criu",
        PERDURE_WORKER_CRIU_PATH=criu,
        PERDURE_WORKER_HEARTBEAT_S="1",
        PERDURE_WORKER_CHECKOUT_WAIT_S="1",
    )
    if step_log is not None:
        env["COUNTER_STEP_LOG"] = str(step_log)
    return env


def _submit(client: httpx.Client, steps: int, step_s: float, mib: int, interval: float, label: str) -> str:
    task = {
        "taskid": "count",
        "cmd": {
            "name": sys.executable,
            "args_array": [str(MEMCOUNTER), str(steps), f"{step_s:g}", "out.txt", str(mib)],
        },
        "outputs": [{"filename": "out.txt"}],
    }
    info: dict[str, Any] = {"pipeline": "bench-criu", "name": label, "project": "bench", "user": "bench"}
    info["userattr"] = {"ckptInterval": f"{interval:g}"}
    response = client.post("/job", json={"info": info, "tasks": [task]})
    if response.status_code != 200:
        raise RuntimeError(f"POST /job -> {response.status_code}: {response.text[:400]}")
    return str(response.json()["data"]["id"])


def _workunits(client: httpx.Client, job_ids: list[str]) -> list[dict[str, Any]]:
    listed = client.get("/work", params={"limit": "1000"}).json()["data"] or []
    return [w for w in listed if w.get("jobid") in job_ids]


def _job_state(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/job/{job_id}").json()["data"]["state"])


@contextlib.contextmanager
def _server(args: argparse.Namespace, base: Path) -> Any:
    with contextlib.ExitStack() as stack:
        db_url = None
        if args.db == "postgresql":
            problem = postgres_problem(args.pg_admin)
            if problem:
                raise RuntimeError(f"PostgreSQL unreachable: {problem}")
            db_url = stack.enter_context(postgres_database(args.pg_admin))
        server = Server(base / "server", db_url, 1)
        stack.callback(server.stop)
        server.start()
        client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30.0))
        yield server, client


def _handover(args: argparse.Namespace, criu: str, run_dir: Path, count: int) -> None:
    with _server(args, run_dir) as (server, client):
        worker = _Worker(run_dir, "w", server.url, _env(criu), 4)
        try:
            _wait(lambda: worker.registered(client, 4), 60, "the worker")
            jobs = [_submit(client, 100000, 0.05, 64, 2.0, f"handover-{k}") for k in range(count)]

            def all_checkpointed() -> bool:
                work = _workunits(client, jobs)
                return len(work) == count and all(
                    w["state"] == "checkout" and (w.get("checkpoint") or {}).get("kind") == "iterative"
                    for w in work
                )

            def handed_over() -> bool:
                return all(
                    w["state"] == "preempted" and (w.get("checkpoint") or {}).get("kind") == "final"
                    for w in _workunits(client, jobs)
                )

            _wait(all_checkpointed, 120, f"{count} running workunit(s) with a checkpoint")
            t0 = time.perf_counter()
            worker.drain()
            _wait(handed_over, 180, "the hand-over")
            took = time.perf_counter() - t0
            left = worker.proc.wait(60)
            print(
                f"  {count} workunit(s): drain sent -> all preempted with a final checkpoint in "
                f"{took:.2f} s (worker exit {left}, {time.perf_counter() - t0:.2f} s)",
                flush=True,
            )
        except Exception:
            print("\n".join(worker.log.read_text(errors="replace").splitlines()[-15:]))
            raise
        finally:
            worker.stop()


def section_handover(args: argparse.Namespace, criu: str, base: Path) -> list[str]:
    print("\n=== 5. criu engine: notice to handed over (a 4-slot worker, 64 MiB resident per workunit) ===")
    failed: list[str] = []
    for count in (1, 4):
        run_dir = base / f"handover-{count}"
        run_dir.mkdir(parents=True)
        try:
            _handover(args, criu, run_dir, count)
        except Exception as exc:
            print(f"  {count} workunit(s): FAILED: {exc}")
            failed.append(f"criu hand-over of {count}: {exc}")
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    return failed


def _job_run(
    args: argparse.Namespace, criu: str, run_dir: Path, label: str, steps: int
) -> tuple[float, bytes, str]:
    """One run of the memory-only job: its wall time, output, and what its step log and report say."""
    step_s = args.criu_job_seconds / steps
    step_log = run_dir / "steps.log"
    with _server(args, run_dir) as (server, client):
        workers = [_Worker(run_dir, "w1", server.url, _env(criu, step_log), 1)]
        if label == "interrupted":
            workers.append(_Worker(run_dir, "w2", server.url, _env(criu, step_log), 1))
        try:
            _wait(lambda: all(w.registered(client, 1) for w in workers), 60, "the workers")
            t0 = time.perf_counter()
            job_id = _submit(client, steps, step_s, 0, 0.1 * args.criu_job_seconds, f"criu-{label}")
            interrupted = False
            while (state := _job_state(client, job_id)) != "completed":
                if state in ("suspend", "failed-permanent", "deleted"):
                    raise RuntimeError(f"job {state}")
                if time.perf_counter() - t0 > 4 * args.criu_job_seconds + 120:
                    raise RuntimeError("timed out")
                done = step_log.read_text().split() if step_log.exists() else []
                if label == "interrupted" and not interrupted and len(done) - 1 >= 0.8 * steps:
                    holder = str(_workunits(client, [job_id])[0].get("client") or "")
                    victim = next(w for w in workers if holder.startswith(w.node_id()))
                    victim.drain()
                    interrupted = True
                time.sleep(POLL_S)
            wall = time.perf_counter() - t0
            output = client.get(f"/job/{job_id}/output/count/out.txt").content
            spot = client.get(f"/job/{job_id}", params={"report": ""}).json()["data"].get("spot") or {}
        except Exception:
            for w in workers:
                print("\n".join(w.log.read_text(errors="replace").splitlines()[-15:]))
            raise
        finally:
            for w in workers:
                w.stop()
    lines = step_log.read_text().split()
    numbers = [w for w in lines if w.isdigit()]
    redone = len(numbers) - len(set(numbers))
    note = (
        f"starts {lines.count('start')}, steps run {len(numbers)}, redone {redone}, "
        f"spotProtection {spot.get('spotProtection', 0)}, timeSaved {spot.get('timeSaved', 0.0):.1f} s, "
        f"checkpoints {spot.get('checkpoints', 0)}"
    )
    return wall, output, note


def section_job(args: argparse.Namespace, criu: str, base: Path) -> list[str]:
    steps = 400
    print(
        f"\n=== 6. criu engine: a memory-only job interrupted at 80 % ({args.db}; memcounter {steps} steps, "
        f"{args.criu_job_seconds:g} s of work, ckptInterval {0.1 * args.criu_job_seconds:g} s) ==="
    )
    results: dict[str, tuple[float, bytes, str]] = {}
    for label in ("uninterrupted", "interrupted"):
        run_dir = base / f"job-{label}"
        run_dir.mkdir(parents=True)
        try:
            results[label] = _job_run(args, criu, run_dir, label, steps)
        except Exception as exc:
            print(f"  {label}: FAILED: {exc}")
            return [f"criu job {label}: {exc}"]
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    for label, (wall, _, note) in results.items():
        print(f"  {label:<14} wall {wall:7.2f} s  ({note})")
    ratio = results["interrupted"][0] / results["uninterrupted"][0]
    met = ratio <= TARGET_INTERRUPTED
    verdict = "MET" if met else "NOT MET"
    print(f"  target: interrupted <= {TARGET_INTERRUPTED:.2f} x uninterrupted: {ratio:.2f} x {verdict}")
    expected = results["uninterrupted"][1]
    same = bool(expected) and results["interrupted"][1] == expected
    print(f"  output: {'identical' if same else 'DIFFERS'} ({expected[:30]!r}...)")
    failed = [] if met else [f"criu interrupted job {ratio:.2f} x > {TARGET_INTERRUPTED} x"]
    return failed + ([] if same else ["criu job outputs differ"])


def section(args: argparse.Namespace, base: Path) -> list[str]:
    """Sections 4 to 6; the failed targets and checks."""
    found = probe_criu(include_repo=True)
    if found.get("criu_problem"):
        print(f"\n=== 4.-6. criu engine: SKIPPED ({found['criu_problem']}) ===")
        return ["criu sections skipped: " + str(found["criu_problem"])]
    criu, pre_dump = str(found["criu"]), bool(found.get("mem_dirty_track"))
    print(f"\n  CRIU {found.get('criu_version')} at {criu}; mem_dirty_track: {pre_dump}")
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    failed = section_sizes(args, criu, pre_dump, base)
    failed += section_handover(args, criu, base)
    failed += section_job(args, criu, base)
    print(f"\n  criu sections took {time.perf_counter() - t0:.0f} s")
    return failed
