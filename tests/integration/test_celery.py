"""The scale-out configuration for real, without containers (slow).

What docker-compose.yml runs, as local processes: Airflow with the CeleryExecutor, its metadata
DB (and Celery's results) in a fresh PostgreSQL database, Redis as the broker, two real
`airflow celery worker` processes of one slot each, the scheduler, dag-processor, api-server and
triggerer (`interest-airflow start`). The main job backfills the catalogue hour of the retail
window (1,600 item documents: several embedding shards fanned out over both workers) and two
busy hours; the tables must equal an in-process, hour-by-hour run, and no two tasks that open
the warehouse may ever have run at the same time.

PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) must be running: without
them this test fails, it does not skip. It drops its database and Redis keys at the end.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from datetime import datetime, timedelta

import pytest

from interest_pipeline import airflow_local, stages
from interest_pipeline.config import DAG_ID, get_settings
from interest_pipeline.replay import DEFAULT_WINDOWS
from interest_pipeline.warehouse import connect
from tests.integration.test_end_to_end import (
    OUTPUT_TABLES,
    _busy_hours,
    _ports_env,
    _run,
    _snapshot,
)
from tests.integration.test_end_to_end import _window as _hours_window

pytestmark = pytest.mark.slow

POSTGRES = "postgres@127.0.0.1:5432"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DB = 11  # away from the default 0 other programs use; keys are prefixed per run as well
SHARD_SIZE = 512  # 1,600 catalogue texts -> 4 shards (the default, 2,048, would make one)
WORKERS = 2
START_HINT = (
    "start them as CI does: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main "
    'start; redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def _require_services() -> None:
    """Fail (never skip) with a clear message when PostgreSQL or Redis is not reachable."""
    problems = []
    try:
        import psycopg2

        psycopg2.connect(airflow_local.POSTGRES_ADMIN_URL, connect_timeout=5).close()
    except Exception as exc:  # any failure means "not usable"
        problems.append(f"PostgreSQL at {POSTGRES}: {exc}".strip())
    try:
        import redis

        redis.Redis(REDIS_HOST, REDIS_PORT, socket_timeout=5).ping()
    except Exception as exc:
        problems.append(f"Redis at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    if problems:
        pytest.fail("services for the Celery test are not reachable: " + "; ".join(problems)
                    + f". {START_HINT}", pytrace=False)


def _window(first: datetime, n: int) -> list[str]:
    return ["--skip-replay", *_hours_window(first, n)]


def _task_instances(database: str) -> tuple[list[dict], int | None]:
    import psycopg2

    con = psycopg2.connect(f"postgresql://{POSTGRES}/{database}")
    try:
        with con.cursor() as cur:
            cur.execute(
                """
                select ti.task_id, ti.map_index, ti.state, ti.pool, ti.start_date, ti.end_date,
                    ti.run_id, dr.data_interval_start as interval_start
                from task_instance as ti
                join dag_run as dr on dr.dag_id = ti.dag_id and dr.run_id = ti.run_id
                where ti.dag_id = %s
                """,
                [DAG_ID],
            )
            cols = [d[0] for d in cur.description]
            tis = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
            cur.execute("select slots from slot_pool where pool = %s", [airflow_local.POOL])
            slots = cur.fetchone()
    finally:
        con.close()
    return tis, slots[0] if slots else None


@pytest.fixture(scope="module")
def celery_run(tmp_path_factory):
    _require_services()
    tmp = tmp_path_factory.mktemp("celery")
    landing = tmp / "data" / "landing"
    first = _busy_hours(landing, 2)  # replays the whole default window into the landing zone
    catalogue_hour = DEFAULT_WINDOWS["retail"][0].replace(tzinfo=None)  # all items land here
    hours = [catalogue_hour, first, first + timedelta(hours=1)]

    database = f"interest_celery_{os.getpid()}_{secrets.token_hex(4)}"
    prefix = f"{database}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INTEREST_"))}
    env.update(airflow_local.celery_env(
        database, POSTGRES, f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}", worker_concurrency=1,
    ))
    env.update({
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": prefix,
        "INTEREST_CELERY_WORKERS": str(WORKERS),
        "INTEREST_DATA_DIR": str(tmp / "data"),
        **_ports_env(),
        "INTEREST_EMBED_SHARD_SIZE": str(SHARD_SIZE),
        # Only the backfills: an unpaused DAG would also get a run for the current hour, which
        # (catalogue already ingested) would embed the same texts at the same time.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    })
    airflow_local.create_database(database)
    try:
        _run(env, "interest-airflow", "start")
        try:
            outputs = [
                _run(env, "interest-main-job", *_window(catalogue_hour, 1)).stdout,
                _run(env, "interest-main-job", *_window(first, 2)).stdout,
            ]
        finally:
            stopped = _run(env, "interest-airflow", "stop").stdout
        tis, slots = _task_instances(database)
        yield {
            "env": env, "hours": hours, "outputs": outputs, "stopped": stopped, "tis": tis,
            "slots": slots, "warehouse": tmp / "data" / "warehouse.duckdb", "landing": landing,
            "data": tmp / "data", "logs": tmp / "data" / "airflow" / "logs",
        }
    finally:
        airflow_local.drop_database(database)
        import redis

        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=REDIS_DB)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)


def _backfilled(celery_run) -> list[dict]:
    return [ti for ti in celery_run["tis"] if ti["run_id"].startswith("backfill__")]


def test_every_hour_ran_through_celery_workers_and_they_were_stopped(celery_run):
    assert "backfill: 1/1 runs done" in celery_run["outputs"][0]
    assert "backfill: 2/2 runs done" in celery_run["outputs"][1]
    tis = _backfilled(celery_run)
    assert tis == celery_run["tis"]  # no scheduled run (use_job_schedule off)
    assert {ti["state"] for ti in tis} <= {"success", "skipped"}
    assert {ti["interval_start"].replace(tzinfo=None) for ti in tis} == set(celery_run["hours"])
    for i in range(1, WORKERS + 1):
        assert f"celery-worker-{i}" in celery_run["stopped"]
        log = (celery_run["logs"] / "processes" / f"celery-worker-{i}.log").read_text()
        assert "execute_workload" in log, f"celery-worker-{i} ran no task"


def test_tables_equal_an_hour_by_hour_in_process_run(celery_run, tmp_path, monkeypatch):
    monkeypatch.setenv("INTEREST_EMBED_SHARD_SIZE", str(SHARD_SIZE))  # same chunks, same vectors
    settings = dataclasses.replace(
        get_settings(), data_dir=tmp_path, warehouse_path=tmp_path / "w.duckdb",
        landing_dir=celery_run["landing"],
    )
    for hour in celery_run["hours"]:
        stages.run_interval(hour, hour + timedelta(hours=1), settings)
    reference = _snapshot(settings.warehouse_path)
    scaled_out = _snapshot(celery_run["warehouse"])
    assert scaled_out["recommendations"], "the busy hours wrote no recommendations"
    for table in OUTPUT_TABLES:
        assert scaled_out[table] == reference[table], table


def test_the_catalogue_was_embedded_in_parallel_shards_and_merged_once(celery_run):
    catalogue_run = [
        ti for ti in _backfilled(celery_run)
        if ti["interval_start"].replace(tzinfo=None) == celery_run["hours"][0]
    ]
    shards = [ti for ti in catalogue_run if ti["task_id"] == "embed_text_shard"]
    assert len(shards) == 4 and {ti["state"] for ti in shards} == {"success"}
    assert {ti["pool"] for ti in shards} == {"default_pool"}
    # two one-slot workers: some shards ran at the same time
    assert any(
        a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"]
        for i, a in enumerate(shards) for b in shards[i + 1:]
    ), "no two shards overlapped: the fan-out did not spread over the workers"
    con = connect(celery_run["warehouse"], read_only=True)
    try:
        texts, distinct = con.execute(
            "select count(*), count(distinct (model_id, text_hash)) from text_embeddings"
        ).fetchall()[0]
        embedded = con.execute(
            "select texts_embedded from pipeline_runs where interval_start = ?",
            [celery_run["hours"][0]],
        ).fetchall()
    finally:
        con.close()
    assert texts == distinct > 3 * SHARD_SIZE
    assert embedded == [(texts,)]
    assert not any((celery_run["data"] / "embedding_shards").glob("*/*"))
    # the busy hours had nothing new to embed: no shard was mapped, the merge still ran
    for hour in celery_run["hours"][1:]:
        run = {ti["task_id"]: ti for ti in _backfilled(celery_run)
               if ti["interval_start"].replace(tzinfo=None) == hour}
        assert run["embed_text_shard"]["state"] == "skipped"
        assert run["merge_text_embeddings"]["state"] == "success"


def test_warehouse_writers_never_ran_at_the_same_time(celery_run):
    assert celery_run["slots"] == 1
    writers = sorted(
        (ti for ti in celery_run["tis"] if ti["pool"] == "duckdb_writer"),
        key=lambda ti: ti["start_date"],
    )
    assert {ti["state"] for ti in writers} == {"success"}
    tasks = {ti["task_id"] for ti in celery_run["tis"]} - {"embed_text_shard"}
    assert len(writers) == len(celery_run["hours"]) * len(tasks)  # all but the shards, every run
    for before, after in zip(writers, writers[1:], strict=False):
        assert before["end_date"] <= after["start_date"], (
            f"{before['task_id']} ({before['run_id']}) and {after['task_id']} "
            f"({after['run_id']}) overlapped"
        )
    task_logs = list((celery_run["logs"] / f"dag_id={DAG_ID}").rglob("*.log"))
    assert task_logs
    assert not [p for p in task_logs if "is locked by another process" in p.read_text()]

