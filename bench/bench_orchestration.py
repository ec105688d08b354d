"""4. Orchestration: an empty hour through the real DAG against a trivial DAG of the same shape
(the real DAG's task graph, read when the bench runs; same timetable, pool and retries; tasks
that do nothing), and backfill throughput (hours per minute) on sample logs, through a real
scheduler (interest_pipeline.airflow_local): the hourly DAG (one run per hour) against the
trivial DAG, and the daily backfill DAG (one run per day: one dbt build, hour-by-hour fold
inside) against the hourly DAG. A warm-up hour embeds the catalogue first, so neither
throughput pays that one-off.

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
DAILY_DAG = "interest_pipeline_daily"
TRIVIAL_DAG = "bench_trivial_hourly"

TRIVIAL_DAG_SOURCE = '''"""Benchmark baseline: interest_pipeline_hourly's task graph, every task
doing nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task

# task_id -> upstream task_ids, copied from interest_pipeline_hourly when the bench ran.
SHAPE = {shape!r}


@dag(
    dag_id="bench_trivial_hourly",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=datetime(1995, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={{"retries": 1, "retry_delay": timedelta(seconds=30), "pool": "duckdb_writer"}},
    tags=["benchmark"],
)
def bench_trivial_hourly() -> None:
    @task
    def noop() -> dict:
        return {{}}

    tasks = {{task_id: noop.override(task_id=task_id)() for task_id in SHAPE}}
    for task_id, upstream in SHAPE.items():
        for up in upstream:
            tasks[up] >> tasks[task_id]


bench_trivial_hourly()
'''


def real_dag_shape() -> dict[str, list[str]]:
    """task_id -> upstream task_ids of the real DAG (a mapped task counts once)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / f"{REAL_DAG}.py"))
    dag = bag.dags[REAL_DAG]
    return {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}


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


def _wait_idle(dag_ids: list[str], timeout: float = 600.0) -> None:
    """Wait for runs the scheduler started on its own (unpausing a DAG with catchup off still
    schedules its latest interval), so they do not count against a backfill."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            busy = session.query(DagRun).filter(
                DagRun.dag_id.in_(dag_ids), DagRun.state.in_(("queued", "running"))
            ).count()
        if not busy:
            return
        time.sleep(2)
    raise TimeoutError(f"runs of {dag_ids} still active after {timeout:.0f}s")


def backfill(dag_id: str, hours: list[datetime], env: dict[str, str],
             timeout: float = 1200.0, hours_per_run: int = 1) -> dict[str, Any]:
    """Backfill the runs starting at ``hours`` through the scheduler; wall seconds, each run's
    duration and the hours covered."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    from interest_pipeline.airflow_local import airflow_bin

    cmd = [airflow_bin(), "backfill", "create", "--dag-id", dag_id,
           "--from-date", _aware(hours[0]).isoformat(), "--to-date", _aware(hours[-1]).isoformat(),
           "--max-active-runs", "1", "--reprocess-behavior", "failed"]
    started = time.monotonic()
    for _ in range(30):  # SQLite may be busy; the previous backfill may not be closed yet
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode == 0 or not any(
            m in proc.stderr for m in ("database is locked", "AlreadyRunningBackfill")
        ):
            break
        time.sleep(2)
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
                wall = time.monotonic() - started
                durations = [(r.end_date - r.start_date).total_seconds() for r in runs]
                _wait_backfill_closed(dag_id, timeout)
                return {"wall_seconds": wall, "run_seconds": durations,
                        "hours": len(hours) * hours_per_run}
        time.sleep(1)
    raise TimeoutError(f"backfill of {dag_id} did not finish in {timeout:.0f}s")


def _wait_backfill_closed(dag_id: str, timeout: float) -> None:
    """The scheduler marks a backfill completed a little after its last run: only one backfill
    per DAG may be open, so the next one waits for that."""
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            last = (session.query(Backfill).filter(Backfill.dag_id == dag_id)
                    .order_by(Backfill.id.desc()).first())
            if last is None or last.completed_at is not None:
                return
        time.sleep(1)


def run(args: Any) -> Section:
    section = Section("orchestration")
    data = WORK_DIR / "orchestration"
    if data.exists():
        shutil.rmtree(data)
    dags = data / "dags"
    dags.mkdir(parents=True)
    for dag_id in (REAL_DAG, DAILY_DAG):
        (dags / f"{dag_id}.py").symlink_to(REPO_ROOT / "dags" / f"{dag_id}.py")
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
    shape = real_dag_shape()
    (dags / f"{TRIVIAL_DAG}.py").write_text(TRIVIAL_DAG_SOURCE.format(shape=shape))
    replay_seed(data / "landing")
    # Day one of the sample: a warm-up hour (embeds the catalogue), then hourly runs; day two
    # in one daily run. Both days are busy shop days of the same replayed window.
    warm_up = [SEED_HOUR]
    sample_hours = [SEED_HOUR + timedelta(hours=i) for i in range(1, 4 if args.quick else 7)]
    sample_day = [datetime(2010, 11, 11)]
    empty_hours = [datetime(2010, 11, 13, 0) + timedelta(hours=i) for i in range(3)]
    dag_ids = [REAL_DAG, DAILY_DAG, TRIVIAL_DAG]
    try:
        start_seconds = time.monotonic()
        airflow_local.start(env)
        _wait_for_dags(dag_ids)
        start_seconds = time.monotonic() - start_seconds
        time.sleep(5)  # let the scheduler create the latest interval's run, then let it finish
        _wait_idle(dag_ids)
        backfill(REAL_DAG, warm_up, env)
        sample = backfill(REAL_DAG, sample_hours, env)
        daily = backfill(DAILY_DAG, sample_day, env, hours_per_run=24)
        empty = backfill(REAL_DAG, empty_hours, env)
        trivial = backfill(TRIVIAL_DAG, empty_hours, env)
    finally:
        airflow_local.stop(env)
    section.add(
        "empty hour through the DAG (run duration)", round(median(empty["run_seconds"]), 2), "s",
        baseline=round(median(trivial["run_seconds"]), 2),
        baseline_metric=f"trivial DAG, same {len(shape)}-task graph",
        note=f"median of {len(empty_hours)} runs each",
    )
    throughput = sample["hours"] / sample["wall_seconds"] * 60
    trivial_throughput = trivial["hours"] / trivial["wall_seconds"] * 60
    daily_throughput = daily["hours"] / daily["wall_seconds"] * 60
    section.add(
        "backfill throughput on sample logs, hourly DAG", round(throughput, 2), "hours/min",
        baseline=round(trivial_throughput, 2), baseline_metric="trivial DAG backfill",
        note=f"{sample['hours']} busy sample hours in {sample['wall_seconds']:.0f} s; a year "
             f"(8,760 h) would take {8760 / throughput / 60:.1f} h",
    )
    section.add(
        "backfill throughput on sample logs, daily DAG", round(daily_throughput, 2), "hours/min",
        baseline=round(throughput, 2), baseline_metric="hourly DAG backfill (same run)",
        note=f"one sample day (24 h) in {daily['wall_seconds']:.0f} s; a year would take "
             f"{8760 / daily_throughput / 60:.1f} h",
    )
    section.details = {"dag_shape": shape, "airflow_start_seconds": start_seconds,
                       "sample_backfill": sample, "daily_backfill": daily,
                       "empty_backfill": empty, "trivial_backfill": trivial}
    return section


if __name__ == "__main__":
    section_main(run)
