"""Clients (workers), their heartbeats and leases, and client groups with their tokens.

A client's status is derived from stored facts, never stored twice: ``suspended`` if suspended,
``offline`` if its last heartbeat is older than the TTL, ``busy`` if it holds a lease, else ``online``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from perdure.errors import BadRequest, Conflict, NotFound, Unauthorized
from perdure.protocol import ClientNotFound
from perdure.states import ClientStatus, WorkunitState
from perdure.store import transitions
from perdure.store.database import Database, retry_on_conflict
from perdure.store.requeue import requeue_client_work
from perdure.store.schema import client_skip_work, clientgroups, clients, meta, workunits
from perdure.timeutil import format_us, now_us

GROUP_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Profile(BaseModel):
    """What a worker says about itself at registration (AWE's client profile, extra keys kept)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    name: str = Field(default="", max_length=255)
    group: str = Field(default="default", pattern=GROUP_PATTERN)
    hostname: str = Field(default="", max_length=255)
    host_ip: str = Field(default="", max_length=255)
    domain: str = Field(default="", max_length=255)
    node_id: str = Field(default="", max_length=64)
    version: str = Field(default="", max_length=64)
    cores: int = Field(default=0, ge=0, le=2**31 - 1)
    apps: list[str] = Field(default_factory=list)
    current_work: dict[str, Any] = Field(default_factory=dict)

    @field_validator("apps", mode="before")
    @classmethod
    def _apps(cls, value: Any) -> Any:
        # AWE's config writes supported_apps as a comma string; accept that spelling too.
        if isinstance(value, str):
            return [a.strip() for a in value.split(",") if a.strip()]
        return value

    @model_validator(mode="after")
    def _no_nul(self) -> Profile:
        # PostgreSQL text cannot hold NUL: refuse it here rather than fail at the database.
        if "\\u0000" in self.model_dump_json():
            raise ValueError("text must not contain NUL characters")
        return self

    def current_work_ids(self) -> list[str]:
        data = self.current_work.get("data", []) if isinstance(self.current_work, dict) else []
        return [w for w in data if isinstance(w, str)] if isinstance(data, list) else []


def parse_profile(raw: bytes | str) -> Profile:
    try:
        return Profile.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "profile"
        raise BadRequest(f"invalid client profile: {where}: {first['msg']}") from None


def client_status(row: Any, now: int, ttl_us: int, busy: bool) -> ClientStatus:
    if row.suspended:
        return ClientStatus.SUSPENDED
    if row.last_heartbeat < now - ttl_us:
        return ClientStatus.OFFLINE
    return ClientStatus.BUSY if busy else ClientStatus.ONLINE


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ClientStore:
    def __init__(self, db: Database, ttl_s: Callable[[], float], cluster_id: str) -> None:
        self.db = db
        self._ttl_s = ttl_s
        self.cluster_id = cluster_id

    @property
    def ttl_us(self) -> int:
        return int(self._ttl_s() * 1_000_000)

    # ---- registration and heartbeat -----------------------------------------------------------

    @retry_on_conflict
    def register(self, profile: Profile) -> dict[str, Any]:
        """Register, or re-register with a known id (the record, counters and skip list are kept).

        On re-registration, leases the server holds for this client that the worker no longer lists in
        ``current_work`` go back to the queue at once: the worker restarted and lost them.
        """
        now = now_us()
        client_id = profile.id or str(uuid.uuid4())
        extra = profile.model_extra or {}
        values = {
            "name": profile.name or profile.hostname or client_id,
            "group_name": profile.group,
            "hostname": profile.hostname,
            "host_ip": profile.host_ip,
            "domain": profile.domain,
            "node_id": profile.node_id,
            "version": profile.version,
            "cores": profile.cores,
            "apps": profile.apps,
            "profile": {k: v for k, v in extra.items() if not isinstance(v, bytes)},
            "last_heartbeat": now,
        }
        with self.db.write() as conn:
            existing = conn.execute(
                select(clients.c.id, clients.c.deleted_at).where(clients.c.id == client_id).with_for_update()
            ).one_or_none()
            if existing is None:
                conn.execute(insert(clients).values(id=client_id, regtime=now, **values))
            else:
                conn.execute(update(clients).where(clients.c.id == client_id).values(**values))
                if existing.deleted_at:
                    transitions.revive_client(conn, client_id)
                kept = set(profile.current_work_ids())
                lost = (
                    conn.execute(
                        select(workunits.c.id).where(
                            workunits.c.client_id == client_id,
                            workunits.c.state == WorkunitState.CHECKOUT.value,
                        )
                    )
                    .scalars()
                    .all()
                )
                if any(w not in kept for w in lost):
                    transitions.requeue_leases(
                        conn, [workunits.c.id.in_([w for w in lost if w not in kept])], now
                    )
                    Database.work_queued(conn)
            return self._document(conn, client_id, now)

    @retry_on_conflict
    def heartbeat(self, client_id: str, current_work: Sequence[str] | None) -> dict[str, str]:
        """Renew the client's leases and answer its instructions.

        ``discard`` lists the workunits the client must drop: those it runs but no longer holds
        (suspended, deleted, or re-queued after it was presumed lost) and those of its own that were
        suspended. ``stop`` tells a deleted client to exit. ``server-uuid`` identifies the database:
        it changes only if the worker is pointed at a different installation.
        """
        now = now_us()
        with self.db.write() as conn:
            client = conn.execute(select(clients).where(clients.c.id == client_id)).one_or_none()
            if client is None:
                raise ClientNotFound("Client not found")
            instructions = {"server-uuid": self.cluster_id}
            if client.deleted_at:
                instructions["stop"] = client_id
                return instructions
            conn.execute(update(clients).where(clients.c.id == client_id).values(last_heartbeat=now))
            held = set(
                conn.execute(
                    select(workunits.c.id).where(
                        workunits.c.client_id == client_id,
                        workunits.c.state == WorkunitState.CHECKOUT.value,
                    )
                ).scalars()
            )
            discard = [w for w in (current_work or []) if w not in held]
            # AWE builds ``discard`` from the work the worker reports; only a worker that reports
            # none at all (AWE's old GET heartbeat) is told about its suspended workunits instead.
            discard += (
                conn.execute(
                    select(workunits.c.id).where(
                        workunits.c.client_id == client_id,
                        workunits.c.state.in_(
                            [WorkunitState.SUSPEND.value, WorkunitState.FAILED_PERMANENT.value]
                        ),
                        workunits.c.reported_attempt.is_distinct_from(workunits.c.attempt),
                    )
                )
                .scalars()
                .all()
                if current_work is None
                else []
            )
            if discard:
                instructions["discard"] = ",".join(dict.fromkeys(discard))
            return instructions

    # ---- reading ------------------------------------------------------------------------------

    def get(self, client_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._document(conn, client_id, now_us())

    def _document(self, conn: Connection, client_id: str, now: int) -> dict[str, Any]:
        row = conn.execute(select(clients).where(clients.c.id == client_id)).one_or_none()
        if row is None or row.deleted_at:
            raise NotFound("Client not found")
        held = self._held(conn, [client_id])
        skip = (
            conn.execute(
                select(client_skip_work.c.workunit_id).where(client_skip_work.c.client_id == client_id)
            )
            .scalars()
            .all()
        )
        return self._render(row, now, held.get(client_id, []), list(skip))

    def find(
        self,
        *,
        busy: bool = False,
        group: str | None = None,
        status: str | None = None,
        app: str | None = None,
    ) -> list[dict[str, Any]]:
        now = now_us()
        with self.db.read() as conn:
            stmt = select(clients).where(clients.c.deleted_at == 0).order_by(clients.c.regtime, clients.c.id)
            if group:
                stmt = stmt.where(clients.c.group_name == group)
            rows = conn.execute(stmt).all()
            held = self._held(conn, [r.id for r in rows])
            skips = _skip_lists(conn, [r.id for r in rows])
        documents = []
        for row in rows:
            # The skip list is the server's, not the stale one of the profile the worker registered.
            doc = self._render(row, now, held.get(row.id, []), skips.get(row.id, []))
            if busy and not doc["busy"]:
                continue
            if status and status not in (doc["Status"], doc["Status"].split("-")[-1]):
                continue
            if app and app not in doc["apps"] and "*" not in doc["apps"]:
                continue
            documents.append(doc)
        return documents

    @staticmethod
    def _held(conn: Connection, client_ids: Sequence[str]) -> dict[str, list[str]]:
        held: dict[str, list[str]] = {}
        if not client_ids:
            return held
        for row in conn.execute(
            select(workunits.c.client_id, workunits.c.id).where(
                workunits.c.state == WorkunitState.CHECKOUT.value, workunits.c.client_id.in_(list(client_ids))
            )
        ):
            held.setdefault(row.client_id, []).append(row.id)
        return held

    def _render(self, row: Any, now: int, held: list[str], skip: list[str] | None) -> dict[str, Any]:
        status = client_status(row, now, self.ttl_us, bool(held))
        document = {
            **(row.profile or {}),
            "id": row.id,
            "name": row.name,
            "group": row.group_name,
            "hostname": row.hostname,
            "host_ip": row.host_ip,
            "domain": row.domain,
            "node_id": row.node_id,
            "version": row.version,
            "cores": row.cores,
            "apps": row.apps,
            "regtime": format_us(row.regtime),
            "last_heartbeat": format_us(row.last_heartbeat),
            "last_checkout": format_us(row.last_checkout),
            "last_report": format_us(row.last_report),
            "busy": bool(held),
            "online": status in (ClientStatus.ONLINE, ClientStatus.BUSY),
            "suspended": bool(row.suspended),
            "suspend_reason": row.suspend_reason,
            "Status": status.value,
            "current_work": {"data": held},
            "total_checkout": row.total_checkout,
            "total_completed": row.total_completed,
            "total_failed": row.total_failed,
            "last_failed": row.last_failed,
        }
        if skip is not None:
            document["skip_work"] = skip
        return document

    # ---- suspension and deletion --------------------------------------------------------------

    @retry_on_conflict
    def suspend(self, client_id: str, reason: str = "manually suspended") -> str:
        now = now_us()
        with self.db.write() as conn:
            row = self._locked(conn, client_id)
            if row.suspended or not transitions.suspend_client(conn, client_id, reason):
                raise Conflict("Client already suspended")
            requeue_client_work(conn, client_id, now, reason=f"client {client_id} suspended")
        return "client suspended"

    @retry_on_conflict
    def resume(self, client_id: str) -> str:
        with self.db.write() as conn:
            self._locked(conn, client_id)
            if not transitions.resume_client(conn, client_id):
                raise Conflict("Client not suspended")
        return "client resumed"

    def suspend_all(self) -> str:
        with self.db.read() as conn:
            ids = (
                conn.execute(
                    select(clients.c.id).where(clients.c.deleted_at == 0, clients.c.suspended.is_(False))
                )
                .scalars()
                .all()
            )
        count = 0
        for client_id in ids:
            try:
                self.suspend(client_id)
                count += 1
            except (Conflict, NotFound):
                pass
        return f"{count} clients suspended"

    def resume_all(self) -> str:
        with self.db.read() as conn:
            ids = (
                conn.execute(
                    select(clients.c.id).where(clients.c.deleted_at == 0, clients.c.suspended.is_(True))
                )
                .scalars()
                .all()
            )
        count = 0
        for client_id in ids:
            try:
                self.resume(client_id)
                count += 1
            except (Conflict, NotFound):
                pass
        return f"{count} suspended clients resumed"

    @retry_on_conflict
    def delete(self, client_id: str) -> str:
        """Forget a client: its work is re-queued and its next heartbeat is told to stop."""
        now = now_us()
        with self.db.write() as conn:
            self._locked(conn, client_id)
            requeue_client_work(conn, client_id, now, reason=f"client {client_id} deleted")
            transitions.delete_client(conn, client_id, now)
        return f"client deleted: {client_id}"

    def _locked(self, conn: Connection, client_id: str) -> Any:
        row = conn.execute(select(clients).where(clients.c.id == client_id).with_for_update()).one_or_none()
        if row is None or row.deleted_at:
            raise NotFound("Client not found")
        return row

    # ---- leases -------------------------------------------------------------------------------

    def requeue_lost(self) -> int:
        """Re-queue the work of clients silent for longer than the TTL, each client in one transaction."""
        now = now_us()
        cutoff = now - self.ttl_us
        with self.db.read() as conn:
            lost = (
                conn.execute(
                    select(clients.c.id).where(
                        clients.c.last_heartbeat < cutoff,
                        select(workunits.c.id)
                        .where(
                            workunits.c.client_id == clients.c.id,
                            workunits.c.state == WorkunitState.CHECKOUT.value,
                        )
                        .exists(),
                    )
                )
                .scalars()
                .all()
            )
        total = 0
        for client_id in lost:
            total += self._requeue_if_still_lost(client_id, cutoff, now)
        return total

    @retry_on_conflict
    def _requeue_if_still_lost(self, client_id: str, cutoff: int, now: int) -> int:
        with self.db.write() as conn:
            row = conn.execute(
                select(clients.c.last_heartbeat).where(clients.c.id == client_id).with_for_update()
            ).one_or_none()
            if row is None or row.last_heartbeat >= cutoff:
                return 0  # it came back while we looked
            return requeue_client_work(conn, client_id, now, reason=f"client {client_id} lost (no heartbeat)")

    def counts(self) -> dict[str, int]:
        now = now_us()
        with self.db.read() as conn:
            rows = conn.execute(select(clients).where(clients.c.deleted_at == 0)).all()
            held = self._held(conn, [r.id for r in rows])
        tally = {"total": len(rows), **{status.value: 0 for status in ClientStatus}}
        for row in rows:
            tally[client_status(row, now, self.ttl_us, bool(held.get(row.id)))] += 1
        tally["idle"] = tally["online"]
        return tally

    # ---- client groups and tokens -------------------------------------------------------------

    def group_create(self, name: str) -> dict[str, Any]:
        if not re.match(GROUP_PATTERN, name):
            raise BadRequest("client group names are 1-128 letters, digits, '.', '_' or '-'")
        now = now_us()
        token = self._new_token(name)
        with self.db.write() as conn:
            if conn.execute(select(clientgroups.c.id).where(clientgroups.c.name == name)).first():
                raise Conflict(f"client group {name!r} already exists")
            group_id = str(uuid.uuid4())
            conn.execute(
                insert(clientgroups).values(
                    id=group_id, name=name, token_hash=_hash_token(token), created=now
                )
            )
        return {"id": group_id, "name": name, "token": token, "created_on": format_us(now)}

    def group_list(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(select(clientgroups).order_by(clientgroups.c.name)).all()
        return [self._group_doc(r) for r in rows]

    def group_get(self, ref: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._group_doc(self._group_row(conn, ref))

    def group_delete(self, ref: str) -> str:
        with self.db.write() as conn:
            row = self._group_row(conn, ref)
            conn.execute(delete(clientgroups).where(clientgroups.c.id == row.id))
        return f"client group deleted: {row.name}"

    def group_new_token(self, ref: str) -> dict[str, Any]:
        with self.db.write() as conn:
            row = self._group_row(conn, ref)
            token = self._new_token(row.name)
            conn.execute(
                update(clientgroups).where(clientgroups.c.id == row.id).values(token_hash=_hash_token(token))
            )
        return {**self._group_doc(row), "token": token}

    def group_revoke_token(self, ref: str) -> str:
        with self.db.write() as conn:
            row = self._group_row(conn, ref)
            conn.execute(update(clientgroups).where(clientgroups.c.id == row.id).values(token_hash=None))
        return f"token revoked for client group {row.name}"

    @staticmethod
    def _group_row(conn: Connection, ref: str) -> Any:
        row = conn.execute(
            select(clientgroups).where((clientgroups.c.id == ref) | (clientgroups.c.name == ref))
        ).first()
        if row is None:
            raise NotFound("Not Found")
        return row

    @staticmethod
    def _group_doc(row: Any) -> dict[str, Any]:
        return {
            "id": row.id,
            "name": row.name,
            "has_token": row.token_hash is not None,
            "created_on": format_us(row.created),
        }

    def _new_token(self, group: str) -> str:
        # AWE's token layout, so old tooling that splits on '|' still finds the group name.
        return f"name={group}|id={uuid.uuid4()}|sig={secrets.token_urlsafe(48)}"

    def check_token(self, token: str | None, group: str | None, *, required: bool) -> None:
        """Verify a ``CG_TOKEN`` for a worker call on behalf of ``group``.

        Without a token the call passes unless client authentication is required; a token that is
        given must always be valid and belong to the client's group.
        """
        if not token:
            if required:
                raise Unauthorized("No Authorization")
            return
        with self.db.read() as conn:
            name = conn.execute(
                select(clientgroups.c.name).where(clientgroups.c.token_hash == _hash_token(token))
            ).scalar_one_or_none()
        if name is None:
            raise Unauthorized("Invalid clientgroup token")
        if group is not None and name != group:
            raise Unauthorized("Clientgroup name in token does not match that in the client.")

    def token_group(self, token: str) -> str | None:
        """The group a clientgroup token belongs to, or None for an unknown token."""
        with self.db.read() as conn:
            name = conn.execute(
                select(clientgroups.c.name).where(clientgroups.c.token_hash == _hash_token(token))
            ).scalar_one_or_none()
        return str(name) if name is not None else None

    def group_of(self, client_id: str) -> str | None:
        with self.db.read() as conn:
            return conn.execute(
                select(clients.c.group_name).where(clients.c.id == client_id)
            ).scalar_one_or_none()


def ensure_cluster_id(db: Database) -> str:
    """The installation's id, created once: stable across restarts and shared by every server."""
    try:
        with db.write() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == "cluster_id")).scalar_one_or_none()
            if value is None:
                value = str(uuid.uuid4())
                conn.execute(insert(meta).values(key="cluster_id", value=value))
            return str(value)
    except IntegrityError:  # another server created it first
        with db.read() as conn:
            return str(conn.execute(select(meta.c.value).where(meta.c.key == "cluster_id")).scalar_one())


def _skip_lists(conn: Connection, client_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each client's workunits to skip (``skip_work``), for a list of clients in one query."""
    skips: dict[str, list[str]] = {}
    if client_ids:
        for row in conn.execute(
            select(client_skip_work.c.client_id, client_skip_work.c.workunit_id).where(
                client_skip_work.c.client_id.in_(list(client_ids))
            )
        ):
            skips.setdefault(row.client_id, []).append(row.workunit_id)
    return skips


__all__ = ["ClientStore", "Profile", "client_status", "ensure_cluster_id", "parse_profile"]
