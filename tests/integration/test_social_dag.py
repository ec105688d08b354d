"""The social dimension through the real DAG: a Gowalla day, friendships and all (slow).

`interest-replay --dataset gowalla` lands its default window (Fri 8 + Sat 9 Oct 2010: check-ins
as clicks, every mutual friendship as two follows in the first hour). `airflow dags test` runs
the real `interest_pipeline_daily` DAG for the first day, its tasks in-process with no
scheduler. Its social versions, interest versions and lists must equal the stages run in this
process over the same day, and the lists must carry social evidence.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import timedelta

import pytest

from interest_pipeline import stages
from interest_pipeline.config import DAILY_DAG_ID, airflow_env, get_settings
from interest_pipeline.replay import DEFAULT_WINDOWS
from tests.integration.test_end_to_end import OUTPUT_TABLES, _run, _snapshot

pytestmark = pytest.mark.slow

DAY = DEFAULT_WINDOWS["gowalla"][0].replace(tzinfo=None)
TABLES = (*OUTPUT_TABLES, "user_social_vectors")


@pytest.fixture(scope="module")
def gowalla_day(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("social_dag")
    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INTEREST_"))}
    env["INTEREST_DATA_DIR"] = str(data)
    settings = dataclasses.replace(
        get_settings(), data_dir=data, warehouse_path=data / "warehouse.duckdb",
        landing_dir=data / "landing", airflow_home=data / "airflow",
    )
    env.update(airflow_env(settings))
    _run(env, "interest-replay", "--dataset", "gowalla", "--landing-dir", str(data / "landing"))
    _run(env, "interest-airflow", "prepare")
    # A manual run of an interval timetable covers the interval that ends at the given date.
    logical = f"{DAY + timedelta(days=1):%Y-%m-%dT%H:%M:%S}+00:00"
    _run(env, "airflow", "dags", "test", DAILY_DAG_ID, logical)
    reference = dataclasses.replace(
        settings, data_dir=tmp / "ref", warehouse_path=tmp / "ref" / "w.duckdb"
    )
    stages.run_interval(DAY, DAY + timedelta(days=1), reference)
    return {
        "dag": _snapshot(settings.warehouse_path, TABLES),
        "in_process": _snapshot(reference.warehouse_path, TABLES),
    }


def test_the_dag_day_equals_the_stages_in_process(gowalla_day):
    for table in TABLES:
        assert gowalla_day["dag"][table] == gowalla_day["in_process"][table], table


def test_followers_have_social_versions_and_lists_carry_social_evidence(gowalla_day):
    social = gowalla_day["dag"]["user_social_vectors"]
    with_vector = [row for row in social if row[3] is not None]
    assert with_vector and all(row[4] > 0 for row in with_vector)
    hours = {row[1] for row in social}
    assert len(hours) > 1  # recomputed as followees change during the day, not once
    entries = [
        entry
        for row in gowalla_day["dag"]["recommendations"]
        for entry in json.loads(row[6])
        if entry["event_type"] == "social"
    ]
    assert entries
    assert all(e["text"].endswith("you follow engaged with it") and e["people"] >= 1
               for e in entries)
