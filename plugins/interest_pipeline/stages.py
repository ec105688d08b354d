"""The hourly pipeline's stages, one function per DAG task.

Each stage takes the Airflow data interval, is idempotent for it (replaces exactly that
interval's rows), opens the warehouse only for as long as it needs it, and returns a small dict
of counts and its duration for the run-stats task (XCom carries nothing larger).
"""

from __future__ import annotations

import logging
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from interest_pipeline.config import REPO_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

STAGES = ("ingest", "dbt", "embed", "fold", "recommend", "evaluate")


def to_utc_naive(moment: datetime) -> datetime:
    """Airflow hands out aware datetimes; the warehouse stores naive UTC timestamps."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _timed(stage: str, fn: Any, *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = fn(*args) or {}
    result[f"{stage}_seconds"] = round(time.perf_counter() - started, 3)
    return result


def ingest_landing_partition(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Copy the interval's landing partition into raw.event_lines / raw.item_lines."""
    from interest_pipeline.ingest import ingest_interval
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    start, end = to_utc_naive(start), to_utc_naive(end)

    def run() -> dict[str, Any]:
        with open_warehouse(s.warehouse_path) as con:
            return ingest_interval(con, s.landing_dir, start, end)

    return _timed("ingest", run)


def build_dbt_models(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Clean, deduplicate and normalise the interval with dbt; quarantine bad lines.

    An hour with no landed lines and no rows from an earlier build skips dbt: the build would
    change nothing, and it is the most expensive step of an empty hour.
    """
    from interest_pipeline.transform import run_dbt_build
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    start, end = to_utc_naive(start), to_utc_naive(end)
    with open_warehouse(s.warehouse_path) as con:
        empty = _interval_is_empty(con, start)
    if empty:
        log.info("no lines landed for [%s, %s) and nothing built before: dbt skipped", start, end)
        return {"dbt_seconds": 0.0, "dbt_skipped": True}
    return _timed("dbt", run_dbt_build, s, start, end)


_INTERVAL_TABLES = (
    "raw.event_lines",
    "raw.item_lines",
    "main.stg_landing__events",
    "main.stg_landing__items",
    "main.quarantine",
    "main.user_item_interactions",
)


def _interval_is_empty(con: Any, start: datetime) -> bool:
    """True when no per-interval table has rows for ``start`` (and the marts exist)."""
    from interest_pipeline.warehouse import fetch_one, table_exists

    for qualified in _INTERVAL_TABLES:
        schema, name = qualified.split(".")
        if not table_exists(con, name, schema):
            return False  # first build: dbt must create the tables
        (n,) = fetch_one(con, f"select count(*) from {qualified} where interval_start = ?", [start])
        if n:
            return False
    return True


def embed_new_texts(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Embed item documents and query/tag texts not yet in the cache for this model."""
    from interest_pipeline import embeddings
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    model_id, _ = embeddings.resolve_model(s.model)

    def run() -> dict[str, Any]:
        with open_warehouse(s.warehouse_path) as con:
            n = embeddings.embed_new_texts(
                con,
                model_id,
                lambda: embeddings.load_encoder(s.model, s.embed_batch_size),
                to_utc_naive(start),
            )
        return {"texts_embedded": n, "model_id": model_id}

    return _timed("embed", run)


def update_user_vectors(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Fold the interval's events into versioned user interest vectors (as_of = end).

    Out-of-order history: if this interval's versions changed and later intervals were already
    processed, their versions were built on a stale state, so they and their recommendations
    are recomputed here, oldest first. The tables then equal what in-order processing gives.
    """
    from interest_pipeline import embeddings, recommendations, user_vectors
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    model_id, _ = embeddings.resolve_model(s.model)
    start, end = to_utc_naive(start), to_utc_naive(end)

    def run() -> dict[str, Any]:
        with open_warehouse(s.warehouse_path) as con:
            _warn_if_model_changed(con, model_id)
            before = _versions_checksum(con, model_id, end)
            result = user_vectors.update_user_vectors(con, model_id, start, end, s.half_life_hours)
            changed = _versions_checksum(con, model_id, end) != before
            later = _later_intervals(con, end) if changed else []
            if later:
                log.warning(
                    "interval [%s, %s) changed after %d later interval(s) were processed; "
                    "recomputing their vectors and recommendations (%s .. %s)",
                    start, end, len(later), later[0][0], later[-1][1],
                )
                for i, (later_start, later_end) in enumerate(later, start=1):
                    user_vectors.update_user_vectors(
                        con, model_id, later_start, later_end, s.half_life_hours
                    )
                    recommendations.write_recommendations(
                        con, model_id, later_start, later_end, s.top_n,
                        s.half_life_hours, s.evidence_events,
                    )
                    if i % 24 == 0 or i == len(later):
                        log.info("recomputed %d/%d later intervals", i, len(later))
            result["later_intervals_recomputed"] = len(later)
            return result

    return _timed("fold", run)


def _versions_checksum(con: Any, model_id: str, as_of: datetime) -> tuple | None:
    """A cheap fingerprint of the versions written for one as_of."""
    from interest_pipeline.warehouse import fetch_one

    return fetch_one(
        con,
        """
        select count(*), sum(hash(user_id, state, event_count, last_event_at)::hugeint)
        from user_interest_vectors where model_id = ? and as_of = ?
        """,
        [model_id, as_of],
    )


def _later_intervals(con: Any, end: datetime) -> list[tuple[datetime, datetime]]:
    """Intervals after ``end`` that were already processed (they have a run-stats row)."""
    return [
        (row[0], row[1])
        for row in con.execute(
            "select interval_start, interval_end from pipeline_runs "
            "where interval_start >= ? order by interval_start",
            [end],
        ).fetchall()
    ]


def write_recommendations(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Top-N recommendations with evidence for every user with a new version."""
    from interest_pipeline import embeddings, recommendations
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    model_id, _ = embeddings.resolve_model(s.model)

    def run() -> dict[str, Any]:
        with open_warehouse(s.warehouse_path) as con:
            return recommendations.write_recommendations(
                con,
                model_id,
                to_utc_naive(start),
                to_utc_naive(end),
                s.top_n,
                s.half_life_hours,
                s.evidence_events,
            )

    return _timed("recommend", run)


def evaluate_recommendations(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Score the recommendations of one horizon ago, and the baselines, against events since.

    In the run for the interval ending at E, the events of (E - horizon, E] are known, so the
    recommendations as of E - horizon can be judged; rows land in ``evaluation``.
    """
    from interest_pipeline import embeddings, evaluation
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    model_id, _ = embeddings.resolve_model(s.model)

    def run() -> dict[str, Any]:
        with open_warehouse(s.warehouse_path) as con:
            return evaluation.evaluate_interval(
                con, to_utc_naive(end), s.eval_horizon_hours, model_id
            )

    return _timed("evaluate", run)


def record_run_stats(
    start: datetime,
    end: datetime,
    stage_results: list[dict[str, Any]],
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Write the interval's row of pipeline_runs (replacing any earlier row for it)."""
    from interest_pipeline import embeddings
    from interest_pipeline.warehouse import fetch_one, open_warehouse, transaction

    s = settings or get_settings()
    start, end = to_utc_naive(start), to_utc_naive(end)
    merged: dict[str, Any] = {}
    for result in stage_results:
        merged.update(result or {})
    model_id, _ = embeddings.resolve_model(s.model)
    with open_warehouse(s.warehouse_path) as con:
        counts = fetch_one(
            con,
            """
            select
                (select count(*) from raw.event_lines where interval_start = $s),
                (select count(*) from raw.item_lines where interval_start = $s),
                (select count(*) from stg_landing__events where interval_start = $s),
                (select count(*) from quarantine where interval_start = $s),
                (select count(*) from quarantine
                    where interval_start = $s and source_kind = 'events'),
                (select count(*) from stg_landing__items where interval_start = $s)
            """,
            {"s": start},
        )
        assert counts is not None
        lines, item_lines, events_in, quarantined, events_quarantined, items_upserted = counts
        row = {
            "interval_start": start,
            "interval_end": end,
            "event_lines_landed": lines,
            "item_lines_landed": item_lines,
            "events_in": events_in,
            "duplicates": lines - events_quarantined - events_in,
            "quarantined": quarantined,
            "items_upserted": items_upserted,
            "texts_embedded": merged.get("texts_embedded", 0),
            "users_updated": merged.get("users_updated", 0),
            "recommendations_written": merged.get("recommendations_written", 0),
            **{f"{stage}_seconds": merged.get(f"{stage}_seconds") for stage in STAGES},
            "model_id": model_id,
            "code_version": code_version(),
            "recorded_at": datetime.now(UTC).replace(tzinfo=None),
        }
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with transaction(con):
            con.execute("delete from pipeline_runs where interval_start = ?", [start])
            con.execute(f"insert into pipeline_runs ({cols}) values ({marks})", list(row.values()))
    log.info("run stats for [%s, %s): %s", start, end, row)
    return {k: v for k, v in row.items() if not isinstance(v, datetime)}


def publish_snapshot(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Publish a read-only copy of the warehouse for readers while later runs write.

    Runs last, in the writer pool, with no connection open, so the copy is consistent.
    """
    from interest_pipeline import snapshot

    s = settings or get_settings()
    path = snapshot.publish_snapshot(s.warehouse_path, to_utc_naive(start), to_utc_naive(end))
    return {"snapshot": str(path)}


def run_interval(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Every stage of the DAG for one interval, in order, in this process, without Airflow.

    The hour-by-hour reference the scheduler's results are checked against, and a way to
    process an interval from a notebook. Returns the interval's run-stats row.
    """
    results = [
        stage(start, end, settings)
        for stage in (
            ingest_landing_partition,
            build_dbt_models,
            embed_new_texts,
            update_user_vectors,
            write_recommendations,
            evaluate_recommendations,
        )
    ]
    return record_run_stats(start, end, results, settings)


def code_version() -> str:
    """Package version plus the git commit when the code runs from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("interest-pipeline")
    except PackageNotFoundError:
        base = "unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+{sha}" if sha else base


def _warn_if_model_changed(con: Any, model_id: str) -> None:
    """Vectors of different models are never mixed: a new model starts from scratch."""
    other = con.execute(
        "select distinct model_id from user_interest_vectors where model_id <> ?", [model_id]
    ).fetchall()
    if other:
        log.warning(
            "model changed to %s; vectors of %s are kept but not reused: user vectors are "
            "rebuilt from the events of each interval processed from now on (backfill the "
            "history to rebuild them fully)",
            model_id,
            ", ".join(r[0] for r in other),
        )


# Sharded embedding for many workers: plan (reads the warehouse), encode each shard anywhere
# (touches no warehouse), merge (the single writer). Together they equal embed_new_texts.


def plan_embedding_shards(
    start: datetime, end: datetime, settings: Settings | None = None
) -> list[str]:
    """Write the interval's pending texts to Parquet shards; return their paths (maybe none)."""
    from interest_pipeline import embeddings
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    model_id, _ = embeddings.resolve_model(s.model)
    with open_warehouse(s.warehouse_path, read_only=True) as con:
        paths = embeddings.write_text_shards(
            con, model_id, to_utc_naive(start),
            embeddings.shard_dir(s.data_dir, to_utc_naive(start)),
        )
    return [str(p) for p in paths]


def embed_text_shard(texts_path: str, settings: Settings | None = None) -> dict[str, Any]:
    """Encode one shard to Parquet (runs on any worker; never opens the warehouse)."""
    from interest_pipeline import embeddings

    s = settings or get_settings()
    model_id, _ = embeddings.resolve_model(s.model)
    started = time.perf_counter()
    out, n = embeddings.embed_text_shard(
        texts_path,
        model_id,
        lambda: embeddings.load_encoder(s.model, s.embed_batch_size),
    )
    return {"vectors": str(out), "texts": n, "seconds": round(time.perf_counter() - started, 3)}


def merge_text_embeddings(
    start: datetime,
    end: datetime,
    shard_results: Any,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Insert the encoded shards into text_embeddings (the fan-out's single writer).

    ``embed_seconds`` adds the shards' encoding time to the merge's own, so pipeline_runs
    shows the work done, not the wall time of parallel shards.
    """
    import shutil

    from interest_pipeline import embeddings
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    model_id, _ = embeddings.resolve_model(s.model)
    shards = sorted(shard_results or [], key=lambda r: r["vectors"])
    started = time.perf_counter()
    with open_warehouse(s.warehouse_path) as con:
        n = embeddings.merge_text_shards(con, [r["vectors"] for r in shards])
    shutil.rmtree(embeddings.shard_dir(s.data_dir, to_utc_naive(start)), ignore_errors=True)
    seconds = time.perf_counter() - started + sum(r["seconds"] for r in shards)
    return {
        "texts_embedded": n,
        "model_id": model_id,
        "embed_shards": len(shards),
        "embed_seconds": round(seconds, 3),
    }
