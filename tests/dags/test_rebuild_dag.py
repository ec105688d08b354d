"""The ``interest_rebuild`` DAG: manual, one task in the one-slot writer pool, conf validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from interest_pipeline.config import REPO_ROOT

DAG_FILE = REPO_ROOT / "dags" / "interest_rebuild.py"

# Parse in a fresh interpreter, as test_dag_integrity does, so no other test's imports hide a
# heavy one; the conf a trigger would pass is validated against the DAG's params there too.
_PARSE = """
import copy, json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("interest_rebuild")

def validates(conf):
    params = copy.deepcopy(dag.params)
    try:
        params.update(conf)  # a given value is checked here, a missing one by validate()
        params.validate()
    except Exception:
        return False
    return True

confs = [{}, {"model": ""}, {"model": "   "}, {"model": 3}, {"model": "default"},
         {"model": "/models/my-model"}]
print(json.dumps({
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "heavy": sorted(m for m in ("torch", "sentence_transformers", "duckdb", "dbt", "transformers")
                    if m in sys.modules),
    "timetable": type(dag.timetable).__name__,
    "max_active_runs": dag.max_active_runs,
    "catchup": dag.catchup,
    "tasks": {t.task_id: {"pool": t.pool, "retries": t.retries} for t in dag.tasks},
    "tags": sorted(dag.tags),
    "doc_md": bool(dag.doc_md),
    "fileloc": dag.fileloc,
    "valid": [validates(conf) for conf in confs],
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
        [sys.executable, "-c", _PARSE, str(DAG_FILE)],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["created"] = sorted(p.name for p in (tmp / "data").rglob("*")) if (
        tmp / "data").exists() else []
    return result


def test_the_dag_file_parses_cleanly_and_cheaply(parsed):
    assert parsed["import_errors"] == {}
    assert parsed["dag_ids"] == ["interest_rebuild"]
    assert parsed["fileloc"] == str(DAG_FILE)
    assert parsed["heavy"] == [] and parsed["created"] == []
    assert parsed["tags"] and parsed["doc_md"]


def test_it_is_manual_and_its_one_task_writes_in_the_one_slot_pool(parsed):
    assert parsed["timetable"] == "NullTimetable"
    assert parsed["max_active_runs"] == 1 and parsed["catchup"] is False
    assert parsed["tasks"] == {"rebuild_model": {"pool": "duckdb_writer", "retries": 1}}


def test_the_conf_must_name_a_model(parsed):
    # no conf, empty, blank, not a string: refused at trigger time; a name or a path: taken
    assert parsed["valid"] == [False, False, False, False, True, True]
