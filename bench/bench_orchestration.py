"""4. Orchestration: an empty hour through the real DAG against a trivial DAG of the same shape
(7 tasks, same timetable, pool and retries, tasks that do nothing), and backfill throughput
(hours per minute) on sample logs, through a real scheduler (interest_pipeline.airflow_local).

Everything is private: AIRFLOW_HOME, warehouse and landing zone under bench/results/work, a free
port for the api-server, and a DAG folder holding a link to the real DAG plus the trivial one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO_ROOT,
    SEED_HOUR,
    WORK_DIR,
    Section,
    median,
    replay_seed,
    section_main,
)

REAL_DAG = "interest_pipeline_hourly"
TRIVIAL_DAG = "bench_trivial_hourly"

TRIVIAL_DAG_SOURCE = '''"""Benchmark baseline: the shape of interest_pipeline_hourly (7 tasks), doing nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task


@dag(
    dag_id="bench_trivial_hourly",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=datetime(1995, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "pool": "duckdb_writer"},
    tags=["benchmark"],
)
def bench_trivial_hourly() -> None:
    @task
    def step(name: str) -> dict:
        return {}

    a, b, c, d, e = (step.override(task_id=f"step_{i}")(str(i)) for i in range(5))

    @task
    def record(results: list[dict]) -> dict:
        return {}

    @task
    def publish() -> dict:
        return {}

    a >> b >> c >> d >> e
    record([a, b, c, d, e]) >> publish()


bench_trivial_hourly()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)


def _wait_for_dags(dag_ids: list[str], timeout: float = 240.0) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            models = [session.get(DagModel, d) for d in dag_ids]
            if all(m is not None and not m.is_stale for m in models):
                return
        time.sleep(2)
    raise TimeoutError(f"DAGs {dag_ids} not parsed within {timeout:.0f}s")


def backfill(dag_id: str, hours: list[datetime], env: dict[str, str],
             timeout: float = 1200.0) -> dict[str, Any]:
    """Backfill ``hours`` through the scheduler; wall seconds and each run's duration."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    from interest_pipeline.airflow_local import airflow_bin

    cmd = [airflow_bin(), "backfill", "create", "--dag-id", dag_id,
           "--from-date", _aware(hours[0]).isoformat(), "--to-date", _aware(hours[-1]).isoformat(),
           "--max-active-runs", "1", "--reprocess-behavior", "failed"]
    started = time.monotonic()
    for _ in range(5):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode == 0 or "database is locked" not in proc.stderr:
            break
        time.sleep(3)
    if proc.returncode != 0:
        raise RuntimeError(f"backfill create failed: {proc.stderr[-2000:]}")
    while time.monotonic() - started < timeout:
        with create_session() as session:
            runs = session.query(DagRun).filter(
                DagRun.dag_id == dag_id,
                DagRun.logical_date >= _aware(hours[0]),
                DagRun.logical_date <= _aware(hours[-1]),
            ).all()
            states = [str(getattr(r.state, "value", r.state)) for r in runs]
            if "failed" in states:
                raise RuntimeError(f"a run of {dag_id} failed: see {env['AIRFLOW_HOME']}/logs")
            if len(runs) == len(hours) and all(s == "success" for s in states):
                durations = [(r.end_date - r.start_date).total_seconds() for r in runs]
                return {"wall_seconds": time.monotonic() - started,
                        "run_seconds": durations, "hours": len(hours)}
        time.sleep(1)
    raise TimeoutError(f"backfill of {dag_id} did not finish in {timeout:.0f}s")


def run(args: Any) -> Section:
    section = Section("orchestration")
    data = WORK_DIR / "orchestration"
    if data.exists():
        shutil.rmtree(data)
    dags = data / "dags"
    dags.mkdir(parents=True)
    (dags / f"{REAL_DAG}.py").symlink_to(REPO_ROOT / "dags" / f"{REAL_DAG}.py")
    (dags / f"{TRIVIAL_DAG}.py").write_text(TRIVIAL_DAG_SOURCE)
    os.environ.update({
        "INTEREST_DATA_DIR": str(data),
        "AIRFLOW_HOME": str(data / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "INTEREST_AIRFLOW_PORT": str(_free_port()),
    })
    for key in ("INTEREST_WAREHOUSE_PATH", "INTEREST_LANDING_DIR", "AIRFLOW__API__PORT",
                "AIRFLOW__API__BASE_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        os.environ.pop(key, None)
    from interest_pipeline import airflow_local

    env = airflow_local.local_env()
    os.environ.update(env)  # before airflow is imported: this process reads the same DB
    replay_seed(data / "landing")
    sample_hours = [SEED_HOUR + timedelta(hours=i) for i in range(3 if args.quick else 4)]
    empty_hours = [datetime(2010, 11, 13, 0) + timedelta(hours=i) for i in range(3)]
    try:
        start_seconds = time.monotonic()
        airflow_local.start(env)
        _wait_for_dags([REAL_DAG, TRIVIAL_DAG])
        start_seconds = time.monotonic() - start_seconds
        sample = backfill(REAL_DAG, sample_hours, env)
        empty = backfill(REAL_DAG, empty_hours, env)
        trivial = backfill(TRIVIAL_DAG, empty_hours, env)
    finally:
        airflow_local.stop(env)
    section.add(
        "empty hour through the DAG (run duration)", round(median(empty["run_seconds"]), 2), "s",
        baseline=round(median(trivial["run_seconds"]), 2),
        baseline_metric="trivial DAG, same 7-task shape",
        note=f"median of {len(empty_hours)} runs each",
    )
    throughput = sample["hours"] / sample["wall_seconds"] * 60
    trivial_throughput = trivial["hours"] / trivial["wall_seconds"] * 60
    section.add(
        "backfill throughput on sample logs", round(throughput, 2), "hours/min",
        baseline=round(trivial_throughput, 2), baseline_metric="trivial DAG backfill",
        note=f"{sample['hours']} sample hours (first one embeds the catalogue) in "
             f"{sample['wall_seconds']:.0f} s; a year (8,760 h) would take "
             f"{8760 / throughput / 60:.1f} h",
    )
    section.details = {"airflow_start_seconds": start_seconds, "sample_backfill": sample,
                       "empty_backfill": empty, "trivial_backfill": trivial}
    return section


if __name__ == "__main__":
    section_main(run)
