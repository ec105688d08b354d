"""Publishing by syncing the older snapshot generation: readers see exactly the live tables."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta

import pytest

from interest_pipeline import stages
from interest_pipeline.config import get_settings
from interest_pipeline.snapshot import generation_path, publish_snapshot, snapshot_path
from interest_pipeline.warehouse import connect
from tests.builders import add_event
from tests.interest_pipeline.test_stages import H, _process, _warehouse


@pytest.fixture
def settings(tmp_path, fake_encoder):
    """Settings of a small warehouse the stage functions can run hours on."""
    path = tmp_path / "live.duckdb"
    _warehouse(path, fake_encoder)
    return dataclasses.replace(get_settings(), warehouse_path=path, model="fake", top_n=3)


def _everything(path):
    """Every table and view of a warehouse file, sorted rows."""
    con = connect(path, read_only=True)
    try:
        names = con.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_catalog = current_database() order by 1, 2"
        ).fetchall()
        return {
            f"{s}.{t}": sorted(con.execute(f'select * from "{s}"."{t}"').fetchall(), key=repr)
            for s, t in names
        }
    finally:
        con.close()


def _publish_and_compare(settings, hour):
    stages.publish_snapshot(hour, hour + timedelta(hours=1), settings)
    assert _everything(snapshot_path(settings.warehouse_path)) == _everything(
        settings.warehouse_path
    )


def test_each_publish_shows_the_live_tables_after_reruns_and_late_hours(settings):
    path = settings.warehouse_path
    for hour in H[:3]:
        _process(settings, hour)
        _publish_and_compare(settings, hour)
    first = generation_path(path, "a")
    inode = first.stat().st_ino
    # A late event for hour 1 and its rerun (which recomputes the later hours).
    con = connect(path)
    add_event(con, "late", "u3", "rate", H[1] + timedelta(minutes=5), H[1], item_id="b")
    con.close()
    _process(settings, H[1])
    _publish_and_compare(settings, H[1])
    # The generation two runs old was brought up to date in place, not copied again.
    assert first.stat().st_ino == inode
    _process(settings, H[3])
    _publish_and_compare(settings, H[3])


def test_a_write_no_run_recorded_still_reaches_readers(settings):
    for hour in H[:3]:
        _process(settings, hour)
        _publish_and_compare(settings, hour)
    con = connect(settings.warehouse_path)
    add_event(con, "by-hand", "u9", "rate", H[0], H[0], item_id="c")  # no pipeline_runs row
    con.close()
    _publish_and_compare(settings, H[2])


def test_a_reader_holding_the_older_generation_gets_a_whole_copy_beside_it(settings):
    for hour in H[:2]:
        _process(settings, hour)
        _publish_and_compare(settings, hour)
    older = generation_path(settings.warehouse_path, "a")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, duckdb; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print(c.execute('select count(*) from user_item_interactions').fetchone()[0], "
         "flush=True); time.sleep(60)", str(older)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        before = int(holder.stdout.readline())  # type: ignore[union-attr]
        _process(settings, H[2])
        _publish_and_compare(settings, H[2])
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()  # type: ignore[union-attr]
    assert before >= 0


def test_a_full_publish_leaves_no_older_generation(settings):
    for hour in H[:2]:
        _process(settings, hour)
        _publish_and_compare(settings, hour)
    publish_snapshot(settings.warehouse_path, full=True)
    gens = [generation_path(settings.warehouse_path, g) for g in "ab"]
    assert [g.exists() for g in gens].count(True) == 1
    assert snapshot_path(settings.warehouse_path).resolve() in gens


def test_a_view_that_became_a_table_is_synced(settings):
    # dbt changing a model's materialisation (int_event_id_conflicts became a table).
    con = connect(settings.warehouse_path)
    con.execute("create view recent_events as select * from user_item_interactions")
    con.close()
    for hour in H[:3]:
        _process(settings, hour)
        _publish_and_compare(settings, hour)
    con = connect(settings.warehouse_path)
    con.execute("drop view recent_events")
    con.execute("create table recent_events as select event_id from user_item_interactions")
    con.close()
    older = generation_path(settings.warehouse_path, "b")
    inode = older.stat().st_ino
    _process(settings, H[3])
    _publish_and_compare(settings, H[3])
    assert older.stat().st_ino == inode  # synced, not copied
