"""Run Airflow locally for real: scheduler, dag-processor, api-server and triggerer.

The embedded default is SQLite + LocalExecutor under ``$AIRFLOW_HOME`` (``.local/airflow``). Each
component runs as its own process group with a pid file in ``$AIRFLOW_HOME/run`` and a log in
``$AIRFLOW_HOME/logs/processes``, so ``stop`` ends exactly what ``start`` began.

The scale-out configuration runs without containers too: with
``AIRFLOW__CORE__EXECUTOR=CeleryExecutor`` (see :func:`celery_env`: metadata DB and Celery
results in PostgreSQL, Redis as broker) ``start`` adds ``$INTEREST_CELERY_WORKERS`` (default 1)
``airflow celery worker`` processes. docker-compose.yml runs the same configuration.

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
from pathlib import Path

from interest_pipeline.config import DAG_ID, DAILY_DAG_ID, airflow_env, get_settings

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
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
    env = {**os.environ, **airflow_env(settings)}
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    secret_file = home / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    # SQLite: wait for the scheduler's write lock instead of failing with "database is locked".
    env.setdefault(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home.resolve()}/airflow.db?timeout=60"
    )
    port = env.get("INTEREST_AIRFLOW_PORT", "8080")
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secret_file.read_text().strip())
    env.setdefault("AIRFLOW__API__PORT", port)
    env.setdefault("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}")
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
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
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
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


def start(env: dict[str, str] | None = None, timeout: float = 180.0) -> dict[str, int]:
    """Start every component not already running; wait until the api-server answers."""
    env = prepare(env)
    pids: dict[str, int] = {}
    for component in components(env):
        pid = _pid(env, component)
        if pid is None:
            with (_log_dir(env) / f"{component}.log").open("ab") as out:
                proc = subprocess.Popen(
                    _command(component),
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: stop() ends its children
                )
            pid = proc.pid
            (_run_dir(env) / f"{component}.pid").write_text(str(pid))
            log.info("started airflow %s (pid %d)", component, pid)
        pids[component] = pid
    _wait_for_api(env, timeout)
    dead = [c for c, pid in pids.items() if not _alive(pid)]
    if dead:  # e.g. a worker or scheduler that cannot load its executor exits at once
        raise RuntimeError(
            f"airflow {', '.join(dead)} exited right after starting; see "
            + ", ".join(str(_log_dir(env) / f"{c}.log") for c in dead)
        )
    return pids


def _wait_for_api(env: dict[str, str], timeout: float) -> None:
    url = f"{env['AIRFLOW__API__BASE_URL']}/api/v2/monitor/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if _pid(env, "api-server") is None:
            raise RuntimeError(
                f"airflow api-server exited; see {_log_dir(env) / 'api-server.log'}"
            )
        time.sleep(1)
    raise TimeoutError(f"airflow api-server did not answer at {url} within {timeout:.0f}s")


def stop(env: dict[str, str] | None = None, timeout: float = 30.0) -> list[str]:
    """Stop the components started by :func:`start` (TERM, then KILL after ``timeout``)."""
    env = env or local_env()
    # Whatever has a pid file, too: workers started under another INTEREST_CELERY_WORKERS.
    started = {p.stem for p in _run_dir(env).glob("*.pid")}
    names = list(components(env)) + sorted(started - set(components(env)))
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
