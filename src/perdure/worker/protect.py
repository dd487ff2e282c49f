"""A worker's spot protection: which engine this node uses, where checkpoints go, and the protection
of each workunit it runs."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from perdure.spot import capabilities
from perdure.spot import policy as policies
from perdure.spot.engine import Availability, Engine, Run
from perdure.spot.manifest import Identity
from perdure.spot.policy import CheckpointPolicy
from perdure.spot.protection import Protection
from perdure.spot.snapshot import Snapshotter
from perdure.spot.store import CheckpointStore, DirectoryStore
from perdure.spot.workdir import WorkdirEngine
from perdure.worker.api import ServerAPI
from perdure.worker.container import container_image
from perdure.worker.direct import checkpoint_bucket
from perdure.worker.httpstore import HttpStore

log = logging.getLogger("perdure.worker")


class SpotContext:
    def __init__(
        self,
        api: ServerAPI,
        scratch: Path,
        *,
        engine: str = "auto",
        criu: str = "criu",
        store_path: str = "",
        threads: int = 4,
    ) -> None:
        self.api = api
        self.scratch = scratch
        self.store_path = store_path
        self.threads = threads
        #: What this node can checkpoint, probed once (``spot/capabilities.py``).
        #: Not probed when the settings say ``workdir``: nothing else could be used (and a probe that
        #: runs CRIU and a container costs seconds at every start).
        self.capabilities = (
            capabilities.not_probed("the workdir engine was chosen in the worker settings")
            if engine == "workdir"
            else capabilities.probe(criu)
        )
        self.availability = self._choose(engine, self.capabilities)
        self.engine_name = self.availability.engine
        self._criu = self.capabilities.criu or criu
        self._last_policy: tuple[tuple[Any, Any, Any], CheckpointPolicy] | None = None

    @staticmethod
    def _choose(wanted: str, caps: capabilities.Capabilities) -> Availability:
        log.info("checkpoint capabilities: %s", caps.summary())
        if wanted == "workdir":
            return Availability("workdir", "the workdir engine was chosen in the worker settings")
        engine, problem = capabilities.choose(wanted, caps)
        if engine == "criu":
            how = "pre-dump chains" if caps.mem_dirty_track else "full dumps (no mem_dirty_track)"
            log.info("checkpoint engine: criu %s (`criu check` passed; %s)", caps.criu_version, how)
        elif wanted == "criu":
            log.error("checkpoint engine criu was asked for but %s; using workdir", problem)
        else:
            log.warning("checkpoint engine: workdir, because %s", problem)
        return Availability(engine, problem)

    def facts(self) -> dict[str, Any]:
        """What the node record shows about this node's spot protection."""
        return {
            "checkpointEngine": self.engine_name,
            "criuProblem": self.availability.criu_problem,
            **self.capabilities.facts(),
        }

    def new_engine(self) -> Engine:
        if self.engine_name == "criu":
            from perdure.spot.criu import CriuEngine

            return CriuEngine(self._criu, pre_dump=self.capabilities.mem_dirty_track)
        return WorkdirEngine()

    def container_engine(self) -> Engine:
        """Task containers are checkpointed by podman (which runs this node's CRIU), whatever engine
        the node uses for bare processes."""
        from perdure.spot.podman import PodmanEngine, container_checkpoint_status

        return PodmanEngine(self._criu, available=container_checkpoint_status(self._criu))

    def policy(self, wu: dict[str, Any]) -> CheckpointPolicy:
        """The workunit's policy; an override no worker can honour was refused at submit, so a bad one
        here (an old job) falls back to the system's settings."""
        system = wu.get("ckpt") or {}
        userattr = wu.get("userattr") or {}
        environ = ((wu.get("cmd") or {}).get("environ") or {}).get("public") or {}
        # The workunits of a task resolve to the same policy: the last answer is kept (issue 22:
        # parsing the settings again was a twentieth of a busy worker's CPU). One tuple, replaced
        # whole, so the slots' threads share it without a lock; a policy is immutable.
        key = (system, userattr, environ)
        last = self._last_policy
        if last is not None and last[0] == key:
            return last[1]
        try:
            policy = policies.resolve(system, userattr, environ)
        except ValueError as exc:
            log.warning("%s: ignoring its checkpoint overrides: %s", wu.get("id"), exc)
            return policies.from_system(system)
        self._last_policy = (key, policy)
        return policy

    def store(self, policy: CheckpointPolicy, client_id: str, capability: str = "") -> CheckpointStore:
        path = self.store_path or policy.image_path
        if path.startswith("s3://"):
            return checkpoint_bucket(path)  # issue 21: the bucket, with this worker's own credentials
        if path:
            root = Path(path)
            if root.is_dir():
                return DirectoryStore(root)
            log.error("checkpoint store %s is not a directory on this node; using the server's store", path)
        return HttpStore(self.api, client_id, capability)

    def protect(
        self, wu: dict[str, Any], client_id: str, workdir: Path, exclude: set[str], policy: CheckpointPolicy
    ) -> Protection:
        identity = Identity(
            job=wu["jobid"],
            task=wu["task_name"],
            rank=int(wu["rank"]),
            workunit=wu["id"],
            attempt=int(wu.get("attempt", 0)),
        )
        engine = self.container_engine() if container_image(wu) else self.new_engine()
        snapshotter = Snapshotter(
            self.store(policy, client_id, str(wu.get("captoken") or "")),
            identity,
            engine.name,
            threads=self.threads,
        )
        scratch = self.scratch / re.sub(r"[^\w.-]", "_", wu["id"])
        run = Run(identity, workdir, policy, snapshotter, exclude=exclude, scratch=scratch)
        return Protection(run, engine, self.api, wu["id"], client_id)

    def collect_garbage(self, image_path: str) -> int:
        """Checkpoints in a shared store of jobs that are gone or completed (the server collects its own
        store, and decides what is of no more use). Any node may do this: it is idempotent."""
        path = self.store_path or image_path
        if not path or not Path(path).is_dir():
            return 0
        store = DirectoryStore(Path(path))
        job_ids = store.job_ids()
        collected = 0
        for start in range(0, len(job_ids), 200):
            for job_id in self.api.collectable(job_ids[start : start + 200]):
                store.delete_job(job_id)
                collected += 1
        return collected

    def clear_scratch(self, wu_id: str) -> None:
        shutil.rmtree(self.scratch / re.sub(r"[^\w.-]", "_", wu_id), ignore_errors=True)
