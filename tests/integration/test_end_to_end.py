"""The real DAG through the real Airflow scheduler over real sample logs with the real model (slow).

A module fixture starts the local Airflow (scheduler, dag-processor, api-server, triggerer) on
free ports with its own AIRFLOW_HOME and warehouse, runs the main job (`interest-main-job`,
what `make run` calls: a backfill through the scheduler) right after `interest-airflow start`
returns, while the scheduler still runs its own first runs, and stops Airflow at the end.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import socket
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import pytest

from interest_pipeline import stages
from interest_pipeline.config import DEFAULT_MODEL_ID, get_settings
from interest_pipeline.ingest import partition_dir, read_part_file
from interest_pipeline.replay import DEFAULT_WINDOWS, replay
from interest_pipeline.warehouse import connect, query_arrow, vectors_to_numpy

pytestmark = pytest.mark.slow

N_HOURS = 6
OUTPUT_TABLES = (
    "stg_landing__events",
    "stg_landing__items",
    "quarantine",
    "items",
    "item_documents",
    "user_item_interactions",
    "text_embeddings",
    "user_interest_vectors",
    "recommendations",
)


def _busy_hours(scratch: Path, n: int) -> datetime:
    """Start of the first n consecutive hours of the default retail window that all have events."""
    start, end = DEFAULT_WINDOWS["retail"]
    replay("retail", start, end, scratch)
    hour = start
    while hour + timedelta(hours=n) <= end:
        if all(partition_dir(scratch, "events", hour + timedelta(hours=i)).is_dir()
               for i in range(n)):
            return hour.replace(tzinfo=None)  # the warehouse stores naive UTC
        hour += timedelta(hours=1)
    raise AssertionError(f"no {n} consecutive busy hours in the default window")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ports_env() -> dict[str, str]:
    """Free ports for every port a local Airflow binds (api-server, the two log servers)."""
    return {
        "INTEREST_AIRFLOW_PORT": str(_free_port()),
        "INTEREST_AIRFLOW_LOG_SERVER_PORT": str(_free_port()),
        "INTEREST_AIRFLOW_TRIGGER_LOG_SERVER_PORT": str(_free_port()),
    }


def _listening_ports(airflow_home: Path) -> set[int]:
    """TCP ports the processes of the local Airflow under ``airflow_home`` listen on."""
    ports = set()
    for pid_file in (airflow_home / "run").glob("*.pid"):
        try:
            leader = psutil.Process(int(pid_file.read_text()))
            processes = [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            try:
                ports |= {c.laddr.port for c in process.net_connections(kind="tcp")
                          if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                pass
    return ports


def _airflow_state(airflow_home: Path) -> dict:
    """Backfills and their runs' states, from the local Airflow's SQLite metadata DB."""
    con = sqlite3.connect(airflow_home / "airflow.db")
    try:
        backfills = con.execute(
            "select id, dag_id, completed_at is not null from backfill order by id").fetchall()
        runs = con.execute(
            "select backfill_id, state from dag_run where backfill_id is not null").fetchall()
    finally:
        con.close()
    return {"backfills": backfills, "runs": runs}


# What the scheduler loop logged when a backfill's creation deleted runs under it (issue 11).
SCHEDULER_CRASH_SIGNS = ("ObjectDeletedError", "StaleDataError", "database is locked")


def _run(env: dict[str, str], exe: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / exe), *args],
        env=env, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _window(first: datetime, n: int) -> list[str]:
    return ["--start", first.isoformat(), "--end", (first + timedelta(hours=n)).isoformat()]


def _snapshot(warehouse: Path, tables=OUTPUT_TABLES) -> dict[str, list]:
    con = connect(warehouse, read_only=True)
    try:
        return {t: sorted(con.execute(f"select * from {t}").fetchall(), key=repr) for t in tables}
    finally:
        con.close()


_OPEN: list = []


def _read(pipeline) -> object:
    """A read-only connection that is closed after the test even if an assertion fails
    (an open one would lock the warehouse against the next test's pipeline runs)."""
    con = connect(pipeline["warehouse"], read_only=True)
    _OPEN.append(con)
    return con


@pytest.fixture(autouse=True)
def _close_connections():
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    first = _busy_hours(tmp / "scratch", 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INTEREST_"))}
    env["INTEREST_DATA_DIR"] = str(tmp / "data")
    env.update(_ports_env())
    airflow_home = tmp / "data" / "airflow"
    hours = [first + timedelta(hours=i) for i in range(N_HOURS)]
    # The landing zone as the main job replays it, plus a part file cut off in transit beside
    # the good files of one hour (issue 11): the replay leaves files it did not write alone.
    landing = tmp / "data" / "landing"
    replay("retail", *DEFAULT_WINDOWS["retail"], landing)
    _land_truncated_gzip(landing, hours[1])
    started = _run(env, "interest-airflow", "start")
    try:
        out = _run(env, "interest-main-job", *_window(first, N_HOURS))
        yield {"tmp": tmp, "env": env, "hours": hours, "stdout": out.stdout,
               "start_stdout": started.stdout, "airflow_home": airflow_home,
               "airflow": _airflow_state(airflow_home),
               "ports": _listening_ports(airflow_home),
               "status": _run(env, "interest-airflow", "status").stdout,
               "warehouse": tmp / "data" / "warehouse.duckdb", "landing": tmp / "data" / "landing"}
    finally:
        _run(env, "interest-airflow", "stop")


DAMAGED = "part-99998.jsonl.gz"


def _land_truncated_gzip(landing: Path, hour: datetime) -> None:
    stamp = f"{hour:%Y-%m-%dT%H}:30:00Z"
    whole = gzip.compress(b"".join(
        json.dumps({"event_id": f"damaged-{i}", "event_time": stamp, "user_id": "or-damaged",
                    "event_type": "view", "item_id": f"or-{i}"}).encode() + b"\n"
        for i in range(400)
    ))
    (partition_dir(landing, "events", hour) / DAMAGED).write_bytes(whole[: len(whole) // 2])


def test_every_hour_ran_through_the_scheduler_and_the_summary_is_printed(pipeline):
    assert f"backfill: {N_HOURS}/{N_HOURS} runs done" in pipeline["stdout"]
    assert "recommendations for" in pipeline["stdout"]
    con = _read(pipeline)
    runs = con.execute(
        "select interval_start, model_id from pipeline_runs where interval_start < ? order by 1",
        [pipeline["hours"][-1] + timedelta(hours=1)],
    ).fetchall()
    con.close()
    assert runs == [(h, DEFAULT_MODEL_ID) for h in pipeline["hours"]]
    logs = Path(pipeline["env"]["INTEREST_DATA_DIR"]) / "airflow" / "logs"
    home = logs / "dag_id=interest_pipeline_hourly"
    assert len(list(home.glob("run_id=backfill__*"))) == N_HOURS


def test_a_backfill_created_right_after_start_completes_with_every_run_successful(pipeline):
    """Issue 11: creating a backfill on a freshly started Airflow crashed the scheduler."""
    assert "airflow start: up after" in pipeline["start_stdout"]
    # the main job created its backfill at once: no wait for an idle scheduler
    assert "waiting for the scheduler" not in pipeline["stdout"]
    assert pipeline["airflow"]["backfills"] == [(1, "interest_pipeline_hourly", 1)]
    assert pipeline["airflow"]["runs"] == [(1, "success")] * N_HOURS
    # the scheduler survived it, and never met a lock error
    assert "scheduler: running" in pipeline["status"]
    log = (pipeline["airflow_home"] / "logs" / "processes" / "scheduler.log").read_text()
    assert not [sign for sign in SCHEDULER_CRASH_SIGNS if sign in log]


def test_every_port_the_local_airflow_binds_follows_the_settings(pipeline):
    env = pipeline["env"]
    configured = {int(env[key]) for key in (
        "INTEREST_AIRFLOW_PORT", "INTEREST_AIRFLOW_LOG_SERVER_PORT",
        "INTEREST_AIRFLOW_TRIGGER_LOG_SERVER_PORT",
    )}
    assert pipeline["ports"] == configured  # no fixed 8793/8794: a second instance can run


def _in_process(pipeline, folder: Path, intervals: list[tuple[datetime, datetime]]) -> Path:
    """Run the stages in this process over ``intervals`` in a fresh warehouse; its path."""
    settings = dataclasses.replace(
        get_settings(), data_dir=folder, warehouse_path=folder / "w.duckdb",
        landing_dir=pipeline["landing"],
    )
    for start, end in intervals:
        stages.run_interval(start, end, settings)
    return settings.warehouse_path


# pipeline_runs columns that must not depend on how the hours were grouped into runs.
_RUN_COUNTS = (
    "interval_start, interval_end, event_lines_landed, item_lines_landed, events_in, "
    "duplicates, quarantined, items_upserted, users_updated, recommendations_written"
)


def _run_counts(warehouse: Path) -> list[tuple]:
    con = connect(warehouse, read_only=True)
    try:
        return con.execute(f"select {_RUN_COUNTS} from pipeline_runs order by 1").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def hour_by_hour(pipeline, tmp_path_factory):
    """The reference: every hour of the window processed in turn, in this process."""
    hours = [(h, h + timedelta(hours=1)) for h in pipeline["hours"]]
    warehouse = _in_process(pipeline, tmp_path_factory.mktemp("hour_by_hour"), hours)
    return {"tables": _snapshot(warehouse), "runs": _run_counts(warehouse)}


def test_backfill_equals_an_hour_by_hour_run(pipeline, hour_by_hour):
    """The scheduler's backfill converges to exactly what processing each hour in turn gives."""
    backfilled = _snapshot(pipeline["warehouse"])
    for table in OUTPUT_TABLES:
        assert backfilled[table] == hour_by_hour["tables"][table], table


def test_one_interval_of_several_hours_equals_its_hours_one_by_one(
    pipeline, hour_by_hour, tmp_path
):
    """What a daily backfill run does: ingest, dbt and embedding once over the whole interval,
    the fold, recommendations and run stats hour by hour inside it."""
    window = (pipeline["hours"][0], pipeline["hours"][-1] + timedelta(hours=1))
    warehouse = _in_process(pipeline, tmp_path, [window])
    at_once = _snapshot(warehouse)
    for table in OUTPUT_TABLES:
        assert at_once[table] == hour_by_hour["tables"][table], table
    # One run-stats row per hour with that hour's own counts ...
    assert _run_counts(warehouse) == hour_by_hour["runs"]
    assert [r[:2] for r in hour_by_hour["runs"]] == [
        (h, h + timedelta(hours=1)) for h in pipeline["hours"]
    ]
    # ... and one dbt build for the whole interval, counted on its first hour.
    con = connect(warehouse, read_only=True)
    try:
        dbt = [r[0] for r in con.execute(
            "select dbt_seconds from pipeline_runs order by interval_start").fetchall()]
    finally:
        con.close()
    assert dbt[0] > 0 and all(seconds is None for seconds in dbt[1:])


def test_events_in_equal_landed_minus_duplicates_minus_quarantined(pipeline):
    con = _read(pipeline)
    for hour in pipeline["hours"]:
        folder = partition_dir(pipeline["landing"], "events", hour)
        # every line that can be read, the gzip cut off in transit included
        landed = sum(len(read_part_file(pipeline["landing"], p).texts)
                     for p in folder.glob("*.jsonl*"))
        (events_in,) = con.execute(
            "select count(*) from stg_landing__events where interval_start = ?", [hour]
        ).fetchone()
        (quarantined,) = con.execute(
            "select count(*) from quarantine "
            "where interval_start = ? and source_kind = 'events' and line_number > 0",
            [hour],
        ).fetchone()
        (dups,) = con.execute(
            "select duplicates from pipeline_runs where interval_start = ?", [hour]
        ).fetchone()
        assert landed > 0
        assert events_in == landed - dups - quarantined
    con.close()


def test_a_truncated_gzip_beside_good_files_is_quarantined_and_its_hour_lands(pipeline):
    """Issue 11: one damaged part file failed its whole interval and its lines vanished."""
    con = _read(pipeline)
    hour = pipeline["hours"][1]
    rows = con.execute(
        "select line_number, reason from quarantine where interval_start = ? "
        "and source_file like ? order by line_number",
        [hour, f"%{DAMAGED}"],
    ).fetchall()
    (file_row, *line_rows) = rows
    assert file_row[0] == 0 and file_row[1].startswith("truncated gzip")
    # only the line the damage cut off is quarantined; the ones before it are events
    assert [r[1] for r in line_rows] == ["incomplete line: the file is damaged here"]
    (damaged_events,) = con.execute(
        "select count(*) from stg_landing__events where user_id = 'or-damaged'"
    ).fetchone()
    assert damaged_events == line_rows[0][0] - 1 > 100
    # the hour's good files landed too, and the run succeeded
    (others,) = con.execute(
        "select count(*) from stg_landing__events where interval_start = ? "
        "and user_id <> 'or-damaged'", [hour]
    ).fetchone()
    assert others > 0
    assert con.execute(
        "select files_quarantined from pipeline_runs where interval_start = ?", [hour]
    ).fetchone() == (1,)
    con.close()


def test_vectors_are_unit_length_with_model_id_and_only_for_active_users(pipeline):
    con = _read(pipeline)
    vectors = query_arrow(con, "select user_id, as_of, model_id, vector from user_interest_vectors")
    assert vectors.num_rows > 0
    norms = np.linalg.norm(vectors_to_numpy(vectors.column("vector")), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-4)
    assert set(vectors.column("model_id").to_pylist()) == {DEFAULT_MODEL_ID}
    assert vectors_to_numpy(vectors.column("vector")).shape[1] == 384
    for hour in pipeline["hours"]:
        versioned = {r[0] for r in con.execute(
            "select user_id from user_interest_vectors where as_of = ?", [hour + timedelta(hours=1)]
        ).fetchall()}
        active = {r[0] for r in con.execute(
            "select distinct user_id from user_item_interactions where interval_start = ?", [hour]
        ).fetchall()}
        assert versioned and versioned <= active
    con.close()


def test_recommendations_exclude_consumed_items_and_carry_evidence(pipeline):
    con = _read(pipeline)
    overlap = con.execute(
        """
        select count(*) from recommendations as r
        inner join user_item_interactions as i
            on r.user_id = i.user_id and r.item_id = i.item_id
            and i.event_type in ('rate', 'purchase') and i.event_at < r.as_of
        """
    ).fetchone()[0]
    assert overlap == 0
    per_user = con.execute(
        "select user_id, as_of, count(*), min(rank), max(rank) from recommendations group by 1, 2"
    ).fetchall()
    assert per_user and all(n == hi and lo == 1 and hi <= 20 for _, _, n, lo, hi in per_user)
    # fewer than 20 only where the interest is mostly cancellations (few positive scores)
    assert sum(1 for *_, n, _, _ in per_user if n == 20) / len(per_user) >= 0.5
    assert con.execute("select min(score) from recommendations").fetchone()[0] >= 0
    unsorted = con.execute(
        """
        select count(*) from (
            select score < lead(score) over (partition by user_id, as_of order by rank) as bad
            from recommendations
        ) where bad
        """
    ).fetchone()[0]
    assert unsorted == 0
    evidence = [
        json.loads(e) for (e,) in con.execute("select evidence from recommendations").fetchall()
    ]
    assert sum(1 for e in evidence if e) / len(evidence) > 0.99
    assert all(item["text"] and item["contribution"] > 0 for e in evidence for item in e)
    con.close()


def test_rerunning_an_hour_changes_no_output_table(pipeline):
    before = _snapshot(pipeline["warehouse"])
    hour = pipeline["hours"][1]
    _run(pipeline["env"], "interest-main-job", "--skip-replay", "--reprocess", *_window(hour, 1))
    after = _snapshot(pipeline["warehouse"])
    for table in OUTPUT_TABLES:
        assert after[table] == before[table], table


def test_malformed_lines_are_quarantined_and_the_run_succeeds(pipeline):
    hour = pipeline["hours"][-1] + timedelta(hours=1)
    folder = partition_dir(pipeline["landing"], "events", hour)
    folder.mkdir(parents=True, exist_ok=True)
    good = {"event_id": "e2e-ok-1", "event_time": f"{hour:%Y-%m-%dT%H}:05:00Z", "user_id": "ml-u1",
            "event_type": "search", "query": "  Space Opera  "}
    lines = [
        json.dumps(good),
        json.dumps(good),  # re-delivered duplicate
        "{not json",
        json.dumps({**good, "event_id": "e2e-bad-2", "event_type": "teleport"}),
        json.dumps({**good, "event_id": "e2e-bad-3", "event_time": "yesterday"}),
        json.dumps({k: v for k, v in good.items() if k != "user_id"} | {"event_id": "e2e-bad-4"}),
        json.dumps({**good, "event_id": "e2e-bad-5", "event_type": "purchase"}),
    ]
    (folder / "part-99999.jsonl").write_text("\n".join(lines) + "\n")
    out = _run(pipeline["env"], "interest-main-job", "--skip-replay", *_window(hour, 1))
    assert "backfill: 1/1 runs done" in out.stdout
    con = _read(pipeline)
    reasons = sorted(r[0] for r in con.execute(
        "select reason from quarantine "
        "where interval_start = ? and source_file like '%part-99999%'",
        [hour],
    ).fetchall())
    assert reasons == sorted([
        "not valid JSON", "unknown event_type: teleport", "unparsable event_time",
        "missing required field: user_id", "item event without item_id",
    ])
    raw = con.execute(
        "select raw_line from quarantine where reason = 'not valid JSON' and interval_start = ?",
        [hour],
    ).fetchone()
    assert raw == ("{not json",)
    staged = con.execute(
        "select event_id, query_text from stg_landing__events where source_file like '%part-99999%'"
    ).fetchall()
    assert staged == [("e2e-ok-1", "space opera")]
    run = con.execute(
        "select duplicates, quarantined from pipeline_runs where interval_start = ?", [hour]
    ).fetchone()
    assert run[0] >= 1 and run[1] >= 5
    con.close()
