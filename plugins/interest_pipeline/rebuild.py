"""Model change = rebuild: recompute every output under another model, then switch in one step.

The model being served is a row of ``serving_model`` (the configured name or path, its
model_id, when it was switched to and the model_id served before). Every component reads it
through :func:`serving_model`: the pipeline's stages (what they embed, fold and recommend
with), the ``interest`` CLI and the HTTP API (whose rows they read). With no row (a warehouse
never rebuilt) the model is ``INTEREST_MODEL``: that variable names the model of a fresh
warehouse; once a rebuild has switched, the registry wins and changing the variable changes
nothing.

A rebuild (``interest rebuild --model M``, or the manually triggered ``interest_rebuild`` DAG,
which runs the same :func:`rebuild_model` in the one-slot writer pool) does, holding the
warehouse's single write lock throughout:

1. **Check.** M must load and encode a probe text, must not be the model being served, and
   the warehouse must have processed intervals; otherwise it refuses and writes nothing.
2. **Embed.** Every text the warehouse knows (item documents, query/tag texts of all
   interactions) is embedded under M's model_id through the same cache as the hourly runs
   (:func:`interest_pipeline.embeddings.embed_new_texts`, committed per chunk), so an
   interrupted rebuild resumes without re-embedding.
3. **Recompute.** The rows of M's model_id in the versioned outputs (:data:`REBUILT_TABLES`:
   left by an earlier, interrupted rebuild, or by an earlier time M was served) are deleted;
   then every processed hour, oldest first, gets the fold (interest and social versions), the
   ranker fit at the hours it is due (so M's rankers are fitted on M's vectors) and the
   recommend stage, exactly as the hourly DAG runs them, each committed on its own so memory
   stays flat. The result equals processing the same history from scratch under M.
4. **Catch up.** The processed hours are read again; any that appeared meanwhile are done
   too (none while the lock is held, but a rebuild run between a DAG run's stages finds that
   run's hour through the outputs the served model already has for it).
5. **Switch.** One transaction writes the ``serving_model`` row; then the read snapshot is
   republished (when one exists), so every reader moves to M at once.

Until the switch, readers are served the old model: the registry still names it, and the
snapshot they read while the rebuild holds the lock was published before it. The old model's
rows are kept (``--model-id`` and time travel on them keep working; ``evaluation`` rows are not
recomputed: M's are written by the hourly runs from the switch on).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interest_pipeline.config import Settings

if TYPE_CHECKING:
    import duckdb

    from interest_pipeline.embeddings import Encoder

log = logging.getLogger(__name__)

SERVING_MODEL_DDL = """
create table if not exists serving_model (
    model varchar not null,              -- as configured: "default", a model name or a path
    model_id varchar not null,           -- what the served outputs' rows carry
    switched_at timestamp not null,
    previous_model_id varchar            -- the model served before the switch
);
"""

# The outputs recomputed per model (text_embeddings is a cache: kept and topped up; the
# evaluation of a model is written by the hourly runs).
REBUILT_TABLES = (
    "user_interest_vectors",
    "user_social_vectors",
    "recommendations",
    "new_user_recommendations",
    "rankers",
    "fold_pending",
)
# Where the served model's outputs name an hour it already processed (as_of = the hour's end).
_AS_OF_TABLES = (
    "user_interest_vectors",
    "user_social_vectors",
    "recommendations",
    "new_user_recommendations",
)

EXIT_OK = 0
EXIT_NOTHING_TO_REBUILD = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class RebuildError(Exception):
    """A rebuild refused before anything was written, with the exit status to return."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def registry(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The ``serving_model`` row, or None on a warehouse never rebuilt."""
    from interest_pipeline.warehouse import table_exists

    if not table_exists(con, "serving_model"):
        return None
    cursor = con.execute(
        "select model, model_id, switched_at, previous_model_id from serving_model "
        "order by switched_at desc limit 1"
    )
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    return dict(zip(names, rows[0], strict=True)) if rows else None


def serving_model(con: duckdb.DuckDBPyConnection, settings: Settings) -> tuple[str, str]:
    """(model, model_id) being served: the registry's row, else ``settings.model``.

    Raises:
        RuntimeError: No registry and the configured model cannot be resolved
            (:func:`interest_pipeline.embeddings.resolve_model`).
    """
    from interest_pipeline import embeddings

    row = registry(con)
    if row is not None:
        return row["model"], row["model_id"]
    return settings.model, embeddings.resolve_model(settings.model)[0]


def processed_hours(
    con: duckdb.DuckDBPyConnection, model_id: str
) -> list[tuple[datetime, datetime]]:
    """The hours a rebuild recomputes, oldest first: every hour of ``pipeline_runs``, plus
    every hour ``model_id`` (the served model) already has outputs for.

    The second part is a DAG run in flight: the rebuild task may run between its fold and
    its run stats (the pool serialises tasks, not runs), and its remaining tasks then run
    under the new model, which must already have that hour's versions.
    """
    from interest_pipeline.stages import HOUR, interval_hours
    from interest_pipeline.warehouse import table_exists

    hours: set[tuple[datetime, datetime]] = set()
    if table_exists(con, "pipeline_runs"):
        for start, end in con.execute(
            "select interval_start, interval_end from pipeline_runs"
        ).fetchall():
            hours.update(interval_hours(start, end))
    for table in _AS_OF_TABLES:
        if not table_exists(con, table):
            continue
        for (as_of,) in con.execute(
            f"select distinct as_of from {table} where model_id = ? "
            "and date_trunc('hour', as_of) = as_of",
            [model_id],
        ).fetchall():
            hours.add((as_of - HOUR, as_of))
    return sorted(hours)


def rebuild_model(settings: Settings, model: str) -> dict[str, Any]:
    """Recompute every output of the warehouse under ``model`` and switch to it.

    See the module docstring for the steps and what readers see meanwhile. Call it with no
    other writer active (the DAG's writer pool; the CLI waits for the file lock).

    Args:
        settings: Where the warehouse is, and the tunables the stages use.
        model: ``default``, a sentence-transformers model name or a local path.

    Returns:
        ``status`` (``switched``, or ``unchanged`` when ``model`` is already served), the
        model, its model_id, the previous model_id, counts (texts embedded, intervals
        recomputed and caught up, versions, social versions, recommendations and rankers of
        the new model) and seconds per step.

    Raises:
        RebuildError: No warehouse, an unknown or unloadable model, or no processed interval;
            nothing was written.
    """
    from interest_pipeline import snapshot
    from interest_pipeline.warehouse import fetch_one, open_warehouse

    started = time.perf_counter()
    model = model.strip()
    if not model:
        raise RebuildError("no model given")
    new_id = _resolve(model)
    path = Path(settings.warehouse_path)
    if not path.is_file():
        raise RebuildError(f"no warehouse at {path}", EXIT_UNAVAILABLE)
    # Cheap refusals on a read-only connection first: no model load, no write.
    with open_warehouse(path, read_only=True) as con:
        unchanged = _check(con, settings, model, new_id)
    if unchanged is not None:
        return unchanged
    load_started = time.perf_counter()
    encoder = _load(model, settings)
    load_seconds = time.perf_counter() - load_started

    with open_warehouse(path) as con:
        # Again under the write lock: another rebuild may have switched meanwhile.
        unchanged = _check(con, settings, model, new_id)
        if unchanged is not None:
            return unchanged
        old_model, old_id = serving_model(con, settings)
        log.info("rebuilding the warehouse under %s (serving %s until the switch)",
                 new_id, old_id)
        step = time.perf_counter()
        texts = _embed_all(con, new_id, encoder)
        embed_seconds = time.perf_counter() - step

        step = time.perf_counter()
        _delete_outputs(con, new_id)
        done: set[tuple[datetime, datetime]] = set()
        todo = processed_hours(con, old_id)
        recomputed = caught_up = 0
        while todo:
            _recompute(con, new_id, todo, settings)
            recomputed += len(todo)
            done.update(todo)
            # Hours that appeared meanwhile: the later of them follow on; one before an hour
            # already done makes every done hour after it stale (built on a state without it).
            current = processed_hours(con, old_id)
            new = [h for h in current if h not in done]
            if not new:
                break
            todo = [h for h in current if h >= new[0]]
            caught_up += len(todo)
            texts += _embed_all(con, new_id, encoder)
            log.info("%d interval(s) processed during the rebuild: recomputing %d", len(new),
                     len(todo))
        recompute_seconds = time.perf_counter() - step

        step = time.perf_counter()
        _switch(con, model, new_id, old_id)
        switch_seconds = time.perf_counter() - step
        counts = _counts(con, new_id)
        last = fetch_one(
            con,
            "select interval_start, interval_end from pipeline_runs "
            "order by interval_end desc limit 1",
        )
    step = time.perf_counter()
    if snapshot.snapshot_path(path).exists():
        snapshot.publish_snapshot(path, *(last or (None, None)), full=True)
    snapshot_seconds = time.perf_counter() - step
    intervals = len(done)
    result = {
        "status": "switched",
        "model": model,
        "model_id": new_id,
        "previous_model": old_model,
        "previous_model_id": old_id,
        "texts_embedded": texts,
        "intervals_recomputed": intervals,
        "intervals_caught_up": caught_up,
        **counts,
        "load_seconds": round(load_seconds, 3),
        "embed_seconds": round(embed_seconds, 3),
        "recompute_seconds": round(recompute_seconds, 3),
        "seconds_per_interval": round(recompute_seconds / max(recomputed, 1), 4),
        "switch_seconds": round(switch_seconds, 3),
        "snapshot_seconds": round(snapshot_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    log.info("rebuilt under %s and switched from %s: %s", new_id, old_id, result)
    return result


def _resolve(model: str) -> str:
    """The model_id of ``model``, or a one-line refusal."""
    from interest_pipeline import embeddings

    try:
        return embeddings.resolve_model(model)[0]
    except (RuntimeError, ValueError) as exc:
        raise RebuildError(f"unknown model {model!r}: {_one_line(exc)}") from None


def _check(
    con: duckdb.DuckDBPyConnection, settings: Settings, model: str, new_id: str
) -> dict[str, Any] | None:
    """The ``unchanged`` result when ``new_id`` is served already; raises when there is
    nothing to rebuild; None when the rebuild may go ahead."""
    try:
        old_model, old_id = serving_model(con, settings)
    except (RuntimeError, ValueError):
        # No registry and INTEREST_MODEL does not resolve: nothing is being served under it.
        old_model, old_id = settings.model, None
    if old_id == new_id:
        return {"status": "unchanged", "model": old_model, "model_id": new_id,
                "message": f"{new_id} is already the model being served: nothing to do"}
    if old_id is None or not processed_hours(con, old_id):
        raise RebuildError(
            f"no processed intervals in {settings.warehouse_path}: nothing to rebuild (for a "
            "fresh warehouse, set INTEREST_MODEL instead)",
            EXIT_NOTHING_TO_REBUILD,
        )
    return None


def _load(model: str, settings: Settings) -> Encoder:
    """Load the encoder and encode a probe: a model that cannot is refused before any write."""
    import numpy as np

    from interest_pipeline import embeddings

    try:
        encoder = embeddings.load_encoder(model, settings.embed_batch_size, settings.data_dir)
        probe = np.asarray(encoder.encode(["a probe text"]), dtype=np.float32)
    except Exception as exc:  # whatever the loader raises, the model cannot be used
        raise RebuildError(f"cannot load model {model!r}: {_one_line(exc)}") from None
    if probe.ndim != 2 or probe.shape[0] != 1 or probe.shape[1] < 1 or not np.isfinite(probe).all():
        raise RebuildError(
            f"model {model!r} does not return one finite vector per text (got {probe.shape})"
        )
    return encoder


def _embed_all(con: duckdb.DuckDBPyConnection, model_id: str, encoder: Encoder) -> int:
    """Embed every text of the warehouse not cached for ``model_id``; how many were new."""
    from interest_pipeline import embeddings
    from interest_pipeline.stages import HOUR
    from interest_pipeline.warehouse import fetch_one, table_exists

    first = last = None
    if table_exists(con, "user_item_interactions"):
        first, last = fetch_one(
            con, "select min(interval_start), max(interval_start) from user_item_interactions"
        ) or (None, None)
    if first is None:
        # No interactions: the item documents alone (an empty window of queries).
        first = last = datetime(1970, 1, 1)
    return embeddings.embed_new_texts(con, model_id, lambda: encoder, first, last + HOUR)


def _delete_outputs(con: duckdb.DuckDBPyConnection, model_id: str) -> None:
    """Remove every row of ``model_id`` from the outputs a rebuild recomputes."""
    from interest_pipeline.warehouse import table_exists, transaction

    with transaction(con):
        for table in REBUILT_TABLES:
            if table_exists(con, table):
                con.execute(f"delete from {table} where model_id = ?", [model_id])


def _recompute(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    hours: list[tuple[datetime, datetime]],
    s: Settings,
) -> None:
    """Fold, fit the ranker where due, and recommend, hour by hour in order, as the DAG does."""
    from interest_pipeline import progress, ranker, recommendations, user_vectors

    config = ranker.ranker_settings()
    scoring = recommendations.scoring_config()
    with progress.track(f"rebuild {model_id}", len(hours), "intervals", every=24,
                        emit=log.info) as bar:
        for start, end in hours:
            user_vectors.update_user_vectors(con, model_id, start, end, s.half_life_hours)
            if ranker.is_due(end, config):
                ranker.train_ranker(
                    con, model_id, end, s.half_life_hours, s.evidence_events, scoring, config
                )
            recommendations.write_recommendations(
                con, model_id, start, end, s.top_n, s.half_life_hours, s.evidence_events,
            )
            bar.advance(note=end.isoformat(sep=" "))


def _switch(con: duckdb.DuckDBPyConnection, model: str, model_id: str, old_id: str) -> None:
    """The one step that moves every reader and writer to the new model."""
    from interest_pipeline.warehouse import transaction

    with transaction(con):
        con.execute(SERVING_MODEL_DDL)
        con.execute("delete from serving_model")
        con.execute(
            "insert into serving_model values (?, ?, ?, ?)",
            [model, model_id, datetime.now(UTC).replace(tzinfo=None), old_id],
        )


def _counts(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, int]:
    from interest_pipeline.warehouse import table_exists

    counts = {}
    for key, table in (
        ("versions_written", "user_interest_vectors"),
        ("social_versions_written", "user_social_vectors"),
        ("recommendations_written", "recommendations"),
        ("rankers_fitted", "rankers"),
    ):
        counts[key] = (
            con.execute(f"select count(*) from {table} where model_id = ?",
                        [model_id]).fetchall()[0][0]
            if table_exists(con, table) else 0
        )
    return counts


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    """``interest rebuild --model M [--warehouse PATH] [--json]``."""
    import argparse
    import json
    import sys

    import duckdb

    from interest_pipeline.config import get_settings
    from interest_pipeline.warehouse import _LOCK_MARKERS

    prog = "interest rebuild"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Re-embed every text and recompute every vector version, ranker and "
        "list of the history under another model, then switch to it in one step (the old "
        "model is served until then; its rows are kept). With Airflow running, prefer "
        "`airflow dags trigger interest_rebuild --conf '{\"model\": \"...\"}'`, which waits "
        "its turn in the writer pool; this command waits for the file lock and then holds it.",
        epilog="exit status: 0 switched (or the model is already served), 1 no processed "
        "intervals, 2 usage error or a model that cannot be loaded, 3 no warehouse or it "
        "stayed locked",
    )
    parser.add_argument("--model", required=True, metavar="M",
                        help='"default", a sentence-transformers model name or a local path')
    parser.add_argument("--warehouse", type=Path, metavar="PATH",
                        help="the warehouse (default: settings)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Its progress (a line per day of hours off a terminal) and the steps' summary.
    logging.getLogger("interest_pipeline").setLevel(logging.INFO)
    settings = get_settings()
    if args.warehouse:
        import dataclasses

        settings = dataclasses.replace(settings, warehouse_path=args.warehouse)
    try:
        result = rebuild_model(settings, args.model)
    except RebuildError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except duckdb.IOException as exc:
        if not any(marker in str(exc) for marker in _LOCK_MARKERS):
            raise
        print(f"{prog}: error: {settings.warehouse_path} stayed locked by another writer: "
              "retry when it is done", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif result["status"] == "unchanged":
        print(result["message"])
    else:
        print(
            f"rebuilt {result['intervals_recomputed']} intervals under {result['model_id']} "
            f"in {result['seconds']:.1f} s ({result['texts_embedded']} texts embedded, "
            f"{result['versions_written']} versions, {result['recommendations_written']} "
            f"recommendations, {result['rankers_fitted']} rankers); now serving "
            f"{result['model_id']} (was {result['previous_model_id']})"
        )
    return EXIT_OK
