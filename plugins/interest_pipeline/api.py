"""``interest serve``: the warehouse's outputs over HTTP (FastAPI + uvicorn), read-only.

Endpoints (OpenAPI docs at ``/docs``, the schema at ``/openapi.json``):

- ``GET /users/{user_id}/recommendations?as_of=&n=&new_visitor=``: the user's list in force at
  ``as_of`` with its evidence, as ``interest recs --json`` prints it. An unknown user (a new
  visitor) gets the list served to users with no history, marked ``"new_user": true``.
- ``GET /users/{user_id}/interest?as_of=&n=&vector=``: the user's interest version in force at
  ``as_of`` (time travel) and what it points at, as ``interest profile --json``.
- ``GET /items/{item_id}/similar?n=``: the items whose documents are nearest to the item's.
- ``GET /health``: what is being served (snapshot or live file), its age, the last recorded
  run and the model id; 503 while there is nothing to serve.

The server reads the **snapshot** the last task of every pipeline run publishes
(:mod:`interest_pipeline.snapshot`): a self-contained copy that no writer ever touches, so the
server never holds a lock a pipeline task needs and never sees a half-written hour. Each request
``stat`` s the snapshot file (microseconds); when a run has published a new one (another inode),
new requests wait for the ones still reading the old copy, which is then closed, and read the
new copy: no restart. Before the first snapshot exists it reads the live file, one short
connection per burst of requests, and ``/health`` says so.

Every connection comes from :func:`interest_pipeline.warehouse.connect` with
``read_only=True`` (sandboxed: this database and nothing else), the queries are the CLI's
(:mod:`interest_pipeline.cli`) and request values only ever reach DuckDB as bound parameters.
The default model is the one the copy being read serves (:mod:`interest_pipeline.rebuild`): a
rebuild's switch reaches the server with the snapshot it republishes, without a restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    from fastapi import FastAPI

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_N = 100
MAX_ID_LENGTH = 256
# Before the first snapshot the live file is read; a connection to it is given up after this
# long (and whenever no request is in flight), so a pipeline writer waiting for the file lock
# gets it within its retry window.
LIVE_CONNECTION_SECONDS = 1.0
LIVE_WAIT_SECONDS = 0.5


def host_and_port() -> tuple[str, int]:
    """The default address: ``INTEREST_API_HOST`` (127.0.0.1) and ``INTEREST_API_PORT`` (8000)."""
    host = os.environ.get("INTEREST_API_HOST") or DEFAULT_HOST
    port = int(os.environ.get("INTEREST_API_PORT") or DEFAULT_PORT)
    return host, port


# ---------------------------------------------------------------------------------------------
# Reading the published snapshot, reopened when a new one is published
# ---------------------------------------------------------------------------------------------


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced (``os.replace`` gives a new inode) or rewritten."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class _Generation:
    """One open connection (to one snapshot file, or to the live file) and its readers."""

    con: duckdb.DuckDBPyConnection
    source: str  # "snapshot" or "live"
    identity: tuple[int, int, int, int] | None  # of the snapshot file when it was opened
    opened_at: datetime
    expires: float | None  # monotonic time after which no new reader joins (live file only)
    readers: int = 0
    retired: bool = False
    cache: dict[Any, Any] = field(default_factory=dict)  # derived data; the file cannot change


class WarehouseReader:
    """Read-only cursors on the warehouse's published snapshot, following each new publish.

    DuckDB keeps one database instance per file path in a process, and closing a connection
    closes its cursors: so a new snapshot is opened only once the readers of the previous one
    are done (new requests wait for them; they take milliseconds).
    """

    def __init__(self, warehouse_path: Path) -> None:
        from interest_pipeline.snapshot import snapshot_path

        self.warehouse_path = Path(warehouse_path)
        self.snapshot_path = snapshot_path(self.warehouse_path)
        self._cond = threading.Condition()
        self._current: _Generation | None = None
        self.reopened = 0  # connections opened so far (a new snapshot, or the live file)

    @contextmanager
    def cursor(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, _Generation]]:
        """A cursor on the current snapshot (or the live file before the first one).

        Raises:
            NoWarehouseError: Neither the warehouse nor a snapshot exists.
            WarehouseBusyError: No snapshot yet and a pipeline task holds the live file.
        """
        gen, cur = self._acquire()
        try:
            yield cur, gen
        finally:
            self._release(gen, cur)

    def close(self) -> None:
        with self._cond:
            if self._current is not None:
                self._current.retired = True
                if not self._current.readers:
                    self._close(self._current)

    def _acquire(self) -> tuple[_Generation, duckdb.DuckDBPyConnection]:
        with self._cond:
            while True:
                identity = _file_identity(self.snapshot_path)
                gen = self._current
                if gen is not None and not gen.retired:
                    expired = gen.expires is not None and time.monotonic() > gen.expires
                    if gen.identity != identity or expired:
                        gen.retired = True
                if gen is not None and gen.retired:
                    if gen.readers:
                        self._cond.wait(timeout=1.0)
                        continue
                    self._close(gen)
                if self._current is None:
                    self._current = self._open(identity)
                gen = self._current
                gen.readers += 1
                return gen, gen.con.cursor()

    def _release(self, gen: _Generation, cur: duckdb.DuckDBPyConnection) -> None:
        with self._cond:
            cur.close()
            gen.readers -= 1
            if not gen.readers and (gen.retired or gen.identity is None):
                self._close(gen)
            self._cond.notify_all()

    def _open(self, identity: tuple[int, int, int, int] | None) -> _Generation:
        from interest_pipeline.snapshot import NoWarehouseError, open_for_reading
        from interest_pipeline.warehouse import connect

        now = datetime.now(UTC).replace(tzinfo=None)
        self.reopened += 1
        if identity is not None:
            log.info("reading the snapshot %s", self.snapshot_path)
            con = connect(self.snapshot_path, read_only=True, wait_seconds=LIVE_WAIT_SECONDS)
            return _Generation(con, "snapshot", identity, now, None)
        if not self.warehouse_path.is_file():
            raise NoWarehouseError(self.warehouse_path)
        # A snapshot published meanwhile is opened by open_for_reading if the file is locked;
        # its identity then differs from None and the next request reopens it properly.
        con, note = open_for_reading(self.warehouse_path, wait_seconds=LIVE_WAIT_SECONDS)
        expires = time.monotonic() + LIVE_CONNECTION_SECONDS
        return _Generation(con, "snapshot" if note else "live", None, now, expires)

    def _close(self, gen: _Generation) -> None:
        gen.con.close()
        if self._current is gen:
            self._current = None


# ---------------------------------------------------------------------------------------------
# Reads the CLI has no command for
# ---------------------------------------------------------------------------------------------


def similar_items(
    con: duckdb.DuckDBPyConnection,
    item_id: str,
    model_id: str,
    n: int = 10,
    item_matrix: tuple[list[dict[str, Any]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """The ``n`` items whose document embeddings are nearest (cosine) to the item's.

    Args:
        con: A read-only connection.
        item_id: The item.
        model_id: Whose embeddings to compare.
        n: How many.
        item_matrix: ``cli._item_matrix(con, model_id)`` if the caller already has it.

    Raises:
        NotFoundError: Unknown item, or the item has no embedding for the model.
    """
    import numpy as np

    from interest_pipeline.cli import NotFoundError, _item_matrix, _nearest

    items, matrix = item_matrix or _item_matrix(con, model_id)
    index = next((j for j, item in enumerate(items) if item["item_id"] == item_id), None)
    if index is None:
        ((known,),) = con.execute(
            "select count(*) from items where item_id = ?", [item_id]
        ).fetchall()
        if known:
            raise NotFoundError(f"item {item_id!r} has no embedding for model {model_id!r}")
        raise NotFoundError(f"unknown item {item_id!r}")
    sims = matrix @ matrix[index]
    sims[index] = -np.inf  # ranks last; never shown, as n stays below the item count
    return {
        "item_id": item_id,
        "title": items[index]["title"],
        "model_id": model_id,
        "similar": _nearest(items, sims, min(n, len(items) - 1)),
    }


def describe_source(reader: WarehouseReader, gen: _Generation) -> dict[str, Any]:
    """What ``/health`` says about the data being served: which file, published when."""
    from interest_pipeline.snapshot import read_sidecar

    now = datetime.now(UTC).replace(tzinfo=None)
    if gen.source == "snapshot":
        meta = read_sidecar(reader.warehouse_path) or {}
        published = _parse_iso(meta.get("published_at")) or _mtime(reader.snapshot_path)
        note = None
        snapshot = {
            "path": str(reader.snapshot_path),
            "published_at": published,
            "age_seconds": _age(now, published),
            "interval_start": _parse_iso(meta.get("interval_start")),
            "interval_end": _parse_iso(meta.get("interval_end")),
        }
    else:
        note = (
            "no snapshot published yet: reading the live warehouse, which may show an hour "
            "that a running pipeline task is still writing"
        )
        snapshot = None
    modified = _mtime(reader.warehouse_path)
    return {
        "source": gen.source,
        "note": note,
        "warehouse": str(reader.warehouse_path),
        "warehouse_modified_at": modified,
        "warehouse_age_seconds": _age(now, modified),
        "snapshot": snapshot,
        "opened_at": gen.opened_at,
        "checked_at": now,
    }


def _parse_iso(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)
    except FileNotFoundError:
        return None


def _age(now: datetime, then: datetime | None) -> float | None:
    return round((now - then).total_seconds(), 3) if then else None


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def _response_models() -> Any:
    """The response schemas (FastAPI validates and serialises each response with them)."""
    from types import SimpleNamespace

    from pydantic import BaseModel, ConfigDict, Field

    class AsTheCli(BaseModel):
        # Fields the CLI's read functions add later pass through undocumented rather than
        # vanish: the API returns what `interest … --json` prints.
        model_config = ConfigDict(extra="allow")

    class Recommendation(AsTheCli):
        rank: int
        item_id: str
        title: str | None
        score: float
        evidence: list[dict[str, Any]] = Field(
            description="the user's events pulling them most towards the item (event_type, "
            "text, item_id, event_at, contribution); for a new visitor, 'trending'"
        )

    class Recommendations(AsTheCli):
        user_id: str
        model_id: str
        new_user: bool = Field(
            description="true: the list served to visitors with no history (trending now)"
        )
        known_user: bool = Field(description="false: the user id has no history at all")
        as_of: datetime | None = Field(
            None, description="the user's interest version the list was scored from"
        )
        events_in_interval: int | None = None
        event_count: int | None = None
        last_event_at: datetime | None = None
        list_as_of: datetime = Field(
            description="when the list was written (the version's hour or a later re-scoring)"
        )
        ranker_version: str | None
        recommendations: list[Recommendation]

    class NearestItem(BaseModel):
        rank: int
        item_id: str
        title: str | None
        similarity: float

    class Theme(BaseModel):
        kind: str
        name: str
        weight: float
        items: int

    class NearestText(BaseModel):
        source: str
        item_id: str | None
        text: str
        events: int
        event_types: list[str]
        similarity: float

    class Interest(AsTheCli):
        user_id: str
        model_id: str
        as_of: datetime = Field(description="the version in force: newest as_of <= the asked time")
        events_in_interval: int
        event_count: int
        last_event_at: datetime
        nearest_items: list[NearestItem]
        themes: list[Theme]
        nearest_texts: list[NearestText]
        vector: list[float] | None = Field(None, description="the unit vector, with ?vector=true")

    class Similar(AsTheCli):
        item_id: str
        title: str | None
        model_id: str
        similar: list[NearestItem]

    class Snapshot(BaseModel):
        path: str
        published_at: datetime | None
        age_seconds: float | None
        interval_start: datetime | None
        interval_end: datetime | None

    class LastRun(BaseModel):
        interval_start: datetime
        events_in: int
        users_updated: int
        recommendations_written: int
        model_id: str

    class Health(BaseModel):
        status: str
        source: str = Field(description="'snapshot' (the published copy) or 'live'")
        note: str | None
        warehouse: str
        warehouse_modified_at: datetime | None
        warehouse_age_seconds: float | None
        snapshot: Snapshot | None
        opened_at: datetime
        checked_at: datetime
        last_run: LastRun | None
        model_id: str

    class Problem(BaseModel):
        detail: str

    return SimpleNamespace(**{cls.__name__: cls for cls in (
        Recommendations, Interest, Similar, Health, Problem,
    )})


def create_app(warehouse_path: Path, model_id: str | None = None) -> FastAPI:
    """The read API over one warehouse (its published snapshot).

    Args:
        warehouse_path: The live DuckDB file; the server reads ``<warehouse>.snapshot``.
        model_id: Whose vectors to serve by default (default: the model being served by the
            snapshot read, :func:`interest_pipeline.rebuild.serving_model`, so a rebuild's
            switch reaches the server with the snapshot it republishes); a request may ask
            for another with ``?model_id=``.

    Returns:
        The FastAPI app; it opens nothing until the first request.
    """
    import duckdb
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi import Path as PathParam
    from fastapi.responses import JSONResponse

    from interest_pipeline import cli
    from interest_pipeline.snapshot import WarehouseBusyError, WarehouseUnavailableError

    models = _response_models()
    fixed_model = model_id
    reader = WarehouseReader(warehouse_path)

    def served_model(con: duckdb.DuckDBPyConnection, gen: _Generation) -> str:
        """The default model of a request: the server's, else the one the copy it reads
        serves (once per copy: a switch publishes a new one)."""
        if fixed_model:
            return fixed_model
        if "served_model" not in gen.cache:
            gen.cache["served_model"] = cli._resolve_model_id(con)
        return gen.cache["served_model"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        reader.close()

    app = FastAPI(
        title="interest-pipeline read API",
        summary="Recommendations, interest versions and similar items from the warehouse's "
        "published snapshot (read-only).",
        version="1",
        lifespan=lifespan,
    )
    app.state.reader = reader
    errors = {404: {"model": models.Problem}, 503: {"model": models.Problem}}

    @app.exception_handler(cli.CliError)
    async def _cli_error(request: Request, exc: cli.CliError) -> JSONResponse:
        status = 422 if exc.exit_code == cli.EXIT_USAGE else 404
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(WarehouseUnavailableError)
    async def _unavailable(request: Request, exc: WarehouseUnavailableError) -> JSONResponse:
        headers = {"Retry-After": "10"} if isinstance(exc, WarehouseBusyError) else None
        return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)

    @app.exception_handler(duckdb.Error)
    async def _unreadable(request: Request, exc: duckdb.Error) -> JSONResponse:
        # A half-built warehouse (the first run still in dbt) lacks tables the reads need.
        detail = f"cannot read {reader.warehouse_path}: {cli._one_line(str(exc))}"
        return JSONResponse({"detail": detail}, status_code=503)

    def as_of_param(as_of: str | None) -> datetime | None:
        if as_of is None:
            return None
        try:
            return cli.parse_time(as_of)
        except argparse.ArgumentTypeError as exc:
            raise HTTPException(422, str(exc)) from None

    user_param = PathParam(max_length=MAX_ID_LENGTH, description="user_id, e.g. or-c17894")
    as_of_query = Query(
        None,
        description="ISO 8601 time; without an offset it means UTC (default: the latest)",
        examples=["2010-11-10T10:30", "2010-11-10T11:30+01:00"],
    )
    model_query = Query(None, max_length=MAX_ID_LENGTH,
                        description="model whose vectors to read (default: "
                        f"{fixed_model or 'the model being served'})")

    @app.get(
        "/users/{user_id}/recommendations",
        response_model=models.Recommendations,
        responses=errors,
        summary="A user's recommendations in force at a time, with evidence",
    )
    def recommendations(
        user_id: str = user_param,
        as_of: str | None = as_of_query,
        n: int = Query(10, ge=1, le=MAX_N, description="how many"),
        new_visitor: bool = Query(False, description="the list served to new visitors"),
        model_id: str | None = model_query,
    ) -> dict[str, Any]:
        """The list written with the user's version in force at ``as_of``, or a later daily
        re-scoring of it (``list_as_of``). A user id with no history is a new visitor: the
        response is then the list served to visitors with no history, with
        ``"new_user": true, "known_user": false``. 404: a time before the user's first
        version, or no item scored positive for them."""
        at = as_of_param(as_of)
        with reader.cursor() as (con, gen):
            model = model_id or served_model(con, gen)
            try:
                data = cli.get_recommendations(con, user_id, model, at, n, new_visitor)
            except cli.NotFoundError as exc:
                # The CLI's one marker of a user with no history at all (see get_recommendations).
                if not str(exc).startswith("unknown user"):
                    raise
                data = cli.get_new_visitor_list(con, user_id, model, at, n)
        data.setdefault("known_user", True)
        return data

    @app.get(
        "/users/{user_id}/interest",
        response_model=models.Interest,
        responses=errors,
        summary="A user's interest version in force at a time, and what it points at",
    )
    def interest(
        user_id: str = user_param,
        as_of: str | None = as_of_query,
        n: int = Query(10, ge=1, le=MAX_N, description="rows per section"),
        vector: bool = Query(False, description="include the interest vector itself"),
        model_id: str | None = model_query,
    ) -> dict[str, Any]:
        """Time travel: the newest version with ``as_of <=`` the asked time, its counts, the
        items nearest to it, the categories and tags of its nearest items and the nearest of
        the user's own texts. 404: unknown user, or a time before the first version."""
        at = as_of_param(as_of)
        with reader.cursor() as (con, gen):
            model = model_id or served_model(con, gen)
            data = cli.describe_profile(con, user_id, model, at, n)
            if vector:
                # The same version (the snapshot cannot change under this cursor).
                version = cli._version(con, user_id, model, at)
                data["vector"] = cli._unit(version["vector"]).tolist()
        return data

    @app.get(
        "/items/{item_id}/similar",
        response_model=models.Similar,
        responses=errors,
        summary="The items whose documents are nearest to an item's",
    )
    def similar(
        item_id: str = PathParam(max_length=MAX_ID_LENGTH, description="item_id, e.g. or-21429"),
        n: int = Query(10, ge=1, le=MAX_N, description="how many"),
        model_id: str | None = model_query,
    ) -> dict[str, Any]:
        """Cosine similarity of the items' document embeddings. 404: unknown item, or an item
        without an embedding for the model."""
        with reader.cursor() as (con, gen):
            model = model_id or served_model(con, gen)
            key = ("item_matrix", model)
            if key not in gen.cache:
                gen.cache[key] = cli._item_matrix(con, model)
            return similar_items(con, item_id, model, n, gen.cache[key])

    @app.get(
        "/health",
        response_model=models.Health,
        responses={503: {"model": models.Problem}},
        summary="What is served: snapshot or live file, its age, the last run, the model",
    )
    def health() -> dict[str, Any]:
        """200 when there is data to serve; 503 (with a detail) while there is no warehouse
        yet, or no snapshot and a pipeline task holds the live file."""
        with reader.cursor() as (con, gen):
            try:
                (last,) = cli.list_runs(con, 1)
            except cli.NotFoundError:
                last = None
            return {
                "status": "ok",
                **describe_source(reader, gen),
                "last_run": last,
                "model_id": served_model(con, gen),
            }

    return app


# ---------------------------------------------------------------------------------------------
# Command line: `interest serve`
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``interest serve`` argument parser."""
    from interest_pipeline.cli import _Parser
    from interest_pipeline.config import get_settings

    host, port = host_and_port()
    parser = _Parser(
        prog="interest serve",
        description="Serve the warehouse's published snapshot over HTTP (read-only):\n"
        "recommendations, interest versions, similar items, health; OpenAPI docs at /docs.\n"
        "A snapshot published by a later run is picked up without a restart.",
        epilog="example:\n  interest serve --port 8000 &\n"
        "  curl 'http://127.0.0.1:8000/users/or-c17894/recommendations?n=3'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--warehouse", type=Path, metavar="PATH",
                        default=get_settings().warehouse_path,
                        help="DuckDB warehouse whose snapshot to serve (default: %(default)s)")
    parser.add_argument("--host", default=host,
                        help="address to listen on (default: $INTEREST_API_HOST or %(default)s)")
    parser.add_argument("--port", type=int, default=port,
                        help="port (default: $INTEREST_API_PORT or %(default)s)")
    parser.add_argument("--model-id", metavar="ID",
                        help="model whose vectors to serve (default: the model being "
                        "served: the last `interest rebuild`'s, else INTEREST_MODEL's id)")
    parser.add_argument("--no-access-log", action="store_true",
                        help="do not log every request")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    return parser


def serve(app: Any, host: str, port: int, access_log: bool = True,
          log_level: str = "info") -> None:
    """Run an app with uvicorn, as ``interest serve`` does (the benchmark serves its baseline
    app through this too, so both run on the same server settings)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level=log_level)


def main(argv: list[str]) -> int:
    """``interest serve [options]``: run the API until interrupted.

    Returns:
        0 on a clean shutdown, 2 on a usage error (as the other ``interest`` commands).
    """
    from interest_pipeline import cli

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else cli.EXIT_USAGE
    try:
        app = create_app(args.warehouse, args.model_id)
    except cli.CliError as exc:
        print(f"interest serve: error: {exc}", file=sys.stderr)
        return exc.exit_code
    serve(app, args.host, args.port, not args.no_access_log, args.log_level)
    return cli.EXIT_OK
