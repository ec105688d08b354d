from __future__ import annotations

import gzip
from datetime import datetime

import pytest

from interest_pipeline import ingest
from interest_pipeline.ingest import ingest_interval, partition_dir, read_part_file

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

    assert counts == {"event_lines_landed": 5, "item_lines_landed": 1, "files_damaged": 0,
                      "lines_erased": 0}
    rows = con.execute(
        "select source_file, line_number, line from raw.event_lines "
        "order by source_file, line_number"
    ).fetchall()
    assert rows == [
        ("events/date=2024-03-01/hour=10/a.jsonl", 1, '{"x": 1}'),
        ("events/date=2024-03-01/hour=10/a.jsonl", 2, "not json"),
        ("events/date=2024-03-01/hour=10/a.jsonl", 3, ""),
        ("events/date=2024-03-01/hour=10/a.jsonl", 4, '{"x": 2}'),
        ("events/date=2024-03-01/hour=10/b.jsonl.gz", 1, '{"x": 3}'),
    ]
    intervals = "select distinct interval_start, interval_end from raw.event_lines"
    assert con.execute(intervals).fetchall() == [
        (START, END)
    ]


def test_missing_partition_is_an_empty_hour(con, tmp_path):
    assert ingest_interval(con, tmp_path / "nowhere", START, END) == {
        "event_lines_landed": 0,
        "item_lines_landed": 0,
        "files_damaged": 0,
        "lines_erased": 0,
    }


def test_rerun_replaces_the_interval_without_duplicates(con, tmp_path):
    landing = tmp_path / "landing"
    _write(landing, "events", "a.jsonl", b'{"x": 1}\n{"x": 2}\n')
    other_start, other_end = datetime(2024, 3, 1, 9), START
    con.execute(
        "insert into raw.event_lines values (?, ?, 'old', 1, 'kept', now()::timestamp, null)",
        [other_start, other_end],
    )
    ingest_interval(con, landing, START, END)
    ingest_interval(con, landing, START, END)
    count = "select count(*) from raw.event_lines where interval_start = ?"
    assert con.execute(count, [START]).fetchone() == (2,)
    assert con.execute(count, [other_start]).fetchone() == (1,)


def _lines(con) -> list[tuple]:
    return con.execute(
        "select source_file, line_number, line, read_problem from raw.event_lines "
        "order by source_file, line_number"
    ).fetchall()


def _files(con) -> dict[str, tuple]:
    rows = con.execute(
        "select source_file, lines_read, read_problem from raw.landing_files"
    ).fetchall()
    return {name.rsplit("/", 1)[-1]: (lines, problem) for name, lines, problem in rows}


def test_invalid_utf8_line_lands_escaped_with_its_problem(con, tmp_path):
    landing = tmp_path / "landing"
    _write(landing, "events", "a.jsonl", b'{"x": 1}\n{"user_id": "\xff"}\n')
    ingest_interval(con, landing, START, END)
    (_, _, good, ok), (_, _, bad, problem) = _lines(con)
    assert (good, ok) == ('{"x": 1}', None)
    assert bad == '{"user_id": "\\xff"}' and problem == "invalid UTF-8 at byte 13"
    assert _files(con)["a.jsonl"] == (2, "invalid UTF-8 in 1 lines (quarantined line by line)")


def test_truncated_gzip_keeps_the_lines_before_the_damage_and_the_other_files(con, tmp_path):
    landing = tmp_path / "landing"
    whole = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(2000)))
    _write(landing, "events", "a.jsonl.gz", whole[: len(whole) // 2])
    _write(landing, "events", "b.jsonl", b'{"good": true}\n')

    counts = ingest_interval(con, landing, START, END)

    lines = _lines(con)
    damaged = [r for r in lines if r[0].endswith("a.jsonl.gz")]
    assert counts["files_damaged"] == 1 and 0 < len(damaged) < 2000
    # Every complete line before the damage is as written; the one cut off is flagged.
    assert [r[2] for r in damaged[:-1]] == [f'{{"n": {i}}}' for i in range(len(damaged) - 1)]
    assert all(r[3] is None for r in damaged[:-1])
    assert damaged[-1][3] == "incomplete line: the file is damaged here"
    assert [r[2] for r in lines if r[0].endswith("b.jsonl")] == ['{"good": true}']
    n_read, problem = _files(con)["a.jsonl.gz"]
    assert n_read == len(damaged)
    assert problem.startswith("truncated gzip") and f"{len(damaged)} lines read" in problem
    assert _files(con)["b.jsonl"] == (1, None)


def test_corrupt_and_non_gzip_files_are_recorded_not_raised(con, tmp_path):
    landing = tmp_path / "landing"
    data = bytearray(gzip.compress(b'{"n": 1}\n' * 50))
    data[12:40] = b"\x00" * 28
    _write(landing, "events", "a.jsonl.gz", bytes(data))
    _write(landing, "events", "b.jsonl.gz", b"plain text, not gzip\n")
    ingest_interval(con, landing, START, END)
    files = _files(con)
    assert files["a.jsonl.gz"][1].startswith("corrupt gzip data")
    assert files["b.jsonl.gz"] == (0, files["b.jsonl.gz"][1])
    assert files["b.jsonl.gz"][1].startswith("corrupt gzip data")


def test_multi_member_gzip_is_read_whole(con, tmp_path):
    landing = tmp_path / "landing"
    two_members = gzip.compress(b'{"n": 1}\n') + gzip.compress(b'{"n": 2}\n')
    _write(landing, "events", "a.jsonl.gz", two_members)
    ingest_interval(con, landing, START, END)
    assert [r[2] for r in _lines(con)] == ['{"n": 1}', '{"n": 2}']
    assert _files(con)["a.jsonl.gz"] == (2, None)


def test_overlong_line_is_cut_to_the_limit_and_flagged(con, tmp_path, monkeypatch):
    monkeypatch.setenv("INTEREST_MAX_LINE_BYTES", "100")
    landing = tmp_path / "landing"
    long_line = b'{"query": "' + b"a" * 200 + b'"}'
    _write(landing, "events", "a.jsonl", long_line + b"\n" + b'{"x": 1}\n')
    ingest_interval(con, landing, START, END)
    (_, _, cut, problem), (_, _, short, ok) = _lines(con)
    assert cut == long_line[:100].decode() and problem == (
        f"line too long: {len(long_line)} bytes (limit 100); kept its first 100"
    )
    assert (short, ok) == ('{"x": 1}', None)


@pytest.mark.parametrize("data", [
    b'{"a": 1}\n{"b": "caf\xc3\xa9 \xe2\x9c\x93"}\n',  # clean, trailing newline
    b'{"a": 1}\n\n{"b": 2}',  # an empty line, no trailing newline
    b"",
    b"\n\n",
    b'{"a": 1}\r\n{"b": 2}\n',  # carriage returns: the line-by-line reader strips them
    b'{"a": "\xff"}\n{"b": 2}\n',  # invalid UTF-8
    b"x" * 40 + b"\n" + b"y" * 10 + b"\n",  # a line over the limit
    b"y" * 10 + b"\n" + b"x" * 40,  # the last line over the limit
])
def test_the_whole_file_reader_reads_what_the_line_reader_reads(tmp_path, monkeypatch, data):
    """The fast path for clean files gives exactly the lines, numbers and problems of the
    line-by-line reader, and leaves every other file to it."""
    path = tmp_path / "part.jsonl"
    path.write_bytes(data)
    fast = read_part_file(tmp_path, path, limit=32)
    monkeypatch.setattr(ingest, "_read_clean", lambda *args: False)
    slow = read_part_file(tmp_path, path, limit=32)
    assert (fast.numbers, fast.texts, fast.problems, fast.problem) == (
        slow.numbers, slow.texts, slow.problems, slow.problem)
