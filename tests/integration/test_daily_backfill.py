"""The daily backfill DAG through the real scheduler over a real sample day (slow).

`interest-main-job --daily` backfills one day of retail logs with `interest_pipeline_daily` on
its own Airflow (free port, own AIRFLOW_HOME and warehouse). The tables must equal the stages
run in-process over the same day, which in turn equal an hour-by-hour run
(test_end_to_end.test_one_interval_of_several_hours_equals_its_hours_one_by_one).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from interest_pipeline import stages
from interest_pipeline.config import DAILY_DAG_ID, get_settings
from interest_pipeline.warehouse import connect
from tests.integration.test_end_to_end import OUTPUT_TABLES, _ports_env, _run, _snapshot

pytestmark = pytest.mark.slow

DAY = datetime(2010, 11, 10)


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daily")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INTEREST_"))}
    env["INTEREST_DATA_DIR"] = str(tmp / "data")
    env.update(_ports_env())
    # A window inside the day: --daily widens it to the whole day.
    window = ["--start", (DAY + timedelta(hours=8)).isoformat(),
              "--end", (DAY + timedelta(hours=20)).isoformat()]
    out = _run(env, "interest-main-job", "--dataset", "retail", "--daily", *window)
    return {"tmp": tmp, "env": env, "stdout": out.stdout,
            "warehouse": tmp / "data" / "warehouse.duckdb", "landing": tmp / "data" / "landing"}


def test_one_run_covers_the_whole_day_and_records_every_hour(daily):
    assert f"backfill 1 of {DAILY_DAG_ID}: 1 runs, 24 hours" in daily["stdout"]
    assert "backfill: 1/1 runs done" in daily["stdout"]
    logs = Path(daily["env"]["INTEREST_DATA_DIR"]) / "airflow" / "logs" / f"dag_id={DAILY_DAG_ID}"
    assert len(list(logs.glob("run_id=backfill__*"))) == 1
    con = connect(daily["warehouse"], read_only=True)
    try:
        # (the hourly DAG also ran its latest scheduled hour: not part of the day)
        hours = [r[0] for r in con.execute(
            "select interval_start from pipeline_runs where interval_start < ? order by 1",
            [DAY + timedelta(days=1)],
        ).fetchall()]
        (as_ofs,) = con.execute(
            "select count(distinct as_of) from user_interest_vectors").fetchone()
    finally:
        con.close()
    assert hours == [DAY + timedelta(hours=i) for i in range(24)]
    assert as_ofs > 1  # a version per active hour, not one per day


def test_the_scheduled_days_tables_equal_the_stages_over_the_same_day(daily, tmp_path):
    settings = dataclasses.replace(
        get_settings(), data_dir=tmp_path, warehouse_path=tmp_path / "w.duckdb",
        landing_dir=daily["landing"],
    )
    stages.run_interval(DAY, DAY + timedelta(days=1), settings)
    in_process = _snapshot(settings.warehouse_path)
    scheduled = _snapshot(daily["warehouse"])
    for table in OUTPUT_TABLES:
        assert scheduled[table] == in_process[table], table


def test_the_forget_dag_erases_a_user_through_airflow(daily):
    """Issue 13 through Airflow: `interest_forget` (run by `airflow dags test`, the DAG's real
    task in-process) erases a user of the scheduled day; no row names them afterwards."""
    import json

    from interest_pipeline.config import airflow_env

    con = connect(daily["warehouse"], read_only=True)
    try:
        ((user,),) = con.execute(
            "select user_id from user_interest_vectors group by 1 order by count(*) desc, 1 "
            "limit 1"
        ).fetchall()
    finally:
        con.close()
    data = Path(daily["env"]["INTEREST_DATA_DIR"])
    settings = dataclasses.replace(
        get_settings(), data_dir=data, warehouse_path=daily["warehouse"],
        landing_dir=daily["landing"], airflow_home=data / "airflow",
    )
    env = {**daily["env"], **airflow_env(settings)}
    conf = json.dumps({"users": [user], "reason": "integration test"})
    _run(env, "airflow", "dags", "test", "interest_forget", "--conf", conf)
    con = connect(daily["warehouse"], read_only=True)
    try:
        for table in ("stg_landing__events", "user_item_interactions", "user_interest_vectors",
                      "recommendations"):
            (n,) = con.execute(
                f"select count(*) from {table} where user_id = ?", [user]
            ).fetchone()
            assert n == 0, table
        (reasons,) = con.execute("select list(reason) from erasures").fetchone()
    finally:
        con.close()
    assert reasons == ["integration test"]
    assert user.encode() not in daily["warehouse"].read_bytes()
