"""Shock-compatible nodes: the store side of ``api/shock.py``.

AWE's server creates a Shock node for every task output when the task is queued (a ``parts`` node of
N parts when the task has N workunits), hands the worker ``host`` + ``node``, and the worker uploads
with ``PUT <host>/node/<node>``; a downstream task gets the same node as its input and, when it is
split, downloads ``?download&index=<idx>&part=<a-b>``. Perdure keeps the bytes where its own worker
puts them (the ``outputs`` rows of the task and file, one per rank, in the data store); a node is
the name an AWE worker uses for them, with the indexes built on it.

A node id is a random UUID (Shock's form, which AWE's worker insists on), bound to one job, task and
file. The split of a task's input is stored on the input node as an index whose units are exactly
the parts ``split.split_ranges`` cut, so that rank r's ``part`` (AWE's ``Workunit.Part()``, with
``totalindex`` = the number of parts) is its own records and nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from perdure.datastore import BlobStore, ConcatReader
from perdure.errors import BadRequest, Forbidden, NotFound
from perdure.split import MB, record_kind, record_offsets, split_ranges
from perdure.states import WorkunitState
from perdure.store import outputs
from perdure.store.bulkinsert import insert_rows
from perdure.store.schema import jobs, shock_nodes, tasks, workunits
from perdure.timeutil import format_us

#: The index AWE's server asks Shock for by default (awe.md §1.5); Perdure's split is stored under it.
SPLIT_INDEX = "chunkrecord"
#: Index types ``PUT /node/<id>/index/<type>`` builds: every line, every record (FASTA/FASTQ entries,
#: else lines), fixed 1 MiB byte chunks, and 1 MiB chunks cut on record boundaries.
INDEX_TYPES = ("line", "record", "size", "chunkrecord")

Part = dict[str, Any]
Plan = list[tuple[int, Part | None, int]]


@dataclass(frozen=True)
class ShockNode:
    id: str
    job_id: str
    task_id: str
    filename: str
    parts: int
    indexes: dict[str, Any]
    attributes: Any
    created: int


def _node(row: Any) -> ShockNode:
    return ShockNode(
        id=row.id,
        job_id=row.job_id,
        task_id=row.task_id,
        filename=row.filename,
        parts=row.parts,
        indexes=dict(row.indexes or {}),
        attributes=row.attributes,
        created=row.created,
    )


def is_node_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def get(conn: Connection, node_id: str) -> ShockNode:
    if not is_node_id(node_id):
        raise NotFound("Node not found")
    row = conn.execute(select(shock_nodes).where(shock_nodes.c.id == node_id.lower())).one_or_none()
    if row is None:
        raise NotFound("Node not found")
    return _node(row)


def _of_output(conn: Connection, task_id: str, filename: str) -> ShockNode | None:
    row = conn.execute(
        select(shock_nodes)
        .where(shock_nodes.c.task_id == task_id, shock_nodes.c.filename == filename)
        .order_by(shock_nodes.c.created.desc())
        .limit(1)
    ).one_or_none()
    return None if row is None else _node(row)


_INSERT_NODES = insert(shock_nodes)


def _node_row(job_id: str, task_id: str, filename: str, parts: int, now: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "job_id": job_id,
        "task_id": task_id,
        "filename": filename,
        "parts": parts,
        "indexes": {},
        "attributes": None,
        "created": now,
    }


def _create(conn: Connection, job_id: str, task_id: str, filename: str, parts: int, now: int) -> str:
    row = _node_row(job_id, task_id, filename, parts, now)
    conn.execute(_INSERT_NODES, row)
    return str(row["id"])


def needs_nodes(spec: Mapping[str, Any]) -> bool:
    """Whether a task being queued gets Shock nodes: it has outputs, or inputs from another task."""
    return bool(spec.get("outputs")) or any(io.get("origin") for io in spec.get("inputs", []))


def output_nodes(
    job_id: str, task_id: str, spec: Mapping[str, Any], totalwork: int, now: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A fresh node for every output of a task being queued with ``totalwork`` workunits: the spec
    naming them, and the rows to insert (``insert_nodes``)."""
    parts = totalwork if totalwork > 1 else 0
    rows = [_node_row(job_id, task_id, io["filename"], parts, now) for io in spec.get("outputs", [])]
    new_outputs = [{**io, "node": row["id"]} for io, row in zip(spec.get("outputs", []), rows, strict=True)]
    return {**spec, "outputs": new_outputs}, rows


def insert_nodes(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    insert_rows(conn, shock_nodes, rows)


# ---- at enqueue -----------------------------------------------------------------------------------


def prepare_task(
    conn: Connection,
    job_id: str,
    task_id: str,
    spec: Mapping[str, Any],
    plan: Plan,
    maxworksize: int,
    blobs: BlobStore | None,
    now: int,
) -> Plan:
    """Give a task being queued its Shock nodes, as AWE's server does at enqueue: a fresh node for
    every output (a parts node when it has several workunits; those of an earlier run are dropped),
    the node of the producing task's output for every input with an ``origin``, and, for a split
    task, AWE's ``PartInfo`` in each workunit's part with the split stored as an index of the input
    node. Writes the node ids into the task's spec; returns the plan with its parts rewritten."""
    if not needs_nodes(spec):
        return plan  # no node to make or to find: spare the task's submit two statements
    conn.execute(delete(shock_nodes).where(shock_nodes.c.task_id == task_id))
    new_spec, rows = output_nodes(job_id, task_id, spec, len(plan), now)
    insert_nodes(conn, rows)
    input_nodes: dict[str, str] = {}
    new_inputs = []
    for io in spec.get("inputs", []):
        if io.get("origin"):
            origin_task = f"{job_id}_{io['origin']}"
            node = _of_output(conn, origin_task, io["filename"])
            node_id = node.id if node else _create(conn, job_id, origin_task, io["filename"], 0, now)
            input_nodes[io["filename"]] = node_id
            io = {**io, "node": node_id}
        new_inputs.append(io)
    new_spec["inputs"] = new_inputs
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(spec=new_spec))
    return _with_part_info(conn, plan, input_nodes, maxworksize, now)


def prepare_new_task(
    job_id: str, task_id: str, spec: Mapping[str, Any], totalwork: int, now: int
) -> tuple[Mapping[str, Any], list[dict[str, Any]]]:
    """``prepare_task`` for a task queued as its job is submitted: it has no input from another task
    (that would be a dependency) and no nodes yet, so nothing is read or deleted. Returns its spec
    and the node rows, which the submit inserts with the others of the job (``insert_nodes``)."""
    if not needs_nodes(spec):
        return spec, []
    if any(io.get("origin") for io in spec.get("inputs", [])):
        raise ValueError(f"task {task_id} reads another task's output: it cannot be queued at submit")
    new_spec, rows = output_nodes(job_id, task_id, spec, totalwork, now)
    new_spec["inputs"] = list(spec.get("inputs", []))
    return new_spec, rows


def _with_part_info(
    conn: Connection, plan: Plan, input_nodes: Mapping[str, str], maxworksize: int, now: int
) -> Plan:
    split = [part for _, part, _ in plan if part is not None]
    if not split:
        return plan
    split_input = str(split[0]["input"])
    node_id = input_nodes.get(split_input)
    if node_id is None:
        return plan
    units = [[int(p["offset"]), int(p["length"])] for p in split]
    name = _store_split_index(conn, get(conn, node_id), units, now)
    info = {"index": name, "totalindex": len(units), "maxpartsize_mb": maxworksize}
    return [(rank, None if part is None else {**part, **info}, size) for rank, part, size in plan]


def _store_split_index(conn: Connection, node: ShockNode, units: list[list[int]], now: int) -> str:
    """Under ``chunkrecord`` unless another split of the node took that name: then ``chunkrecord-2``…"""
    name, n = SPLIT_INDEX, 1
    while name in node.indexes and node.indexes[name].get("units") != units:
        n += 1
        name = f"{SPLIT_INDEX}-{n}"
    indexes = {**node.indexes, name: _index_info(units, now)}
    conn.execute(update(shock_nodes).where(shock_nodes.c.id == node.id).values(indexes=indexes))
    return name


def _index_info(units: Sequence[Sequence[int]], now: int, *, keep_units: bool = True) -> dict[str, Any]:
    total = len(units)
    info: dict[str, Any] = {
        "total_units": total,
        "average_unit_size": sum(u[1] for u in units) // total if total else 0,
        "created_on": format_us(now),
    }
    if keep_units:
        info["units"] = [list(u) for u in units]
    return info


# ---- uploads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadTarget:
    node: ShockNode
    rank: int
    workunit_id: str
    blob_key: str


def check_upload_lease(
    conn: Connection, node: ShockNode, rank: int, *, client_id: str | None, credential: str | None
) -> UploadTarget:
    """Accept an upload to ``node`` only for a workunit that is checked out right now.

    AWE's worker names no client on a Shock call, so the upload is bound to the lease of the
    workunit the node and rank name (the task's workunit of that rank must be checked out; given
    ``?client=``, by that client), and, when the job has a data token, to that token (AWE's worker
    sends it as ``Authorization: OAuth <token>``: ``credential`` is that header). Kept apart so
    that lease-bound data tokens can replace it in one place."""
    if node.parts == 0 and rank != 0:
        raise BadRequest(f"node {node.id} is a basic node: upload the file in the field 'upload'")
    if node.parts > 0 and not 1 <= rank <= node.parts:
        raise BadRequest(f"node {node.id} has parts 1-{node.parts}: there is no part {rank}")
    wu_id = f"{node.task_id}_{rank}"
    row = conn.execute(
        select(workunits.c.state, workunits.c.client_id, tasks.c.taskid, jobs.c.datatoken)
        .join(tasks, tasks.c.id == workunits.c.task_id)
        .join(jobs, jobs.c.id == workunits.c.job_id)
        .where(workunits.c.id == wu_id)
    ).one_or_none()
    if row is None or row.state != WorkunitState.CHECKOUT or not row.client_id:
        raise Forbidden(f"workunit {wu_id} is not checked out: node {node.id} takes no upload for it")
    if client_id is not None and row.client_id != client_id:
        raise Forbidden(f"workunit {wu_id} is not checked out by client {client_id}")
    if row.datatoken and not _is_token(credential or "", row.datatoken):
        raise Forbidden(f"node {node.id} needs the job's data token")
    key = outputs.blob_key(node.job_id, row.taskid, rank, node.filename)
    return UploadTarget(node=node, rank=rank, workunit_id=wu_id, blob_key=key)


def check_any_lease(conn: Connection, node: ShockNode) -> None:
    """Before the bytes of an upload to a parts node arrive (its rank is in the body): some workunit
    of the node's task must be checked out, or nobody may upload to it."""
    leased = conn.execute(
        select(workunits.c.id)
        .where(workunits.c.task_id == node.task_id, workunits.c.state == WorkunitState.CHECKOUT.value)
        .limit(1)
    ).first()
    if leased is None:
        raise Forbidden(f"no workunit of task {node.task_id} is checked out: node {node.id} takes no upload")


def _is_token(authorization: str, token: str) -> bool:
    """``<type> <token>`` (AWE's worker: ``OAuth <token>``), or the token alone."""
    return authorization == token or authorization.partition(" ")[2].strip() == token


def record_upload(
    conn: Connection, target: UploadTarget, *, size: int, sha256: str, attributes: Any, now: int
) -> None:
    outputs.record(
        conn,
        job_id=target.node.job_id,
        task_id=target.node.task_id,
        filename=target.node.filename,
        rank=target.rank,
        size=size,
        sha256=sha256,
        key=target.blob_key,
        now=now,
    )
    record_attributes(conn, target.node, attributes)


def record_attributes(conn: Connection, node: ShockNode, attributes: Any) -> None:
    if attributes is not None:
        conn.execute(update(shock_nodes).where(shock_nodes.c.id == node.id).values(attributes=attributes))


# ---- reading --------------------------------------------------------------------------------------


def stored_parts(conn: Connection, node: ShockNode) -> list[Any]:
    return outputs.parts(conn, node.task_id, node.filename)


def is_complete(node: ShockNode, parts: Sequence[Any]) -> bool:
    if node.parts == 0:
        return bool(parts)
    return {p.rank for p in parts} >= set(range(1, node.parts + 1))


def document(node: ShockNode, parts: Sequence[Any]) -> dict[str, Any]:
    """Shock's node JSON, every field in the type go-shock-client decodes it into."""
    complete = is_complete(node, parts)
    size = sum(p.size for p in parts) if complete else 0
    checksum = {"sha256": parts[0].sha256} if complete and len(parts) == 1 else {}
    created = format_us(node.created)
    modified = format_us(max([node.created, *(p.created for p in parts)]))
    indexes = {
        name: {k: v for k, v in info.items() if k != "units"} | {"locked": None}
        for name, info in node.indexes.items()
    }
    return {
        "id": node.id,
        "version": "",
        "file": {
            "name": node.filename if complete else "",
            "size": size,
            "checksum": checksum,
            "format": "",
            "virtual": False,
            "virtual_parts": [],
            "created_on": modified if complete else "0001-01-01T00:00:00Z",
            "locked": None,
        },
        "attributes": node.attributes,
        "indexes": indexes,
        "version_parts": {},
        "tags": [],
        "linkage": [],
        "priority": 0,
        "created_on": created,
        "last_modified": modified,
        "expiration": "0001-01-01T00:00:00Z",
        "type": "parts" if node.parts else "basic",
        "parts": None
        if not node.parts
        else {
            "count": node.parts,
            "length": len(parts),
            "varlen": True,
            "parts": [[str(p.rank), p.sha256] for p in parts],
            "compression": "",
        },
    }


def index_units(node: ShockNode, index: str, reader: ConcatReader) -> list[tuple[int, int]]:
    """(offset, length) of every unit of one of the node's indexes: a stored split, else computed
    from the bytes with the record rules of ``split.py``."""
    stored = node.indexes.get(index)
    if stored and "units" in stored:
        return [(int(o), int(n)) for o, n in stored["units"]]
    size = reader.total
    if index == "size":
        return [(offset, min(MB, size - offset)) for offset in range(0, size, MB)]
    if index == "chunkrecord":
        return split_ranges(reader.read_at, size, totalwork=1, maxworksize_mb=1, index="") if size else []
    if index in ("line", "record"):
        kind = "line" if index == "line" else record_kind("", reader.read_at(0, 1))
        starts = record_offsets(reader.read_at, size, kind)
        ends = [*starts[1:], size]
        return [(a, b - a) for a, b in zip(starts, ends, strict=True)]
    raise BadRequest(f"node {node.id} has no index {index!r} (types: {', '.join(INDEX_TYPES)})")


def set_index(
    conn: Connection, node: ShockNode, name: str, units: Sequence[tuple[int, int]], now: int
) -> dict[str, Any]:
    """Record an index built on request (its units are computed again when read)."""
    info = _index_info(units, now, keep_units=False)
    if name in node.indexes and "units" in node.indexes[name]:
        return {k: v for k, v in node.indexes[name].items() if k != "units"}
    conn.execute(
        update(shock_nodes).where(shock_nodes.c.id == node.id).values(indexes={**node.indexes, name: info})
    )
    return info


def part_range(units: Sequence[tuple[int, int]], part: str, index: str) -> tuple[int, int]:
    """(offset, length) of units ``a-b`` (1-based, inclusive) or ``a``; past the last is an error."""
    first_text, dash, last_text = part.partition("-")
    try:
        first = int(first_text)
        last = int(last_text) if dash else first
    except ValueError:
        raise BadRequest(f"part must be a unit number or a range a-b, not {part!r}") from None
    if first < 1 or last < first:
        raise BadRequest(f"invalid part {part!r}: units are numbered from 1 and a range runs upwards")
    if last > len(units):
        raise BadRequest(f"part {part} is beyond the last part ({len(units)}) of index {index!r}")
    offset = units[first - 1][0]
    end = units[last - 1][0] + units[last - 1][1]
    return offset, end - offset


__all__ = [
    "INDEX_TYPES",
    "SPLIT_INDEX",
    "ShockNode",
    "UploadTarget",
    "check_any_lease",
    "check_upload_lease",
    "document",
    "get",
    "index_units",
    "insert_nodes",
    "is_complete",
    "is_node_id",
    "needs_nodes",
    "output_nodes",
    "part_range",
    "prepare_new_task",
    "prepare_task",
    "record_attributes",
    "record_upload",
    "set_index",
    "stored_parts",
]
