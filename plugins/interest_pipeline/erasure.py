"""Forget users everywhere: every row, every version, the bytes in the file, and for good.

An erasure (``interest forget``, or the manually triggered ``interest_forget`` DAG, which runs
the same :func:`forget_users` in the one-slot writer pool) does, in order:

1. **Rows.** In one transaction, deletes every row that belongs to the users or quotes them:
   rows of every base table with a ``user_id`` or ``target_user_id`` column equal to one of
   them (staged events, interactions, every vector version, recommendations, and whatever such
   table is added later), raw landing lines and quarantine rows whose line is theirs or names
   them (their ``user_id``/``target_user_id``, or the id as a quoted JSON string anywhere in
   the line, which catches lines too broken to parse), and the cached embeddings of their
   query/tag texts that no other user typed and that are not an item's document.
2. **Registry.** Writes a row of ``erasures``: a salted SHA-256 of the user id (never the id),
   when it was requested and completed, the reason, rows deleted per table. Ingest drops any
   later landing line whose user or target hashes to a registered id, before the line is
   stored (counted in ``raw.landing_files.lines_erased`` and ``pipeline_runs.lines_erased``,
   never quarantined), so a backfill or reprocess cannot bring the user back.
3. **Bytes.** DuckDB keeps deleted rows in free blocks until they are overwritten, so the
   warehouse is rewritten into a fresh file (``COPY FROM DATABASE``) that replaces it
   atomically, and the read snapshot is republished from it.
4. **Landing (optional).** With ``purge_landing`` the landing files that held the users' lines
   are rewritten without them: only for a landing zone the pipeline owns (the contract makes
   partitions immutable and the source system's own).

Aggregates need no step of their own: popularity, co-occurrence and the trending list are
computed from the interactions at every run, so they exclude the users from the next run on;
the fitted ranker from the next daily fit; other users' lists are re-scored at their next
version or the daily refresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)

ERASURE_DDL = """
create table if not exists erasure_salt (salt varchar not null);
create table if not exists erasures (
    user_hash varchar not null,        -- hex sha256(salt || user_id); never the id itself
    requested_at timestamp not null,
    completed_at timestamp not null,
    reason varchar,
    rows_deleted json not null,        -- {table: rows} for this user's share of the request
    landing_lines_purged bigint        -- null unless the landing zone was purged
);
"""

# The user a landing line belongs to and the user it names, as SQL over a `line` column: from
# the JSON when it parses, else by pattern (a broken line must not slip through).
_LINE_USER = """coalesce(
    json_extract_string(try_cast(line as json), '$.{field}'),
    regexp_extract(line, '"{field}"\\s*:\\s*"([^"]*)"', 1)
)"""

# dbt tables rebuilt every hour that keep the raw `line` of the last run's hour.
_HOURLY_LINE_TABLES = ("int_event_id_conflicts", "stg_landing__event_lines")


def _hash(salt: str, user_id: str) -> str:
    return hashlib.sha256((salt + user_id).encode("utf-8")).hexdigest()


def _salt(con: duckdb.DuckDBPyConnection, create: bool) -> str | None:
    """The warehouse's erasure salt (made at the first erasure)."""
    con.execute(ERASURE_DDL)
    rows = con.execute("select salt from erasure_salt").fetchall()
    row = rows[0] if rows else None
    if row is None and create:
        salt = secrets.token_hex(16)
        con.execute("insert into erasure_salt values (?)", [salt])
        return salt
    return row[0] if row else None


def erased_positions(con: duckdb.DuckDBPyConnection, lines: pa.Array) -> set[int]:
    """Positions of the landing lines whose user or target is erased (usually none).

    The lines are matched in memory (a registered Arrow array), so an erased user's line is
    never written to the warehouse file, not even to be deleted. Each line is parsed once; only
    the distinct ids are hashed.
    """
    import pyarrow as pa

    from interest_pipeline.warehouse import table_exists

    if not table_exists(con, "erasures") or not con.execute(
        "select count(*) from erasures"
    ).fetchall()[0][0]:
        return set()
    ((salt,),) = con.execute("select salt from erasure_salt").fetchall()
    con.register(
        "_lines_to_check", pa.table({"pos": pa.array(range(len(lines)), pa.int64()), "line": lines})
    )
    try:
        rows = con.execute(
            """
            with ids as materialized (
                select
                    pos,
                    case
                        when json_valid(line)
                            then json_extract_string(line, ['$.user_id', '$.target_user_id'])
                        else [
                            regexp_extract(line, '"user_id"\\s*:\\s*"([^"]*)"', 1),
                            regexp_extract(line, '"target_user_id"\\s*:\\s*"([^"]*)"', 1)
                        ]
                    end as pair
                from _lines_to_check
            ),
            erased as (
                select id from (select distinct unnest(pair) as id from ids)
                where id is not null and id <> ''
                    and sha256($salt || id) in (select user_hash from erasures)
            )
            select pos from ids
            where pair[1] in (select id from erased) or pair[2] in (select id from erased)
            """,
            {"salt": salt},
        ).fetchall()
    finally:
        con.unregister("_lines_to_check")
    return {r[0] for r in rows}


def _user_tables(con: duckdb.DuckDBPyConnection) -> list[tuple[str, list[str]]]:
    """Every base table with a user column: (schema.table, [user columns])."""
    rows = con.execute(
        """
        select c.table_schema, c.table_name, list(c.column_name order by c.column_name)
        from information_schema.columns as c
        inner join information_schema.tables as t
            using (table_catalog, table_schema, table_name)
        where t.table_type = 'BASE TABLE'
            and c.column_name in ('user_id', 'target_user_id')
            and c.table_catalog = current_database()
        group by 1, 2
        order by 1, 2
        """
    ).fetchall()
    return [(f"{schema}.{table}", columns) for schema, table, columns in rows]


def _line_hits(con: duckdb.DuckDBPyConnection, table: str, column: str) -> None:
    """Temp table ``_hits`` (rid, source_file, user_id): the rows of a line table that are a
    line of a user of ``_forget``, or quote one as a JSON string anywhere in the line."""
    user = _LINE_USER.replace("line", column).format(field="user_id")
    target = _LINE_USER.replace("line", column).format(field="target_user_id")
    con.execute(
        f"""
        create or replace temp table _hits as
        with parsed as (
            -- Each line is parsed once, then matched against every user being forgotten.
            select rowid as rid, source_file, {column} as text, {user} as u, {target} as t
            from {table}
            where {column} is not null
        )
        select distinct parsed.rid, parsed.source_file, f.user_id
        from parsed
        inner join _forget as f
            on parsed.u = f.user_id or parsed.t = f.user_id
            or contains(parsed.text, '"' || f.user_id || '"')
        """
    )


def _delete_rows(
    con: duckdb.DuckDBPyConnection, user_ids: list[str]
) -> tuple[dict[str, dict[str, int]], set[str]]:
    """Delete the users' rows everywhere: rows deleted per user and table, landing files hit."""
    from interest_pipeline.warehouse import table_exists

    con.execute(
        "create or replace temp table _forget as select unnest(?::varchar[]) as user_id",
        [user_ids],
    )
    counts: dict[str, dict[str, int]] = {u: {} for u in user_ids}

    def record(table: str, sql: str) -> None:
        for user_id, n in con.execute(sql).fetchall():
            if n:
                counts[user_id][table] = counts[user_id].get(table, 0) + n

    files: set[str] = set()
    if table_exists(con, "user_item_interactions"):
        # Their texts, before the events that hold them go: cached embeddings of texts no
        # other user typed and that are no item's document.
        documents = (
            "union all select document from item_documents"
            if table_exists(con, "item_documents") else ""
        )
        con.execute(
            f"""
            create or replace temp table _texts as
            select distinct user_id, query_text as text
            from user_item_interactions
            where user_id in (select user_id from _forget) and query_text is not null
                and query_text not in (
                    select query_text from user_item_interactions
                    where user_id not in (select user_id from _forget)
                        and query_text is not null
                    {documents}
                )
            """
        )
        record(
            "main.text_embeddings",
            "select t.user_id, count(*) from text_embeddings as e "
            "inner join _texts as t using (text) group by 1",
        )
        con.execute("delete from text_embeddings where text in (select text from _texts)")
    line_tables = [("raw.event_lines", "line"), ("raw.item_lines", "line")]
    if table_exists(con, "quarantine"):
        line_tables.append(("main.quarantine", "raw_line"))
    # A line can quote a user where no user column sees it (a broken line, a follow's target),
    # so the dbt tables that keep the last hour's lines are purged like the raw ones. Only base
    # tables: as a view such a model reads the raw lines, purged above.
    rebuilt = con.execute(
        "select table_name from information_schema.tables where table_schema = 'main' "
        "and table_catalog = current_database() and table_type = 'BASE TABLE' "
        "and list_contains(?, table_name) order by table_name",
        [list(_HOURLY_LINE_TABLES)],
    ).fetchall()
    line_tables += [(f"main.{name}", "line") for (name,) in rebuilt]
    for table, column in line_tables:
        _line_hits(con, table, column)
        record(table, "select user_id, count(*) from _hits group by 1")
        if table.startswith("raw."):
            hit = con.execute("select distinct source_file from _hits").fetchall()
            files |= {r[0] for r in hit}
        con.execute(f"delete from {table} where rowid in (select rid from _hits)")
    for table, columns in _user_tables(con):
        match = " or ".join(f"t.{c} = f.user_id" for c in columns)
        record(
            table,
            f"select f.user_id, count(*) from {table} as t inner join _forget as f on {match} "
            "group by 1",
        )
        where = " or ".join(f"{c} in (select user_id from _forget)" for c in columns)
        con.execute(f"delete from {table} where {where}")
    for temp in ("_forget", "_hits", "_texts"):
        con.execute(f"drop table if exists {temp}")
    return counts, files


def rewrite_file(path: Path) -> float:
    """Rewrite a DuckDB file into a fresh one holding only live data; seconds taken.

    Deleted rows stay in a DuckDB file's free blocks until overwritten; a copy of the
    database into a new file leaves them behind. The new file replaces the old atomically.
    """
    import time

    import duckdb

    started = time.perf_counter()
    tmp = path.with_name(f".{path.name}.rewrite")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        ((target,),) = con.execute("select current_database()").fetchall()
        con.execute("attach ? as src (read_only)", [str(path)])
        con.execute(f'copy from database src to "{target}"')
        con.execute("detach src")
        con.execute("checkpoint")
    finally:
        con.close()
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    return time.perf_counter() - started


def purge_landing(landing_dir: Path, files: set[str], user_ids: list[str]) -> int:
    """Rewrite landing part files without the users' lines; the number of lines removed."""
    from interest_pipeline.ingest import gunzip_prefix
    from interest_pipeline.replay import write_atomic  # partitions are replaced whole

    removed = 0
    for rel in sorted(files):
        path = landing_dir / rel
        if not path.is_file():
            continue
        data = path.read_bytes()
        gz = path.name.endswith(".gz")
        if gz:
            data, _ = gunzip_prefix(data)
        kept = []
        for line in data.split(b"\n"):
            if _line_names(line, user_ids):
                removed += 1
            else:
                kept.append(line)
        content = b"\n".join(kept)
        if gz:
            import gzip

            content = gzip.compress(content, mtime=0)
        write_atomic(path, content)
    return removed


def _line_names(line: bytes, user_ids: list[str]) -> bool:
    text = line.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and (
        str(obj.get("user_id")) in user_ids or str(obj.get("target_user_id")) in user_ids
    ):
        return True
    return any(f'"{u}"' in text for u in user_ids)


def forget_users(
    warehouse_path: Path,
    user_ids: list[str],
    reason: str | None = None,
    landing_dir: Path | None = None,
) -> dict[str, Any]:
    """Erase users from the warehouse (and, given ``landing_dir``, from the landing zone).

    Call it with no other writer active (the DAG's writer pool; the CLI waits for the lock).
    Returns what was done: rows deleted per table, lines purged, and the seconds of each step.
    """
    import time

    from interest_pipeline import snapshot
    from interest_pipeline.config import get_settings
    from interest_pipeline.social import recompute_social_vectors
    from interest_pipeline.warehouse import fetch_one, open_warehouse, transaction

    if not user_ids:
        raise ValueError("no user to forget")
    requested = datetime.now(UTC).replace(tzinfo=None)
    started = time.perf_counter()
    with open_warehouse(Path(warehouse_path)) as con, transaction(con):
        salt = _salt(con, create=True)
        assert salt is not None
        ids = list(dict.fromkeys(user_ids))
        followers = _followers(con, ids)
        per_user, files = _delete_rows(con, ids)
        # Their interest lives on in the social versions of whoever followed them: recomputed
        # without them (the follow events naming them are gone now).
        recompute_social_vectors(con, followers, get_settings().half_life_hours)
        purged = None
        if landing_dir is not None:
            purged = purge_landing(Path(landing_dir), files, list(per_user))
        completed = datetime.now(UTC).replace(tzinfo=None)
        for user_id, counts in per_user.items():
            con.execute(
                "insert into erasures values (?, ?, ?, ?, ?, ?)",
                [_hash(salt, user_id), requested, completed, reason, json.dumps(counts), purged],
            )
        last = fetch_one(
            con,
            "select interval_start, interval_end from pipeline_runs "
            "order by interval_end desc limit 1",
        ) if _has_runs(con) else None
    rows_seconds = time.perf_counter() - started
    rewrite_seconds = rewrite_file(Path(warehouse_path))
    started = time.perf_counter()
    if snapshot.snapshot_path(Path(warehouse_path)).exists():
        snapshot.publish_snapshot(Path(warehouse_path), *(last or (None, None)), full=True)
    snapshot_seconds = time.perf_counter() - started
    result = {
        "users": len(per_user),
        "rows_deleted": {
            t: sum(c.get(t, 0) for c in per_user.values())
            for t in sorted({t for c in per_user.values() for t in c})
        },
        "landing_lines_purged": purged,
        "rows_seconds": rows_seconds,
        "rewrite_seconds": rewrite_seconds,
        "snapshot_seconds": snapshot_seconds,
    }
    log.info("erased %d users: %s", len(per_user), result)
    return result


def _followers(con: duckdb.DuckDBPyConnection, user_ids: list[str]) -> list[str]:
    """Everyone else who ever followed one of the users (whose social side includes them)."""
    from interest_pipeline.social import SOCIAL_EVENT_TYPES
    from interest_pipeline.warehouse import table_exists

    if not table_exists(con, "user_item_interactions"):
        return []
    return [r[0] for r in con.execute(
        f"""
        select distinct user_id from user_item_interactions
        where event_type in {SOCIAL_EVENT_TYPES}
            and target_user_id in (select unnest(?::varchar[]))
            and user_id not in (select unnest(?::varchar[]))
        order by 1
        """,
        [user_ids, user_ids],
    ).fetchall()]


def _has_runs(con: duckdb.DuckDBPyConnection) -> bool:
    from interest_pipeline.warehouse import table_exists

    return table_exists(con, "pipeline_runs")


def list_erasures(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The registry, newest first (hashes, times, reasons, counts; never an id)."""
    from interest_pipeline.warehouse import table_exists

    if not table_exists(con, "erasures"):
        return []
    cursor = con.execute(
        "select user_hash, requested_at, completed_at, reason, rows_deleted, "
        "landing_lines_purged from erasures order by completed_at desc, user_hash"
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def main(argv: list[str] | None = None) -> int:
    """``interest forget USER… [--reason TEXT] [--purge-landing] [--json]``."""
    import argparse
    import sys

    from interest_pipeline.config import get_settings

    parser = argparse.ArgumentParser(
        prog="interest forget",
        description="Erase users everywhere: every row and version, the bytes in the "
        "warehouse file and its snapshot; later backfills drop their lines. With Airflow "
        "running, prefer `airflow dags trigger interest_forget --conf '{\"users\": [...]}'`, "
        "which waits its turn in the writer pool; this command waits for the file lock.",
    )
    parser.add_argument("users", nargs="+", metavar="USER", help="user ids to forget")
    parser.add_argument("--reason", help="why (kept in the registry: no personal data)")
    parser.add_argument("--purge-landing", action="store_true",
                        help="also rewrite the landing files that held their lines "
                        "(only for a landing zone the pipeline owns)")
    parser.add_argument("--warehouse", type=Path, help="the warehouse (default: settings)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    settings = get_settings()
    path = args.warehouse or settings.warehouse_path
    if not Path(path).is_file():
        print(f"interest forget: error: no warehouse at {path}", file=sys.stderr)
        return 3
    result = forget_users(
        path, args.users, args.reason, settings.landing_dir if args.purge_landing else None
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        total = sum(result["rows_deleted"].values())
        print(
            f"forgot {result['users']} user{'s' if result['users'] != 1 else ''}: "
            f"{total} rows deleted "
            f"({', '.join(f'{t} {n}' for t, n in result['rows_deleted'].items())}); "
            f"warehouse rewritten in {result['rewrite_seconds']:.1f} s"
            + (f"; {result['landing_lines_purged']} landing lines purged"
               if result["landing_lines_purged"] is not None else "")
        )
    return 0
