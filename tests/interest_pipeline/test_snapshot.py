"""The warehouse snapshot: atomic publishing, and reading while another process writes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from interest_pipeline import snapshot
from interest_pipeline.snapshot import (
    NoWarehouseError,
    WarehouseBusyError,
    open_for_reading,
    publish_snapshot,
)

_HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
for statement in sys.argv[2:]:
    con.execute(statement)
print("locked", flush=True)
time.sleep(120)
"""


@contextmanager
def hold_write_lock(path: Path, *statements: str) -> Iterator[subprocess.Popen]:
    """Another process with a read-write connection to ``path`` (after running ``statements``).

    Yields once the process holds the lock; kills it (no clean shutdown, so no checkpoint)
    on exit.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), *statements],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "locked", proc.stderr.read()  # type: ignore[union-attr]
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def _make_warehouse(path: Path, values: list[int]) -> None:
    con = duckdb.connect(str(path))
    con.execute("create or replace table t (x integer)")
    con.executemany("insert into t values (?)", [[v] for v in values])
    con.close()


def _rows(con: duckdb.DuckDBPyConnection) -> list[int]:
    return [x for (x,) in con.execute("select x from t order by x").fetchall()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".wal")))


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "w.duckdb"
    _make_warehouse(path, [1, 2])
    return path


def test_publish_writes_a_readable_copy_and_a_sidecar(warehouse: Path) -> None:
    start, end = datetime(2010, 11, 10, 10), datetime(2010, 11, 10, 11)

    target = publish_snapshot(warehouse, start, end)

    assert target == warehouse.with_name("w.duckdb.snapshot")
    con = duckdb.connect(str(target), read_only=True)
    assert _rows(con) == [1, 2]
    con.close()
    meta = json.loads(warehouse.with_name("w.duckdb.snapshot.json").read_text())
    assert meta["interval_start"] == "2010-11-10T10:00:00"
    assert meta["interval_end"] == "2010-11-10T11:00:00"
    assert datetime.fromisoformat(meta["published_at"]).tzinfo is None
    assert _leftovers(warehouse.parent) == []


def test_publish_replaces_atomically_while_a_reader_has_the_old_snapshot_open(
    warehouse: Path,
) -> None:
    publish_snapshot(warehouse)
    reader = duckdb.connect(str(snapshot.snapshot_path(warehouse)), read_only=True)
    _make_warehouse(warehouse, [1, 2, 3])

    publish_snapshot(warehouse)

    # The open reader keeps its consistent old file; a new reader gets the whole new one.
    assert _rows(reader) == [1, 2]
    reader.close()
    con = duckdb.connect(str(snapshot.snapshot_path(warehouse)), read_only=True)
    assert _rows(con) == [1, 2, 3]
    con.close()


def test_a_failed_publish_leaves_the_previous_snapshot_intact(
    warehouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_snapshot(warehouse)
    _make_warehouse(warehouse, [7])

    def copy_half(src: Path, dst: Path) -> None:
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise OSError("disk full")

    monkeypatch.setattr(snapshot.shutil, "copyfile", copy_half)
    with pytest.raises(OSError, match="disk full"):
        publish_snapshot(warehouse)

    con = duckdb.connect(str(snapshot.snapshot_path(warehouse)), read_only=True)
    assert _rows(con) == [1, 2]
    con.close()
    assert _leftovers(warehouse.parent) == []


def test_publish_includes_data_a_crashed_writer_left_in_the_wal(warehouse: Path) -> None:
    with hold_write_lock(warehouse, "insert into t values (3)"):
        pass  # killed without a checkpoint: the committed row is only in the WAL
    assert warehouse.with_name("w.duckdb.wal").exists()

    publish_snapshot(warehouse)

    con = duckdb.connect(str(snapshot.snapshot_path(warehouse)), read_only=True)
    assert _rows(con) == [1, 2, 3]
    con.close()
    assert not warehouse.with_name("w.duckdb.snapshot.wal").exists()


def test_reading_an_unlocked_warehouse_uses_the_live_file_read_only(warehouse: Path) -> None:
    con, note = open_for_reading(warehouse)
    try:
        assert note is None
        assert _rows(con) == [1, 2]
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("delete from t")
    finally:
        con.close()


def test_reading_while_another_process_writes_falls_back_to_the_snapshot(
    warehouse: Path,
) -> None:
    publish_snapshot(warehouse, datetime(2010, 11, 10, 10), datetime(2010, 11, 10, 11))

    with hold_write_lock(warehouse, "insert into t values (99)"):
        con, note = open_for_reading(warehouse, wait_seconds=0.3)
        try:
            assert _rows(con) == [1, 2]
        finally:
            con.close()

    assert note is not None and "\n" not in note
    assert note.startswith("the pipeline is writing; showing the snapshot published after")
    assert "[2010-11-10 10:00:00, 2010-11-10 11:00:00)" in note


def test_locked_without_a_snapshot_raises_busy(warehouse: Path) -> None:
    with hold_write_lock(warehouse):
        with pytest.raises(WarehouseBusyError) as info:
            open_for_reading(warehouse, wait_seconds=0.3)

    message = str(info.value)
    assert "\n" not in message and "Could not set lock" not in message
    assert str(warehouse) in message


def test_missing_warehouse_raises_no_warehouse(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "w.duckdb"

    with pytest.raises(NoWarehouseError, match="no warehouse at .* yet: run `make run`"):
        open_for_reading(missing)
    with pytest.raises(NoWarehouseError):
        publish_snapshot(missing)
    assert not missing.parent.exists()
