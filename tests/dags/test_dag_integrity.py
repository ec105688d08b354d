"""The DAG folder parses cleanly, cheaply, and without touching any database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interest_pipeline.config import DAG_ID, DAILY_DAG_ID, REPO_ROOT
from interest_pipeline.pipeline_dag import runs_interval

# Parse in a fresh interpreter so modules imported by other tests cannot hide a heavy import.
_PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])

def describe(dag):
    return {
        "tags": sorted(dag.tags),
        "tasks": [t.task_id for t in dag.topological_sort()]
        if hasattr(dag, "topological_sort") else sorted(dag.task_ids),
        "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "retries": {t.task_id: t.retries for t in dag.tasks},
        "pools": {t.task_id: t.pool for t in dag.tasks},
        "max_active_runs": dag.max_active_runs,
        "catchup": dag.catchup,
        "timetable": type(dag.timetable).__name__,
        "timetable_summary": getattr(dag.timetable, "expression", None),
        "doc_md": bool(dag.doc_md),
        "fileloc": dag.fileloc,
    }

print(json.dumps({
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "heavy": sorted(m for m in ("torch", "sentence_transformers", "duckdb", "dbt", "transformers")
                    if m in sys.modules),
    "dags": {dag_id: describe(dag) for dag_id, dag in bag.dags.items()},
}))
"""

PIPELINE_TASKS = {
    "ingest_landing_partition", "build_dbt_models", "plan_embedding_shards",
    "embed_text_shard", "merge_text_embeddings", "update_user_vectors",
    "train_ranker", "write_recommendations", "evaluate_recommendations", "record_run_stats",
    "publish_snapshot",
}


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("parse")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "INTEREST_DATA_DIR": str(tmp / "data"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    out = subprocess.run(
        [sys.executable, "-c", _PARSE, str(REPO_ROOT / "dags")],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    data = tmp / "data"
    result["created_files"] = (
        sorted(str(p.relative_to(tmp)) for p in data.rglob("*")) if data.exists() else []
    )
    return result


def test_no_import_errors(parsed):
    assert parsed["import_errors"] == {}
    assert parsed["dag_ids"] == sorted(
        [DAG_ID, DAILY_DAG_ID, "interest_forget", "interest_rebuild"]
    )


def test_the_forget_dag_is_manual_and_writes_in_the_one_slot_pool(parsed):
    dag = parsed["dags"]["interest_forget"]
    assert dag["timetable"] == "NullTimetable" and dag["max_active_runs"] == 1
    assert dag["pools"] == {"forget_users": "duckdb_writer"}
    assert dag["doc_md"] and dag["tags"]


def test_parsing_imports_no_heavy_library_and_opens_no_database(parsed):
    assert parsed["heavy"] == []
    assert parsed["created_files"] == []  # no warehouse file, no landing dir


@pytest.mark.parametrize("dag_id, cron", [(DAG_ID, "0 * * * *"), (DAILY_DAG_ID, "0 0 * * *")])
def test_dags_run_in_order_with_retries_and_tags(parsed, dag_id, cron):
    dag = parsed["dags"][dag_id]
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert dag["timetable_summary"] == cron
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert dag["tags"]
    assert dag["doc_md"]
    assert all(r >= 1 for r in dag["retries"].values())


def test_the_ranker_is_fitted_after_the_fold_and_before_the_recommendations(parsed):
    upstream = parsed["dags"][DAG_ID]["upstream"]
    assert upstream["train_ranker"] == ["update_user_vectors"]
    assert upstream["write_recommendations"] == ["train_ranker"]
    assert "train_ranker" in upstream["record_run_stats"]


def test_the_daily_dag_is_the_hourly_graph_behind_a_skip_for_scheduled_runs(parsed):
    hourly, daily = parsed["dags"][DAG_ID], parsed["dags"][DAILY_DAG_ID]
    assert set(hourly["tasks"]) == PIPELINE_TASKS
    assert set(daily["tasks"]) == PIPELINE_TASKS | {"skip_scheduled_runs"}
    assert daily["tasks"][0] == "skip_scheduled_runs"
    assert daily["upstream"]["ingest_landing_partition"] == ["skip_scheduled_runs"]
    for task in PIPELINE_TASKS - {"ingest_landing_partition"}:
        assert daily["upstream"][task] == hourly["upstream"][task], task


@pytest.mark.parametrize(
    "run_type, backfill_only, runs",
    [
        ("scheduled", False, True),
        ("backfill", False, True),
        ("scheduled", True, False),
        ("backfill", True, True),
        ("manual", True, True),
        ("asset_triggered", True, False),
    ],
)
def test_a_backfill_only_dag_runs_backfills_and_manual_runs(run_type, backfill_only, runs):
    assert runs_interval(run_type, backfill_only) is runs


@pytest.mark.parametrize("dag_id", [DAG_ID, DAILY_DAG_ID])
def test_every_task_that_opens_the_warehouse_is_in_the_one_slot_writer_pool(parsed, dag_id):
    # Only the embedding shards (Parquet in, Parquet out) and the daily DAG's skip check run
    # outside it: they never open DuckDB.
    shared = {t for t, pool in parsed["dags"][dag_id]["pools"].items() if pool != "duckdb_writer"}
    skip = {"skip_scheduled_runs"} if dag_id == DAILY_DAG_ID else set()
    assert shared == {"embed_text_shard"} | skip


@pytest.mark.parametrize("dag_id", [DAG_ID, DAILY_DAG_ID])
def test_dag_file_name_is_the_dag_id(parsed, dag_id):
    assert Path(parsed["dags"][dag_id]["fileloc"]) == Path(REPO_ROOT) / "dags" / f"{dag_id}.py"
