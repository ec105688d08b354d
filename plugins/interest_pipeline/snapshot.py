"""Reading the warehouse while the pipeline writes it: a read-only snapshot published per run.

DuckDB lets one process open a file for writing, and while it does, every other process is
locked out, read-only connections included. A pipeline task holds the warehouse for seconds to
minutes, so a reader (the ``interest`` CLI, a notebook) would fail at random moments.

The design:

- **Publish.** The last task of every pipeline run calls :func:`publish_snapshot` after all of
  the run's writes. Runs are serialised (``max_active_runs=1``), so no writer is active then;
  the caller must not hold a connection to the warehouse either. Two generations,
  ``<warehouse>.snapshot-a`` and ``-b``, take turns: the one readers are not pointed at (two
  runs old) is brought up to the live file by copying what the runs since changed
  (:mod:`interest_pipeline.snapshot_sync`: a cost that follows the hours, not the history),
  or, when that is not possible (no such generation yet, a reader still has it open, a write
  no run recorded, an erasure or a rebuild: ``full=True``), replaced by a whole copy (with a
  leftover WAL checkpointed into it, so a generation is one self-contained file). Then the
  symlink ``<warehouse>.snapshot`` is replaced (``os.replace``) to point at it: readers see the
  old snapshot or the new one, never half of one. A sidecar ``<warehouse>.snapshot.json``
  records ``published_at`` and the run's interval.
- **Read.** :func:`open_for_reading` opens the live file read-only, retrying lock errors for a
  short while (a run's tasks release the file between stages). If it stays locked, it opens the
  snapshot read-only and returns a note saying which run it shows; with no snapshot it raises
  :class:`WarehouseBusyError`. A raw DuckDB lock error never reaches the user.

The snapshot is only ever opened read-only; it lags the live warehouse by at most one run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".snapshot"
GENERATIONS = ("a", "b")


class WarehouseUnavailableError(RuntimeError):
    """The warehouse cannot be read right now (base of the two cases below)."""


class NoWarehouseError(WarehouseUnavailableError):
    """No warehouse file exists yet."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no warehouse at {path} yet: run `make run` or start the scheduler")
        self.path = path


class WarehouseBusyError(WarehouseUnavailableError):
    """The live warehouse is locked by a writer and no snapshot has been published."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"the warehouse {path} is locked by a running pipeline task and no snapshot has "
            "been published yet: retry when the run finishes"
        )
        self.path = path


def snapshot_path(warehouse_path: Path) -> Path:
    """Where the snapshot of a warehouse lives: ``<warehouse>.snapshot``."""
    return warehouse_path.with_name(warehouse_path.name + SNAPSHOT_SUFFIX)


def sidecar_path(warehouse_path: Path) -> Path:
    """The snapshot's metadata: ``<warehouse>.snapshot.json``."""
    return warehouse_path.with_name(warehouse_path.name + SNAPSHOT_SUFFIX + ".json")


def generation_path(warehouse_path: Path, name: str) -> Path:
    """One of the two snapshot files the link points at: ``<warehouse>.snapshot-<name>``."""
    return warehouse_path.with_name(f"{warehouse_path.name}{SNAPSHOT_SUFFIX}-{name}")


def publish_snapshot(
    warehouse_path: Path,
    interval_start: datetime | None = None,
    interval_end: datetime | None = None,
    full: bool = False,
) -> Path:
    """Atomically point the warehouse's read-only snapshot at a copy of the live file.

    Call it after a run's last write, with no connection to the warehouse open in this process
    and no other writer active (DAG runs are serialised).

    Args:
        warehouse_path: The live DuckDB file.
        interval_start: Start of the run's interval (naive UTC), recorded in the sidecar.
        interval_end: End of the run's interval (naive UTC), recorded in the sidecar.
        full: Copy the whole file and remove the other generation (after an erasure or a
            rebuild, which change history no run records; and so no erased row survives in an
            older generation).

    Returns:
        The snapshot's path (the link).

    Raises:
        NoWarehouseError: The warehouse file does not exist.
    """
    from interest_pipeline.snapshot_sync import sync_generation

    warehouse_path = Path(warehouse_path)
    if not warehouse_path.is_file():
        raise NoWarehouseError(warehouse_path)
    link = snapshot_path(warehouse_path)
    current = link.resolve() if link.is_symlink() else None
    first, second = (generation_path(warehouse_path, g) for g in GENERATIONS)
    target = second if current == first else first
    synced = not full and target.is_file() and sync_generation(target, warehouse_path)
    if not synced:
        _copy_whole(warehouse_path, target)
    _point_link(link, target)
    if full and current is not None and current != target:
        current.unlink(missing_ok=True)

    meta = {
        "published_at": datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
        "interval_start": interval_start.isoformat() if interval_start else None,
        "interval_end": interval_end.isoformat() if interval_end else None,
    }
    _write_text_atomic(sidecar_path(warehouse_path), json.dumps(meta) + "\n")
    log.info(
        "published warehouse snapshot %s -> %s (%s, %s)",
        link, target.name, "synced" if synced else "whole copy", meta,
    )
    return link


def _copy_whole(warehouse_path: Path, target: Path) -> None:
    """Replace ``target`` by a self-contained copy of the live file (a reader that still has
    the old ``target`` open keeps reading its old inode)."""
    import duckdb

    fd, tmp_name = tempfile.mkstemp(
        dir=warehouse_path.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    tmp_wal = tmp.with_name(tmp.name + ".wal")
    try:
        shutil.copyfile(warehouse_path, tmp)
        wal = warehouse_path.with_name(warehouse_path.name + ".wal")
        if wal.exists():
            shutil.copyfile(wal, tmp_wal)
        # A writer that did not shut down cleanly leaves committed data in the WAL; the
        # checkpoint folds it into the copy, so the snapshot never depends on a second file.
        con = duckdb.connect(str(tmp))
        try:
            con.execute("checkpoint")
        finally:
            con.close()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_wal.unlink(missing_ok=True)


def _point_link(link: Path, target: Path) -> None:
    """Atomically make ``link`` a relative symlink to ``target`` (replacing a plain file left
    by an older version, which readers may still hold open)."""
    fd, tmp_name = tempfile.mkstemp(dir=link.parent, prefix=f".{link.name}.", suffix=".tmp")
    os.close(fd)
    Path(tmp_name).unlink()
    try:
        os.symlink(target.name, tmp_name)
        os.replace(tmp_name, link)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def open_for_reading(
    warehouse_path: Path, wait_seconds: float = 2.0
) -> tuple[duckdb.DuckDBPyConnection, str | None]:
    """Open the warehouse read-only, falling back to the snapshot while a writer holds it.

    Args:
        warehouse_path: The live DuckDB file.
        wait_seconds: How long to retry the live file while it is locked.

    Returns:
        A read-only connection and ``None``, or a connection to the snapshot and a one-line
        note saying which run the snapshot shows.

    Raises:
        NoWarehouseError: The warehouse file does not exist.
        WarehouseBusyError: The live file stays locked and there is no snapshot.
    """
    import duckdb

    from interest_pipeline.warehouse import _LOCK_MARKERS, connect

    warehouse_path = Path(warehouse_path)
    if not warehouse_path.is_file():
        raise NoWarehouseError(warehouse_path)
    try:
        return connect(warehouse_path, read_only=True, wait_seconds=wait_seconds), None
    except duckdb.IOException as exc:
        if not any(marker in str(exc) for marker in _LOCK_MARKERS):
            raise
    snapshot = snapshot_path(warehouse_path)
    if not snapshot.is_file():
        raise WarehouseBusyError(warehouse_path)
    log.info("warehouse %s is locked; reading the snapshot %s", warehouse_path, snapshot)
    return connect(snapshot, read_only=True, wait_seconds=wait_seconds), _snapshot_note(
        warehouse_path
    )


def read_sidecar(warehouse_path: Path) -> dict[str, Any] | None:
    """The snapshot's metadata, or None if it is missing or unreadable."""
    try:
        return json.loads(sidecar_path(warehouse_path).read_text())
    except (OSError, ValueError):
        return None


def _snapshot_note(warehouse_path: Path) -> str:
    meta = read_sidecar(warehouse_path) or {}
    published = meta.get("published_at")
    if not published:
        mtime = snapshot_path(warehouse_path).stat().st_mtime
        published = datetime.fromtimestamp(mtime, UTC).replace(tzinfo=None).isoformat(
            timespec="seconds"
        )
    when = f"at {published.replace('T', ' ')} UTC"
    start, end = meta.get("interval_start"), meta.get("interval_end")
    if start and end:
        interval = f"[{start.replace('T', ' ')}, {end.replace('T', ' ')})"
        when = f"after interval {interval} {when}"
    return f"the pipeline is writing; showing the snapshot published {when}"


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
