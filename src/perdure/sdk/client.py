"""``Client``: every endpoint of both API documents as a typed method.

Workflow endpoints (``/job``, ``/work``, ``/client``, ``/cgroup``, ``/queue``) answer in AWE's envelope;
management endpoints (``/api/v1/...``) in their own shape; both are unwrapped here, and every failure
is raised as one of ``perdure.sdk.errors``. GET/PUT/DELETE are retried on transport errors and
502/503/504; POST never is (a repeated submit would make a second job).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from perdure.sdk.connection import Connection
from perdure.sdk.errors import PerdureError
from perdure.sdk.job import Job
from perdure.sdk.models import (
    ClientGroup,
    ClientInfo,
    Config,
    JobReport,
    LogConfig,
    MetricSeries,
    Node,
    OutputFile,
    Page,
    QueueSummary,
    SecuritySettings,
    ServerInfo,
    Workunit,
)
from perdure.sdk.transport import Transport
from perdure.sdk.worker import WorkerProtocol
from perdure.sdk.workflow import Workflow

#: What ``submit`` accepts: a file (``Path``, or a ``str`` not starting with ``{``), JSON text or bytes,
#: a parsed document, or a ``Workflow``.
Script = str | bytes | Path | Mapping[str, Any] | Workflow
#: Flags AWE reads by presence; the value is ignored, so the SDK sends none.
FLAG = ""


def _id(value: str, what: str) -> str:
    """An id that goes into a URL path: refuse what would change the path instead of naming a thing."""
    if not value or "/" in value or value in (".", "..") or "\x00" in value:
        raise PerdureError(f"invalid {what} {value!r}")
    return quote(value, safe="")


class Client:
    """A connection to one Perdure server. ``token`` is a user's bearer token (or, with
    ``scheme="CG_TOKEN"``, a clientgroup token for worker calls); ``ca_file`` trusts a private CA."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        ca_file: str | None = None,
        *,
        scheme: str = "bearer",
        timeout: float = 60.0,
        retries: int = 3,
        stop: threading.Event | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token or ""
        self.transport = Transport(
            self.url, token=token, ca_file=ca_file, scheme=scheme, timeout=timeout, retries=retries, stop=stop
        )
        #: The calls a worker makes (register, heartbeat, checkout, report, uploads, node inventory).
        self.worker = WorkerProtocol(self.transport)

    @classmethod
    def from_config(
        cls, server: str | None = None, token: str | None = None, ca_file: str | None = None, **kwargs: Any
    ) -> Client:
        """Arguments, else ``PERDURE_SERVER``/``PERDURE_TOKEN``/``PERDURE_CA_FILE``, else the saved login."""
        conn = Connection.resolve(server, token, ca_file)
        return cls(conn.server, conn.token or None, conn.ca_file or None, **kwargs)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ---- the server ---------------------------------------------------------------------------------

    def info(self) -> ServerInfo:
        """``GET /``: version, database, uptime and job counts."""
        return ServerInfo.from_document(self.transport.mgmt("GET", "/"))

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI schema."""
        schema: dict[str, Any] = self.transport.mgmt("GET", "/openapi.json")
        return schema

    # ---- jobs ---------------------------------------------------------------------------------------

    def submit(self, script: Script, *, datatoken: str | None = None) -> Job:
        """``POST /job``: a job from a script; ``datatoken`` is stored with it and never shown."""
        body = _script_bytes(script)
        headers = {"Datatoken": datatoken} if datatoken else {}
        files = {"upload": ("job.json", body, "application/json")}
        reply = self.transport.awe_page("POST", "/job", files=files, headers=headers)
        job = Job.from_document(self, reply.get("data") or {})
        return dataclasses.replace(job, warnings=[str(w) for w in reply.get("warnings") or []])

    def jobs(
        self,
        *,
        active: bool = False,
        suspended: bool = False,
        registered: bool = False,
        states: Iterable[str] = (),
        project: str | None = None,
        user: str | None = None,
        pipeline: str | None = None,
        name: str | None = None,
        fields: Mapping[str, str | Iterable[str]] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 25,
        offset: int = 0,
        order: str = "updatetime",
        descending: bool = True,
        minimal: bool = False,
    ) -> Page[Job]:
        """``GET /job``: one page, newest update first. ``active``/``suspended``/``registered`` are AWE's
        list flags; the other filters (``fields`` maps any job field path to accepted values) make a
        ``?query`` search; ``since``/``until`` bound the submission time (RFC 3339)."""
        params: dict[str, Any] = {
            "limit": str(limit),
            "offset": str(offset),
            "order": order,
            "direction": "desc" if descending else "asc",
        }
        for flag, wanted in (("active", active), ("suspend", suspended), ("registered", registered)):
            if wanted:
                params[flag] = FLAG
        query: dict[str, str] = {}
        for key, values in (fields or {}).items():
            query[key] = values if isinstance(values, str) else ",".join(values)
        for key, value in (
            ("state", ",".join(states)),
            ("info.project", project),
            ("info.user", user),
            ("info.pipeline", pipeline),
            ("info.name", name),
        ):
            if value:
                query[key] = value
        if since:
            query["date_start"] = since
        if until:
            query["date_end"] = until
        if query:
            params.update(query=FLAG, **query)
        if minimal:
            params["verbosity"] = "minimal"
        body = self.transport.awe_page("GET", "/job", params=params)
        items = [Job.from_document(self, d) for d in body.get("data") or []]
        return Page(items, int(body.get("total_count") or 0), int(body.get("limit") or limit), offset)

    def distinct(self, field: str) -> list[Any]:
        """``GET /job?distinct=<field>``: the values one job field takes (e.g. every project)."""
        values: list[Any] = self.transport.awe("GET", "/job", params={"distinct": field})
        return values

    def job(self, job_id: str) -> Job:
        return Job.from_document(self, self.transport.awe("GET", f"/job/{_id(job_id, 'job id')}"))

    def job_report(self, job_id: str) -> JobReport:
        """``GET /job/<id>?report``: every workunit's logs and the job's events."""
        document = self.transport.awe("GET", f"/job/{_id(job_id, 'job id')}", params={"report": FLAG})
        return JobReport.from_document(document)

    def job_position(self, job_id: str) -> int:
        """``?position``: 1 + the active jobs ahead of it for the same client groups."""
        document = self.transport.awe("GET", f"/job/{_id(job_id, 'job id')}", params={"position": FLAG})
        return int(document["position"])

    def job_perf(self, job_id: str) -> dict[str, Any]:
        """``?perf``: job, task and workunit timings as AWE's JobPerf."""
        perf: dict[str, Any] = self.transport.awe(
            "GET", f"/job/{_id(job_id, 'job id')}", params={"perf": FLAG}
        )
        return perf

    def _job_op(self, job_id: str, params: dict[str, str], headers: dict[str, str] | None = None) -> str:
        reply = self.transport.awe("PUT", f"/job/{_id(job_id, 'job id')}", params=params, headers=headers)
        return str(reply)

    def suspend_job(self, job_id: str) -> str:
        return self._job_op(job_id, {"suspend": FLAG})

    def resume_job(self, job_id: str) -> str:
        return self._job_op(job_id, {"resume": FLAG})

    def resubmit_job(self, job_id: str) -> str:
        """Run the whole job again from its first task."""
        return self._job_op(job_id, {"resubmit": FLAG})

    def recompute_task(self, job_id: str, task: str) -> str:
        """Run ``task`` and everything after it again."""
        return self._job_op(job_id, {"recompute": task})

    def set_clientgroup(self, job_id: str, clientgroups: str) -> str:
        return self._job_op(job_id, {"clientgroup": clientgroups})

    def set_priority(self, job_id: str, priority: int) -> str:
        return self._job_op(job_id, {"priority": str(priority)})

    def set_pipeline(self, job_id: str, pipeline: str) -> str:
        return self._job_op(job_id, {"pipeline": pipeline})

    def set_expiration(self, job_id: str, expiration: str) -> str:
        """How long the job is kept once completed, e.g. ``7D`` or ``12H``."""
        return self._job_op(job_id, {"expiration": expiration})

    def set_datatoken(self, job_id: str, datatoken: str) -> str:
        return self._job_op(job_id, {"settoken": FLAG}, headers={"Datatoken": datatoken})

    def delete_job(self, job_id: str, *, full: bool = False) -> str:
        """Soft delete; ``full`` removes the job and its files for good."""
        params = {"full": FLAG} if full else {}
        return str(self.transport.awe("DELETE", f"/job/{_id(job_id, 'job id')}", params=params))

    def resume_all_jobs(self) -> str:
        return str(self.transport.awe("PUT", "/job", params={"resumeall": FLAG}))

    def recover_all_jobs(self) -> str:
        return str(self.transport.awe("PUT", "/job", params={"recoverall": FLAG}))

    def delete_suspended_jobs(self, *, full: bool = False) -> str:
        params = {"suspend": FLAG, **({"full": FLAG} if full else {})}
        return str(self.transport.awe("DELETE", "/job", params=params))

    def delete_zombie_jobs(self, *, full: bool = False) -> str:
        """Delete active jobs that can make no progress."""
        params = {"zombie": FLAG, **({"full": FLAG} if full else {})}
        return str(self.transport.awe("DELETE", "/job", params=params))

    # ---- outputs ------------------------------------------------------------------------------------

    def outputs(self, job_id: str) -> list[OutputFile]:
        documents = self.transport.awe("GET", f"/job/{_id(job_id, 'job id')}/outputs")
        return [OutputFile.from_document(d) for d in documents or []]

    def _output_path(self, job_id: str, task: str, filename: str) -> str:
        return f"/job/{_id(job_id, 'job id')}/output/{_id(task, 'task id')}/{quote(filename)}"

    def read_output(
        self, job_id: str, task: str, filename: str, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        """An output's bytes (or the ``length`` bytes from ``offset``), in memory."""
        params = {"offset": str(offset), **({"length": str(length)} if length is not None else {})}
        return self.transport.send("GET", self._output_path(job_id, task, filename), params=params).content

    def download_output(self, job_id: str, task: str, filename: str, dest: str | Path | BinaryIO) -> int:
        """Stream an output to a file path or an open binary file; returns the bytes written."""
        return self.download(self._output_path(job_id, task, filename), dest)

    def download(
        self,
        url: str,
        dest: str | Path | BinaryIO,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Stream a server-relative path (``/job/...``) or an absolute http(s) URL to ``dest``; retried
        from the start on a transport error or 502-504. Returns the size."""

        seekable = not isinstance(dest, (str, Path)) and dest.seekable()
        start = dest.tell() if seekable and not isinstance(dest, (str, Path)) else 0

        def write(response: Any, handle: BinaryIO) -> int:
            size = 0
            for chunk in response.iter_bytes(1024 * 1024):
                handle.write(chunk)
                size += len(chunk)
            return size

        def consume(response: Any) -> int:
            if isinstance(dest, (str, Path)):
                with Path(dest).open("wb") as handle:
                    return write(response, handle)
            if seekable:  # a retry starts over where the first attempt began
                dest.seek(start)
                dest.truncate()
            return write(response, dest)

        return int(
            self.transport.retrying_stream(
                # no params at all rather than none: httpx would drop the URL's own query (?download)
                url,
                consume,
                params=dict(params) if params else None,
                headers=dict(headers or {}),
            )
        )

    # ---- workunits ----------------------------------------------------------------------------------

    def workunit(self, workunit_id: str) -> Workunit:
        return Workunit.from_document(self.transport.awe("GET", f"/work/{_id(workunit_id, 'workunit id')}"))

    def workunits(self, *, states: Iterable[str] = (), limit: int = 25, offset: int = 0) -> Page[Workunit]:
        """``GET /work``: every job's workunits (admins), optionally of some states."""
        params = {"limit": str(limit), "offset": str(offset)}
        if states:
            params["state"] = ",".join(states)
        body = self.transport.awe_page("GET", "/work", params=params)
        items = [Workunit.from_document(d) for d in body.get("data") or []]
        return Page(items, int(body.get("total_count") or 0), int(body.get("limit") or limit), offset)

    def workunit_log(self, workunit_id: str, kind: str = "stdout") -> str:
        """``stdout``, ``stderr`` or ``worknotes`` of a workunit, as its last report sent them."""
        path = f"/work/{_id(workunit_id, 'workunit id')}"
        return str(self.transport.awe("GET", path, params={"report": kind}))

    def task_log(self, job_id: str, task: str, *, rank: int | None = None, kind: str = "stdout") -> str:
        """A workunit's log by job, task and rank (default: the task's first workunit)."""
        if rank is None:
            totalwork = self.job(job_id).task(task).totalwork
            rank = 1 if totalwork > 1 else 0
        return self.workunit_log(f"{job_id}_{task}_{rank}", kind)

    # ---- clients and client groups -------------------------------------------------------------------

    def clients(
        self,
        *,
        busy: bool = False,
        group: str | None = None,
        status: str | None = None,
        app: str | None = None,
    ) -> list[ClientInfo]:
        params: dict[str, str] = {"busy": FLAG} if busy else {}
        for key, value in (("group", group), ("status", status), ("app", app)):
            if value:
                params[key] = value
        return [
            ClientInfo.from_document(d) for d in self.transport.awe("GET", "/client", params=params) or []
        ]

    def client(self, client_id: str) -> ClientInfo:
        return ClientInfo.from_document(self.transport.awe("GET", f"/client/{_id(client_id, 'client id')}"))

    def suspend_client(self, client_id: str) -> str:
        """Stop giving it work; what it holds goes back to the queue."""
        return str(
            self.transport.awe("PUT", f"/client/{_id(client_id, 'client id')}", params={"suspend": FLAG})
        )

    def resume_client(self, client_id: str) -> str:
        return str(
            self.transport.awe("PUT", f"/client/{_id(client_id, 'client id')}", params={"resume": FLAG})
        )

    def suspend_all_clients(self) -> str:
        return str(self.transport.awe("PUT", "/client", params={"suspendall": FLAG}))

    def resume_all_clients(self) -> str:
        return str(self.transport.awe("PUT", "/client", params={"resumeall": FLAG}))

    def delete_client(self, client_id: str) -> str:
        return str(self.transport.awe("DELETE", f"/client/{_id(client_id, 'client id')}"))

    def create_clientgroup(self, name: str) -> ClientGroup:
        """A new group; its ``token`` is in this answer only (the server keeps a hash)."""
        return ClientGroup.from_document(self.transport.awe("POST", f"/cgroup/{_id(name, 'client group')}"))

    def clientgroups(self) -> list[ClientGroup]:
        return [ClientGroup.from_document(d) for d in self.transport.awe("GET", "/cgroup") or []]

    def clientgroup(self, ref: str) -> ClientGroup:
        """By name or id."""
        return ClientGroup.from_document(self.transport.awe("GET", f"/cgroup/{_id(ref, 'client group')}"))

    def delete_clientgroup(self, ref: str) -> str:
        return str(self.transport.awe("DELETE", f"/cgroup/{_id(ref, 'client group')}"))

    def new_clientgroup_token(self, ref: str) -> ClientGroup:
        """Issue a new token (the old one stops working at once)."""
        path = f"/cgroup/{_id(ref, 'client group')}/token"
        return ClientGroup.from_document(self.transport.awe("PUT", path))

    def revoke_clientgroup_token(self, ref: str) -> str:
        return str(self.transport.awe("DELETE", f"/cgroup/{_id(ref, 'client group')}/token"))

    # ---- the queue ---------------------------------------------------------------------------------

    def queue(self) -> QueueSummary:
        return QueueSummary.from_document(self.transport.awe("GET", "/queue", params={"json": FLAG}))

    def queue_text(self) -> str:
        """AWE's plain-text queue summary."""
        return str(self.transport.awe("GET", "/queue"))

    # ---- nodes -------------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """Worker machines heard from within the TTL."""
        return [Node.from_document(d) for d in self.transport.mgmt("GET", "/api/v1/node") or []]

    def pools(self) -> list[dict[str, Any]]:
        """The worker pools: sizes, demand and the last scaling decisions (admins)."""
        return list(self.transport.mgmt("GET", "/api/v1/pools") or [])

    def pool(self, name: str) -> dict[str, Any]:
        """One worker pool with every scaling decision kept, newest first (admins)."""
        document: dict[str, Any] = self.transport.mgmt("GET", f"/api/v1/pools/{_id(name, 'pool name')}")
        return document

    def node_files(self, node_id: str) -> list[str]:
        """The log files a node ships, as readable paths ``/nodes/<id>/<path on the node>``."""
        files = self.transport.mgmt("GET", f"/api/v1/nodes/{_id(node_id, 'node id')}/files")
        return [str(f) for f in files or []]

    def node_file(self, node_id: str, path: str) -> str:
        """The shipped tail of one advertised file (``path`` as on the node, or as ``node_files`` lists)."""
        prefix = f"/nodes/{node_id}/"
        relative = path[len(prefix) :] if path.startswith(prefix) else path.lstrip("/")
        response = self.transport.send("GET", f"/nodes/{_id(node_id, 'node id')}/{quote(relative)}")
        return response.text

    # ---- configuration, security, logs ---------------------------------------------------------------

    def config(self) -> Config:
        return Config(self.transport.mgmt("GET", "/api/v1/config"))

    def set_config(self, kv: Mapping[str, str]) -> Config:
        """Change keys all or nothing (``{"node.ttl": "2m"}``); values are strings parsed by type."""
        body = {"kvMap": {k: str(v) for k, v in kv.items()}}
        return Config(self.transport.mgmt("PUT", "/api/v1/configKV", json=body))

    def security(self) -> SecuritySettings:
        return SecuritySettings.from_document(self.transport.mgmt("GET", "/api/v1/security/cognito"))

    def enable_security(
        self,
        *,
        client_id: str,
        token: str | None = None,
        admin_groups: str | Iterable[str] = "admin",
        region: str = "",
        user_pool_id: str = "",
        identity_pool_id: str = "",
        issuer: str = "",
        jwks_url: str = "",
        access_key: str = "",
        secret_key: str = "",
    ) -> SecuritySettings:
        """Turn token security on; ``token`` (default: this client's) must verify as an admin's."""
        groups = admin_groups if isinstance(admin_groups, str) else ",".join(admin_groups)
        body = {
            "region": region,
            "userPoolID": user_pool_id,
            "clientID": client_id,
            "identityPoolID": identity_pool_id,
            "adminGroups": groups,
            "issuer": issuer,
            "jwksURL": jwks_url,
            "accessKey": access_key,
            "secretKey": secret_key,
            "token": token or self.token,
        }
        document = self.transport.mgmt("PUT", "/api/v1/security/cognito", json=body)
        return SecuritySettings.from_document(document)  # the answer has no "enabled": it is on

    def disable_security(self) -> Config:
        return Config(self.transport.mgmt("DELETE", "/api/v1/security/cognito"))

    def log_config(self) -> LogConfig:
        return LogConfig.from_document(self.transport.mgmt("GET", "/api/v1/log/config"))

    def set_log_config(
        self, *, level: str | None = None, max_size_mb: int | None = None, max_backups: int | None = None
    ) -> LogConfig:
        body = {
            k: v
            for k, v in (("level", level), ("maxSizeMB", max_size_mb), ("maxBackups", max_backups))
            if v is not None
        }
        return LogConfig.from_document(self.transport.mgmt("PUT", "/api/v1/log/config", json=body))

    def server_log(self, *, access: bool = False) -> str:
        """The server's log (or access log), named after ``log.file`` in the configuration."""
        base = Path(str(self.config().get("log.file") or "perdure.log")).stem
        path = f"/{base}-access.log" if access else f"/{base}.log"
        return self.transport.send("GET", path).text

    # ---- metrics -------------------------------------------------------------------------------------

    def metric_definitions(self) -> list[dict[str, Any]]:
        """Every metric and the objects (system, queues, nodes) it is kept for."""
        definitions: list[dict[str, Any]] = self.transport.mgmt("GET", "/api/v1/metric")
        return definitions

    def metric_values(
        self,
        object_id: str,
        metric: str,
        *,
        interval: str | None = None,
        start: str | None = None,
        end: str | None = None,
        statistic: str | None = None,
    ) -> MetricSeries:
        """One series; the server picks the finest level that still keeps ``start``."""
        params = {
            k: v
            for k, v in (("interval", interval), ("start", start), ("end", end), ("statistic", statistic))
            if v
        }
        path = f"/api/v1/metricValue/{_id(object_id, 'metric object')}/{_id(metric, 'metric')}"
        response = self.transport.send("GET", path, params=params)
        return MetricSeries.from_document(response.json(), response.headers.get("X-Perdure-Interval", ""))

    def metrics_summary(self, *, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        """Per queue, the total of each summary metric over the range (RFC 3339 bounds)."""
        params = {k: v for k, v in (("start", start), ("end", end)) if v}
        summary: dict[str, Any] = self.transport.mgmt("GET", "/api/v1/metrics/summary", params=params)
        return summary

    def prometheus(self) -> str:
        """``/metrics`` in the Prometheus text format."""
        return self.transport.send("GET", "/metrics").text

    # ---- installing workers --------------------------------------------------------------------------

    def install_worker_script(self, *, group: str = "default", token: str = "", server: str = "") -> str:
        """The shell script that installs and starts a worker of ``group`` on a fresh Linux machine."""
        params = {k: v for k, v in (("group", group), ("token", token), ("server", server)) if v}
        return self.transport.send("GET", "/api/v1/scripts/install-worker", params=params).text


def _script_bytes(script: Script) -> bytes:
    if isinstance(script, Workflow):
        return script.to_json().encode()
    if isinstance(script, str) and not script.lstrip().startswith("{"):
        script = Path(script)  # a file name; JSON text starts with "{"
    if isinstance(script, Path):
        try:
            return script.read_bytes()
        except OSError as exc:
            raise PerdureError(f"cannot read job script {script}: {exc.strerror or exc}") from None
    if isinstance(script, str):
        return script.encode()
    if isinstance(script, bytes):
        return script
    return json.dumps(dict(script)).encode()


__all__ = ["Client"]
