"""Copy one hourly landing partition, line for line, into the warehouse's raw tables.

Parsing and validation happen in dbt (stg_landing__*), so every landed line, good or bad,
reaches the warehouse and is either staged or quarantined: nothing is dropped here. What only
the reader can see is recorded beside the line (``read_problem``) and per file
(``raw.landing_files``), and dbt quarantines it with that reason:

- a gzip file that ends early or is corrupt: the lines decompressed before the damage land as
  usual (each is validated like any other line), the incomplete line at the damage is
  quarantined, and the file gets a file-level quarantine row saying what happened;
- a line that is not valid UTF-8: quarantined with its bytes shown as ``\\xNN`` escapes;
- a line longer than ``INTEREST_MAX_LINE_BYTES`` (default 64 KiB): quarantined with its first
  ``INTEREST_MAX_LINE_BYTES`` bytes, never parsed or embedded.

Lines of users in the erasure registry are dropped before they are stored, and counted
(``raw.landing_files.lines_erased``): a backfill never brings an erased user back.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interest_pipeline.warehouse import insert_arrow, transaction

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)

KINDS = ("events", "items")
_RAW_TABLE = {"events": "raw.event_lines", "items": "raw.item_lines"}
DEFAULT_MAX_LINE_BYTES = 64 * 1024
# Compressed bytes fed to zlib at a time: a corrupt block loses at most this much output.
_GZIP_CHUNK = 64 * 1024


def max_line_bytes() -> int:
    """The longest line accepted (``INTEREST_MAX_LINE_BYTES``, default 64 KiB)."""
    return int(os.environ.get("INTEREST_MAX_LINE_BYTES", str(DEFAULT_MAX_LINE_BYTES)))


@dataclass
class LandedFile:
    """One part file as read: its lines as columns (line numbers from 1, texts, each line's
    read problem or None) and any file problem."""

    path: str
    size_bytes: int
    numbers: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    problems: list[str | None] = field(default_factory=list)
    problem: str | None = None


def partition_dir(landing_dir: Path, kind: str, interval_start: datetime) -> Path:
    """The contract's partition folder for the hour starting at ``interval_start`` (UTC)."""
    return (
        landing_dir
        / kind
        / f"date={interval_start:%Y-%m-%d}"
        / f"hour={interval_start:%H}"
    )


def gunzip_prefix(data: bytes) -> tuple[bytes, str | None]:
    """Decompress a (possibly multi-member) gzip stream as far as it is intact.

    Returns the bytes recovered and ``None``, or the bytes recovered before the damage and a
    one-line description of it (truncated stream, corrupt data, not gzip at all).
    """
    out: list[bytes] = []
    rest = data
    while rest:
        decomp = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
        pos = 0
        try:
            while pos < len(rest) and not decomp.eof:
                out.append(decomp.decompress(rest[pos : pos + _GZIP_CHUNK]))
                pos += _GZIP_CHUNK
            out.append(decomp.flush())
        except zlib.error as exc:
            return b"".join(out), f"corrupt gzip data ({exc})"
        if not decomp.eof:
            return b"".join(out), "truncated gzip: the file ends before its end-of-stream marker"
        # A gzip file may hold several members back to back (e.g. appended parts).
        rest = decomp.unused_data
    return b"".join(out), None


def read_part_file(landing_dir: Path, path: Path, limit: int | None = None) -> LandedFile:
    """Read one part file into lines, recording what could not be read and why."""
    limit = max_line_bytes() if limit is None else limit
    rel = path.relative_to(landing_dir).as_posix()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return LandedFile(rel, 0, problem=f"unreadable file ({exc.strerror or exc})")
    landed = LandedFile(rel, len(data))
    if path.name.endswith(".gz"):
        data, landed.problem = gunzip_prefix(data)
    if landed.problem is None and _read_clean(landed, data, limit):
        return landed
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()  # the trailing newline ends the last line; it is not an empty line
    bad_utf8 = 0
    for number, chunk in enumerate(chunks, start=1):
        chunk = chunk.removesuffix(b"\r")
        problem = None
        if len(chunk) > limit:
            problem = f"line too long: {len(chunk)} bytes (limit {limit}); kept its first {limit}"
            chunk = chunk[:limit]
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A cut at the size limit may split a character: that is not the line's fault.
            text = chunk.decode("utf-8", errors="backslashreplace")
            if problem is None:
                problem = f"invalid UTF-8 at byte {exc.start}"
                bad_utf8 += 1
        landed.numbers.append(number)
        landed.texts.append(text)
        landed.problems.append(problem)
    if landed.problem is not None and data and not data.endswith(b"\n") and landed.texts:
        landed.problems[-1] = landed.problems[-1] or "incomplete line: the file is damaged here"
    if landed.problem is not None:
        landed.problem += f"; {len(landed.texts)} lines read before the damage"
    elif bad_utf8:
        landed.problem = f"invalid UTF-8 in {bad_utf8} lines (quarantined line by line)"
    return landed


def _read_clean(landed: LandedFile, data: bytes, limit: int) -> bool:
    """The common case at C speed: an intact file of valid UTF-8, no carriage returns and no
    line over ``limit`` is split in one go (the same lines the line-by-line reader finds).
    Returns False, reading nothing, for any other file."""
    import numpy as np

    if b"\r" in data:
        return False
    if len(data) > limit:
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        bounds = np.concatenate([[-1], ends, [len(data)]])
        if int(np.diff(bounds).max()) - 1 > limit:
            return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    texts = text.split("\n")
    if texts and texts[-1] == "":
        texts.pop()  # the trailing newline ends the last line; it is not an empty line
    landed.texts = texts
    landed.numbers = list(range(1, len(texts) + 1))
    landed.problems = [None] * len(texts)
    return True


def read_partition(landing_dir: Path, folder: Path) -> list[LandedFile]:
    """Every ``*.jsonl[.gz]`` part file of a partition, in name order (reruns read the same)."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    return [read_part_file(landing_dir, path) for path in files]


def ingest_interval(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    interval_start: datetime,
    interval_end: datetime,
) -> dict[str, int]:
    """Replace the interval's rows in raw.event_lines / raw.item_lines / raw.landing_files.

    Returns the number of lines landed per kind and of damaged files. A missing partition is
    an empty hour; a damaged file never fails the interval.
    """
    import numpy as np
    import pyarrow as pa

    from interest_pipeline.erasure import erased_positions

    loaded_at = datetime.utcnow().replace(microsecond=0)
    counts: dict[str, int] = {"files_damaged": 0, "lines_erased": 0}
    with transaction(con):
        con.execute("delete from raw.landing_files where interval_start = ?", [interval_start])
        for kind in KINDS:
            files = read_partition(landing_dir, partition_dir(landing_dir, kind, interval_start))
            batch = _lines_table(files)
            erased = erased_positions(con, batch.column("line")) if kind == "events" else set()
            dropped = np.zeros(batch.num_rows, dtype=bool)
            dropped[list(erased)] = True
            erased_files = batch.column("source_file").filter(dropped).to_pylist()
            batch = batch.filter(~dropped)
            n = batch.num_rows
            batch = pa.table({
                "interval_start": pa.array([interval_start] * n, pa.timestamp("us")),
                "interval_end": pa.array([interval_end] * n, pa.timestamp("us")),
                "source_file": batch.column("source_file"),
                "line_number": batch.column("line_number"),
                "line": batch.column("line"),
                "loaded_at": pa.array([loaded_at] * n, pa.timestamp("us")),
                "read_problem": batch.column("read_problem"),
            })
            table = _RAW_TABLE[kind]
            con.execute(f"delete from {table} where interval_start = ?", [interval_start])
            insert_arrow(con, table, batch)
            m = len(files)
            insert_arrow(
                con,
                "raw.landing_files",
                pa.table(
                    {
                        "interval_start": pa.array([interval_start] * m, pa.timestamp("us")),
                        "interval_end": pa.array([interval_end] * m, pa.timestamp("us")),
                        "source_kind": pa.array([kind] * m, pa.string()),
                        "source_file": pa.array([f.path for f in files], pa.string()),
                        "size_bytes": pa.array([f.size_bytes for f in files], pa.int64()),
                        "lines_read": pa.array([len(f.texts) for f in files], pa.int64()),
                        "read_problem": pa.array([f.problem for f in files], pa.string()),
                        "loaded_at": pa.array([loaded_at] * m, pa.timestamp("us")),
                        "lines_erased": pa.array(
                            [erased_files.count(f.path) for f in files], pa.int64()
                        ),
                    }
                ),
            )
            counts[f"{kind[:-1]}_lines_landed"] = n
            counts["lines_erased"] += len(erased)
            counts["files_damaged"] += sum(f.problem is not None for f in files)
            for f in files:
                if f.problem is not None:
                    log.warning("damaged part file %s: %s", f.path, f.problem)
    log.info("ingested %s for [%s, %s)", counts, interval_start, interval_end)
    return counts


def _lines_table(files: list[LandedFile]) -> pa.Table:
    """The files' lines as columns (source_file, line_number, line, read_problem)."""
    import pyarrow as pa

    def column(values: Iterable[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(list(values), kind)

    return pa.table({
        "source_file": column(chain.from_iterable([f.path] * len(f.texts) for f in files),
                              pa.string()),
        "line_number": column(chain.from_iterable(f.numbers for f in files), pa.int32()),
        "line": column(chain.from_iterable(f.texts for f in files), pa.string()),
        "read_problem": column(chain.from_iterable(f.problems for f in files), pa.string()),
    })
