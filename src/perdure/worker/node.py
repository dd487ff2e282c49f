"""A worker node: K slots, each a registered client running one workunit at a time, plus one heartbeat
thread that renews every slot's lease and carries out the server's instructions."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import logging.handlers
import os
import queue
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from perdure import __version__, nodeinfo
from perdure.protocol import Refusal
from perdure.spot.cloud import metadata_endpoint
from perdure.spot.interruption import DRAIN_FILE, PID_FILE, ImdsWatcher, Notice, take_drain_request
from perdure.spot.podman import podman_status
from perdure.spot.protection import HandOver
from perdure.states import ReportStatus
from perdure.worker.api import ServerAPI, ServerRefused, Stopped
from perdure.worker.config import ServerTiming, WorkerConfig
from perdure.worker.container import ContainerSupport, Images, remove_leftovers
from perdure.worker.process import tail_bytes
from perdure.worker.protect import SpotContext
from perdure.worker.runner import DISCARDED, Outcome, Runner

log = logging.getLogger("perdure.worker")


class Slot:
    def __init__(self, node: WorkerNode, index: int) -> None:
        self.node = node
        self.index = index
        self.client_id = f"{node.node_id}-{index}"
        self.runner = Runner(
            node.api,
            self.client_id,
            node.workdir,
            node.workpath / "predata",
            node.spot,
            file_roots=node.config.allow_file_root,
            transfer_tries=node.config.transfer_tries,
            transfer_timeout_s=node.config.transfer_timeout_s,
            containers=node.containers,
        )
        self.registered = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"slot-{index}", daemon=True)

    def profile(self) -> dict[str, Any]:
        config = self.node.config
        current = [self.runner.current] if self.runner.current else []
        return {
            "id": self.client_id,
            "name": f"{config.name}-{self.index}",
            "group": config.group,
            "hostname": self.node.facts.get("hostName", ""),
            "host_ip": (self.node.facts.get("ips") or [""])[0],
            "cores": self.node.facts.get("cores", 0),
            "apps": config.apps,
            "version": __version__,
            "node_id": self.node.node_id,
            "current_work": {"data": current},
            # Checkout gives container tasks only to clients that say they can run them.
            "containers": self.node.containers is not None,
        }

    def register(self) -> None:
        self.node.api.register(self.profile(), give_up=self.node.draining.is_set)
        self.registered.set()
        log.info("slot %d registered as client %s", self.index, self.client_id)

    def _loop(self) -> None:
        api, stop = self.node.api, self.node.stop
        try:
            try:
                self.register()
            except ServerRefused as exc:
                log.error("the server refused to register client %s: %s", self.client_id, exc)
                self.node.fail(f"registration refused: {exc.message}")
                return
            while not stop.is_set() and not self.node.draining.is_set():
                try:
                    workunit = api.retrying(
                        "checkout",
                        lambda: api.checkout(
                            self.client_id, self.node.config.checkout_wait_s, self.node.free_bytes()
                        ),
                        # A failed checkout leased nothing: a draining node need not try again.
                        give_up=self.node.draining.is_set,
                    )
                except ServerRefused as exc:
                    if exc.refusal == Refusal.CLIENT_DELETED:
                        log.warning("client %s was deleted on the server; stopping", self.client_id)
                        self.node.draining.set()
                    elif exc.refusal == Refusal.CLIENT_NOT_FOUND:
                        self.register()
                    elif exc.refusal == Refusal.CLIENT_SUSPENDED:
                        log.warning("client %s is suspended; checking again in 30s", self.client_id)
                        stop.wait(30)
                    else:
                        log.error("checkout refused: %s", exc)
                        stop.wait(10)
                    continue
                # Each report brings the next workunit with it, while there is work and no notice.
                while workunit is not None:
                    if self.node.draining.is_set():
                        self._hand_back(workunit)  # checked out just as the notice came
                        break
                    workunit = self._run(workunit)
        except Stopped:
            pass

    def _hand_back(self, workunit: dict[str, Any]) -> None:
        preemption = HandOver("returned", workunit.get("checkpoint"), "handed back before it started")
        outcome = Outcome(ReportStatus.PREEMPTED, 0, [preemption.detail], preemption=preemption)
        self._report(workunit["id"], outcome)

    def _run(self, workunit: dict[str, Any]) -> dict[str, Any] | None:
        """Run one workunit and report it; the next workunit, when the report brought one."""
        wu_id = workunit["id"]
        # Per workunit: debug, not info (at hundreds a second the log lines were a CPU cost of their own).
        log.debug("slot %d running %s (%s)", self.index, wu_id, workunit["cmd"]["name"])
        outcome = self.runner.run(workunit)
        if outcome.status == DISCARDED:
            log.warning("slot %d: %s was discarded by the server; not reporting it", self.index, wu_id)
            return None
        return self._report(wu_id, outcome, tidy=True)

    def _report(self, wu_id: str, outcome: Outcome, *, tidy: bool = False) -> dict[str, Any] | None:
        """Report the outcome; with ``tidy``, its work directory is tidied once the report is read from it."""
        files: dict[str, Path | bytes] = {"perf": json.dumps(outcome.perf).encode()}
        deadline = None
        then_next: tuple[float, int] | None = None
        if outcome.preemption is not None:
            files["preemption"] = json.dumps(outcome.preemption.document()).encode()
            deadline = self.node.handover_deadline
        elif not self.node.draining.is_set() and not self.node.stop.is_set():
            then_next = (self.node.config.checkout_wait_s, self.node.free_bytes())
        for kind, path in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            content = tail_bytes(path)
            if content:  # empty logs cost a multipart part and a row each; skip them
                files[kind] = content
        if outcome.notes:
            files["worknotes"] = "\n".join(outcome.notes).encode()
        if tidy:
            # While this thread waits for the answer (issue 22, K = 1): started after it, the tidy thread's
            # system calls, each a hand-over of the GIL, slowed the setting up of the next workunit.
            self.node.tidy(outcome)
        try:
            following = self.node.api.report(
                wu_id,
                self.client_id,
                outcome.status,
                outcome.computetime,
                files,
                deadline=deadline,
                then_next=then_next,
            )
            log.debug("slot %d reported %s: %s", self.index, wu_id, outcome.status)
            return following
        except Stopped as exc:
            log.error("report for %s not delivered: %s", wu_id, exc)
        except ServerRefused as exc:
            if exc.refusal == Refusal.OUTPUTS_MISSING:
                self.node.api.report(wu_id, self.client_id, ReportStatus.FAIL, outcome.computetime, files)
            else:
                log.warning("report for %s refused (%s): the server no longer wants it", wu_id, exc)
        return None


class WorkerNode:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.workpath = config.workpath.resolve()
        self.workdir = self.workpath / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node_id = _node_id(self.workpath)
        self.stop = threading.Event()
        self.draining = threading.Event()
        self.api = ServerAPI(config.server, token=config.token, ca_file=config.ca_file, stop=self.stop)
        self.spot = SpotContext(
            self.api,
            self.workpath / "checkpoint-scratch",
            engine=config.checkpoint_engine,
            criu=config.criu_path,
            store_path=config.checkpoint_path,
            threads=config.checkpoint_threads,
        )
        #: Set once an interruption notice is being handled: ``time.monotonic()`` of its deadline.
        self.handover_deadline: float | None = None
        self._handover_lock = threading.Lock()
        self._drain_wakeup = threading.Event()
        self.facts: dict[str, Any] = {}
        self.log_files: list[str] = []
        self.containers, self.container_problem = _containers(config, self.api, self.workpath, self.node_id)
        self.slots = [Slot(self, k) for k in range(config.slots)]
        self.cluster_id: str | None = None
        #: Why the node stopped on an error; None while healthy or after a clean drain.
        self.failure: str | None = None
        self._lock_file = _lock_workpath(self.workpath)
        #: The server's ``ckpt.*`` settings as of the last heartbeat (spot protection reads them).
        self.checkpoint_settings: dict[str, Any] = {}
        #: ``node.heartbeat``/``node.ttl`` as the server last sent them: how often to heartbeat.
        self.timing = ServerTiming(config)
        #: Work directories of done work, removed by the ``tidy`` thread (started on first use).
        self._to_remove: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._tidier: threading.Thread | None = None
        self._tidy_lock = threading.Lock()

    def fail(self, reason: str) -> None:
        """Stop the whole node with an error (the process exits non-zero)."""
        self.failure = reason
        self.stop.set()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.workpath).free

    def run(self) -> None:
        imds = metadata_endpoint(self.config.imds_endpoint)  # "" off EC2: 169.254.169.254 is not ours
        log.info("instance metadata: %s", imds or "not polled (turned off, or not an EC2 instance)")
        self.facts = {
            **nodeinfo.collect(imds or None),
            **self.spot.facts(),
            "containers": self.containers is not None,
            "containerProblem": self.container_problem,
        }
        (self.workpath / DRAIN_FILE).unlink(missing_ok=True)  # a stale request is not for us
        (self.workpath / PID_FILE).write_text(f"{os.getpid()}\n")
        # The server accepts only absolute, normalised paths: it serves exactly what is advertised.
        self.log_files = nodeinfo.default_log_files(
            [
                os.path.normpath(os.path.abspath(str(p)))
                for p in [self.workpath / "logs" / "worker.log", *self.config.log_files]
            ]
        )
        log.info(
            "node %s: %d slot(s), group %s, server %s",
            self.node_id,
            len(self.slots),
            self.config.group,
            self.config.server,
        )
        # What is alive now (modules, settings, clients) lives as long as the node: keep it out of the
        # collector's full passes, which walked all of it over and over at hundreds of workunits a
        # second (issue 22).
        gc.freeze()
        for slot in self.slots:
            slot.thread.start()
        threads: list[threading.Thread] = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._ship_logs_loop, name="logs", daemon=True),
            threading.Thread(target=self._janitor_loop, name="janitor", daemon=True),
            threading.Thread(target=self._drain_loop, name="drain", daemon=True),
        ]
        if imds:
            threads.append(
                ImdsWatcher(
                    imds,
                    self.notice,
                    self._rebalance,
                    self.stop,
                    poll_s=self.config.imds_poll_s,
                    deadline_s=self.config.handover_deadline_s,
                )
            )
        for thread in threads:
            thread.start()
        try:
            while not self.stop.is_set():
                if all(not s.thread.is_alive() for s in self.slots):
                    break  # drained
                self.stop.wait(0.5)
            if self.draining.is_set() and not self.stop.is_set():
                self._leave()
        finally:
            self.stop.set()
            self.api.close()
            with contextlib.suppress(OSError):
                (self.workpath / PID_FILE).unlink()

    # ---- interruption notices -----------------------------------------------------------------

    def notice(self, notice: Notice) -> None:
        """The machine is going away (or asked to drain): take no new work and hand over what runs.

        Safe to call from a signal handler and from any thread; a later notice can only bring the
        deadline forward."""
        with self._handover_lock:
            first = self.handover_deadline is None
            if not first and self.handover_deadline is not None and notice.deadline >= self.handover_deadline:
                return
            self.handover_deadline = notice.deadline
        log.warning(
            "%s: %s within %.0fs",
            notice.detail,
            "finishing running work" if notice.finish else "handing running work over",
            notice.deadline - time.monotonic(),
        )
        self.draining.set()
        if first and not notice.finish:
            threading.Thread(target=self._hand_over, args=(notice,), name="hand-over", daemon=True).start()

    def _hand_over(self, notice: Notice) -> None:
        """Final checkpoints of every running workunit, in parallel, each reported as preempted by its
        slot; then the node leaves."""
        deadline = notice.deadline
        handed: set[int] = set()
        # Until every slot has stopped: a slot whose checkout was answered just as the notice came
        # starts its work a moment later, and must be handed over too.
        while time.monotonic() < deadline and any(slot.thread.is_alive() for slot in self.slots):
            for slot in self.slots:
                if slot.index not in handed and slot.runner.current:
                    handed.add(slot.index)
                    threading.Thread(
                        target=slot.runner.preempt, args=(deadline,), name=f"final-{slot.index}", daemon=True
                    ).start()
            time.sleep(0.1)
        if any(slot.thread.is_alive() for slot in self.slots):
            log.error("hand-over did not finish before the deadline; leaving anyway")
            self.stop.set()

    def _rebalance(self, detail: str) -> None:
        """An early warning: checkpoint everything now, so a notice that follows has less to write."""
        log.warning("rebalance recommendation (%s): checkpointing running work now", detail or "no details")
        for slot in self.slots:
            protection = slot.runner.protection
            if protection is not None:
                threading.Thread(target=protection.checkpoint_now, daemon=True).start()

    def _drain_loop(self) -> None:
        while not self.stop.is_set():
            request = take_drain_request(self.workpath, self.config.handover_deadline_s)
            if request is not None:
                self.notice(request)
            self._drain_wakeup.wait(1.0)
            self._drain_wakeup.clear()

    def wake_drain(self) -> None:
        """SIGUSR1: `perdure worker drain` left a request."""
        self._drain_wakeup.set()

    def _leave(self) -> None:
        for slot in self.slots:
            if slot.registered.is_set():
                try:
                    self.api.deregister(slot.client_id)
                except Exception as exc:
                    log.warning("could not deregister %s: %s", slot.client_id, exc)
        log.info("node %s drained and left", self.node_id)

    def shutdown(self) -> None:
        """Stop now: kill running work and hand it back to the server for another node."""
        self.stop.set()
        for slot in self.slots:
            if slot.runner.current:
                slot.runner.discard(slot.runner.current)
            if slot.registered.is_set():
                try:
                    self.api.deregister(slot.client_id)
                except Exception as exc:  # the lease will expire after the TTL instead
                    log.warning("could not deregister %s: %s", slot.client_id, exc)

    # ---- heartbeat ----------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(self.timing.interval()):
            for slot in self.slots:
                if not slot.registered.is_set():
                    continue
                current = [slot.runner.current] if slot.runner.current else []
                try:
                    instructions = self.api.heartbeat(slot.client_id, current)
                except ServerRefused as exc:
                    if exc.refusal == Refusal.CLIENT_NOT_FOUND:
                        self._safe(slot.register)
                    continue
                except Exception as exc:  # the server is down: keep running, leases outlive short outages
                    log.warning("heartbeat failed: %s", exc)
                    break
                self._follow(slot, instructions)

    def _follow(self, slot: Slot, instructions: dict[str, str]) -> None:
        self.timing.adopt(instructions)
        for wu_id in filter(None, instructions.get("discard", "").split(",")):
            slot.runner.discard(wu_id)
        if instructions.get("stop"):
            log.warning("server told client %s to stop", slot.client_id)
            self.draining.set()
            if slot.runner.current:
                slot.runner.discard(slot.runner.current)
        if instructions.get("ckpt"):
            try:
                self.checkpoint_settings = json.loads(instructions["ckpt"])
            except ValueError:
                log.warning("ignoring unreadable checkpoint settings from the server")
        cluster = instructions.get("server-uuid")
        if cluster and self.cluster_id and cluster != self.cluster_id:
            # A different installation: our work means nothing there. Drop it and join afresh.
            log.warning("server identity changed (%s -> %s); re-registering", self.cluster_id, cluster)
            for other in self.slots:
                if other.runner.current:
                    other.runner.discard(other.runner.current)
                self._safe(other.register)
        if cluster:
            self.cluster_id = cluster

    def _safe(self, action: Any) -> None:
        try:
            action()
        except (ServerRefused, Stopped) as exc:
            log.warning("%s failed: %s", getattr(action, "__name__", action), exc)

    # ---- node inventory and logs --------------------------------------------------------------

    def _ship_logs_loop(self) -> None:
        shipped: dict[str, float] = {}
        announced = False
        while not self.stop.is_set():
            try:
                if not announced:
                    self.api.put_node(self.node_id, self.facts, self.log_files)
                    announced = True
                for path in self.log_files:
                    target = Path(path)
                    if target.exists() and target.stat().st_mtime != shipped.get(path):
                        shipped[path] = target.stat().st_mtime
                        self.api.put_node_file(self.node_id, path, tail_bytes(target, 1024 * 1024))
            except Exception as exc:  # inventory is best effort; the work goes on without it
                log.debug("node inventory update failed: %s", exc)
                announced = False
            # A node the server has not heard of yet (it was down at start) tries again at heartbeat
            # pace: until then it is missing from the node inventory and the dashboard.
            self.stop.wait(
                self.config.log_ship_s if announced else min(self.config.log_ship_s, self.config.heartbeat_s)
            )

    def _janitor_loop(self) -> None:
        while not self.stop.wait(60):
            settings = self.checkpoint_settings
            try:
                collected = self.spot.collect_garbage(str(settings.get("ckptImagePath") or ""))
                if collected:
                    log.info("deleted the checkpoints of %d finished job(s)", collected)
            except Exception as exc:  # the server is away, or the store: next time
                log.debug("checkpoint collection failed: %s", exc)
            cutoff = time.time() - self.config.keep_failed_s
            for path in self.workdir.iterdir():
                if (
                    path.is_dir()
                    and path.stat().st_mtime < cutoff
                    and not any(
                        s.runner.current and path.name.startswith(s.runner.current.replace("/", "_"))
                        for s in self.slots
                    )
                ):
                    shutil.rmtree(path, ignore_errors=True)

    def tidy(self, outcome: Outcome) -> None:
        """Clean the work directory after success; keep it a while after failure. The removal is left
        to a thread of its own, so the slot starts its next workunit at once (issue 22: on a busy disk
        it took milliseconds); one the process did not get to is the janitor's, like a failure's."""
        workdir = outcome.perf.get("workdir")
        if outcome.status == ReportStatus.DONE and workdir:
            with self._tidy_lock:
                if self._tidier is None:
                    self._tidier = threading.Thread(target=self._tidy_loop, name="tidy", daemon=True)
                    self._tidier.start()
            self._to_remove.put(workdir)

    def _tidy_loop(self) -> None:
        while True:
            shutil.rmtree(self._to_remove.get(), ignore_errors=True)


def _containers(
    config: WorkerConfig, api: ServerAPI, workpath: Path, node_id: str
) -> tuple[ContainerSupport | None, str]:
    """Task containers on this node, or why not (said in the log and the node record)."""
    if config.containers == "off":
        return None, "containers are off in the worker settings"
    usable, why = podman_status()
    if not usable:
        log.warning("task containers cannot run on this node: %s", why)
        return None, why
    left = remove_leftovers(node_id, config.criu_path)
    if left:
        log.warning("removed %d container(s) an earlier run of this node left running", left)
    images = Images(lambda url, dest: api.download(url, dest), workpath / "images", config.criu_path)
    return ContainerSupport(images, config.criu_path, config.container_network, node_id), ""


class WorkpathInUse(RuntimeError):
    """Another worker runs on this work path: sharing it would mix up their work."""


def _lock_workpath(workpath: Path) -> Any:
    handle = (workpath / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise WorkpathInUse(f"another worker is running on {workpath}") from None
    return handle  # held open (and locked) for the life of the process


def _node_id(workpath: Path) -> str:
    """Stable across restarts, so a restarted worker re-registers its slots under the same ids."""
    path = workpath / "node-id"
    if path.exists():
        return path.read_text().strip()
    node_id = uuid.uuid4().hex[:16]
    path.write_text(node_id + "\n")
    return node_id


def configure_logging(workpath: Path, level: str = "INFO") -> None:
    (workpath / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        workpath / "logs" / "worker.log", maxBytes=10 * 1024 * 1024, backupCount=5
    )
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    handler.setFormatter(formatter)
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    root = logging.getLogger("perdure")
    root.setLevel(level.upper())
    root.addHandler(handler)
    root.addHandler(console)
