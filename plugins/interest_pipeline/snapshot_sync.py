"""Bring an older snapshot generation up to the live warehouse by copying what changed.

Copying the whole warehouse file each run costs time and disk that grow with history (1.6 GB
after a year of a small shop). Most of the warehouse is partitioned by interval: an hourly run
for [s, e) only replaces the rows of its interval (``interval_start = s``, or versions
``as_of = e``), and a backfill or late hour recomputes later intervals, never earlier ones. So
an older generation (published two runs ago) is brought up to date by:

- **the runs it has not seen**: ``pipeline_runs`` rows (interval_start, recorded_at) in one
  file and not the other; the earliest of their intervals is ``dirty_from``;
- **partitioned tables** (:data:`PARTITIONED`): the rows with key ``>= dirty_from`` are
  replaced from the live file (nothing, when no run is new);
- **immutable rows by key** (:data:`BY_KEY`, text embeddings): missing keys inserted, gone
  ones deleted;
- **everything else** (the catalogue, statistics, rankers, small state): copied whole; a table
  whose columns changed is recreated; views are recreated when their SQL differs.

All of it in one transaction, checked at the end by every table's row count against the live
file: any difference (a write no run recorded) rolls back, and the caller copies the whole
file instead. Erasure and rebuild rewrite history, so they always publish a whole copy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

# (schema, table) -> the column an hourly run partitions it by.
PARTITIONED = {
    ("raw", "event_lines"): "interval_start",
    ("raw", "item_lines"): "interval_start",
    ("raw", "landing_files"): "interval_start",
    ("main", "stg_landing__events"): "interval_start",
    ("main", "stg_landing__items"): "interval_start",
    ("main", "quarantine"): "interval_start",
    ("main", "user_item_interactions"): "interval_start",
    ("main", "pipeline_runs"): "interval_start",
    ("main", "user_interest_vectors"): "as_of",
    ("main", "user_social_vectors"): "as_of",
    ("main", "recommendations"): "as_of",
    ("main", "new_user_recommendations"): "as_of",
}
# (schema, table) -> key columns of rows that are written once and never changed.
BY_KEY = {("main", "text_embeddings"): ("model_id", "text_hash")}


# The live file's name inside the generation's connection (never a file's own catalogue name,
# which DuckDB derives from the file name).
_SOURCE = "_publish_source"


class SyncMismatchError(RuntimeError):
    """The synced generation does not match the live file (the caller copies it whole)."""


def sync_generation(generation: Path, live: Path) -> bool:
    """Bring ``generation`` (an earlier copy of ``live``) up to ``live``; False if it cannot
    be (locked by a reader, or the result would differ: the caller then copies the file)."""
    import duckdb

    try:
        con = duckdb.connect(str(generation))
    except (duckdb.IOException, duckdb.ConnectionException) as exc:
        # A reader (another process's lock, or this process's own read-only connection).
        log.info("snapshot generation %s is in use (%s): copying the whole file", generation, exc)
        return False
    try:
        try:
            con.execute(f"attach '{live}' as {_SOURCE} (read_only)")
        except duckdb.Error as exc:
            # e.g. this process has the live file open already (DuckDB allows one
            # configuration per file per process): the whole copy does not need to open it.
            log.info("cannot attach %s for a snapshot sync (%s): copying the whole file",
                     live, exc)
            return False
        here = con.execute("select current_database()").fetchone()[0]  # type: ignore[index]
        con.execute("begin transaction")
        try:
            copied = _sync(con, here)
        except (SyncMismatchError, duckdb.Error) as exc:
            con.execute("rollback")
            log.info("snapshot sync of %s failed (%s): copying the whole file", generation, exc)
            return False
        con.execute("commit")
        con.execute(f"detach {_SOURCE}")
        con.execute("checkpoint")
        log.info("snapshot generation %s synced: %s", generation, copied)
        return True
    finally:
        con.close()


def _sync(con: duckdb.DuckDBPyConnection, here: str) -> dict[str, int]:
    """Every table and view of ``live`` into the catalogue ``here``; rows copied per table."""
    live_tables = _columns(con, _SOURCE)
    here_tables = _columns(con, here)
    dirty_from = _dirty_from(con, here) if ("main", "pipeline_runs") in here_tables else None
    copied: dict[str, int] = {}
    # Views that differ go first: a dbt model may have turned from a view into a table.
    _drop_changed_views(con, here)
    for (schema, table), columns in live_tables.items():
        name = f'"{schema}"."{table}"'
        src, dst = f"{_SOURCE}.{name}", f'"{here}".{name}'
        con.execute(f'create schema if not exists "{here}"."{schema}"')
        if here_tables.get((schema, table)) != columns:
            con.execute(f"create or replace table {dst} as select * from {src}")
            copied[f"{schema}.{table}"] = -1  # recreated
            continue
        key = PARTITIONED.get((schema, table))
        keys = BY_KEY.get((schema, table))
        if key is not None and ("main", "pipeline_runs") in here_tables:
            if dirty_from is None:
                continue
            con.execute(f"delete from {dst} where {key} >= ?", [dirty_from])
            con.execute(f"insert into {dst} select * from {src} where {key} >= ?", [dirty_from])
        elif keys is not None:
            using = ", ".join(keys)
            con.execute(f"delete from {dst} where ({using}) not in (select ({using}) from {src})")
            con.execute(f"insert into {dst} select * from {src} anti join {dst} using ({using})")
        else:
            con.execute(f"delete from {dst}")
            con.execute(f"insert into {dst} select * from {src}")
        copied[f"{schema}.{table}"] = 1
    for schema, table in here_tables.keys() - live_tables.keys():
        con.execute(f'drop table "{here}"."{schema}"."{table}"')
    _sync_views(con, here)
    for schema, table in live_tables:
        name = f'"{schema}"."{table}"'
        (n_live,), (n_here,) = (
            con.execute(f"select count(*) from {db}.{name}").fetchone()  # type: ignore[misc]
            for db in (_SOURCE, f'"{here}"')
        )
        if n_live != n_here:
            raise SyncMismatchError(f"{schema}.{table}: {n_here} rows, live has {n_live}")
    return copied


def _columns(con: duckdb.DuckDBPyConnection, catalog: str) -> dict[tuple[str, str], list]:
    """Base tables of a catalogue: (schema, table) -> [(column, type)] in order."""
    rows = con.execute(
        """
        select c.table_schema, c.table_name, list((c.column_name, c.data_type)
            order by c.ordinal_position)
        from information_schema.columns as c
        inner join information_schema.tables as t
            using (table_catalog, table_schema, table_name)
        where c.table_catalog = ? and t.table_type = 'BASE TABLE'
        group by 1, 2
        """,
        [catalog],
    ).fetchall()
    return {(schema, table): cols for schema, table, cols in rows}


def _dirty_from(con: duckdb.DuckDBPyConnection, here: str):  # noqa: ANN202 (datetime | None)
    """The earliest interval of a run one file has recorded and the other has not."""
    (earliest,) = con.execute(  # type: ignore[misc]
        f"""
        select min(interval_start) from (
            (select interval_start, recorded_at from {_SOURCE}.main.pipeline_runs
             except select interval_start, recorded_at from "{here}".main.pipeline_runs)
            union all
            (select interval_start, recorded_at from "{here}".main.pipeline_runs
             except select interval_start, recorded_at from {_SOURCE}.main.pipeline_runs)
        )
        """
    ).fetchone()
    return earliest


def _views(con: duckdb.DuckDBPyConnection, here: str) -> tuple[dict, dict]:
    """(live views, this file's views): (schema, name) -> SQL."""
    views = {
        (db, schema, name): sql
        for db, schema, name, sql in con.execute(
            "select database_name, schema_name, view_name, sql from duckdb_views() "
            "where not internal and database_name in (?, ?)",
            [_SOURCE, here],
        ).fetchall()
    }
    live = {(s, n): sql for (db, s, n), sql in views.items() if db == _SOURCE}
    mine = {(s, n): sql for (db, s, n), sql in views.items() if db == here}
    return live, mine


def _drop_changed_views(con: duckdb.DuckDBPyConnection, here: str) -> None:
    live, mine = _views(con, here)
    for (schema, name), sql in mine.items():
        if live.get((schema, name)) != sql:
            con.execute(f'drop view "{here}"."{schema}"."{name}"')


def _sync_views(con: duckdb.DuckDBPyConnection, here: str) -> None:
    """Views as in the live file (dbt's staging views, ``current_user_interest``)."""
    live, mine = _views(con, here)
    for (schema, name), sql in live.items():
        if (schema, name) in mine:
            continue
        con.execute(f'use "{here}"."{schema}"')
        con.execute(sql)
        con.execute(f'use "{here}".main')
