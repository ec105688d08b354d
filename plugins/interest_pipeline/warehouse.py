"""The DuckDB warehouse: connections, the tables the Python stages own, vector conversions.

dbt owns the staging/marts tables; this module owns the raw landing copies and the tables that
need Python (embeddings, versioned user vectors, recommendations, run stats).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

_LINE_TABLE_COLUMNS = """
    interval_start timestamp not null,
    interval_end timestamp not null,
    source_file varchar not null,
    line_number integer not null,
    line varchar,
    loaded_at timestamp not null,
    read_problem varchar        -- why the reader could not take the line as landed, if so
"""

# No primary keys: DuckDB checks them eagerly, so the delete + insert that replaces an
# interval inside one transaction could trip them; uniqueness is asserted by the tests.
SCHEMA_DDL = f"""
create schema if not exists raw;
create table if not exists raw.event_lines ({_LINE_TABLE_COLUMNS});
create table if not exists raw.item_lines ({_LINE_TABLE_COLUMNS});
-- Warehouses made before the reader recorded its problems.
alter table raw.event_lines add column if not exists read_problem varchar;
alter table raw.item_lines add column if not exists read_problem varchar;
-- One row per part file read: a damaged file is quarantined from here (read_problem).
create table if not exists raw.landing_files (
    interval_start timestamp not null,
    interval_end timestamp not null,
    source_kind varchar not null,
    source_file varchar not null,
    size_bytes bigint not null,
    lines_read bigint not null,
    read_problem varchar,
    loaded_at timestamp not null,
    lines_erased bigint             -- lines of erased users dropped before they were stored
);
alter table raw.landing_files add column if not exists lines_erased bigint;

create table if not exists text_embeddings (
    model_id varchar not null,
    text_hash varchar not null,
    text varchar not null,
    embedding float[] not null
);

create table if not exists user_interest_vectors (
    user_id varchar not null,
    as_of timestamp not null,
    model_id varchar not null,
    vector float[] not null,
    -- unnormalised decayed sum as of as_of: the next version folds new events into it
    state float[] not null,
    events_in_interval integer not null,
    event_count bigint not null,
    last_event_at timestamp not null
);

-- The social component of each user's interest (interest_pipeline.social): a version per
-- user whose followees' interest or follows changed in the interval.
create table if not exists user_social_vectors (
    user_id varchar not null,
    as_of timestamp not null,              -- the interval end it was computed at
    model_id varchar not null,
    vector float[],                        -- unit length; null: no followee has an interest
    followees integer not null             -- followees with an interest vector by as_of
);

create or replace view current_user_interest as
select * exclude (rn)
from (
    select
        *,
        row_number() over (partition by user_id, model_id order by as_of desc) as rn
    from user_interest_vectors
)
where rn = 1;

create table if not exists recommendations (
    user_id varchar not null,
    as_of timestamp not null,
    rank integer not null,
    item_id varchar not null,
    score double not null,
    model_id varchar not null,
    evidence json not null,
    ranker_version varchar            -- the rankers row (or 'default') that scored it
);
-- Warehouses made before the fitted ranker.
alter table recommendations add column if not exists ranker_version varchar;

create table if not exists pipeline_runs (
    interval_start timestamp not null,
    interval_end timestamp not null,
    event_lines_landed bigint not null,
    item_lines_landed bigint not null,
    events_in bigint not null,
    duplicates bigint not null,
    quarantined bigint not null,                -- lines; a damaged file's row is not a line
    items_upserted bigint not null,
    texts_embedded bigint not null,
    users_updated bigint not null,
    recommendations_written bigint not null,
    ingest_seconds double,
    dbt_seconds double,
    embed_seconds double,
    fold_seconds double,
    recommend_seconds double,
    evaluate_seconds double,
    model_id varchar not null,
    code_version varchar not null,
    recorded_at timestamp not null
);
-- Warehouses made before file-level quarantine.
alter table pipeline_runs add column if not exists files_quarantined bigint;
-- ... and before erasure (lines of erased users dropped at ingest).
alter table pipeline_runs add column if not exists lines_erased bigint;

"""

_LOCK_MARKERS = ("Could not set lock", "Conflicting lock")

# A read-only connection runs users' SQL (`interest sql`) and serves outputs, so `read_only`
# alone is not enough: it still lets `attach … (read_write)`, `copy … to`, `export database`,
# `read_csv('/etc/passwd')` and extension loads through. These settings close every door but
# the opened database, and `lock_configuration` stops a query from `set`-ting them back.
READ_ONLY_CONFIG: dict[str, str | bool] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "lock_configuration": True,
}


def connect(
    path: Path, read_only: bool = False, wait_seconds: float = 60.0
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting while another process holds the file lock.

    DuckDB allows one writing process per file; a short wait turns a collision between
    two short writers into a delay instead of a failed task. A read-only connection is also
    sandboxed (:data:`READ_ONLY_CONFIG`): it can read this database and nothing else.
    """
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            con.execute("set TimeZone = 'UTC'")  # loads icu first: it cannot load once locked
            if read_only:
                # lock_configuration last: it freezes the settings before it.
                for name, value in READ_ONLY_CONFIG.items():
                    con.execute(f"set {name} = {str(value).lower()}")
            return con
        except duckdb.IOException as exc:
            if not any(m in str(exc) for m in _LOCK_MARKERS) or time.monotonic() > deadline:
                raise
            log.info("warehouse %s is locked by another process; retrying", path)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@contextmanager
def open_warehouse(path: Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Connection context that always closes (so dbt, a separate process, can take the lock)."""
    con = connect(path, read_only=read_only)
    try:
        if not read_only:
            con.execute(SCHEMA_DDL)
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction: an interval's delete + insert commit together or not at all."""
    con.execute("begin transaction")
    try:
        yield
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


@contextmanager
def atomic(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Like :func:`transaction`, or part of the caller's transaction when one is open (DuckDB
    has no nested transactions: the outer one commits or rolls back everything)."""
    # Each autocommitted statement gets a new transaction id; two reads inside an open
    # transaction see the same one. (A BEGIN inside a transaction would abort it.)
    ids = [con.execute("select txid_current()").fetchone()[0] for _ in range(2)]  # type: ignore[index]
    if ids[0] == ids[1]:
        yield
        return
    with transaction(con):
        yield


def fetch_one(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | dict[str, Any] | None = None
) -> tuple | None:
    """First row of a query, fully fetched.

    DuckDB 2.0 keeps a partly fetched ``execute()`` result open and refuses other work on the
    connection until it is exhausted, so ``fetchone()`` followed by another statement fails.
    """
    rows = con.execute(sql, params if params is not None else []).fetchall()
    return rows[0] if rows else None


def database_path(con: duckdb.DuckDBPyConnection) -> str | None:
    """The file of the connection's current database; None for an in-memory one (which has
    no identity a process-wide memo could key on)."""
    ((path,),) = con.execute(
        "select path from duckdb_databases() where database_name = current_database()"
    ).fetchall()
    return None if not path or path == ":memory:" else path


def table_exists(con: duckdb.DuckDBPyConnection, name: str, schema: str = "main") -> bool:
    """True if a table or view exists (dbt marts do not before the first dbt build)."""
    row = fetch_one(
        con,
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, name],
    )
    return bool(row and row[0])


def query_arrow(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | dict[str, Any] | None = None
) -> pa.Table:
    """Run a query and return its full result as an Arrow table."""
    return con.sql(sql, params=params if params is not None else []).to_arrow_table()


def vectors_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """A list<float> Arrow column -> (n, dim) float32 matrix."""
    import numpy as np
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1)


def numpy_to_vectors(matrix: np.ndarray) -> pa.Array:
    """(n, dim) matrix -> Arrow list<float> array (DuckDB reads it as FLOAT[])."""
    import numpy as np
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, dim = matrix.shape
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dim)
    return fixed.cast(pa.list_(pa.float32()))


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Insert an Arrow table by column name."""
    if rows.num_rows == 0:
        return
    con.register("_rows_to_insert", rows)
    try:
        cols = ", ".join(rows.column_names)
        con.execute(f"insert into {table} ({cols}) select {cols} from _rows_to_insert")
    finally:
        con.unregister("_rows_to_insert")
