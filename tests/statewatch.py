"""Watch every write of a state column, on SQLite and PostgreSQL, with database triggers.

``install(db)`` adds a ``state_log`` table and triggers that append a row for each new job, task,
workunit and client and for each change of its state (a client's state is derived from ``deleted_at``
and ``suspended``, as ``store.transitions.client_state`` does). Triggers see every statement, whoever
runs it (SQLAlchemy Core, text SQL, psycopg directly) and every intermediate state of a transaction, so
``illegal(db)`` finds any write the transition table does not allow, however it was made.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from perdure.states import (
    INITIAL_STATES,
    TRANSITIONS,
    ClientState,
    JobState,
    TaskState,
    WorkunitState,
)
from perdure.store.database import Database

MACHINES: dict[str, type[JobState | TaskState | WorkunitState | ClientState]] = {
    "jobs": JobState,
    "tasks": TaskState,
    "workunits": WorkunitState,
    "clients": ClientState,
}


def _client_state(row: str) -> str:
    return (
        f"CASE WHEN {row}.deleted_at <> 0 THEN 'deleted' WHEN {row}.suspended THEN 'suspended'"
        " ELSE 'active' END"
    )


def _state(table: str, row: str) -> str:
    return _client_state(row) if table == "clients" else f"{row}.state"


@dataclass(frozen=True)
class Move:
    """One logged write: ``old`` is None for a new row."""

    seq: int
    table: str
    row_id: str
    old: str | None
    new: str

    @property
    def machine(self) -> type[JobState | TaskState | WorkunitState | ClientState]:
        return MACHINES[self.table]

    @property
    def legal(self) -> bool:
        machine = self.machine
        if self.new not in {s.value for s in machine}:
            return False
        if self.old is None:
            return machine(self.new) is INITIAL_STATES[machine]
        if self.old not in {s.value for s in machine}:
            return False
        return (machine, machine(self.old), machine(self.new)) in TRANSITIONS

    def __str__(self) -> str:
        return f"{self.machine.__name__} {self.row_id}: {self.old or '(new)'} -> {self.new}"


def install(db: Database) -> None:
    postgres = db.dialect == "postgresql"
    with db.write() as conn:
        key = "BIGSERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
        columns = "tbl TEXT NOT NULL, row_id TEXT NOT NULL, old TEXT, new TEXT"
        conn.execute(text(f"CREATE TABLE state_log (seq {key}, {columns})"))
        for table in MACHINES:
            changed = f"({_state(table, 'OLD')}) IS DISTINCT FROM ({_state(table, 'NEW')})"
            if postgres:
                for op, old in (("INSERT", "NULL"), ("UPDATE", _state(table, "OLD"))):
                    function = f"log_{table}_{op.lower()}"
                    conn.execute(
                        text(
                            f"CREATE FUNCTION {function}() RETURNS trigger AS $$ BEGIN "
                            f"INSERT INTO state_log (tbl, row_id, old, new) "
                            f"VALUES ('{table}', NEW.id, {old}, {_state(table, 'NEW')}); RETURN NULL; END "
                            "$$ LANGUAGE plpgsql"
                        )
                    )
                    when = f" WHEN ({changed})" if op == "UPDATE" else ""
                    conn.execute(
                        text(
                            f"CREATE TRIGGER {function} AFTER {op} ON {table} FOR EACH ROW{when} "
                            f"EXECUTE FUNCTION {function}()"
                        )
                    )
            else:
                conn.execute(
                    text(
                        f"CREATE TRIGGER log_{table}_insert AFTER INSERT ON {table} BEGIN "
                        f"INSERT INTO state_log (tbl, row_id, old, new) "
                        f"VALUES ('{table}', NEW.id, NULL, {_state(table, 'NEW')}); END"
                    )
                )
                conn.execute(
                    text(
                        f"CREATE TRIGGER log_{table}_update AFTER UPDATE ON {table} "
                        f"WHEN ({_state(table, 'OLD')}) IS NOT ({_state(table, 'NEW')}) BEGIN "
                        f"INSERT INTO state_log (tbl, row_id, old, new) "
                        f"VALUES ('{table}', NEW.id, {_state(table, 'OLD')}, {_state(table, 'NEW')}); END"
                    )
                )


def moves(db: Database, after: int = 0) -> list[Move]:
    with db.read() as conn:
        rows = conn.execute(
            text("SELECT seq, tbl, row_id, old, new FROM state_log WHERE seq > :after ORDER BY seq"),
            {"after": after},
        ).all()
    return [Move(int(r.seq), r.tbl, r.row_id, r.old, r.new) for r in rows]


def illegal(db: Database, after: int = 0) -> list[str]:
    """Every logged write the transition table does not allow, described."""
    return [str(move) for move in moves(db, after) if not move.legal]


def last_seq(db: Database) -> int:
    log = moves(db)
    return log[-1].seq if log else 0


__all__ = ["MACHINES", "Move", "illegal", "install", "last_seq", "moves"]
