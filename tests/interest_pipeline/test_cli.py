"""The ``interest`` CLI against one pipeline database built from real sample logs (slow).

The fixture replays three consecutive busy hours of the retail default window (plus a few
malformed lines and a truncated gzip part file, so the quarantine has rows) and runs the real
stages in-process for each hour: real dbt, the real embedding model. Every command is then
called through ``main``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interest_pipeline import cli, snapshot, stages
from interest_pipeline.config import DEFAULT_MODEL_ID, get_settings
from interest_pipeline.ingest import partition_dir
from interest_pipeline.replay import replay
from interest_pipeline.warehouse import connect
from tests.builders import user_with_most_versions
from tests.integration.test_end_to_end import _busy_hours
from tests.interest_pipeline.test_snapshot import hold_write_lock

pytestmark = pytest.mark.slow

HOURS = 3
LONG_BAD_LINE = json.dumps({
    "event_id": "cli-bad-2", "event_time": "2010-11-10T09:30:00Z", "user_id": "or-c0",
    "event_type": "teleport", "query": "x" * 120,
})


@dataclass(frozen=True)
class Pipeline:
    path: Path
    hours: list[datetime]
    user: str  # the user with the most versions
    versions: list[datetime]  # that user's as_of values, oldest first


def _query(path: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Read with a short-lived connection: a test holding one would block the lock tests."""
    con = connect(path, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    tmp = tmp_path_factory.mktemp("cli")
    first = _busy_hours(tmp / "scratch", HOURS)
    settings = dataclasses.replace(
        get_settings(),
        data_dir=tmp,
        warehouse_path=tmp / "w.duckdb",
        landing_dir=tmp / "landing",
    )
    replay("retail", first, first + timedelta(hours=HOURS), settings.landing_dir)
    hours = [first + timedelta(hours=i) for i in range(HOURS)]
    bad = partition_dir(settings.landing_dir, "events", hours[1]) / "part-99999.jsonl"
    bad.write_text("{not json\n" + LONG_BAD_LINE + "\n")
    # A part file cut off in transit, beside the hour's good files.
    whole = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(500)))
    damaged = partition_dir(settings.landing_dir, "events", hours[2]) / "part-99998.jsonl.gz"
    damaged.write_bytes(whole[: len(whole) // 2])
    for start in hours:
        stages.run_interval(start, start + timedelta(hours=1), settings)
    path = settings.warehouse_path
    user, versions = user_with_most_versions(path)
    assert len(versions) >= 2, "the fixture needs a user with two versions for diff"
    return Pipeline(path, hours, user, versions)


def _run(capsys: pytest.CaptureFixture, pipeline: Pipeline, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--warehouse", str(pipeline.path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture, pipeline: Pipeline, *args: str) -> Any:
    code, out, err = _run(capsys, pipeline, "--json", *args)
    assert code == 0, err
    return json.loads(out)


def _assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("interest") and ": error: " in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    for fragment in fragments:
        assert fragment in err


def _vector(pipeline: Pipeline, as_of: datetime) -> np.ndarray:
    (vector,) = _query(
        pipeline.path,
        "select vector from user_interest_vectors where user_id = ? and as_of = ?",
        [pipeline.user, as_of],
    )[0]
    return np.asarray(vector, dtype=np.float64)


# --- recs ----------------------------------------------------------------------------------


def test_recs_prints_the_users_latest_recommendations(capsys, pipeline):
    top = _query(
        pipeline.path,
        """
        select r.item_id, i.title from recommendations as r join items as i using (item_id)
        where r.user_id = ? and r.as_of = ? order by r.rank limit 3
        """,
        [pipeline.user, pipeline.versions[-1]],
    )

    code, out, err = _run(capsys, pipeline, "recs", pipeline.user)

    assert code == 0 and err == ""
    assert pipeline.user in out and str(pipeline.versions[-1]) in out
    for item_id, title in top:
        assert item_id in out and title in out
    assert "because" in out and "purchase '" in out


def test_recs_json_equals_the_recommendations_table(capsys, pipeline):
    rows = _query(
        pipeline.path,
        "select rank, item_id, score, evidence from recommendations "
        "where user_id = ? and as_of = ? and model_id = ? order by rank",
        [pipeline.user, pipeline.versions[-1], DEFAULT_MODEL_ID],
    )

    data = _json(capsys, pipeline, "recs", pipeline.user, "-n", "100")

    assert data["as_of"] == pipeline.versions[-1].isoformat()
    assert data["model_id"] == DEFAULT_MODEL_ID
    got = [(r["rank"], r["item_id"], r["score"], r["evidence"]) for r in data["recommendations"]]
    assert got == [(rank, item, score, json.loads(ev)) for rank, item, score, ev in rows]


def test_recs_as_of_picks_the_version_in_force(capsys, pipeline):
    # The latest version with recommendations (an earlier one may have none: a user first seen
    # through a cancellation has no taste to match yet).
    latest = pipeline.versions[-1]
    between = latest + timedelta(minutes=30)
    # The same instant with an offset: +01:00 is an hour ahead of UTC.
    as_offset = (between + timedelta(hours=1)).isoformat() + "+01:00"

    for moment in (between.isoformat(sep=" "), between.isoformat() + "Z", as_offset):
        data = _json(capsys, pipeline, "recs", pipeline.user, "--as-of", moment, "-n", "3")
        assert data["as_of"] == latest.isoformat(), moment
        assert [r["rank"] for r in data["recommendations"]] == [1, 2, 3][
            : len(data["recommendations"])
        ]


def test_recs_before_the_first_version_is_a_one_line_not_found(capsys, pipeline):
    before = (pipeline.versions[0] - timedelta(minutes=1)).isoformat()

    code, out, err = _run(capsys, pipeline, "recs", pipeline.user, "--as-of", before)

    assert code == cli.EXIT_NOT_FOUND and out == ""
    _assert_one_line_error(err, pipeline.user, "the first is as of")


def test_unknown_user_and_unknown_model_are_not_found(capsys, pipeline):
    code, out, err = _run(capsys, pipeline, "recs", "no-such-user")
    assert code == cli.EXIT_NOT_FOUND and out == ""
    _assert_one_line_error(err, "interest: error: unknown user 'no-such-user'")

    code, _, err = _run(capsys, pipeline, "profile", pipeline.user, "--model-id", "other/model")
    assert code == cli.EXIT_NOT_FOUND
    _assert_one_line_error(err, "no interest vector for model 'other/model'")


def test_an_unknown_user_is_a_new_visitor_and_gets_the_new_visitor_list_on_request(
    capsys, pipeline
):
    code, _, err = _run(capsys, pipeline, "recs", "no-such-user")
    assert "a new visitor" in err and "--new-visitor" in err

    latest = _query(
        pipeline.path,
        "select max(as_of) from new_user_recommendations where model_id = ?",
        [DEFAULT_MODEL_ID],
    )[0][0]
    rows = _query(
        pipeline.path,
        "select item_id from new_user_recommendations where as_of = ? order by rank limit 5",
        [latest],
    )
    data = _json(capsys, pipeline, "recs", "no-such-user", "--new-visitor", "-n", "5")
    assert data["new_user"] is True and data["known_user"] is False
    assert data["list_as_of"] == latest.isoformat()
    assert [r["item_id"] for r in data["recommendations"]] == [r[0] for r in rows]

    code, out, _ = _run(capsys, pipeline, "recs", "no-such-user", "--new-visitor", "-n", "3")
    assert code == 0 and "new (no history)" in out


# --- profile -------------------------------------------------------------------------------


def test_profile_shows_the_items_nearest_to_the_vector(capsys, pipeline):
    vector = _vector(pipeline, pipeline.versions[-1])
    items = _query(
        pipeline.path,
        """
        select d.item_id, e.embedding from item_documents as d
        join text_embeddings as e on d.text_hash = e.text_hash and e.model_id = ?
        """,
        [DEFAULT_MODEL_ID],
    )
    matrix = np.asarray([e for _, e in items], dtype=np.float64)
    sims = matrix @ vector / np.linalg.norm(matrix, axis=1) / np.linalg.norm(vector)
    best = items[int(np.argmax(sims))][0]
    bought = {
        r[0]
        for r in _query(
            pipeline.path,
            "select item_id from user_item_interactions where user_id = ? and interval_start < ?",
            [pipeline.user, pipeline.versions[-1]],
        )
    }

    data = _json(capsys, pipeline, "profile", pipeline.user, "-n", "5")
    code, out, _ = _run(capsys, pipeline, "profile", pipeline.user, "-n", "5")

    assert data["nearest_items"][0]["item_id"] == best
    assert data["nearest_items"][0]["similarity"] == pytest.approx(sims.max(), abs=1e-5)
    assert len(data["nearest_items"]) == 5
    assert data["as_of"] == pipeline.versions[-1].isoformat()
    assert data["event_count"] >= 1 and data["last_event_at"]
    assert isinstance(data["themes"], list)  # retail items carry no category or tags
    texts = data["nearest_texts"]
    assert texts and {t["item_id"] for t in texts} <= bought
    similarities = [t["similarity"] for t in texts]
    assert similarities == sorted(similarities, reverse=True)
    assert code == 0 and best in out and "nearest items" in out


def test_themes_weight_categories_and_tags_by_similarity():
    items = [
        {"item_id": "a", "title": "A", "category": "toys", "tags": ["red", "felt"]},
        {"item_id": "b", "title": "B", "category": "toys", "tags": ["red"]},
        {"item_id": "c", "title": "C", "category": "mugs", "tags": None},
        {"item_id": "d", "title": "D", "category": "away", "tags": ["blue"]},
    ]
    sims = np.array([0.9, 0.5, 0.7, -0.4])  # d points away: its labels count for nothing

    themes = cli._themes(items, sims, n=10)

    assert [(t["kind"], t["name"]) for t in themes] == [
        ("category", "toys"), ("tag", "red"), ("tag", "felt"), ("category", "mugs"),
    ]
    assert themes[0]["weight"] == pytest.approx(1.4) and themes[0]["items"] == 2


# --- diff ----------------------------------------------------------------------------------


def test_diff_compares_two_versions(capsys, pipeline):
    first, second = pipeline.versions[0], pipeline.versions[-1]
    a, b = _vector(pipeline, first), _vector(pipeline, second)
    counts = dict(
        _query(
            pipeline.path,
            "select as_of, event_count from user_interest_vectors where user_id = ?",
            [pipeline.user],
        )
    )
    events = _query(
        pipeline.path,
        "select count(*) from user_item_interactions where user_id = ? "
        "and event_at > ? and event_at <= ?",
        [pipeline.user, first, second],
    )[0][0]
    t1, t2 = first.isoformat(), (second + timedelta(minutes=5)).isoformat()

    data = _json(capsys, pipeline, "diff", pipeline.user, t1, t2)
    code, out, _ = _run(capsys, pipeline, "diff", pipeline.user, t1, t2)

    assert (data["from"]["as_of"], data["to"]["as_of"]) == (first.isoformat(), second.isoformat())
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert data["cosine_similarity"] == pytest.approx(cosine, abs=1e-5)
    assert data["event_count_change"] == counts[second] - counts[first]
    assert sum(row["events"] for row in data["events_between"]) == events > 0
    entered = {r["item_id"] for r in data["entered_nearest"]}
    left = {r["item_id"] for r in data["left_nearest"]}
    assert len(entered) == len(left) and not entered & left
    assert code == 0 and "cosine similarity" in out and "purchase" in out


def test_diff_with_times_in_the_wrong_order_is_a_usage_error(capsys, pipeline):
    later, earlier = pipeline.versions[-1].isoformat(), pipeline.versions[0].isoformat()

    code, _, err = _run(capsys, pipeline, "diff", pipeline.user, later, earlier)

    assert code == cli.EXIT_USAGE
    _assert_one_line_error(err, "is after")


# --- runs, quarantine ----------------------------------------------------------------------


def test_runs_lists_every_interval_newest_first(capsys, pipeline):
    rows = _query(
        pipeline.path,
        "select interval_start, events_in, users_updated, dbt_seconds, model_id "
        "from pipeline_runs order by interval_start desc",
    )

    data = _json(capsys, pipeline, "runs")
    code, out, _ = _run(capsys, pipeline, "runs", "--last", "2")

    got = [
        (datetime.fromisoformat(r["interval_start"]), r["events_in"], r["users_updated"],
         r["dbt_seconds"], r["model_id"])
        for r in data
    ]
    assert got == rows and [r[0] for r in rows] == pipeline.hours[::-1]
    assert {"duplicates", "quarantined", "recommendations_written", "texts_embedded",
            "ingest_seconds", "embed_seconds", "fold_seconds", "recommend_seconds"} <= set(data[0])
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 + 2  # header, rule, two intervals
    assert str(pipeline.hours[-1]) in lines[2] and DEFAULT_MODEL_ID in lines[2]


def test_quarantine_shows_rejected_lines_cut_in_tables_and_whole_in_json(capsys, pipeline):
    inside = (pipeline.hours[1] + timedelta(minutes=30)).isoformat()

    data = _json(capsys, pipeline, "quarantine", "--interval", inside)
    code, out, _ = _run(capsys, pipeline, "quarantine", "--interval", inside)

    assert {r["reason"] for r in data} == {"not valid JSON", "unknown event_type: teleport"}
    assert {r["raw_line"] for r in data} == {"{not json", LONG_BAD_LINE}
    assert all(r["interval_start"] == pipeline.hours[1].isoformat() for r in data)
    assert code == 0
    assert "part-99999.jsonl:1" in out and "part-99999.jsonl:2" in out
    assert LONG_BAD_LINE not in out and LONG_BAD_LINE[:40] in out and "…" in out


def test_quarantine_shows_a_damaged_file_as_a_file_level_row(capsys, pipeline):
    inside = (pipeline.hours[2] + timedelta(minutes=30)).isoformat()

    data = _json(capsys, pipeline, "quarantine", "--interval", inside, "--last", "1000")
    code, out, _ = _run(capsys, pipeline, "quarantine", "--interval", inside)

    (file_row,) = [r for r in data if r["line_number"] == 0]
    assert file_row["source_file"].endswith("part-99998.jsonl.gz")
    assert file_row["reason"].startswith("truncated gzip") and file_row["raw_line"] is None
    # The lines read before the damage are there too (not JSON events: quarantined one by one).
    lines = [r for r in data if r["source_file"] == file_row["source_file"] and r["line_number"]]
    assert lines and lines[-1]["reason"] == "incomplete line: the file is damaged here"
    assert code == 0 and "part-99998.jsonl.gz (whole file)" in out
    # The hour's good files still landed.
    (staged,) = _query(
        pipeline.path, "select count(*) from stg_landing__events where interval_start = ?",
        [pipeline.hours[2]],
    )[0]
    assert staged > 0


def test_quarantine_of_a_clean_interval_is_not_found(capsys, pipeline):
    code, out, err = _run(capsys, pipeline, "quarantine", "--interval", str(pipeline.hours[0]))

    assert code == cli.EXIT_NOT_FOUND and out == ""
    _assert_one_line_error(err, "no quarantined lines in the interval")


# --- sql -----------------------------------------------------------------------------------


def test_sql_prints_a_table_and_json_objects(capsys, pipeline):
    query = "select user_id, count(*) as versions from user_interest_vectors group by 1 order by 1"
    rows = _query(pipeline.path, query)

    data = _json(capsys, pipeline, "sql", query)
    code, out, _ = _run(capsys, pipeline, "sql", query)

    assert data == [{"user_id": u, "versions": n} for u, n in rows]
    assert code == 0 and out.splitlines()[0].split() == ["user_id", "versions"]
    assert len(out.splitlines()) == 2 + len(rows)


def test_sql_cannot_write(capsys, pipeline):
    before = _query(pipeline.path, "select count(*) from items")[0][0]

    code, out, err = _run(capsys, pipeline, "sql", "delete from items")

    assert code == cli.EXIT_SQL and out == ""
    _assert_one_line_error(err, "read-only")
    assert _query(pipeline.path, "select count(*) from items")[0][0] == before > 0

    code, _, err = _run(capsys, pipeline, "sql", "selec 1")
    assert code == cli.EXIT_SQL
    _assert_one_line_error(err, "syntax error")


def _escapes(tmp: Path, warehouse: Path) -> list[str]:
    secret = tmp / "secret.txt"
    secret.write_text("the admin password\n")
    return [
        f"attach '{warehouse}' as w (read_write)",
        f"attach '{tmp / 'other.duckdb'}' as other",
        f"copy (select 1) to '{tmp / 'out.csv'}'",
        f"export database '{tmp / 'export'}'",
        f"select * from read_csv('{secret}')",
        f"select * from read_text('{secret}')",
        "select * from read_csv('/etc/passwd')",
        "install httpfs",
        "load httpfs",
        "set enable_external_access = true",
        "set lock_configuration = false",
        "reset enable_external_access",
        "pragma enable_profiling",
        "set threads = 1",
    ]


@pytest.mark.parametrize("busy", [False, True], ids=["live", "snapshot"])
def test_sql_refuses_every_way_out_of_the_warehouse(capsys, pipeline, tmp_path, busy, monkeypatch):
    """Through `interest sql` a user reads the warehouse (or its snapshot) and nothing else."""
    last = pipeline.hours[-1]
    if busy:
        monkeypatch.setattr(
            snapshot, "open_for_reading",
            functools.partial(snapshot.open_for_reading, wait_seconds=0.3),
        )
        snapshot.publish_snapshot(pipeline.path, last, last + timedelta(hours=1))
    escapes = _escapes(tmp_path, snapshot.snapshot_path(pipeline.path) if busy else pipeline.path)
    before = set(tmp_path.iterdir())
    lock = hold_write_lock(pipeline.path) if busy else contextlib.nullcontext()
    with lock:
        for statement in escapes:
            code, out, err = _run(capsys, pipeline, "sql", statement)
            assert code == cli.EXIT_SQL and out == "", statement
            if busy:  # the first line notes that the snapshot is read
                note, err = err.split("\n", 1)
                assert note.startswith("interest: note: the pipeline is writing")
            _assert_one_line_error(err)
            assert "the admin password" not in err and "root:" not in err, statement
        # Ordinary reads still work on the same kind of connection.
        code, out, _ = _run(capsys, pipeline, "sql", "select count(*) as n from items")
        assert code == 0 and out.splitlines()[0].strip() == "n"
    assert set(tmp_path.iterdir()) == before  # no file written
    assert _query(pipeline.path, "select count(*) from recommendations")[0][0] > 0


# --- the warehouse is missing or busy ------------------------------------------------------


def test_missing_warehouse_exits_3(capsys, tmp_path):
    missing = tmp_path / "none.duckdb"

    code = cli.main(["--warehouse", str(missing), "runs"])

    out, err = capsys.readouterr()
    assert code == cli.EXIT_UNAVAILABLE and out == ""
    _assert_one_line_error(err, f"no warehouse at {missing} yet")


def test_busy_warehouse_reads_the_snapshot_and_notes_it_on_stderr(
    capsys, pipeline, monkeypatch
):
    monkeypatch.setattr(
        snapshot, "open_for_reading", functools.partial(snapshot.open_for_reading, wait_seconds=0.3)
    )
    snapshot.snapshot_path(pipeline.path).unlink(missing_ok=True)
    with hold_write_lock(pipeline.path):
        code, out, err = _run(capsys, pipeline, "runs")
    assert code == cli.EXIT_UNAVAILABLE and out == ""
    _assert_one_line_error(err, "locked by a running pipeline task")
    assert "Could not set lock" not in err

    last = pipeline.hours[-1]
    snapshot.publish_snapshot(pipeline.path, last, last + timedelta(hours=1))
    with hold_write_lock(pipeline.path):
        code, out, err = _run(capsys, pipeline, "--json", "recs", pipeline.user, "-n", "3")

    assert code == 0
    assert json.loads(out)["user_id"] == pipeline.user
    assert err.startswith("interest: note: the pipeline is writing; showing the snapshot")
    assert f"after interval [{last}, {last + timedelta(hours=1)})" in err


# --- parsing and formatting ----------------------------------------------------------------


@pytest.mark.parametrize("command", [name for name, *_ in cli._COMMANDS])
def test_every_command_has_help_with_an_example(capsys, command):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: interest {command}" in out
    assert "example:\n  interest " + command in out
    assert "4  SQL error" in out


def test_global_options_go_before_or_after_the_command(capsys, pipeline):
    before = cli.main(["--json", "--warehouse", str(pipeline.path), "runs", "--last", "1"])
    first = capsys.readouterr().out
    after = cli.main(["runs", "--last", "1", "--warehouse", str(pipeline.path), "--json"])
    second = capsys.readouterr().out

    assert before == after == 0
    assert first == second and json.loads(first)[0]["interval_start"]


def test_usage_errors_exit_2_on_one_line(capsys):
    assert cli.main(["recs"]) == cli.EXIT_USAGE
    _assert_one_line_error(capsys.readouterr().err, "interest recs: error:", "USER")
    assert cli.main(["recs", "u", "--as-of", "yesterday"]) == cli.EXIT_USAGE
    _assert_one_line_error(capsys.readouterr().err, "not an ISO time: 'yesterday'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2010-11-10T12:00", datetime(2010, 11, 10, 12)),
        ("2010-11-10 12:00", datetime(2010, 11, 10, 12)),
        ("2010-11-10T12:00Z", datetime(2010, 11, 10, 12)),
        ("2010-11-10T13:30+01:00", datetime(2010, 11, 10, 12, 30)),
        ("2010-11-10 07:00-05:00", datetime(2010, 11, 10, 12)),
        ("2010-11-10", datetime(2010, 11, 10)),
    ],
)
def test_parse_time_returns_naive_utc(text, expected):
    assert cli.parse_time(text) == expected


def test_tables_align_numbers_right_and_cut_long_cells():
    rows = [
        {"name": "a", "n": 1, "x": 0.5, "note": "short"},
        {"name": "bbb", "n": 200, "x": None, "note": "y" * 30},
    ]

    table = cli.render(cli.table(rows, max_width=10))

    assert table.splitlines() == [
        "name    n      x  note",
        "────────────────────────────",
        "a       1  0.500  short",
        "bbb   200      -  yyyyyyyyy…",
    ]
    assert cli.render(cli.table([])) == "(no rows)"
