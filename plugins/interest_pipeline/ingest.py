"""Copy one hourly landing partition, line for line, into the warehouse's raw tables.

Parsing and validation happen in dbt (stg_landing__*), so every landed line, good or bad,
reaches the warehouse and is either staged or quarantined: nothing is dropped here.
"""

from __future__ import annotations

import gzip
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from interest_pipeline.warehouse import insert_arrow, transaction

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

KINDS = ("events", "items")
_RAW_TABLE = {"events": "raw.event_lines", "items": "raw.item_lines"}


def partition_dir(landing_dir: Path, kind: str, interval_start: datetime) -> Path:
    """The contract's partition folder for the hour starting at ``interval_start`` (UTC)."""
    return (
        landing_dir
        / kind
        / f"date={interval_start:%Y-%m-%d}"
        / f"hour={interval_start:%H}"
    )


def read_partition_lines(landing_dir: Path, folder: Path) -> list[tuple[str, int, str]]:
    """Every line of every ``*.jsonl[.gz]`` file in a partition, as (file, line_no, text).

    Files are read in name order so reruns see lines in the same order. Undecodable bytes are
    replaced rather than raised, so the line still reaches quarantine with what it held.
    """
    if not folder.is_dir():
        return []
    rows: list[tuple[str, int, str]] = []
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    for path in files:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the trailing newline ends the last line; it is not an empty line
        rel = path.relative_to(landing_dir).as_posix()
        rows.extend((rel, i, line.rstrip("\r")) for i, line in enumerate(lines, start=1))
    return rows


def ingest_interval(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    interval_start: datetime,
    interval_end: datetime,
) -> dict[str, int]:
    """Replace the interval's rows in raw.event_lines / raw.item_lines with the partition's lines.

    Returns the number of lines landed per kind. A missing partition is an empty hour.
    """
    import pyarrow as pa

    loaded_at = datetime.utcnow().replace(microsecond=0)
    counts: dict[str, int] = {}
    with transaction(con):
        for kind in KINDS:
            rows = read_partition_lines(landing_dir, partition_dir(landing_dir, kind, interval_start))
            table = _RAW_TABLE[kind]
            con.execute(f"delete from {table} where interval_start = ?", [interval_start])
            n = len(rows)
            batch = pa.table(
                {
                    "interval_start": pa.array([interval_start] * n, pa.timestamp("us")),
                    "interval_end": pa.array([interval_end] * n, pa.timestamp("us")),
                    "source_file": pa.array([r[0] for r in rows], pa.string()),
                    "line_number": pa.array([r[1] for r in rows], pa.int32()),
                    "line": pa.array([r[2] for r in rows], pa.string()),
                    "loaded_at": pa.array([loaded_at] * n, pa.timestamp("us")),
                }
            )
            insert_arrow(con, table, batch)
            counts[f"{kind[:-1]}_lines_landed"] = n
    log.info("ingested %s for [%s, %s)", counts, interval_start, interval_end)
    return counts
