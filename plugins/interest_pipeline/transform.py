"""Run the dbt project (staging -> intermediate -> marts) for one interval."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from interest_pipeline.config import DBT_PROJECT_DIR, Settings

log = logging.getLogger(__name__)


class DbtBuildError(RuntimeError):
    """dbt build failed; the message carries the tail of dbt's output."""


def dbt_executable() -> str:
    """The dbt of the running interpreter's environment (the venv), else the one on PATH."""
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


def dbt_command(settings: Settings, *args: str) -> tuple[list[str], dict[str, str]]:
    """A dbt command line and environment pointed at this project and warehouse."""
    settings.dbt_log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        dbt_executable(),
        *args,
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target-path",
        str(settings.dbt_target_dir),
    ]
    env = {
        **os.environ,
        "INTEREST_WAREHOUSE_PATH": str(settings.warehouse_path),
        "DBT_LOG_PATH": str(settings.dbt_log_dir),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_USE_COLORS": "false",
    }
    return cmd, env


def record_interval(settings: Settings, interval_start: datetime, interval_end: datetime) -> None:
    """Write the interval into raw.dbt_run_interval, where the dbt project reads it.

    Passing it as ``--vars`` instead would change dbt's vars hash every hour, which makes dbt
    throw away its partial-parse cache and re-parse the whole project (about 5 s of every
    hourly build); see dbt_project/macros/interval.sql.
    """
    from interest_pipeline.warehouse import open_warehouse, transaction

    with open_warehouse(settings.warehouse_path) as con, transaction(con):
        con.execute(
            "create or replace table raw.dbt_run_interval "
            "(interval_start timestamp not null, interval_end timestamp not null)"
        )
        con.execute(
            "insert into raw.dbt_run_interval values (?, ?)", [interval_start, interval_end]
        )


def run_dbt_build(settings: Settings, interval_start: datetime, interval_end: datetime) -> None:
    """``dbt build`` (seeds, models, tests) for one interval, in its own process.

    A separate process keeps dbt's global state and its DuckDB connection out of the Airflow
    task; the caller must hold no write connection to the warehouse meanwhile. The interval
    reaches dbt through raw.dbt_run_interval, not ``--vars``, so dbt's partial parsing (the
    manifest cached in the target dir) stays valid from one hour to the next.
    """
    record_interval(settings, interval_start, interval_end)
    interval = f"[{interval_start:%Y-%m-%d %H:%M:%S}, {interval_end:%Y-%m-%d %H:%M:%S})"
    # dbt unit tests check the SQL logic, not the data: CI runs them (tests/dbt), hours don't.
    # No manifest.json / run_results.json (nothing reads them; the output is logged): writing
    # the manifest costs more than the partial parse that produced it.
    cmd, env = dbt_command(
        settings, "build", "--exclude-resource-type", "unit_test", "--no-write-json"
    )
    log.info("running %s for %s", " ".join(cmd), interval)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    for line in output.splitlines():
        log.info("dbt: %s", line)
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise DbtBuildError(f"dbt build failed (exit {proc.returncode}) for {interval}:\n{tail}")
