"""An adversarial landing hour through the real stages (real dbt, real model; slow).

Every line that lands is accounted for: staged, an identical re-delivery (counted), or in
quarantine with its reason; a damaged part file is a file-level quarantine row and the hour's
other files still land. Run with ``-s`` to print the hour's accounting.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from interest_pipeline import stages
from interest_pipeline.config import get_settings
from interest_pipeline.ingest import partition_dir
from interest_pipeline.warehouse import connect

pytestmark = pytest.mark.slow

HOUR = datetime(2024, 3, 1, 10)
OK, DUP = "staged", "duplicate"


def _event(event_id: Any, user: Any = "u1", event_type: str = "view", **fields: Any) -> str:
    return json.dumps({
        "event_id": event_id,
        "event_time": fields.pop("event_time", "2024-03-01T10:20:00Z"),
        "user_id": user,
        "event_type": event_type,
        **fields,
    })


LONG_QUERY = " ".join(f"word{i}" for i in range(300))

# (line text, expected outcome) of the hostile part file, in order.
HOSTILE = [
    (_event("g1", item_id="i1"), OK),
    (_event("g2", "u2", "purchase", item_id="i2", value=1), OK),
    (_event("g3", "u2", "search", query="Desk Lamp"), OK),
    (_event("g4", "u3", "follow", target_user_id="u1"), OK),
    (_event("g5", "u3", "search", query=LONG_QUERY), OK),
    (_event("g1", item_id="i1"), DUP),
    (_event("g1", "u9", item_id="i2"), "event_id g1 repeats {file} line 1 with different content"),
    (_event("t1", item_id="i1", event_time="2999-01-01T00:00:00Z"),
     "event_time more than 1 h after its arrival hour"),
    (_event("t2", item_id="i1", event_time=0), "event_time before 1990-01-01"),
    (_event("t3", item_id="i1", event_time=1709287200), "event_time before 1990-01-01"),  # seconds
    (_event("t4", item_id="i1", event_time="2024-03-01T11:30:00Z"), OK),  # within the 1 h skew
    (_event("o1", item_id={"id": 1}), "item_id is not a string or number"),
    (_event("o2", ["u1"], item_id="i1"), "user_id is not a string or number"),
    (_event({"id": "x"}, item_id="i1"), "event_id is not a string or number"),
    (_event("o4", "u1", "follow", target_user_id=True), "target_user_id is not a string or number"),
    (_event("q1", "u4", "search", query="x" * 200_000), "line too long"),
    ("", "empty line"),
    ("\ufeff" + _event("b1", "u4", item_id="i3"), OK),  # a byte order mark
    ("{", "not valid JSON"),
    ("[1]", "not a JSON object"),
    ("null", "not a JSON object"),
    (_event("m1", None, item_id="i1"), "missing required field: user_id"),
    (_event("m2", event_type="teleport", item_id="i1"), "unknown event_type: teleport"),
    (_event("m3", event_time="yesterday", item_id="i1"), "unparsable event_time"),
    (_event("m4", event_type="click"), "item event without item_id"),
    (_event("m5", event_type="rate", item_id="i1", value="lots"), "value is not a number"),
]


def _land(landing: Path) -> dict[str, list[tuple[str, str]]]:
    """Write the adversarial hour; the expected outcome of each line, per file."""
    events = partition_dir(landing, "events", HOUR)
    items = partition_dir(landing, "items", HOUR)
    events.mkdir(parents=True)
    items.mkdir(parents=True)
    (items / "part-0.jsonl").write_text(
        "\n".join([
            json.dumps({"item_id": "i1", "title": "Desk lamp"}),
            json.dumps({"item_id": "i2", "title": "Reading lamp", "description": "warm light"}),
            json.dumps({"item_id": "i3", "title": "Lamp shade"}),
            json.dumps({"item_id": {"id": 4}, "title": "Stool"}),
        ]) + "\n"
    )
    hostile = "events/date=2024-03-01/hour=10/part-0.jsonl"
    (events / "part-0.jsonl").write_bytes(
        b"".join(line.encode() + b"\r\n" for line, _ in HOSTILE)  # CRLF, as some exporters write
    )
    whole = gzip.compress(
        b"".join(_event(f"z{i}", f"u{i % 7}", item_id=f"i{1 + i % 3}").encode() + b"\n"
                 for i in range(400))
    )
    (events / "part-1.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # cut in transit
    (events / "part-2.jsonl").write_bytes(
        _event("y1", item_id="i2").encode() + b"\n" + b'{"event_id": "y2", "user_id": "\xff"}\n'
    )
    return {
        hostile: [(line, outcome.format(file=hostile)) for line, outcome in HOSTILE],
        "events/date=2024-03-01/hour=10/part-2.jsonl": [("", OK), ("", "invalid UTF-8 at byte")],
    }


def _outcomes(con, start: datetime) -> dict[tuple[str, int], str]:
    """Each landed event line's fate: staged, duplicate, or its quarantine reason."""
    staged = {
        (f, n): OK for f, n in con.execute(
            "select source_file, line_number from stg_landing__events where interval_start = ?",
            [start],
        ).fetchall()
    }
    quarantined = {
        (f, n): reason for f, n, reason in con.execute(
            "select source_file, line_number, reason from quarantine "
            "where interval_start = ? and source_kind = 'events' and line_number > 0",
            [start],
        ).fetchall()
    }
    assert not staged.keys() & quarantined.keys()
    landed = con.execute(
        "select source_file, line_number from raw.event_lines where interval_start = ?", [start]
    ).fetchall()
    return {key: staged.get(key) or quarantined.get(key) or DUP for key in landed}


@pytest.fixture(scope="module")
def hostile_hour(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    settings = dataclasses.replace(
        get_settings(), data_dir=tmp, warehouse_path=tmp / "w.duckdb", landing_dir=tmp / "landing"
    )
    expected = _land(settings.landing_dir)
    row = stages.run_interval(HOUR, HOUR + timedelta(hours=1), settings)
    con = connect(settings.warehouse_path, read_only=True)
    yield {"con": con, "expected": expected, "row": row}
    con.close()


def test_every_line_is_staged_counted_or_quarantined_with_its_reason(hostile_hour):
    con, expected, row = hostile_hour["con"], hostile_hour["expected"], hostile_hour["row"]
    outcomes = _outcomes(con, HOUR)
    for source_file, lines in expected.items():
        for number, (_, outcome) in enumerate(lines, start=1):
            assert outcomes[(source_file, number)].startswith(outcome), (source_file, number)
    # Nothing unaccounted: lines in = staged + duplicates + quarantined, per pipeline_runs too.
    quarantined = sum(o not in (OK, DUP) for o in outcomes.values())
    staged = sum(o == OK for o in outcomes.values())
    duplicates = sum(o == DUP for o in outcomes.values())
    assert row["event_lines_landed"] == len(outcomes) == staged + duplicates + quarantined
    assert (row["events_in"], row["duplicates"]) == (staged, duplicates)
    assert row["quarantined"] == quarantined + 1  # + the item line with an object item_id
    assert row["files_quarantined"] == 2  # the truncated gzip and the file with bad UTF-8
    print(
        f"\nadversarial hour: {len(outcomes)} event lines in = {staged} staged + {duplicates} "
        f"duplicates + {quarantined} quarantined; 0 unaccounted; "
        f"{row['files_quarantined']} damaged files quarantined as files"
    )


def test_a_truncated_gzip_keeps_its_readable_lines_and_is_a_file_level_row(hostile_hour):
    con = hostile_hour["con"]
    gz = "events/date=2024-03-01/hour=10/part-1.jsonl.gz"
    ((reason, raw_line),) = con.execute(
        "select reason, raw_line from quarantine where source_file = ? and line_number = 0", [gz]
    ).fetchall()
    assert reason.startswith("truncated gzip") and raw_line is None
    outcomes = {n: o for (f, n), o in _outcomes(con, HOUR).items() if f == gz}
    last = max(outcomes)
    assert 100 < last < 400 and f"{last} lines read before the damage" in reason
    assert all(outcomes[n] == OK for n in range(1, last))
    assert outcomes[last] == "incomplete line: the file is damaged here"


def test_long_texts_are_cut_to_what_the_model_reads_and_say_so(hostile_hour):
    con = hostile_hour["con"]
    (query,) = con.execute(
        "select query_text from stg_landing__events where event_id = 'g5'"
    ).fetchone()
    assert query == " ".join(f"word{i}" for i in range(256)) + " […]"
    assert con.execute(
        "select count(*) from text_embeddings where text = ?", [query]
    ).fetchone() == (1,)


def test_the_corrupt_catalog_line_does_not_become_an_item(hostile_hour):
    con = hostile_hour["con"]
    assert sorted(r[0] for r in con.execute("select item_id from items").fetchall()) == [
        "i1", "i2", "i3",
    ]
    assert con.execute(
        "select reason from quarantine where source_kind = 'items'"
    ).fetchall() == [("item_id is not a string or number",)]
