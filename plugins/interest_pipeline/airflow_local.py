"""Run Airflow locally for real: scheduler, dag-processor, api-server and triggerer.

The embedded default is SQLite + LocalExecutor under ``$AIRFLOW_HOME`` (``.local/airflow``). Each
component runs as its own process group with a pid file in ``$AIRFLOW_HOME/run`` and a log in
``$AIRFLOW_HOME/logs/processes``, so ``stop`` ends exactly what ``start`` began.

The scale-out configuration runs without containers too: with
``AIRFLOW__CORE__EXECUTOR=CeleryExecutor`` (see :func:`celery_env`: metadata DB and Celery
results in PostgreSQL, Redis as broker) ``start`` adds ``$INTEREST_CELERY_WORKERS`` (default 1)
``airflow celery worker`` processes. docker-compose.yml runs the same configuration.

``start`` returns once the api-server answers, the scheduler, dag-processor and triggerer have
heartbeated and the project's DAGs are parsed: the api-server first, since every task reports
to it, then the components that run tasks. Every port an instance binds follows
``INTEREST_AIRFLOW_PORT`` (see :func:`interest_pipeline.config.local_airflow_env`).

Usage: ``interest-airflow start|stop|status|prepare|env`` (``make airflow-start`` /
``make airflow-stop``; ``prepare`` = migrate the metadata DB and create the writer pool, what
the compose file's ``airflow-init`` runs; ``env`` prints the environment as shell exports).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from interest_pipeline.config import (
    DAG_ID,
    DAILY_DAG_ID,
    airflow_env,
    airflow_start_timeout,
    get_settings,
    local_airflow_env,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Started first and waited for: tasks report to the api-server's execution API, so nothing that
# runs tasks (scheduler, Celery workers) starts before it answers.
FIRST_COMPONENTS = ("api-server", "dag-processor")
# The metadata DB's job type of each component that heartbeats.
JOB_TYPES = {
    "scheduler": "SchedulerJob",
    "dag-processor": "DagProcessorJob",
    "triggerer": "TriggererJob",
}
PROGRESS_EVERY = 10.0  # seconds between progress lines of a long wait
POOL = "duckdb_writer"
POOL_DESCRIPTION = "one slot: DuckDB allows a single writing process per warehouse file"
CELERY_EXECUTOR = "CeleryExecutor"
CELERY_WORKER = "celery-worker"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def celery_env(
    database: str,
    postgres: str = "postgres@127.0.0.1:5432",
    broker_url: str = REDIS_URL,
    worker_concurrency: int = 2,
) -> dict[str, str]:
    """Airflow settings of the scale-out path: CeleryExecutor, PostgreSQL, Redis.

    The metadata DB and the Celery result backend share one PostgreSQL database; Redis is the
    broker. docker-compose.yml sets the same keys (tests/test_compose.py checks it).

    Args:
        database: PostgreSQL database name.
        postgres: ``user[:password]@host:port`` of the PostgreSQL server.
        broker_url: Redis URL, with the DB number.
        worker_concurrency: task slots per Celery worker (Airflow's default of 16 is far more
            than a small machine can run with an embedding model in each task).
    """
    return {
        "AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{postgres}/{database}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{postgres}/{database}",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
    }


def components(env: dict[str, str]) -> tuple[str, ...]:
    """The processes this configuration runs: the core four, plus Celery workers if Celery."""
    if env.get("AIRFLOW__CORE__EXECUTOR", "").rsplit(".", 1)[-1] != CELERY_EXECUTOR:
        return COMPONENTS
    workers = int(env.get("INTEREST_CELERY_WORKERS", "1"))
    return COMPONENTS + tuple(f"{CELERY_WORKER}-{i}" for i in range(1, workers + 1))


def _command(component: str) -> list[str]:
    if component.startswith(CELERY_WORKER):
        # Each worker needs its own Celery node name. Task logs are written to the shared local
        # log folder, which the api-server reads directly: no log server (and so no clash on
        # its fixed port between workers) is needed on one machine.
        return [
            airflow_bin(), "celery", "worker",
            "--celery-hostname", f"{component}@%h", "--skip-serve-logs",
        ]
    return [airflow_bin(), component]


def airflow_bin() -> str:
    """The airflow executable of this environment (Airflow spawns `airflow` subprocesses too)."""
    candidate = Path(sys.executable).parent / "airflow"
    return str(candidate) if candidate.exists() else "airflow"


def local_env() -> dict[str, str]:
    """Full environment for Airflow processes: the project's defaults plus shared secrets.

    Every component must sign and accept the same JWTs (tasks call the api-server's execution
    API), so the secret is generated once and kept in ``$AIRFLOW_HOME``.
    """
    settings = get_settings()
    env = {**os.environ, **airflow_env(settings), **local_airflow_env()}
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    secret_file = home / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    # SQLite: a writer waits up to 60 s for another's write lock instead of failing with
    # "database is locked" (this busy timeout cannot help a transaction that read before it
    # wrote: see immediate_transactions).
    env.setdefault(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home.resolve()}/airflow.db?timeout=60"
    )
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secret_file.read_text().strip())
    # Parse the DAG folder often enough that a fresh start can run a backfill within seconds.
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run_dir(env: dict[str, str]) -> Path:
    path = Path(env["AIRFLOW_HOME"]) / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log_dir(env: dict[str, str]) -> Path:
    path = Path(env["AIRFLOW_HOME"]) / "logs" / "processes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid(env: dict[str, str], component: str) -> int | None:
    pid_file = _run_dir(env) / f"{component}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip() or 0)
    try:
        alive = pid > 0 and _alive(pid)  # reaps it if it is our child that exited
    except PermissionError:
        alive = False
    if not alive:
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def prepare(env: dict[str, str] | None = None) -> dict[str, str]:
    """Migrate the metadata DB and create the one-slot DuckDB writer pool (both idempotent)."""
    env = env or local_env()
    for cmd in (["db", "migrate"], ["pools", "set", POOL, "1", POOL_DESCRIPTION]):
        proc = subprocess.run(
            [airflow_bin(), *cmd], env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return env


def status(env: dict[str, str] | None = None) -> dict[str, int | None]:
    """Pid of each component, or None where it is not running."""
    env = env or local_env()
    return {c: _pid(env, c) for c in components(env)}


def start(env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, int]:
    """Start every component not already running; return when all of them are up.

    Up means: the api-server answers its health endpoint, the scheduler, dag-processor and
    triggerer have heartbeated since this call, and the project's DAGs are parsed into the
    metadata DB (a backfill needs them). Prints a progress line every ``PROGRESS_EVERY``
    seconds. Reads the metadata DB in this process: ``airflow`` must not have been imported
    with another configuration than ``env``'s.

    Raises:
        RuntimeError: a component exited, or a DAG file does not import.
        TimeoutError: not up within ``timeout`` seconds (``INTEREST_AIRFLOW_START_TIMEOUT``).
    """
    began = time.monotonic()
    env = prepare(env)
    timeout = airflow_start_timeout() if timeout is None else timeout
    since = datetime.now(UTC)
    everything = components(env)
    pids = {c: _launch(env, c) for c in everything if c in FIRST_COMPONENTS}
    logs = f"see {_log_dir(env)}"
    wait_for("airflow start", lambda: _pending_api(env, pids), timeout, began, logs)
    pids.update({c: _launch(env, c) for c in everything if c not in FIRST_COMPONENTS})
    wait_for("airflow start", lambda: _pending_components(env, pids, since), timeout, began, logs)
    print(f"airflow start: up after {time.monotonic() - began:.0f}s", flush=True)
    return {c: pids[c] for c in everything}


def _launch(env: dict[str, str], component: str) -> int:
    """Pid of the running component, started now unless it already runs."""
    pid = _pid(env, component)
    if pid is not None:
        return pid
    with (_log_dir(env) / f"{component}.log").open("ab") as out:
        proc = subprocess.Popen(
            _command(component),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends its children
        )
    (_run_dir(env) / f"{component}.pid").write_text(str(proc.pid))
    log.info("started airflow %s (pid %d)", component, proc.pid)
    return proc.pid


def wait_for(
    label: str,
    pending: Callable[[], list[str]],
    timeout: float,
    began: float | None = None,
    hint: str = "",
    poll: float = 1.0,
) -> None:
    """Poll ``pending`` (what is not ready yet) until it returns nothing, printing progress.

    Args:
        label: what waits, the start of every progress line.
        pending: returns a description of each thing still waited for.
        timeout: seconds (since ``began``, a ``time.monotonic()``; default now) before
            TimeoutError, whose message ends with ``hint``.
        poll: seconds between calls.
    """
    began = time.monotonic() if began is None else began
    told = time.monotonic()
    while True:
        waiting = pending()
        if not waiting:
            return
        elapsed = time.monotonic() - began
        if elapsed > timeout:
            raise TimeoutError(
                f"{label}: still waiting for {', '.join(waiting)} after {timeout:.0f}s"
                + (f"; {hint}" if hint else "")
            )
        if time.monotonic() - told >= PROGRESS_EVERY:
            print(f"{label}: waiting for {', '.join(waiting)} ({elapsed:.0f}s)", flush=True)
            told = time.monotonic()
        time.sleep(poll)


def _exited(env: dict[str, str], pids: dict[str, int]) -> None:
    dead = [c for c, pid in pids.items() if not _alive(pid)]
    if dead:  # e.g. a worker or scheduler that cannot load its executor exits at once
        raise RuntimeError(
            f"airflow {', '.join(dead)} exited right after starting; see "
            + ", ".join(str(_log_dir(env) / f"{c}.log") for c in dead)
        )


def _pending_api(env: dict[str, str], pids: dict[str, int]) -> list[str]:
    _exited(env, pids)
    url = f"{env['AIRFLOW__API__BASE_URL']}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            if resp.status == 200:
                return []
    except (urllib.error.URLError, OSError):
        pass
    return [f"the api-server to answer at {url}"]


def _pending_components(env: dict[str, str], pids: dict[str, int], since: datetime) -> list[str]:
    """What is not up yet: components without a heartbeat since ``since``, unparsed DAGs."""
    from airflow.jobs.job import Job
    from airflow.models.dag import DagModel
    from airflow.models.errors import ParseImportError
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from airflow.utils.state import JobState
    from sqlalchemy import func, select

    _exited(env, pids)
    dag_ids = _project_dag_ids(env)
    with create_session() as session:
        beats = dict(session.execute(
            select(Job.job_type, func.max(Job.latest_heartbeat))
            .where(Job.state == JobState.RUNNING, Job.job_type.in_(JOB_TYPES.values()))
            .group_by(Job.job_type)
        ).all())
        parsed = set(session.scalars(
            select(DagModel.dag_id).join(
                SerializedDagModel, SerializedDagModel.dag_id == DagModel.dag_id
            ).where(DagModel.dag_id.in_(dag_ids), DagModel.is_stale.is_(False))
        ))
        broken = session.scalars(
            select(ParseImportError).where(ParseImportError.timestamp >= since)
        ).all()
    for error in broken:
        if any(error.filename.endswith(f"{dag_id}.py") for dag_id in set(dag_ids) - parsed):
            last = (error.stacktrace or "").strip().splitlines()[-1:] or ["?"]
            raise RuntimeError(f"DAG file {error.filename} does not import: {last[0]}")
    waiting = [
        f"a {component} heartbeat"
        for component, job_type in JOB_TYPES.items()
        if component in pids and not _after(beats.get(job_type), since)
    ]
    return waiting + [f"DAG {dag_id} to be parsed" for dag_id in dag_ids if dag_id not in parsed]


def _after(moment: datetime | None, since: datetime) -> bool:
    if moment is None:
        return False
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) >= since


def _project_dag_ids(env: dict[str, str]) -> list[str]:
    """The project's DAGs in this DAG folder (a DAG file is named after its dag_id)."""
    folder = Path(env["AIRFLOW__CORE__DAGS_FOLDER"])
    return [d for d in (DAG_ID, DAILY_DAG_ID) if (folder / f"{d}.py").exists()]


def scheduler_problem(env: dict[str, str], heartbeat_timeout: float) -> str | None:
    """Why the local scheduler cannot be running anything, or None if it looks alive.

    Dead means its process is gone, or it has not heartbeated in the metadata DB for more than
    ``heartbeat_timeout`` seconds (hung, or stopped without its pid file knowing).
    """
    where = _log_dir(env) / "scheduler.log"
    pid = _pid(env, "scheduler")
    if pid is None:
        return f"the Airflow scheduler is not running (its process is gone; log: {where})"
    age = scheduler_heartbeat_age()
    if age is None:
        return f"the Airflow scheduler (pid {pid}) has no running job in the metadata DB ({where})"
    if age > heartbeat_timeout:
        return (
            f"the Airflow scheduler (pid {pid}) has not heartbeated for {age:.0f}s "
            f"(limit {heartbeat_timeout:.0f}s; log: {where})"
        )
    return None


def scheduler_heartbeat_age() -> float | None:
    """Seconds since the running scheduler job's last heartbeat; None if none is running."""
    from airflow.jobs.job import most_recent_job
    from airflow.utils.session import create_session
    from airflow.utils.state import JobState

    with create_session() as session:
        job = most_recent_job("SchedulerJob", session=session)
        if job is None or job.state != JobState.RUNNING or job.latest_heartbeat is None:
            return None
        beat = job.latest_heartbeat
    beat = beat if beat.tzinfo else beat.replace(tzinfo=UTC)
    return (datetime.now(UTC) - beat).total_seconds()


@contextmanager
def immediate_transactions(engine: Engine | None = None) -> Iterator[None]:
    """Within: every transaction on ``engine`` (default: this process's Airflow metadata DB)
    takes SQLite's write lock first.

    Why: pysqlite begins a transaction only before a data-changing statement, so a SAVEPOINT
    (SQLAlchemy's ``begin_nested``) issued outside one starts a *deferred* SQLite transaction:
    its first SELECT pins a read snapshot, and if another process (the scheduler, the
    api-server) commits before its first write, that write fails at once with "database is
    locked" (SQLITE_BUSY_SNAPSHOT): the busy timeout is never consulted. And releasing that
    outermost savepoint commits. Airflow's backfill creation wraps every run in a savepoint,
    so on SQLite each run became visible (and runnable) on its own, the first write after a
    scheduler commit failed, and Airflow's clean-up of the "partial" backfill deleted runs the
    scheduler was already running: ObjectDeletedError/StaleDataError in its loop, and it died.

    ``BEGIN IMMEDIATE`` takes the write lock before the first read (waiting for it under the
    busy timeout) and turns savepoints into real nested ones, so a backfill's runs commit
    together or not at all. Only for short write sessions: other writers wait meanwhile.
    PostgreSQL and other databases: a no-op.
    """
    from sqlalchemy import event

    if engine is None:
        from airflow import settings

        engine = settings.engine
    if engine is None or engine.dialect.name != "sqlite":
        yield
        return

    def begin_immediate(connection) -> None:
        # pysqlite must not begin transactions of its own; this BEGIN is the only one
        connection.connection.dbapi_connection.isolation_level = None
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "begin", begin_immediate)
    try:
        yield
    finally:
        event.remove(engine, "begin", begin_immediate)
        engine.dispose()  # the pooled connections are left without pysqlite's transactions


def stop(
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    only: Iterable[str] | None = None,
) -> list[str]:
    """Stop the components started by :func:`start` (TERM, then KILL after ``timeout``).

    ``only``: stop just these components (e.g. those one caller started); default all.
    """
    env = env or local_env()
    # Whatever has a pid file, too: workers started under another INTEREST_CELERY_WORKERS.
    started = {p.stem for p in _run_dir(env).glob("*.pid")}
    names = list(components(env)) + sorted(started - set(components(env)))
    if only is not None:
        names = [n for n in names if n in set(only)]
    stopped = []
    for component in reversed(names):
        pid = _pid(env, component)
        if pid is None:
            continue
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
        (_run_dir(env) / f"{component}.pid").unlink(missing_ok=True)
        stopped.append(component)
    return stopped


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _admin_connection(admin_url: str):  # a psycopg2 connection (imported lazily)
    import psycopg2

    con = psycopg2.connect(admin_url)
    con.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return con


def create_database(name: str, admin_url: str = POSTGRES_ADMIN_URL) -> None:
    """Create an empty PostgreSQL database (for a fresh metadata DB); fails if it exists."""
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"not a plain PostgreSQL database name: {name!r}")
    con = _admin_connection(admin_url)
    try:
        with con.cursor() as cur:
            cur.execute(f'create database "{name}"')
    finally:
        con.close()


def drop_database(name: str, admin_url: str = POSTGRES_ADMIN_URL) -> None:
    """Drop a PostgreSQL database if it exists, ending any session still connected to it."""
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"not a plain PostgreSQL database name: {name!r}")
    con = _admin_connection(admin_url)
    try:
        with con.cursor() as cur:
            cur.execute(f'drop database if exists "{name}" with (force)')
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="interest-airflow",
        description="Start, stop or inspect the local Airflow (scheduler, dag-processor, "
        "api-server, triggerer; SQLite + LocalExecutor under $AIRFLOW_HOME; with "
        "AIRFLOW__CORE__EXECUTOR=CeleryExecutor also $INTEREST_CELERY_WORKERS celery workers). "
        "prepare: migrate the metadata DB and create the one-slot writer pool. "
        "env: print the environment as export lines (eval \"$(interest-airflow env)\").",
    )
    parser.add_argument("action", choices=("start", "stop", "status", "prepare", "env"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = local_env()
    if args.action == "start":
        os.environ.update(env)  # before airflow is imported: start() reads the metadata DB
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # this process only
        pids = start(env)
        print(f"airflow running ({', '.join(f'{c} {p}' for c, p in pids.items())})")
        print(f"UI: {env['AIRFLOW__API__BASE_URL']}  (DAGs {DAG_ID}, {DAILY_DAG_ID}; admin "
              "password in "
              f"{Path(env['AIRFLOW_HOME']) / 'simple_auth_manager_passwords.json.generated'})")
        print(f"logs: {_log_dir(env)}")
    elif args.action == "env":
        for key in sorted(k for k in env if k.startswith(("AIRFLOW", "INTEREST_"))):
            print(f"export {key}={shlex.quote(env[key])}")
    elif args.action == "prepare":
        prepare(env)
        print(f"metadata DB migrated; pool {POOL} has 1 slot")
    elif args.action == "stop":
        stopped = stop(env)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        for component, pid in status(env).items():
            print(f"{component:>14}: {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
