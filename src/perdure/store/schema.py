"""Tables. Hot tables (jobs, tasks, workunits) are narrow; scripts, logs and events live beside them.

Times are integer microseconds since the epoch (0 = never), so ordering and ranges behave the same on
SQLite and PostgreSQL. Documents that are only ever shown whole (a task's command and IO, a job's
free-form info) are JSON columns; everything that is filtered, sorted or joined on is a real column.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: JSON everywhere, stored as JSONB on PostgreSQL so path filters can use it.
Json = JSON().with_variant(JSONB(), "postgresql")


def _time(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default="0")


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("name", String(255), nullable=False, server_default=""),
    Column("pipeline", String(255), nullable=False, server_default=""),
    Column("project", String(255), nullable=False, server_default=""),
    Column("username", String(255), nullable=False, server_default=""),
    Column("owner", String(255), nullable=False, server_default="public"),
    Column("clientgroups", String(1024), nullable=False, server_default=""),
    Column("priority", Integer, nullable=False, server_default="1"),
    _time("submittime"),
    _time("startedtime"),
    _time("completedtime"),
    _time("updatetime"),
    _time("expiration"),
    _time("start_at"),
    Column("remaintasks", Integer, nullable=False),
    Column("resumed", Integer, nullable=False, server_default="0"),
    #: The job script's ``info`` as shown (times and private fields are columns or hidden).
    Column("info", Json, nullable=False),
    Column("error", Json, nullable=True),
    #: ``Datatoken`` from submit or ``?settoken``: handed to workers, never shown.
    Column("datatoken", Text, nullable=True),
    Index(None, "updatetime", "id"),
    Index(None, "submittime", "id"),
    Index(None, "state", "updatetime"),
    # ``state`` second: AWE's usual query (``?query&state=…&info.project=…&info.user=…``) and its
    # ``total_count`` are then answered from the index alone, however many jobs match.
    Index(None, "project", "state"),
    Index(None, "username", "state"),
    #: A non-admin's pages (issue 17, security on) filter on the submitter.
    Index(None, "owner", "state"),
    Index(None, "pipeline"),
    Index(None, "name"),
    Index(None, "completedtime"),
    Index(None, "expiration"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(200), primary_key=True),  # <jobid>_<taskid>
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("taskid", String(128), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("app", String(255), nullable=False),
    Column("totalwork", Integer, nullable=False),
    Column("remainwork", Integer, nullable=False),
    Column("maxworksize", Integer, nullable=False, server_default="0"),
    _time("createddate"),
    _time("starteddate"),
    _time("completeddate"),
    Column("computetime", BigInteger, nullable=False, server_default="0"),
    #: Short task ids this task waits for (``dependsOn`` plus every input ``origin``).
    Column("depends_on", Json, nullable=False),
    #: cmd (without the private environment), inputs, outputs, predata, partinfo, userattr.
    Column("spec", Json, nullable=False),
    Column("private_env", Json, nullable=True),
    Index(None, "job_id", "ordinal"),
    Index(None, "state"),
)

workunits = Table(
    "workunits",
    metadata,
    Column("id", String(220), primary_key=True),  # <jobid>_<taskid>_<rank>
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(200), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("failed", Integer, nullable=False, server_default="0"),
    #: Counts every checkout, so a report can be matched to the lease it answers.
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("client_id", String(64), nullable=True),
    _time("checkout_time"),
    Column("computetime", BigInteger, nullable=False, server_default="0"),
    # Copied from the job and task so that checkout reads one table.
    Column("priority", Integer, nullable=False),
    _time("submittime"),
    Column("clientgroups", String(1024), nullable=False, server_default=""),
    Column("app", String(255), nullable=False),
    Column("input_size", BigInteger, nullable=False, server_default="0"),
    #: The byte range of the split input this workunit reads: ``{"offset", "length"}``; null if unsplit.
    Column("part", Json, nullable=True),
    #: Where to restore from after a preemption (spot protection); null for a fresh start.
    Column("checkpoint", Json, nullable=True),
    _time("updatetime"),
    #: The last accepted report (client, status, attempt): a repeat of it is answered "ok" again.
    Column("reported_by", String(64), nullable=True),
    Column("reported_status", String(20), nullable=True),
    Column("reported_attempt", Integer, nullable=True),
    Index(
        "ix_workunits_queue",
        text("priority DESC"),
        "submittime",
        "id",
        sqlite_where=text("state = 'queued'"),
        postgresql_where=text("state = 'queued'"),
    ),
    #: Preempted work is handed out before new work: a short list, found without scanning the queue.
    Index(
        "ix_workunits_preempted",
        text("priority DESC"),
        "submittime",
        "id",
        sqlite_where=text("state = 'preempted'"),
        postgresql_where=text("state = 'preempted'"),
    ),
    Index(None, "job_id", "state"),
    Index(None, "task_id"),
    #: "What does this client hold": leases, heartbeats, lost-client sweeps.
    Index(None, "client_id", "state"),
)

#: The uploaded script, byte for byte, for audit and debugging.
job_scripts = Table(
    "job_scripts",
    metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("script", Text, nullable=False),
)

#: stdout, stderr, worknotes and perf of each workunit: large, rarely read, never in the hot tables.
workunit_logs = Table(
    "workunit_logs",
    metadata,
    Column("workunit_id", String(220), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("content", Text, nullable=False),
    _time("updatetime"),
    Index(None, "job_id"),
)

#: What happened to a job, in order: submit, suspend, resume, failures, preemptions, restores...
job_events = Table(
    "job_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    _time("time"),
    Column("code", String(8), nullable=False),
    Column("message", Text, nullable=False),
    Index(None, "job_id", "id"),
)

#: Spot protection, one row per checkpoint, preemption and restore: the per-job accounting (the
#: metrics keep the per-queue and per-node series) and what ``?report`` sums up.
spot_events = Table(
    "spot_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("workunit_id", String(220), nullable=False),
    _time("time"),
    #: checkpoint | checkpoint-failed | preempted | restored | restore-failed
    Column("kind", String(20), nullable=False),
    Column("client_id", String(64), nullable=False, server_default=""),
    Column("node_id", String(64), nullable=False, server_default=""),
    #: checkpoint or restore duration; for a restore, also ``saved_s``
    Column("duration_s", Double, nullable=False, server_default="0"),
    Column("saved_s", Double, nullable=False, server_default="0"),
    Column("size", BigInteger, nullable=False, server_default="0"),
    Column("written", BigInteger, nullable=False, server_default="0"),
    Column("detail", Json, nullable=True),
    Index(None, "job_id", "id"),
)

#: Workers ("clients" in AWE). Status (online, busy, suspended, offline) is derived, never stored.
clients = Table(
    "clients",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False, server_default=""),
    Column("group_name", String(255), nullable=False, server_default="default"),
    Column("hostname", String(255), nullable=False, server_default=""),
    Column("host_ip", String(255), nullable=False, server_default=""),
    Column("domain", String(255), nullable=False, server_default=""),
    #: The machine this client runs on; several slots of one node share it.
    Column("node_id", String(64), nullable=False, server_default=""),
    Column("version", String(64), nullable=False, server_default=""),
    Column("cores", Integer, nullable=False, server_default="0"),
    Column("apps", Json, nullable=False),
    #: Everything else the worker said about itself at registration.
    Column("profile", Json, nullable=False),
    _time("regtime"),
    _time("last_heartbeat"),
    _time("last_checkout"),
    _time("last_report"),
    Column("suspended", Boolean, nullable=False, server_default=text("false")),
    Column("suspend_reason", String(255), nullable=False, server_default=""),
    #: Set by DELETE /client: the next heartbeat tells the worker to stop.
    _time("deleted_at"),
    Column("total_checkout", Integer, nullable=False, server_default="0"),
    Column("total_completed", Integer, nullable=False, server_default="0"),
    Column("total_failed", Integer, nullable=False, server_default="0"),
    #: Consecutive failures; reaching max_client_failure suspends the client.
    Column("last_failed", Integer, nullable=False, server_default="0"),
    Index(None, "group_name"),
    Index(None, "last_heartbeat"),
    Index(None, "node_id"),
)

#: Workunits a client failed: it is never handed them again (AWE's skip_work).
client_skip_work = Table(
    "client_skip_work",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("workunit_id", String(220), primary_key=True),
    Index(None, "workunit_id"),
)

#: Client groups and their worker tokens (only a hash of each token is kept).
clientgroups = Table(
    "clientgroups",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("token_hash", String(64), nullable=True),
    _time("created"),
    _time("token_expiration"),
    UniqueConstraint("name"),
    UniqueConstraint("token_hash"),
)

#: Facts about this installation, e.g. its cluster id (the heartbeat's ``server-uuid``).
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

#: Task outputs in the data store: one row per (task, file, rank); a split task's file is its parts in
#: rank order.
outputs = Table(
    "outputs",
    metadata,
    Column("task_id", String(200), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("filename", String(1024), primary_key=True),
    Column("rank", Integer, primary_key=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    #: Where the bytes are in the blob store.
    Column("blob_key", String(2048), nullable=False),
    _time("created"),
    Index(None, "job_id"),
)

#: Worker machines. A node's last heartbeat is its freshest client's, so it is not stored here.
nodes = Table(
    "nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    #: What the node reports about itself: ips, hostName, cloud, arch, cores, cpu, memory, instance.
    Column("info", Json, nullable=False),
    #: Log files the node advertises (absolute paths on the node); only these can be read.
    Column("files", Json, nullable=False),
    _time("registered"),
    _time("updated"),
)

#: The latest copy of each advertised log file a node shipped to the server.
node_files = Table(
    "node_files",
    metadata,
    Column("node_id", String(64), ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("blob_key", String(2048), nullable=False),
    _time("updated"),
)

#: Metrics (perdure.metrics): each event is appended here in the transaction that caused it (an insert,
#: so concurrent transactions never wait on each other), then folded into ``metric_rollups`` by the
#: sweep. Readers add the events not yet folded, so nothing recorded is ever missing from a query.
metric_events = Table(
    "metric_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("metric", String(64), nullable=False),
    Column("object_id", String(300), nullable=False),
    _time("at"),
    Column("value", Double, nullable=False),
    Index(None, "metric", "object_id", "at"),
)

#: One row per metric, level, bucket and object, holding the bucket's total, sample count, minimum and
#: maximum, so sums, rates and averages all come out right at any level. ``interval_s = 0`` is the
#: all-time row (never expires; Prometheus reads it). The key puts a level's buckets in time order, so
#: the summary (every object over a range) and retention read one contiguous range; on SQLite the
#: table is stored in key order (WITHOUT ROWID). One object's series reads the second index, which
#: carries the values too, so it is read alone (no lookup per bucket); it starts with the object so
#: that a planner without statistics never takes it for a query across objects.
metric_rollups = Table(
    "metric_rollups",
    metadata,
    Column("metric", String(64), primary_key=True),
    Column("interval_s", Integer, primary_key=True),
    Column("bucket_start", BigInteger, primary_key=True),
    Column("object_id", String(300), primary_key=True),
    Column("total", Double, nullable=False),
    Column("samples", BigInteger, nullable=False),
    Column("minimum", Double, nullable=False),
    Column("maximum", Double, nullable=False),
    Index(
        "ix_metric_rollups_series",
        "object_id",
        "metric",
        "interval_s",
        "bucket_start",
        "total",
        "samples",
        "minimum",
        "maximum",
    ),
    sqlite_with_rowid=False,
)

#: Shock-compatible nodes (api/shock.py): one per task output, created when the task is queued, so an
#: AWE worker can upload to ``PUT /node/<id>`` and downstream tasks read ``GET /node/<id>?download``.
#: The bytes are the ``outputs`` rows of (task_id, filename), concatenated by rank; the id is an
#: unguessable UUID bound to its job and task.
shock_nodes = Table(
    "shock_nodes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(200), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("filename", String(1024), nullable=False),
    #: 0 for a basic node (rank 0 uploads field ``upload``), N for a parts node (ranks 1..N).
    Column("parts", Integer, nullable=False, server_default="0"),
    #: name -> {total_units, average_unit_size, created_on[, units: [[offset, length], ...]]}
    Column("indexes", Json, nullable=False),
    Column("attributes", Json, nullable=True),
    _time("created"),
    Index(None, "task_id", "filename"),
    Index(None, "job_id"),
)
