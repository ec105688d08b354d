"""The dbt project's SQL follows the house style: `sqlfluff lint dbt_project` finds nothing.

`make lint` runs the same check (and ruff); this test makes `make test` guard the SQL too. The
rules live in dbt_project/.sqlfluff; `.venv/bin/sqlfluff fix dbt_project` applies most fixes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SQLFLUFF = Path(sys.executable).parent / "sqlfluff"


def test_dbt_project_sql_passes_sqlfluff() -> None:
    result = subprocess.run(
        [str(SQLFLUFF), "lint", "dbt_project", "--nocolor"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"sqlfluff found violations in dbt_project:\n{output[-6000:]}"
