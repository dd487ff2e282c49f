"""What every request handler can reach: settings, the database and the stores."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from starlette.requests import Request

from perdure.api.batcher import Batcher
from perdure.configstore import ConfigStore
from perdure.datastore import BlobStore, DirectoryBlobStore
from perdure.logs import ServerLogs
from perdure.objectstore import S3BlobStore
from perdure.pool.scaler import Scaler
from perdure.settings import Settings
from perdure.signal import WorkSignal
from perdure.spot.s3store import S3CheckpointStore
from perdure.spot.store import CheckpointStore, DirectoryStore
from perdure.store.clients import ClientStore, ensure_cluster_id
from perdure.store.database import Database
from perdure.store.jobs import JobStore
from perdure.store.spot import SpotStore
from perdure.store.work import WorkStore
from perdure.store.workrequests import FailureLimits
from perdure.timeutil import parse_expiration


@dataclass
class ServerContext:
    settings: Settings
    db: Database
    config: ConfigStore
    logs: ServerLogs
    blobs: BlobStore
    jobs: JobStore
    work: WorkStore
    clients: ClientStore
    spot: SpotStore
    #: Checkpoints of workers that share no filesystem (``ckpt.ckptImagePath`` empty).
    checkpoints: CheckpointStore
    #: Gathers the worker operations (checkouts and reports) that arrive together into one batch.
    batcher: Batcher
    signal: WorkSignal = field(default_factory=WorkSignal)
    started_monotonic: float = field(default_factory=time.monotonic)
    #: This process; the cluster id (``clients.cluster_id``) is what workers compare.
    process_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: Sizes the worker pools (``pool.*``) when this server holds the scaler's lease.
    scaler: Scaler | None = None

    @classmethod
    def create(cls, settings: Settings, db: Database, config: ConfigStore, logs: ServerLogs) -> ServerContext:
        def expire_after() -> dict[str, int]:
            table = {pipeline: parse_expiration(v) for pipeline, v in settings.pipeline_expire.items()}
            if settings.global_expire:
                table[""] = parse_expiration(settings.global_expire)
            return table

        def limits() -> FailureLimits:
            return FailureLimits(settings.max_work_failure, settings.max_client_failure)

        blobs: BlobStore
        checkpoints: CheckpointStore
        s3 = config.effective.store.s3
        if s3.enabled:  # issue 21: data and checkpoints in a bucket, read at start
            blobs = bucket = S3BlobStore(s3)
            checkpoints = S3CheckpointStore(bucket.client, s3.bucket, s3.prefix)
        else:
            blobs = DirectoryBlobStore(settings.data_dir / "blobs")
            checkpoints = DirectoryStore(settings.data_dir / "checkpoints")
        work = WorkStore(db, limits, blobs=blobs, expire_after_s=expire_after)
        return cls(
            settings=settings,
            db=db,
            config=config,
            logs=logs,
            blobs=blobs,
            jobs=JobStore(db, settings.data_dir, expire_after, blobs),
            work=work,
            clients=ClientStore(db, lambda: settings.node_ttl_s, ensure_cluster_id(db)),
            spot=SpotStore(db),
            checkpoints=checkpoints,
            batcher=Batcher(work),
        )

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic


def ctx(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.ctx
    return context
