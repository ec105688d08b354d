"""The DAG folder parses cleanly, cheaply, and without touching any database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interest_pipeline.config import DAG_ID, REPO_ROOT

# Parse in a fresh interpreter so modules imported by other tests cannot hide a heavy import.
_PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags[sys.argv[2]]
print(json.dumps({
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "heavy": sorted(m for m in ("torch", "sentence_transformers", "duckdb", "dbt", "transformers")
                    if m in sys.modules),
    "tags": sorted(dag.tags),
    "tasks": [t.task_id for t in dag.topological_sort()] if hasattr(dag, "topological_sort") else sorted(dag.task_ids),
    "retries": {t.task_id: t.retries for t in dag.tasks},
    "pools": {t.task_id: t.pool for t in dag.tasks},
    "max_active_runs": dag.max_active_runs,
    "catchup": dag.catchup,
    "timetable": type(dag.timetable).__name__,
    "doc_md": bool(dag.doc_md),
}))
"""


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
        [sys.executable, "-c", _PARSE, str(REPO_ROOT / "dags"), DAG_ID],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["created_files"] = sorted(str(p.relative_to(tmp)) for p in (tmp / "data").rglob("*")) if (tmp / "data").exists() else []
    return result


def test_no_import_errors(parsed):
    assert parsed["import_errors"] == {}
    assert DAG_ID in parsed["dag_ids"]


def test_parsing_imports_no_heavy_library_and_opens_no_database(parsed):
    assert parsed["heavy"] == []
    assert parsed["created_files"] == []  # no warehouse file, no landing dir


def test_dag_is_hourly_in_order_with_retries_and_tags(parsed):
    assert parsed["timetable"] == "CronDataIntervalTimetable"
    assert parsed["catchup"] is False
    assert parsed["max_active_runs"] == 1
    assert parsed["tags"]
    assert parsed["doc_md"]
    assert all(r >= 1 for r in parsed["retries"].values())
    assert set(parsed["retries"]) == {
        "ingest_landing_partition", "build_dbt_models", "plan_embedding_shards",
        "embed_text_shard", "merge_text_embeddings", "update_user_vectors",
        "write_recommendations", "evaluate_recommendations", "record_run_stats",
        "publish_snapshot",
    }


def test_every_task_that_opens_the_warehouse_is_in_the_one_slot_writer_pool(parsed):
    # Only the embedding shards run in parallel: they read and write Parquet, never DuckDB.
    shared = {t for t, pool in parsed["pools"].items() if pool != "duckdb_writer"}
    assert shared == {"embed_text_shard"}


def test_dag_file_name_is_the_dag_id():
    assert (Path(REPO_ROOT) / "dags" / f"{DAG_ID}.py").exists()
