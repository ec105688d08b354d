"""Run the dbt project (staging -> intermediate -> marts) for one interval."""

from __future__ import annotations

import json
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


def run_dbt_build(settings: Settings, interval_start: datetime, interval_end: datetime) -> None:
    """``dbt build`` (seeds, models, tests) for one interval, in its own process.

    A separate process keeps dbt's global state and its DuckDB connection out of the Airflow
    task; the caller must hold no write connection to the warehouse meanwhile.
    """
    dbt_vars = {
        "interval_start": f"{interval_start:%Y-%m-%d %H:%M:%S}",
        "interval_end": f"{interval_end:%Y-%m-%d %H:%M:%S}",
    }
    # dbt unit tests check the SQL logic, not the data: CI runs them (tests/dbt), hours don't.
    cmd, env = dbt_command(
        settings, "build", "--exclude-resource-type", "unit_test", "--vars", json.dumps(dbt_vars)
    )
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    for line in output.splitlines():
        log.info("dbt: %s", line)
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise DbtBuildError(f"dbt build failed (exit {proc.returncode}) for {dbt_vars}:\n{tail}")
