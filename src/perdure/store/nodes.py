"""Worker nodes: what each reports about itself, and the tails of the log files it advertises.

A node is running while one of its clients heartbeats: the node's ``lastHeartbeat`` is its freshest
live client's, so nothing is stored twice. Only files a node advertised can be shipped or read, and
advertised paths must be canonical absolute paths, so a request path is matched by plain equality and
``..`` can never reach anything else. Shipped bytes live in the blob directory under a hash of the
path, never under a name derived from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from perdure.errors import BadRequest, NotFound
from perdure.store.database import Database, retry_on_conflict
from perdure.store.schema import clients, node_files, nodes
from perdure.timeutil import format_us, now_us

NODE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: The tail of each log file that is kept.
MAX_FILE_BYTES = 1024 * 1024
MAX_FILES = 100
MAX_PATH_CHARS = 1024
#: A node document is a few hundred bytes; refuse anything absurd.
MAX_INFO_BYTES = 64 * 1024
#: The documented keys of a node, in the document's order (``id`` first, ``lastHeartbeat`` last).
DOCUMENT_KEYS = (
    "id",
    "ips",
    "hostName",
    "cloud",
    "arch",
    "cores",
    "cpuModel",
    "cpuVendor",
    "memoryInMB",
    "instance",
    "lastHeartbeat",
)
INSTANCE_KEYS = ("zone", "instanceId", "instanceType", "region", "createTime", "payType")


class Instance(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    zone: str = Field(default="", max_length=255)
    instanceId: str = Field(default="", max_length=255)
    instanceType: str = Field(default="", max_length=255)
    region: str = Field(default="", max_length=255)
    createTime: str = Field(default="", max_length=64)
    payType: str = Field(default="", max_length=32)


class NodeInfo(BaseModel):
    """What a node reports (``perdure.nodeinfo.collect``); other keys it adds are kept and shown."""

    model_config = ConfigDict(extra="allow", strict=True)

    ips: list[str] = Field(default_factory=list, max_length=256)
    hostName: str = Field(default="", max_length=255)
    cloud: str = Field(default="", max_length=64)
    arch: str = Field(default="", max_length=64)
    cores: int = Field(default=0, ge=0)
    cpuModel: str = Field(default="", max_length=255)
    cpuVendor: str = Field(default="", max_length=255)
    memoryInMB: int = Field(default=0, ge=0)
    instance: Instance = Field(default_factory=Instance)


def valid_node_id(node_id: str) -> bool:
    # "." and ".." match the pattern but would name directories other than the node's own.
    return bool(re.fullmatch(NODE_ID_PATTERN, node_id)) and node_id not in (".", "..")


def check_node_id(node_id: str) -> None:
    if not valid_node_id(node_id):
        raise BadRequest("node ids are 1-64 letters, digits, '.', '_' or '-' (not '.' or '..')")


def canonical_path(path: str) -> bool:
    """An absolute path with no ``.``/``..``/empty components, no trailing slash, no NUL."""
    return (
        isinstance(path, str)
        and 1 < len(path) <= MAX_PATH_CHARS
        and path.startswith("/")
        and not path.startswith("//")
        and "\x00" not in path
        and posixpath.normpath(path) == path
        and ".." not in path.split("/")
    )


def parse_info(info: Any) -> dict[str, Any]:
    """Validate a node's report; ``id`` and ``lastHeartbeat`` are the server's and are dropped."""
    if not isinstance(info, dict):
        raise BadRequest("node info must be a JSON object")
    try:
        if len(json.dumps(info, allow_nan=False)) > MAX_INFO_BYTES:
            raise BadRequest(f"node info is larger than {MAX_INFO_BYTES} bytes")
        model = NodeInfo.model_validate(info)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "info"
        raise BadRequest(f"invalid node info: {where}: {first['msg']}") from None
    except (TypeError, ValueError):
        raise BadRequest("node info must be plain JSON") from None
    document = model.model_dump()
    for key in ("id", "lastHeartbeat"):
        document.pop(key, None)
    return document


def parse_files(files: Any) -> list[str]:
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise BadRequest("files must be a list of absolute paths")
    if len(files) > MAX_FILES:
        raise BadRequest(f"a node can advertise at most {MAX_FILES} files")
    for path in files:
        if not canonical_path(path):
            raise BadRequest(
                f"file paths must be absolute, at most {MAX_PATH_CHARS} characters, "
                f"without '.', '..' or empty components: {path[:80]!r}"
            )
    return list(dict.fromkeys(files))


class NodeStore:
    def __init__(self, db: Database, ttl_s: Callable[[], float], blobs_dir: Path) -> None:
        self.db = db
        self._ttl_s = ttl_s
        self.blobs_dir = blobs_dir

    @property
    def ttl_us(self) -> int:
        return int(self._ttl_s() * 1_000_000)

    # ---- what nodes report --------------------------------------------------------------------

    def upsert(self, node_id: str, info: dict[str, Any], files: list[str]) -> dict[str, Any]:
        """Record a node's report and advertised files; copies of files it no longer offers are dropped."""
        check_node_id(node_id)
        document = parse_info(info)
        advertised = parse_files(files)
        for attempt in range(3):
            try:
                dropped = self._upsert(node_id, document, advertised)
                break
            except IntegrityError:  # another server inserted the node first: update it instead
                if attempt == 2:
                    raise
        for blob_key in dropped:
            with contextlib.suppress(OSError):
                (self.blobs_dir / blob_key).unlink()
        return self.get(node_id)

    @retry_on_conflict
    def _upsert(self, node_id: str, document: dict[str, Any], advertised: list[str]) -> list[str]:
        now = now_us()
        with self.db.write() as conn:
            exists = conn.execute(
                select(nodes.c.id).where(nodes.c.id == node_id).with_for_update()
            ).one_or_none()
            if exists is None:
                conn.execute(
                    insert(nodes).values(
                        id=node_id, info=document, files=advertised, registered=now, updated=now
                    )
                )
                return []
            conn.execute(
                update(nodes)
                .where(nodes.c.id == node_id)
                .values(info=document, files=advertised, updated=now)
            )
            stale = conn.execute(
                select(node_files.c.path, node_files.c.blob_key).where(
                    node_files.c.node_id == node_id, node_files.c.path.not_in(advertised)
                )
            ).all()
            if stale:
                conn.execute(
                    delete(node_files).where(
                        node_files.c.node_id == node_id, node_files.c.path.in_([r.path for r in stale])
                    )
                )
            return [r.blob_key for r in stale]

    # ---- the node list ------------------------------------------------------------------------

    def running(self) -> list[dict[str, Any]]:
        """Nodes with a client that heartbeat within the TTL, oldest registration first."""
        cutoff = now_us() - self.ttl_us
        heartbeat = self._heartbeats().subquery()
        with self.db.read() as conn:
            rows = conn.execute(
                select(nodes, heartbeat.c.last)
                .join(heartbeat, heartbeat.c.node_id == nodes.c.id)
                .where(heartbeat.c.last >= cutoff)
                .order_by(nodes.c.registered, nodes.c.id)
            ).all()
        return [render(row, row.last) for row in rows]

    def get(self, node_id: str) -> dict[str, Any]:
        """One node, running or not (its ``lastHeartbeat`` shows which)."""
        check_node_id(node_id)
        with self.db.read() as conn:
            row = self._row(conn, node_id)
            last = conn.execute(self._heartbeats().where(clients.c.node_id == node_id)).first()
        return render(row, last.last if last else 0)

    @staticmethod
    def _heartbeats() -> Any:
        return (
            select(clients.c.node_id, func.max(clients.c.last_heartbeat).label("last"))
            .where(clients.c.deleted_at == 0, clients.c.node_id != "")
            .group_by(clients.c.node_id)
        )

    @staticmethod
    def _row(conn: Connection, node_id: str) -> Any:
        row = conn.execute(select(nodes).where(nodes.c.id == node_id)).one_or_none()
        if row is None:
            raise NotFound("node not found")
        return row

    # ---- log files ----------------------------------------------------------------------------

    def files(self, node_id: str) -> list[str]:
        """The advertised files as readable paths, ``/nodes/<nodeID>/<path on the node>``."""
        check_node_id(node_id)
        with self.db.read() as conn:
            row = self._row(conn, node_id)
        return [f"/nodes/{node_id}/{path.lstrip('/')}" for path in row.files or []]

    def save_file(self, node_id: str, path: str, data: bytes) -> dict[str, Any]:
        """Keep the last ``MAX_FILE_BYTES`` of an advertised file; anything else is not found."""
        check_node_id(node_id)
        self._advertised(node_id, path)
        tail = data[-MAX_FILE_BYTES:]
        blob_key = f"nodes/{node_id}/{hashlib.sha256(path.encode()).hexdigest()}"
        _write_atomically(self.blobs_dir / blob_key, tail)
        self._record_file(node_id, path, len(tail), blob_key)
        return {"path": f"/nodes/{node_id}/{path.lstrip('/')}", "size": len(tail)}

    @retry_on_conflict
    def _record_file(self, node_id: str, path: str, size: int, blob_key: str) -> None:
        now = now_us()
        for attempt in range(3):
            try:
                with self.db.write() as conn:
                    row = conn.execute(select(nodes.c.files).where(nodes.c.id == node_id)).one_or_none()
                    if row is None or path not in (row.files or []):
                        raise NotFound("file not found")  # withdrawn while the bytes were written
                    key = (node_files.c.node_id == node_id) & (node_files.c.path == path)
                    done = conn.execute(
                        update(node_files).where(key).values(size=size, blob_key=blob_key, updated=now)
                    )
                    if not done.rowcount:
                        conn.execute(
                            insert(node_files).values(
                                node_id=node_id, path=path, size=size, blob_key=blob_key, updated=now
                            )
                        )
                return
            except IntegrityError:  # a concurrent upload inserted the row: update it
                if attempt == 2:
                    raise

    def read_file(self, node_id: str, path: str) -> bytes:
        """The shipped tail of an advertised file; not found if not advertised or never shipped."""
        if not valid_node_id(node_id) or not canonical_path(path):
            raise NotFound("file not found")
        with self.db.read() as conn:
            row = conn.execute(
                select(nodes.c.files, node_files.c.blob_key)
                .join(node_files, node_files.c.node_id == nodes.c.id)
                .where(nodes.c.id == node_id, node_files.c.path == path)
            ).one_or_none()
        if row is None or path not in (row.files or []):
            raise NotFound("file not found")
        try:
            return (self.blobs_dir / str(row.blob_key)).read_bytes()
        except FileNotFoundError:
            raise NotFound("file not found") from None

    def _advertised(self, node_id: str, path: str) -> None:
        if not canonical_path(path):
            raise NotFound("file not found")
        with self.db.read() as conn:
            row = self._row(conn, node_id)
        if path not in (row.files or []):
            raise NotFound("file not found")


def render(row: Any, last_heartbeat: int) -> dict[str, Any]:
    """A node in the management API's shape: the documented keys in order, then any the node added."""
    info: dict[str, Any] = dict(row.info or {})
    instance = info.get("instance") or {}
    shown_instance = (
        {**{k: instance.get(k, "") for k in INSTANCE_KEYS}, **instance} if isinstance(instance, dict) else {}
    )
    if not any(shown_instance.values()):
        shown_instance = {}
    document: dict[str, Any] = {
        "id": row.id,
        "ips": info.get("ips", []),
        "hostName": info.get("hostName", ""),
        "cloud": info.get("cloud", ""),
        "arch": info.get("arch", ""),
        "cores": info.get("cores", 0),
        "cpuModel": info.get("cpuModel", ""),
        "cpuVendor": info.get("cpuVendor", ""),
        "memoryInMB": info.get("memoryInMB", 0),
        "instance": shown_instance,
        "lastHeartbeat": format_us(last_heartbeat),
    }
    document.update({k: v for k, v in info.items() if k not in DOCUMENT_KEYS})
    return document


def _write_atomically(target: Path, data: bytes) -> None:
    """Readers see the old copy or the new one, never half of one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


__all__ = [
    "MAX_FILE_BYTES",
    "NODE_ID_PATTERN",
    "NodeStore",
    "canonical_path",
    "check_node_id",
    "parse_files",
    "parse_info",
    "render",
    "valid_node_id",
]
