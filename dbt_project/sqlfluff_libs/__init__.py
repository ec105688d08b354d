"""dbt's Jinja context for sqlfluff's jinja templater (dbt_project/.sqlfluff: library_path).

sqlfluff's `apply_dbt_builtins` covers ref, source, config, this, is_incremental and return;
the project's macros also call these. Each renders the path a plain hourly run takes, from
the SQL alone: no environment, no warehouse, no dbt parse.
"""

from __future__ import annotations

import re as _re
import types as _types
from typing import Any


def var(name: str, default: Any = None) -> Any:
    """No `--vars`: the hourly task's path, reading raw.dbt_run_interval (macros/interval.sql)."""
    return default


def env_var(name: str, default: str | None = None) -> str:
    """The documented default, whatever this machine's environment holds."""
    return default if default is not None else name


def _raise_compiler_error(message: str) -> None:
    raise ValueError(message)


modules = _types.SimpleNamespace(re=_re)
exceptions = _types.SimpleNamespace(raise_compiler_error=_raise_compiler_error)
