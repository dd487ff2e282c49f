"""PostgreSQL table upkeep that a server should not leave to the operator's autovacuum settings.

Plans for pages and look-ups depend on two things autovacuum maintains: planner statistics (without
them PostgreSQL scans ``tasks`` for a page's 25 jobs, or sorts every job for a deep page) and the
visibility map (without it an index-only scan, such as ``count(*)`` for ``total_count`` or a deep
page's walk of the ``(updatetime, id)`` index, visits the table row by row). With autovacuum off (as
on the development machine) both stay empty however large the tables grow. The sweep therefore
checks the hot tables' counters and, past autovacuum's own thresholds (read from the server's
settings, so a tuned server is honoured), runs what autovacuum would: ``ANALYZE`` (sampled, cheap)
and ``VACUUM`` (which also reclaims the dead rows every update leaves). With autovacuum on, whichever
comes first does the work and resets the counters, so nothing is done twice.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

#: The tables every page, look-up and dispatch reads.
HOT_TABLES = ("jobs", "tasks", "workunits")

_DUE = text(
    """
    SELECT s.relname,
        s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
            + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)
            AS analyze_due,
        s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::float8
            + current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0)
        OR coalesce((to_jsonb(s) ->> 'n_ins_since_vacuum')::float8, 0) >
            coalesce(current_setting('autovacuum_vacuum_insert_threshold', true)::float8, 1000)
            + coalesce(current_setting('autovacuum_vacuum_insert_scale_factor', true)::float8, 0.2)
            * greatest(c.reltuples, 0)
            AS vacuum_due
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE s.schemaname = current_schema() AND s.relname = ANY(:tables)
    ORDER BY s.relname
    """
)


def tend_tables(engine: Engine) -> list[str]:
    """Run the ``ANALYZE`` and ``VACUUM`` autovacuum would by now; returns what ran (for the log).

    PostgreSQL only. ``SKIP_LOCKED``: a table another server or autovacuum is already vacuuming is
    left to it rather than waited for."""
    with engine.connect() as conn:
        due = conn.execute(_DUE, {"tables": list(HOT_TABLES)}).all()
        conn.rollback()
    done: list[str] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for row in due:
            if row.vacuum_due:
                conn.exec_driver_sql(f"VACUUM (ANALYZE, SKIP_LOCKED) {row.relname}")
                done.append(f"VACUUM ANALYZE {row.relname}")
            elif row.analyze_due:
                conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {row.relname}")
                done.append(f"ANALYZE {row.relname}")
    return done
