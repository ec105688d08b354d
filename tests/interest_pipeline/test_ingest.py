from __future__ import annotations

import gzip
from datetime import datetime

from interest_pipeline.ingest import ingest_interval, partition_dir

START = datetime(2024, 3, 1, 10)
END = datetime(2024, 3, 1, 11)


def _write(landing, kind, name, data: bytes) -> None:
    folder = partition_dir(landing, kind, START)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def test_every_line_of_every_file_lands_in_order(con, tmp_path):
    landing = tmp_path / "landing"
    _write(landing, "events", "b.jsonl.gz", gzip.compress(b'{"x": 3}\n'))
    _write(landing, "events", "a.jsonl", b'{"x": 1}\r\nnot json\n\n{"x": 2}\n')
    _write(landing, "events", "ignored.txt", b"other files are not partition data\n")
    _write(landing, "items", "a.jsonl", b'{"item_id": "i1", "title": "T"}')

    counts = ingest_interval(con, landing, START, END)

    assert counts == {"event_lines_landed": 5, "item_lines_landed": 1}
    rows = con.execute(
        "select source_file, line_number, line from raw.event_lines order by source_file, line_number"
    ).fetchall()
    assert rows == [
        ("events/date=2024-03-01/hour=10/a.jsonl", 1, '{"x": 1}'),
        ("events/date=2024-03-01/hour=10/a.jsonl", 2, "not json"),
        ("events/date=2024-03-01/hour=10/a.jsonl", 3, ""),
        ("events/date=2024-03-01/hour=10/a.jsonl", 4, '{"x": 2}'),
        ("events/date=2024-03-01/hour=10/b.jsonl.gz", 1, '{"x": 3}'),
    ]
    assert con.execute("select distinct interval_start, interval_end from raw.event_lines").fetchall() == [
        (START, END)
    ]


def test_missing_partition_is_an_empty_hour(con, tmp_path):
    assert ingest_interval(con, tmp_path / "nowhere", START, END) == {
        "event_lines_landed": 0,
        "item_lines_landed": 0,
    }


def test_rerun_replaces_the_interval_without_duplicates(con, tmp_path):
    landing = tmp_path / "landing"
    _write(landing, "events", "a.jsonl", b'{"x": 1}\n{"x": 2}\n')
    other_start, other_end = datetime(2024, 3, 1, 9), START
    con.execute(
        "insert into raw.event_lines values (?, ?, 'old', 1, 'kept', now()::timestamp)",
        [other_start, other_end],
    )
    ingest_interval(con, landing, START, END)
    ingest_interval(con, landing, START, END)
    assert con.execute("select count(*) from raw.event_lines where interval_start = ?", [START]).fetchone() == (2,)
    assert con.execute("select count(*) from raw.event_lines where interval_start = ?", [other_start]).fetchone() == (1,)


def test_undecodable_bytes_still_land(con, tmp_path):
    landing = tmp_path / "landing"
    _write(landing, "events", "a.jsonl", b'{"user_id": "\xff"}\n')
    ingest_interval(con, landing, START, END)
    (line,) = con.execute("select line from raw.event_lines").fetchone()
    assert line.startswith('{"user_id": "') and "\ufffd" in line
