"""Run Airflow locally for real: scheduler, dag-processor, api-server and triggerer.

The embedded default is SQLite + LocalExecutor under ``$AIRFLOW_HOME`` (``.local/airflow``). Each
component runs as its own process group with a pid file in ``$AIRFLOW_HOME/run`` and a log in
``$AIRFLOW_HOME/logs/processes``, so ``stop`` ends exactly what ``start`` began.

Usage: ``interest-airflow start|stop|status`` (``make airflow-start`` / ``make airflow-stop``).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from interest_pipeline.config import DAG_ID, airflow_env, get_settings

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
POOL = "duckdb_writer"
POOL_DESCRIPTION = "one slot: DuckDB allows a single writing process per warehouse file"


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
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [airflow_bin(), "pools", "set", POOL, "1", POOL_DESCRIPTION],
        env=env,
        check=True,
        capture_output=True,
    )
    return env


def status(env: dict[str, str] | None = None) -> dict[str, int | None]:
    """Pid of each component, or None where it is not running."""
    env = env or local_env()
    return {c: _pid(env, c) for c in COMPONENTS}


def start(env: dict[str, str] | None = None, timeout: float = 180.0) -> dict[str, int]:
    """Start every component not already running; wait until the api-server answers."""
    env = prepare(env)
    pids: dict[str, int] = {}
    for component in COMPONENTS:
        pid = _pid(env, component)
        if pid is None:
            with (_log_dir(env) / f"{component}.log").open("ab") as out:
                proc = subprocess.Popen(
                    [airflow_bin(), component],
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
    stopped = []
    for component in reversed(COMPONENTS):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="interest-airflow",
        description="Start, stop or inspect the local Airflow (scheduler, dag-processor, "
        "api-server, triggerer; SQLite + LocalExecutor under $AIRFLOW_HOME).",
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = local_env()
    if args.action == "start":
        pids = start(env)
        print(f"airflow running ({', '.join(f'{c} {p}' for c, p in pids.items())})")
        print(f"UI: {env['AIRFLOW__API__BASE_URL']}  (DAG {DAG_ID}; admin password in "
              f"{Path(env['AIRFLOW_HOME']) / 'simple_auth_manager_passwords.json.generated'})")
        print(f"logs: {_log_dir(env)}")
    elif args.action == "stop":
        stopped = stop(env)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        for component, pid in status(env).items():
            print(f"{component:>14}: {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
