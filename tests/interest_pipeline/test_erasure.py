"""Forgetting users on a warehouse built from real sample logs by the real stages (slow).

Three busy retail hours, plus searches with texts only the two erased users typed, a follow of
one of them by someone else and a broken line of theirs, go through the stages in-process
(real dbt, the real model). The last hour adds another broken line of theirs and a line that
reuses the id of one of their searches, for the dbt tables that keep that hour's raw lines.
Then both users are forgotten and the whole window is processed again from a landing zone that
still holds their lines (the source system's, not purged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from interest_pipeline import cli, erasure, stages
from interest_pipeline.config import get_settings
from interest_pipeline.ingest import partition_dir
from interest_pipeline.replay import replay
from interest_pipeline.warehouse import connect
from tests.integration.test_end_to_end import _busy_hours

pytestmark = pytest.mark.slow

HOURS = 3


def _query(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    con = connect(path, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _files_containing(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """Every file under root whose raw bytes contain one of the needles."""
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n for n in needles if n.encode() in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def _rows_naming(path: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(table, column) of every text column of every table holding a needle."""
    con = connect(path, read_only=True)
    try:
        columns = con.execute(
            "select table_schema || '.' || table_name, column_name from information_schema.columns "
            "where data_type in ('VARCHAR', 'JSON') and table_catalog = current_database()"
        ).fetchall()
        return [
            (table, column)
            for table, column in columns
            for needle in needles
            if con.execute(
                f'select count(*) from {table} where contains("{column}"::varchar, ?)', [needle]
            ).fetchone()[0]
        ]
    finally:
        con.close()


def _last_hour_lines(path: Path, needles: list[str]) -> dict[str, int]:
    """Rows of the dbt tables that keep the last hour's raw lines whose line quotes a needle as
    a JSON string."""
    quoted = [json.dumps(n) for n in needles]
    return {
        table: _query(
            path,
            f"select count(*) from {table} where exists "
            "(select 1 from unnest(?::varchar[]) as needle(n) where contains(line, n))",
            [quoted],
        )[0][0]
        for table in ("main.stg_landing__event_lines", "main.int_event_id_conflicts")
    }


def _per_user(path: Path, table: str, users: set[str]) -> list[tuple]:
    rows = _query(path, f"select * from {table} order by all")
    return [r for r in rows if r[0] not in users]


def _social_of(path: Path, user: str) -> list[tuple]:
    return _query(
        path,
        "select as_of, vector is not null, followees from user_social_vectors "
        "where user_id = ? order by as_of",
        [user],
    )


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("erasure")
    first = _busy_hours(tmp / "scratch", HOURS)
    landing = tmp / "source_landing"  # the source system's: outside the data dir
    data = tmp / "data"
    settings = dataclasses.replace(
        get_settings(), data_dir=data, warehouse_path=data / "w.duckdb", landing_dir=landing
    )
    replay("retail", first, first + timedelta(hours=HOURS), landing)
    hours = [first + timedelta(hours=i) for i in range(HOURS)]
    users = sorted({
        json.loads(line)["user_id"]
        for hour in hours
        for part in partition_dir(landing, "events", hour).glob("*.jsonl")
        for line in part.read_text().splitlines()
    })
    victims, follower = users[:2], users[2]
    texts = [f"zanzibar quokka lamp {v}" for v in victims]
    extra = [
        json.dumps({"event_id": f"s-{v}", "event_time": f"{hours[1]:%Y-%m-%dT%H}:10:00Z",
                    "user_id": v, "event_type": "search", "query": text})
        for v, text in zip(victims, texts, strict=True)
    ] + [
        json.dumps({"event_id": "f-1", "event_time": f"{hours[1]:%Y-%m-%dT%H}:11:00Z",
                    "user_id": follower, "event_type": "follow", "target_user_id": victims[0]}),
        f'{{"event_id": "broken", "user_id": "{victims[1]}", "event_type": ',
    ]
    (partition_dir(landing, "events", hours[1]) / "part-99999.jsonl.gz").write_bytes(
        gzip.compress(("\n".join(extra) + "\n").encode())
    )
    # The last hour is what stg_landing__event_lines and int_event_id_conflicts hold at the
    # erasure: a broken line (no user column names them) and a conflicting copy of a search.
    last = [
        f'{{"event_id": "broken-last", "user_id": "{victims[1]}", "event_type": ',
        json.dumps({"event_id": f"s-{victims[0]}",
                    "event_time": f"{hours[-1]:%Y-%m-%dT%H}:12:00Z",
                    "user_id": victims[0], "event_type": "search", "query": texts[0]}),
    ]
    (partition_dir(landing, "events", hours[-1]) / "part-99999.jsonl.gz").write_bytes(
        gzip.compress(("\n".join(last) + "\n").encode())
    )
    for hour in hours:
        stages.run_interval(hour, hour + timedelta(hours=1), settings)
    before = {
        "found": _files_containing(data, victims + texts),
        "rows": _rows_naming(settings.warehouse_path, victims + texts),
        "last_hour_lines": _last_hour_lines(settings.warehouse_path, victims),
        "vectors": _per_user(settings.warehouse_path, "user_interest_vectors",
                             set(victims) | {follower}),
        "recommendations": _per_user(settings.warehouse_path, "recommendations", set(victims)),
        "follower_social": _social_of(settings.warehouse_path, follower),
    }
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # what a user runs
        code = cli.main(["forget", "--warehouse", str(settings.warehouse_path),
                         "--reason", "test request", "--json", *victims])
    assert code == 0
    result = json.loads(out.getvalue())
    after = {
        "found": _files_containing(data, victims + texts),
        "rows": _rows_naming(settings.warehouse_path, victims + texts),
        "last_hour_lines": _last_hour_lines(settings.warehouse_path, victims),
        "vectors": _per_user(settings.warehouse_path, "user_interest_vectors",
                             set(victims) | {follower}),
        "recommendations": _per_user(settings.warehouse_path, "recommendations", set(victims)),
        "follower_social": _social_of(settings.warehouse_path, follower),
    }
    for hour in hours:  # a backfill of the whole window, landing unchanged
        stages.run_interval(hour, hour + timedelta(hours=1), settings)
    return {
        "settings": settings, "victims": victims, "texts": texts, "hours": hours,
        "before": before, "after": after, "result": result,
        "rebuilt": {
            "found": _files_containing(data, victims + texts),
            "rows": _rows_naming(settings.warehouse_path, victims + texts),
        },
    }


def test_the_users_were_everywhere_before(erased):
    before = erased["before"]
    tables = {table for table, _ in before["rows"]}
    assert {"main.stg_landing__events", "main.user_interest_vectors", "main.recommendations",
            "main.text_embeddings", "raw.event_lines", "main.quarantine"} <= tables
    assert before["found"], "the byte scan must be able to see the ids"


def test_no_row_and_no_byte_names_them_after_forgetting(erased):
    assert erased["after"]["rows"] == []
    assert erased["after"]["found"] == {}
    deleted = erased["result"]["rows_deleted"]
    assert deleted["main.user_interest_vectors"] > 0 and deleted["main.text_embeddings"] == 2


def test_the_dbt_tables_of_the_last_hour_lose_their_lines(erased):
    """stg_landing__event_lines and int_event_id_conflicts are tables holding the last hour's
    raw lines; the broken one names no user in any column, only in its text."""
    before, after = erased["before"]["last_hour_lines"], erased["after"]["last_hour_lines"]
    # the broken line and the conflicting copy, besides any ordinary events of theirs
    assert before["main.stg_landing__event_lines"] >= 2
    assert before["main.int_event_id_conflicts"] == 1
    assert after == {table: 0 for table in before}


def test_other_users_keep_their_vectors_and_lists(erased):
    assert erased["after"]["vectors"] == erased["before"]["vectors"]
    assert erased["after"]["recommendations"] == erased["before"]["recommendations"]


def test_their_interest_leaves_the_social_side_of_their_follower(erased):
    """The follower followed only the first erased user: their social versions were that
    user's interest, and after the erasure they say "nobody you follow has one"."""
    before, after = erased["before"]["follower_social"], erased["after"]["follower_social"]
    assert before and all(has and n == 1 for _, has, n in before)
    assert [as_of for as_of, _, _ in after] == [as_of for as_of, _, _ in before]
    assert all(not has and n == 0 for _, has, n in after)


def test_a_backfill_does_not_bring_them_back(erased):
    assert erased["rebuilt"]["rows"] == []
    assert erased["rebuilt"]["found"] == {}
    hours = erased["hours"]
    (erased_lines,) = _query(
        erased["settings"].warehouse_path,
        "select sum(lines_erased) from pipeline_runs where interval_start between ? and ?",
        [hours[0], hours[-1]],
    )[0]
    assert erased_lines > 0


def test_interest_erasures_lists_the_registry(erased, capsys):
    code = cli.main(["--warehouse", str(erased["settings"].warehouse_path), "--json", "erasures"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 2
    assert all(r["reason"] == "test request" and len(r["user_hash"]) == 64 for r in rows)
    assert sum(sum(json.loads(r["rows_deleted"]).values()) for r in rows) == sum(
        erased["result"]["rows_deleted"].values()
    )


def test_the_registry_holds_hashes_not_ids(erased):
    path = erased["settings"].warehouse_path
    rows = _query(path, "select user_hash, reason, rows_deleted from erasures")
    (salt,) = _query(path, "select salt from erasure_salt")[0]
    assert sorted(r[0] for r in rows) == sorted(erasure._hash(salt, v) for v in erased["victims"])
    assert all(v not in json.dumps(rows) for v in erased["victims"])
    assert {r[1] for r in rows} == {"test request"}


def test_purge_landing_rewrites_files_without_the_users_lines(tmp_path):
    folder = tmp_path / "events" / "date=2024-01-01" / "hour=00"
    folder.mkdir(parents=True)
    lines = [json.dumps({"event_id": str(i), "user_id": u}) for i, u in enumerate("abab")]
    lines.append('{"event_id": "x", "user_id": "b", broken')
    (folder / "p.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "q.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    rel = [f"events/date=2024-01-01/hour=00/{n}" for n in ("p.jsonl", "q.jsonl.gz")]

    removed = erasure.purge_landing(tmp_path, set(rel), ["b"])

    assert removed == 6
    kept = [json.dumps({"event_id": str(i), "user_id": "a"}) for i in (0, 2)]
    assert (folder / "p.jsonl").read_text().splitlines() == kept
    assert gzip.decompress((folder / "q.jsonl.gz").read_bytes()).decode().splitlines() == kept
