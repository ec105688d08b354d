"""The dbt project end to end: raw landing lines in a tmp DuckDB file -> `dbt build` per hour.

The module runs `dbt build` three times against one warehouse (interval 1, interval 2, then
interval 1 again) and the tests assert on the tables after each run: rejection reasons,
deduplication within and across hours, UTC times, weights, item upserts, and that the rerun
changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
DBT = Path(sys.executable).parent / "dbt"

HOUR_1 = datetime(2024, 1, 1, 10)
HOUR_2 = datetime(2024, 1, 1, 11)
HOUR_3 = datetime(2024, 1, 1, 12)
LOADED_AT = datetime(2024, 1, 1, 12, 5)

EVENTS_1A = "events/date=2024-01-01/hour=10/part-0.jsonl"
EVENTS_1B = "events/date=2024-01-01/hour=10/part-1.jsonl"
EVENTS_2 = "events/date=2024-01-01/hour=11/part-0.jsonl"
ITEMS_1 = "items/date=2024-01-01/hour=10/part-0.jsonl"
ITEMS_2 = "items/date=2024-01-01/hour=11/part-0.jsonl"

# Tables that accumulate every hour: after a rerun of hour 1 they must equal the state after
# hour 2. The staging models of the landed lines hold only the last run's hour (the event
# lines as a table rebuilt every run, the item lines as a view).
ACCUMULATED_TABLES = [
    "stg_landing__events",
    "stg_landing__items",
    "user_item_interactions",
    "quarantine",
    "items",
    "item_documents",
]
CURRENT_HOUR_MODELS = ["stg_landing__event_lines", "stg_landing__item_lines"]


def _event(event_id: Any, event_type: str, user_id: Any = "u1", **fields: Any) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "event_time": fields.pop("event_time", "2024-01-01T10:15:00Z"),
            "user_id": user_id,
            "event_type": event_type,
            **fields,
        }
    )


# (file, line text, expected rejection reason or None) in landing order, per hour.
EVENT_LINES_1 = [
    (EVENTS_1A, _event("e1", "view", item_id="i1", event_time="2024-01-01T11:30:00+02:00"), None),
    (EVENTS_1A, _event("e2", "purchase", item_id="i2", value=-1, event_time=1704103200000), None),
    (EVENTS_1A, _event("e3", "purchase", "u2", item_id="i2", value=2,
                       event_time="1704103260000"), None),
    (EVENTS_1A, _event("e4", "rate", "u2", item_id="i1", value=4), None),
    (EVENTS_1A, _event("e5", "search", "u3", query="  Red Lamp "), None),
    # e1 again within the hour with another payload: the first delivery wins, this one is
    # quarantined naming it.
    (EVENTS_1A, _event("e1", "view", "u9", item_id="i9"),
     f"event_id e1 repeats {EVENTS_1A} line 1 with different content"),
    # An identical re-delivery of e2: a plain duplicate.
    (EVENTS_1A, _event("e2", "purchase", item_id="i2", value=-1, event_time=1704103200000), None),
    (EVENTS_1A, "", "empty line"),
    (EVENTS_1A, "   \t", "empty line"),
    (EVENTS_1A, '{"event_id": "x1", "event_time": ', "not valid JSON"),
    (EVENTS_1A, '["e1", "view"]', "not a JSON object"),
    (EVENTS_1A, json.dumps({"event_time": "2024-01-01T10:00:00Z", "user_id": "u1",
                            "event_type": "view", "item_id": "i1"}),
     "missing required field: event_id"),
    (EVENTS_1A, json.dumps({"event_id": "x2", "user_id": "u1", "event_type": "view",
                            "item_id": "i1"}),
     "missing required field: event_time"),
    (EVENTS_1A, _event("x3", "view", None, item_id="i1"), "missing required field: user_id"),
    (EVENTS_1A, _event("x4", "", item_id="i1"), "missing required field: event_type"),
    (EVENTS_1A, _event("x5", "teleport", item_id="i1"), "unknown event_type: teleport"),
    (EVENTS_1A, _event("x6", "view", item_id="i1", event_time="2024-01-01 10:00:00"),
     "unparsable event_time"),
    (EVENTS_1A, _event("x7", "click"), "item event without item_id"),
    (EVENTS_1A, _event("x8", "search", query=" "), "search/tag event without query"),
    (EVENTS_1A, _event("x9", "follow"), "follow event without target_user_id"),
    (EVENTS_1A, _event("x10", "rate", item_id="i1", value="five"), "value is not a number"),
    (EVENTS_1A, _event("x11", "view", item_id={"id": 1}), "item_id is not a string or number"),
    (EVENTS_1A, _event("x12", "view", {"id": "u1"}, item_id="i1"),
     "user_id is not a string or number"),
    (EVENTS_1A, _event("x13", "view", item_id="i1", event_time="2999-01-01T00:00:00Z"),
     "event_time more than 1 h after its arrival hour"),
    (EVENTS_1A, _event("x14", "view", item_id="i1", event_time=0),
     "event_time before 1990-01-01"),
    (EVENTS_1B, _event("e6", "follow", target_user_id="u2"), None),
    # e5 again in a later file of the same hour, with another query: quarantined.
    (EVENTS_1B, _event("e5", "search", "u3", query="other"),
     f"event_id e5 repeats {EVENTS_1A} line 5 with different content"),
    (EVENTS_1B, _event(7, "tag", 42, item_id=3, query="Cozy"), None),
]
EVENT_LINES_2 = [
    # Re-delivery of e1 an hour later (the same instant, written in UTC): a duplicate; the
    # earlier hour keeps it.
    (EVENTS_2, _event("e1", "view", item_id="i1", event_time="2024-01-01T09:30:00Z"), None),
    (EVENTS_2, _event("e8", "click", item_id="i3", event_time="2024-01-01T11:05:00.5Z"), None),
    (EVENTS_2, _event("e9", "view", "u2", item_id="i1", value=12.5,
                      event_time="2024-01-01T06:20:00-05:00"), None),
    (EVENTS_2, '{"event_id": "e10"}', "missing required field: event_time"),
    (EVENTS_2, _event("e8", "click", item_id="i3", event_time="2024-01-01T11:05:00.5Z"), None),
    # e9's id reused an hour later for another event: quarantined, naming the first copy.
    (EVENTS_2, _event("e9", "click", "u2", item_id="i3", event_time="2024-01-01T11:10:00Z"),
     f"event_id e9 repeats {EVENTS_2} line 3 with different content"),
]


def _item(item_id: Any, title: Any, **fields: Any) -> str:
    return json.dumps({"item_id": item_id, "title": title, **fields})


ITEM_LINES_1 = [
    (ITEMS_1, _item("i1", " Lamp ", category="Home", tags=["warm", " desk "],
                    description="A small lamp.", price=19.5,
                    updated_at="2024-01-01T09:00:00+01:00"), None),
    (ITEMS_1, _item("i2", "Mug"), None),
    (ITEMS_1, _item("3", "Blanket"), None),
    (ITEMS_1, _item(3, "Blanket v2", tags=["wool"]), None),
    (ITEMS_1, "  ", "empty line"),
    (ITEMS_1, '{"item_id": "i4", "title": "Chair"', "not valid JSON"),
    (ITEMS_1, "42", "not a JSON object"),
    (ITEMS_1, json.dumps({"title": "Chair"}), "missing required field: item_id"),
    (ITEMS_1, _item("i4", "   "), "missing required field: title"),
    (ITEMS_1, _item("i4", "Chair", updated_at="last week"), "unparsable updated_at"),
    (ITEMS_1, _item("i4", "Chair", tags="wood"), "tags is not a list of strings"),
]
ITEM_LINES_2 = [
    # A corrupt line for an existing item: quarantined, the item keeps its version.
    (ITEMS_2, _item("i1", ""), "missing required field: title"),
    (ITEMS_2, '{"item_id": "i2", "title": "Mug XL",', "not valid JSON"),
    (ITEMS_2, _item("i2", "Mug XL", price="9.5"), None),
]


@dataclass(frozen=True)
class Run:
    """The warehouse contents after one `dbt build`."""

    tables: dict[str, list[tuple]]
    output: str


def _create_raw_tables(warehouse: Path) -> None:
    """The raw tables exactly as the warehouse module creates them for the ingest task."""
    from interest_pipeline.warehouse import SCHEMA_DDL

    with duckdb.connect(str(warehouse)) as con:
        con.execute(SCHEMA_DDL)


def _land(warehouse: Path, table: str, start: datetime, end: datetime, lines: list) -> None:
    """Replace one interval's rows, as the ingest task does (line numbers are per file)."""
    rows, numbers = [], {}
    for source_file, line, _ in lines:
        numbers[source_file] = numbers.get(source_file, 0) + 1
        rows.append((start, end, source_file, numbers[source_file], line, LOADED_AT))
    with duckdb.connect(str(warehouse)) as con:
        con.execute(f"delete from raw.{table} where interval_start = ?", [start])
        con.executemany(
            f"insert into raw.{table} "
            "(interval_start, interval_end, source_file, line_number, line, loaded_at) "
            "values (?, ?, ?, ?, ?, ?)",
            rows,
        )


def _expected_rejections(kind: str, lines: list) -> dict[tuple, str]:
    expected, numbers = {}, {}
    for source_file, _, reason in lines:
        numbers[source_file] = numbers.get(source_file, 0) + 1
        if reason is not None:
            expected[(kind, source_file, numbers[source_file])] = reason
    return expected


def _sort_key(row: tuple) -> str:
    return repr(row)


def _snapshot(warehouse: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {
            table: sorted(con.execute(f"select * from main.{table}").fetchall(), key=_sort_key)
            for table in ACCUMULATED_TABLES + CURRENT_HOUR_MODELS
        }


def _dbt_build(tmp: Path, warehouse: Path, start: datetime, end: datetime) -> Run:
    env = {
        **os.environ,
        "INTEREST_WAREHOUSE_PATH": str(warehouse),
        "DBT_LOG_PATH": str(tmp / "dbt_logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    interval = {"interval_start": f"{start:%Y-%m-%d %H:%M:%S}",
                "interval_end": f"{end:%Y-%m-%d %H:%M:%S}"}
    result = subprocess.run(
        [
            str(DBT), "build",
            "--project-dir", str(DBT_PROJECT_DIR),
            "--profiles-dir", str(DBT_PROJECT_DIR),
            "--target-path", str(tmp / "dbt_target"),
            "--vars", json.dumps(interval),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dbt build {interval} failed:\n{output[-6000:]}"
    return Run(tables=_snapshot(warehouse), output=output)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Hour 1, hour 2, then hour 1 again, with raw data as the ingest task would leave it."""
    tmp = tmp_path_factory.mktemp("dbt_project")
    warehouse = tmp / "warehouse.duckdb"
    _create_raw_tables(warehouse)
    _land(warehouse, "event_lines", HOUR_1, HOUR_2, EVENT_LINES_1)
    _land(warehouse, "item_lines", HOUR_1, HOUR_2, ITEM_LINES_1)
    first = _dbt_build(tmp, warehouse, HOUR_1, HOUR_2)
    _land(warehouse, "event_lines", HOUR_2, HOUR_3, EVENT_LINES_2)
    _land(warehouse, "item_lines", HOUR_2, HOUR_3, ITEM_LINES_2)
    second = _dbt_build(tmp, warehouse, HOUR_2, HOUR_3)
    rerun = _dbt_build(tmp, warehouse, HOUR_1, HOUR_2)
    # The daily backfill DAG's way: both hours landed, then one build of [hour 1, hour 3).
    batch_dir = tmp / "batch"
    batch_dir.mkdir()
    batch_warehouse = batch_dir / "warehouse.duckdb"
    _create_raw_tables(batch_warehouse)
    _land(batch_warehouse, "event_lines", HOUR_1, HOUR_2, EVENT_LINES_1)
    _land(batch_warehouse, "item_lines", HOUR_1, HOUR_2, ITEM_LINES_1)
    _land(batch_warehouse, "event_lines", HOUR_2, HOUR_3, EVENT_LINES_2)
    _land(batch_warehouse, "item_lines", HOUR_2, HOUR_3, ITEM_LINES_2)
    batch = _dbt_build(batch_dir, batch_warehouse, HOUR_1, HOUR_3)
    batch_rerun = _dbt_build(batch_dir, batch_warehouse, HOUR_1, HOUR_3)
    return {
        "first": first, "second": second, "rerun": rerun,
        "batch": batch, "batch_rerun": batch_rerun,
    }


def _rows(run: Run, table: str, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of a snapshot as dicts of the given leading columns (in table column order)."""
    return [dict(zip(columns, row)) for row in run.tables[table]]


EVENT_COLUMNS = ["event_id", "event_at", "user_id", "event_type", "item_id", "query_text",
                 "value", "target_user_id", "interval_start", "source_file", "line_number"]
INTERACTION_COLUMNS = ["event_id", "user_id", "event_type", "item_id", "query_text",
                       "target_user_id", "value", "event_at", "weight", "interval_start"]
QUARANTINE_COLUMNS = ["interval_start", "interval_end", "source_kind", "source_file",
                      "line_number", "raw_line", "reason"]
ITEM_COLUMNS = ["item_id", "title", "description", "category", "tags", "price", "updated_at",
                "interval_start", "source_file", "line_number"]


def test_every_rejection_reason_lands_in_quarantine(runs: dict[str, Run]) -> None:
    quarantine = _rows(runs["second"], "quarantine", QUARANTINE_COLUMNS)
    actual = {(r["source_kind"], r["source_file"], r["line_number"]): r["reason"]
              for r in quarantine}
    expected = {
        **_expected_rejections("events", EVENT_LINES_1),
        **_expected_rejections("items", ITEM_LINES_1),
        **_expected_rejections("events", EVENT_LINES_2),
        **_expected_rejections("items", ITEM_LINES_2),
    }
    assert actual == expected
    assert len(quarantine) == len(expected)


def test_quarantine_keeps_raw_line_and_interval(runs: dict[str, Run]) -> None:
    quarantine = _rows(runs["second"], "quarantine", QUARANTINE_COLUMNS)
    not_json = next(r for r in quarantine
                    if r["source_kind"] == "events" and r["reason"] == "not valid JSON")
    assert not_json["raw_line"] == '{"event_id": "x1", "event_time": '
    assert (not_json["interval_start"], not_json["interval_end"]) == (HOUR_1, HOUR_2)
    blank = [r["raw_line"] for r in quarantine if r["reason"] == "empty line"]
    assert sorted(blank) == sorted(["", "   \t", "  "])


def test_event_counts_are_lines_minus_duplicates_minus_quarantined(runs: dict[str, Run]) -> None:
    events = _rows(runs["second"], "stg_landing__events", EVENT_COLUMNS)
    by_hour = {
        hour: sorted(e["event_id"] for e in events if e["interval_start"] == hour)
        for hour in (HOUR_1, HOUR_2)
    }
    # Hour 1: 28 lines, 20 quarantined (2 of them reused ids), 1 duplicate (e2 re-delivered).
    assert len(EVENT_LINES_1) - 20 - 1 == 7
    assert by_hour[HOUR_1] == ["7", "e1", "e2", "e3", "e4", "e5", "e6"]
    # Hour 2: 6 lines, 2 quarantined (one reused id), e1 recorded in hour 1, e8 delivered twice.
    assert len(EVENT_LINES_2) - 2 - 2 == 2
    assert by_hour[HOUR_2] == ["e8", "e9"]
    assert len(events) == len({e["event_id"] for e in events})


def test_first_delivery_wins(runs: dict[str, Run]) -> None:
    events = {e["event_id"]: e for e in _rows(runs["second"], "stg_landing__events",
                                              EVENT_COLUMNS)}
    assert (events["e1"]["user_id"], events["e1"]["item_id"]) == ("u1", "i1")
    assert events["e1"]["interval_start"] == HOUR_1
    assert (events["e1"]["source_file"], events["e1"]["line_number"]) == (EVENTS_1A, 1)
    assert events["e5"]["query_text"] == "red lamp"
    assert (events["e8"]["source_file"], events["e8"]["line_number"]) == (EVENTS_2, 2)


def test_times_are_naive_utc(runs: dict[str, Run]) -> None:
    events = {e["event_id"]: e for e in _rows(runs["second"], "stg_landing__events",
                                              EVENT_COLUMNS)}
    assert events["e1"]["event_at"] == datetime(2024, 1, 1, 9, 30)  # 11:30+02:00
    assert events["e2"]["event_at"] == datetime(2024, 1, 1, 10, 0)  # epoch ms number
    assert events["e3"]["event_at"] == datetime(2024, 1, 1, 10, 1)  # epoch ms string
    assert events["e8"]["event_at"] == datetime(2024, 1, 1, 11, 5, 0, 500000)
    assert events["e9"]["event_at"] == datetime(2024, 1, 1, 11, 20)  # 06:20-05:00
    assert all(e["event_at"].tzinfo is None for e in events.values())


def test_ids_and_text_are_normalised(runs: dict[str, Run]) -> None:
    events = {e["event_id"]: e for e in _rows(runs["second"], "stg_landing__events",
                                              EVENT_COLUMNS)}
    assert (events["7"]["user_id"], events["7"]["item_id"]) == ("42", "3")
    assert events["7"]["query_text"] == "cozy"
    assert events["e6"]["target_user_id"] == "u2"
    assert events["e9"]["value"] == 12.5


def test_weights_follow_the_rule(runs: dict[str, Run]) -> None:
    interactions = _rows(runs["second"], "user_item_interactions", INTERACTION_COLUMNS)
    weights = {r["event_id"]: r["weight"] for r in interactions}
    assert weights == pytest.approx({
        "e1": 0.5,  # view: base weight
        "e2": -3.0,  # purchase of -1: a cancellation pushes away
        "e3": 3.0,  # purchase of 2: sign only
        "e4": 2.4,  # rating 4 of 5
        "e5": 1.0,  # search
        "e6": 1.0,  # follow
        "7": 2.0,  # tag
        "e8": 1.0,  # click
        "e9": 0.5,  # view with dwell seconds: value does not matter
    })
    assert {r["event_id"] for r in interactions} == {
        e["event_id"] for e in _rows(runs["second"], "stg_landing__events", ["event_id"])
    }


def test_items_keep_latest_valid_version(runs: dict[str, Run]) -> None:
    after_hour_1 = {i["item_id"]: i for i in _rows(runs["first"], "items", ITEM_COLUMNS)}
    items = {i["item_id"]: i for i in _rows(runs["second"], "items", ITEM_COLUMNS)}
    assert sorted(items) == ["3", "i1", "i2"]
    # The corrupt hour-2 line for i1 was quarantined: i1 is exactly its hour-1 version.
    assert items["i1"] == after_hour_1["i1"]
    assert items["i1"]["title"] == "Lamp"
    assert items["i1"]["tags"] == ["warm", "desk"]
    assert items["i1"]["updated_at"] == datetime(2024, 1, 1, 8, 0)
    assert items["i2"]["title"] == "Mug XL"
    assert items["i2"]["price"] == 9.5
    assert items["i2"]["interval_start"] == HOUR_2
    # Within an hour the last line wins.
    assert (items["3"]["title"], items["3"]["tags"]) == ("Blanket v2", ["wool"])


def test_item_documents_hash_what_python_hashes(runs: dict[str, Run]) -> None:
    documents = {row[0]: row for row in runs["second"].tables["item_documents"]}
    assert documents["i1"][1] == "Lamp. Category: Home. Tags: warm, desk. A small lamp."
    assert documents["i2"][1] == "Mug XL"
    assert documents["3"][1] == "Blanket v2. Tags: wool"
    for _, document, text_hash in documents.values():
        assert text_hash == hashlib.sha256(document.encode("utf-8")).hexdigest()


def test_rerun_changes_nothing(runs: dict[str, Run]) -> None:
    for table in ACCUMULATED_TABLES:
        assert runs["rerun"].tables[table] == runs["second"].tables[table], table
    for model in CURRENT_HOUR_MODELS:
        assert runs["rerun"].tables[model] == runs["first"].tables[model], model


def test_rerun_leaves_no_duplicates(runs: dict[str, Run]) -> None:
    tables = runs["rerun"].tables
    for table in ("stg_landing__events", "user_item_interactions"):
        event_ids = [row[0] for row in tables[table]]
        assert len(event_ids) == len(set(event_ids)) == 9, table
    quarantine_keys = [row[2:5] for row in tables["quarantine"]]
    assert len(quarantine_keys) == len(set(quarantine_keys))
    item_versions = [(row[0], row[7]) for row in tables["stg_landing__items"]]
    assert len(item_versions) == len(set(item_versions))


def test_every_build_ran_its_data_and_unit_tests(runs: dict[str, Run]) -> None:
    for name, run in runs.items():
        assert "unit_test" in run.output, name
        assert "ERROR=0" in run.output and "WARN=0" in run.output, name


def test_building_two_hours_at_once_equals_building_them_one_by_one(
    runs: dict[str, Run],
) -> None:
    for table in ACCUMULATED_TABLES:
        assert runs["batch"].tables[table] == runs["second"].tables[table], table
        assert runs["batch_rerun"].tables[table] == runs["second"].tables[table], table
