"""The pipeline's stages, one function per DAG task.

Each stage takes the Airflow data interval, is idempotent for it (replaces exactly that
interval's rows), opens the warehouse only for as long as it needs it, and returns a small dict
of counts and its duration for the run-stats task (XCom carries nothing larger).

An interval is a whole number of UTC hours: one for the hourly DAG, 24 for the daily backfill
DAG. Ingest, fold, recommendations, evaluation and run stats go hour by hour inside it, so every
hour gets its own vector versions and run-stats row, exactly as if the hours had run one by one;
dbt and the embedding run once for the whole interval, which is what makes a day of backfill
far cheaper than 24 hourly runs. Stages over several hours return their totals plus
``per_hour`` (hour start ISO -> that hour's dict) for the run-stats task.

Every stage runs with the model being served, read from the warehouse when it opens it
(:func:`interest_pipeline.rebuild.serving_model`: the model a rebuild switched to, else
INTEREST_MODEL), so the hourly runs follow a switch without any configuration change.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from interest_pipeline.config import REPO_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

STAGES = ("ingest", "dbt", "embed", "fold", "recommend", "evaluate")
HOUR = timedelta(hours=1)


def to_utc_naive(moment: datetime) -> datetime:
    """Airflow hands out aware (pendulum) datetimes; the warehouse stores naive UTC timestamps.

    Returns a plain ``datetime``: pendulum's arithmetic differs (its intervals cannot be
    divided by a timedelta).
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return datetime(
        moment.year, moment.month, moment.day,
        moment.hour, moment.minute, moment.second, moment.microsecond,
    )


def _serving_model(con: Any, s: Settings) -> tuple[str, str]:
    """(model, model_id) a stage runs with: the model being served (the registry a rebuild
    switches, :func:`interest_pipeline.rebuild.serving_model`), else INTEREST_MODEL's.

    Read on the stage's own connection, so a stage never writes under a model that a rebuild
    replaced between its reading and its writing.

    Raises:
        RuntimeError: The served model resolves to another model_id here (another
            INTEREST_EMBEDDING_BACKEND than the rebuild's): its vectors would be stored under
            an id that is not theirs.
    """
    from interest_pipeline import embeddings, rebuild

    model, model_id = rebuild.serving_model(con, s)
    resolved = embeddings.resolve_model(model)[0]
    if resolved != model_id:
        raise RuntimeError(
            f"the warehouse serves {model_id} (switched to by `interest rebuild`), but its "
            f"model {model!r} is {resolved} with this INTEREST_EMBEDDING_BACKEND: set the backend "
            f"it was rebuilt with, or `interest rebuild --model {model}` to switch to {resolved}"
        )
    return model, model_id


def _shard_model(texts_path: str, s: Settings) -> tuple[str, str]:
    """(model, model_id) a shard was planned for: the worker never opens the warehouse (so
    cannot read the registry), the planner did and wrote the model_id into the shard.

    The model to load is the one whose model_id that is; when none of the candidates gives
    it, the configured model, which :func:`interest_pipeline.embeddings.embed_text_shard`
    then refuses with its own message.
    """
    import pyarrow.parquet as pq

    from interest_pipeline import embeddings
    from interest_pipeline.config import DEFAULT_MODEL

    planned = pq.read_table(texts_path, columns=["model_id"]).column("model_id")
    ids = planned.unique().to_pylist()
    if len(ids) == 1:
        # A backend suffix (``#onnx-int8``) is part of the id, not of the model's name.
        for model in (s.model, DEFAULT_MODEL, ids[0], ids[0].rsplit("#", 1)[0]):
            try:
                if embeddings.resolve_model(model)[0] == ids[0]:
                    return model, ids[0]
            except RuntimeError:
                continue
    return s.model, embeddings.resolve_model(s.model)[0]


def _timed(stage: str, fn: Any, *args: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = fn(*args) or {}
    result[f"{stage}_seconds"] = round(time.perf_counter() - started, 3)
    return result


def interval_hours(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The hours [h, h + 1h) making up the interval [start, end).

    Raises:
        ValueError: the interval is empty or not a whole number of hours starting on the hour.
    """
    start, end = to_utc_naive(start), to_utc_naive(end)
    hours, rest = divmod(end - start, HOUR)
    if hours < 1 or rest or start.minute or start.second or start.microsecond:
        raise ValueError(f"interval [{start}, {end}) is not a whole number of UTC hours")
    return [(start + k * HOUR, start + (k + 1) * HOUR) for k in range(hours)]


def _hour_by_hour(
    stage: str,
    start: datetime,
    end: datetime,
    one_hour: Callable[[datetime, datetime], dict[str, Any]],
) -> dict[str, Any]:
    """Run ``one_hour`` for each hour of the interval, timed; the totals plus ``per_hour``
    when there is more than one hour (an hourly run's result keeps its single-hour shape).

    Totals sum the counts (ints) and the ``*_seconds``; any other value (a metric, a time, a
    model id) is the last hour's.
    """
    per_hour = {
        h_start.isoformat(): _timed(stage, one_hour, h_start, h_end)
        for h_start, h_end in interval_hours(start, end)
    }
    if len(per_hour) == 1:
        return next(iter(per_hour.values()))
    totals: dict[str, Any] = {}
    for result in per_hour.values():
        for key, value in result.items():
            summable = (isinstance(value, int) and not isinstance(value, bool)) or (
                key.endswith("_seconds") and isinstance(value, float)
            )
            before = totals.get(key, 0)
            if summable and isinstance(before, int | float) and not isinstance(before, bool):
                totals[key] = before + value
            else:
                totals[key] = value
    return {**totals, "per_hour": per_hour}


def ingest_landing_partition(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Copy the interval's landing partitions (one per hour) into raw.event_lines /
    raw.item_lines."""
    from interest_pipeline.ingest import ingest_interval
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    start, end = to_utc_naive(start), to_utc_naive(end)
    with open_warehouse(s.warehouse_path) as con:
        return _hour_by_hour(
            "ingest", start, end,
            lambda h_start, h_end: ingest_interval(con, s.landing_dir, h_start, h_end),
        )


def build_dbt_models(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Clean, deduplicate and normalise the interval with dbt; quarantine bad lines.

    An hour with no landed lines and no rows from an earlier build skips dbt: the build would
    change nothing, and it is the most expensive step of an empty hour.
    """
    from interest_pipeline.catalogue_stats import invalidate_from
    from interest_pipeline.transform import run_dbt_build
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    start, end = to_utc_naive(start), to_utc_naive(end)
    interval_hours(start, end)  # refuse a partial hour before dbt sees it
    with open_warehouse(s.warehouse_path) as con:
        empty = _interval_is_empty(con, start, end)
    if empty:
        log.info("no lines landed for [%s, %s) and nothing built before: dbt skipped", start, end)
        return {"dbt_seconds": 0.0, "dbt_skipped": True}
    result = _timed("dbt", run_dbt_build, s, start, end)
    with open_warehouse(s.warehouse_path) as con:
        # The interval's interactions were replaced: statistics kept up to or past it are stale.
        invalidate_from(con, start)
    return result


_INTERVAL_TABLES = (
    "raw.event_lines",
    "raw.item_lines",
    "raw.landing_files",
    "main.stg_landing__events",
    "main.stg_landing__items",
    "main.quarantine",
    "main.user_item_interactions",
)


def _interval_is_empty(con: Any, start: datetime, end: datetime) -> bool:
    """True when no per-interval table has rows in [start, end) (and the marts exist)."""
    from interest_pipeline.warehouse import fetch_one, table_exists

    for qualified in _INTERVAL_TABLES:
        schema, name = qualified.split(".")
        if not table_exists(con, name, schema):
            return False  # first build: dbt must create the tables
        (n,) = fetch_one(
            con,
            f"select count(*) from {qualified} where interval_start >= ? and interval_start < ?",
            [start, end],
        )
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

    def run() -> dict[str, Any]:
        with open_warehouse(s.warehouse_path) as con:
            model, model_id = _serving_model(con, s)
            n = embeddings.embed_new_texts(
                con,
                model_id,
                lambda: embeddings.load_encoder(model, s.embed_batch_size, s.data_dir),
                to_utc_naive(start),
                to_utc_naive(end),
            )
        return {"texts_embedded": n, "model_id": model_id}

    return _timed("embed", run)


def update_user_vectors(
    start: datetime,
    end: datetime,
    settings: Settings | None = None,
    backfill_end: datetime | None = None,
    reprocess: bool = False,
) -> dict[str, Any]:
    """Fold each hour's events into versioned user interest vectors (as_of = the hour's end).

    Out-of-order history: if the interval's versions changed and later intervals were already
    processed, their versions were built on a stale state, so they and their recommendations
    are recomputed, oldest first, after the interval's last hour. The tables then equal what
    in-order processing gives.

    Inside a backfill (``backfill_end``: the end of its last run; ``reprocess``: it redoes
    completed runs too) that recomputation waits while the backfill's next run is still to
    come: the point from which processed intervals are stale is kept in ``fold_pending``
    and the backfill's last run recomputes them once, so N late intervals behind processed
    hours cost one recomputation of those hours, not N. Any later run that finds the marker
    first brings the stale intervals before it up to date (a backfill that stopped half way
    leaves nothing stale behind for good).
    """
    from interest_pipeline import rebuild, user_vectors
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    start, end = to_utc_naive(start), to_utc_naive(end)
    backfill_end = to_utc_naive(backfill_end) if backfill_end is not None else None
    with open_warehouse(s.warehouse_path) as con:
        _, model_id = _serving_model(con, s)
        if rebuild.registry(con) is None:  # a model switched to by a rebuild has its history
            _warn_if_model_changed(con, model_id)
        con.execute(FOLD_PENDING_DDL)
        pending = _pending(con, model_id)
        started = time.perf_counter()
        caught_up = 0
        if pending is not None and pending < start:
            # A backfill left processed intervals stale from `pending` on: first those
            # before this interval, so that it folds onto an up-to-date state.
            behind = [iv for iv in _later_intervals(con, pending) if iv[0] < start]
            _recompute(con, model_id, behind, s)
            caught_up = len(behind)
        catch_up_seconds = round(time.perf_counter() - started, 3)
        changed = False

        def fold_hour(h_start: datetime, h_end: datetime) -> dict[str, Any]:
            nonlocal changed
            before = _versions_checksum(con, model_id, h_end)
            hour = user_vectors.update_user_vectors(
                con, model_id, h_start, h_end, s.half_life_hours
            )
            changed = changed or _versions_checksum(con, model_id, h_end) != before
            return hour

        result = _hour_by_hour("fold", start, end, fold_hour)
        # Later processed intervals are stale if this one changed, or if they already were.
        stale = changed or (pending is not None and pending < end)
        later = _later_intervals(con, end) if stale else []
        defer = bool(later) and backfill_end is not None and end < backfill_end and (
            reprocess or not _is_processed(con, end)
        )
        started = time.perf_counter()
        if defer:
            _set_pending(con, model_id, end)
            log.info(
                "interval [%s, %s) changed; %d later interval(s) are recomputed once, at the "
                "end of the backfill (%s)", start, end, len(later), backfill_end,
            )
            later = []
        elif later:
            log.warning(
                "interval [%s, %s) changed after %d later interval(s) were processed; "
                "recomputing their vectors and recommendations (%s .. %s)",
                start, end, len(later), later[0][0], later[-1][1],
            )
            _recompute(con, model_id, later, s)
            _set_pending(con, model_id, None)
        elif pending is not None and pending < end:
            _set_pending(con, model_id, None)  # nothing processed after this interval
        # The recomputation is this task's work: run stats count it on the last hour.
        seconds = round(time.perf_counter() - started, 3) + catch_up_seconds
        result["fold_seconds"] += seconds
        if "per_hour" in result:
            last = result["per_hour"][(end - HOUR).isoformat()]
            last["fold_seconds"] += seconds
        result["later_intervals_recomputed"] = len(later) + caught_up
        result["later_recompute_deferred"] = defer
        return result


FOLD_PENDING_DDL = """
create table if not exists fold_pending (
    model_id varchar not null,
    stale_from timestamp not null  -- processed intervals starting here or later are stale
);
"""


def _pending(con: Any, model_id: str) -> datetime | None:
    """Where a deferred recomputation starts (see :func:`update_user_vectors`), if any."""
    from interest_pipeline.warehouse import fetch_one

    row = fetch_one(con, "select min(stale_from) from fold_pending where model_id = ?",
                    [model_id])
    return row[0] if row else None


def _set_pending(con: Any, model_id: str, stale_from: datetime | None) -> None:
    from interest_pipeline.warehouse import transaction

    with transaction(con):
        con.execute("delete from fold_pending where model_id = ?", [model_id])
        if stale_from is not None:
            con.execute("insert into fold_pending values (?, ?)", [model_id, stale_from])


def _is_processed(con: Any, start: datetime) -> bool:
    """Whether the interval starting at ``start`` has a run-stats row."""
    from interest_pipeline.warehouse import fetch_one

    row = fetch_one(con, "select count(*) from pipeline_runs where interval_start = ?", [start])
    return bool(row and row[0])


def _recompute(
    con: Any, model_id: str, intervals: list[tuple[datetime, datetime]], s: Settings
) -> None:
    """Recompute the vectors and recommendations of processed intervals, oldest first."""
    from interest_pipeline import recommendations, user_vectors

    for i, (later_start, later_end) in enumerate(intervals, start=1):
        user_vectors.update_user_vectors(
            con, model_id, later_start, later_end, s.half_life_hours
        )
        recommendations.write_recommendations(
            con, model_id, later_start, later_end, s.top_n,
            s.half_life_hours, s.evidence_events,
        )
        if i % 24 == 0 or i == len(intervals):
            log.info("recomputed %d/%d later intervals", i, len(intervals))


def _versions_checksum(con: Any, model_id: str, as_of: datetime) -> tuple | None:
    """A cheap fingerprint of the versions written for one as_of."""
    from interest_pipeline.warehouse import fetch_one

    # The social versions too: a late follow changes later social vectors and nothing else.
    return fetch_one(
        con,
        """
        select
            (select count(*) from user_interest_vectors where model_id = $m and as_of = $t),
            (select sum(hash(user_id, state, event_count, last_event_at)::hugeint)
             from user_interest_vectors where model_id = $m and as_of = $t),
            (select sum(hash(user_id, vector, followees)::hugeint)
             from user_social_vectors where model_id = $m and as_of = $t)
        """,
        {"m": model_id, "t": as_of},
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


def train_ranker(
    start: datetime, end: datetime, settings: Settings | None = None, con: Any = None
) -> dict[str, Any]:
    """Fit the ranker (the blend of the score's signals) at each hour end it is due (daily at
    midnight UTC by default), on the history known then; other hours do nothing. ``con``: a
    write connection to use instead of opening the warehouse (see :func:`_warehouse`)."""
    from interest_pipeline import ranker, recommendations

    s = settings or get_settings()
    config = ranker.ranker_settings()
    due = [h_end for _, h_end in interval_hours(start, end) if ranker.is_due(h_end, config)]
    if not due:
        return {"rankers_fitted": 0}
    started = time.perf_counter()
    with _warehouse(s, con) as con:
        _, model_id = _serving_model(con, s)
        results = [
            ranker.train_ranker(
                con, model_id, h_end, s.half_life_hours, s.evidence_events,
                recommendations.scoring_config(), config,
            )
            for h_end in due
        ]
    return {
        **results[-1],
        "rankers_fitted": len(results),
        "train_seconds": round(time.perf_counter() - started, 3),
    }


def write_recommendations(
    start: datetime,
    end: datetime,
    settings: Settings | None = None,
    con: Any = None,
    users: Collection[str] | None = None,
    new_user: bool = True,
) -> dict[str, Any]:
    """Top-N recommendations with evidence for every user with a new version, hour by hour
    (``con``: as for :func:`train_ranker`; ``users`` and ``new_user``: as for
    :func:`interest_pipeline.recommendations.write_recommendations`)."""
    from interest_pipeline import recommendations

    s = settings or get_settings()
    with _warehouse(s, con) as con:
        _, model_id = _serving_model(con, s)
        return _hour_by_hour(
            "recommend", to_utc_naive(start), to_utc_naive(end),
            lambda h_start, h_end: recommendations.write_recommendations(
                con, model_id, h_start, h_end, s.top_n, s.half_life_hours, s.evidence_events,
                users=users, new_user=new_user,
            ),
        )


def _warehouse(s: Settings, con: Any = None) -> AbstractContextManager[Any]:
    """``con`` when given (a caller running many hours in one process keeps one connection:
    opening and closing the file each hour was a sixth of an evaluation rerun), else a
    connection of the stage's own, closed at the end so that dbt can take the lock."""
    from interest_pipeline.warehouse import open_warehouse

    return nullcontext(con) if con is not None else open_warehouse(s.warehouse_path)


def evaluate_recommendations(
    start: datetime, end: datetime, settings: Settings | None = None
) -> dict[str, Any]:
    """Score the recommendations of one horizon ago, and the baselines, against events since.

    In the run for the interval ending at E, the events of (E - horizon, E] are known, so the
    recommendations as of E - horizon can be judged; rows land in ``evaluation``.
    """
    from interest_pipeline import evaluation
    from interest_pipeline.warehouse import open_warehouse

    s = settings or get_settings()
    with open_warehouse(s.warehouse_path) as con:
        _, model_id = _serving_model(con, s)
        return _hour_by_hour(
            "evaluate", to_utc_naive(start), to_utc_naive(end),
            lambda _, h_end: evaluation.evaluate_interval(
                con, h_end, s.eval_horizon_hours, model_id
            ),
        )


def record_run_stats(
    start: datetime,
    end: datetime,
    stage_results: list[dict[str, Any]],
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Write one pipeline_runs row per hour of the interval (replacing earlier rows for them).

    A stage that went hour by hour reports each hour (``per_hour``); work done once for the
    whole interval (dbt, embedding) is counted on its first hour. Returns the last hour's row.
    """
    from interest_pipeline.warehouse import open_warehouse, transaction

    s = settings or get_settings()
    start, end = to_utc_naive(start), to_utc_naive(end)
    version = code_version()
    hours = interval_hours(start, end)
    with open_warehouse(s.warehouse_path) as con, transaction(con):
        _, model_id = _serving_model(con, s)
        for h_start, h_end in hours:
            merged: dict[str, Any] = {}
            for result in stage_results:
                result = result or {}
                if "per_hour" in result:
                    merged.update(result["per_hour"].get(h_start.isoformat(), {}))
                elif h_start == start:
                    merged.update(result)
            row = _run_stats_row(con, h_start, h_end, merged, model_id, version)
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            con.execute("delete from pipeline_runs where interval_start = ?", [h_start])
            con.execute(f"insert into pipeline_runs ({cols}) values ({marks})", list(row.values()))
            log.info("run stats for [%s, %s): %s", h_start, h_end, row)
    return {k: v for k, v in row.items() if not isinstance(v, datetime)}


def _run_stats_row(
    con: Any,
    start: datetime,
    end: datetime,
    merged: dict[str, Any],
    model_id: str,
    version: str,
) -> dict[str, Any]:
    """One hour's pipeline_runs row: line and row counts from the tables, the rest from the
    stages' results for that hour."""
    from interest_pipeline.warehouse import fetch_one

    counts = fetch_one(
        con,
        """
        select
            (select count(*) from raw.event_lines where interval_start = $s),
            (select count(*) from raw.item_lines where interval_start = $s),
            (select count(*) from stg_landing__events where interval_start = $s),
            (select count(*) from quarantine where interval_start = $s and line_number > 0),
            (select count(*) from quarantine
                where interval_start = $s and source_kind = 'events' and line_number > 0),
            (select count(*) from stg_landing__items where interval_start = $s),
            (select count(*) from quarantine where interval_start = $s and line_number = 0),
            (select coalesce(sum(lines_erased), 0) from raw.landing_files
                where interval_start = $s)
        """,
        {"s": start},
    )
    assert counts is not None
    (
        lines, item_lines, events_in, quarantined, events_quarantined, items_upserted,
        files_quarantined, lines_erased,
    ) = counts
    return {
        "interval_start": start,
        "interval_end": end,
        "event_lines_landed": lines,
        "item_lines_landed": item_lines,
        "events_in": events_in,
        "duplicates": lines - events_quarantined - events_in,
        "quarantined": quarantined,
        "files_quarantined": files_quarantined,
        "lines_erased": lines_erased,
        "items_upserted": items_upserted,
        "texts_embedded": merged.get("texts_embedded", 0),
        "users_updated": merged.get("users_updated", 0),
        "recommendations_written": merged.get("recommendations_written", 0),
        **{f"{stage}_seconds": merged.get(f"{stage}_seconds") for stage in STAGES},
        "model_id": model_id,
        "code_version": version,
        "recorded_at": datetime.now(UTC).replace(tzinfo=None),
    }


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
            train_ranker,
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
            "rebuilt from the events of each interval processed from now on (`interest "
            "rebuild --model M` recomputes the whole history under a new model instead)",
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
    start, end = to_utc_naive(start), to_utc_naive(end)
    with open_warehouse(s.warehouse_path, read_only=True) as con:
        _, model_id = _serving_model(con, s)
        paths = embeddings.write_text_shards(
            con, model_id, start, embeddings.shard_dir(s.data_dir, start, end), end
        )
    return [str(p) for p in paths]


def embed_text_shard(texts_path: str, settings: Settings | None = None) -> dict[str, Any]:
    """Encode one shard to Parquet (runs on any worker; never opens the warehouse)."""
    from interest_pipeline import embeddings

    s = settings or get_settings()
    model, model_id = _shard_model(texts_path, s)
    started = time.perf_counter()
    out, n = embeddings.embed_text_shard(
        texts_path,
        model_id,
        lambda: embeddings.load_encoder(model, s.embed_batch_size, s.data_dir),
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
    shards = sorted(shard_results or [], key=lambda r: r["vectors"])
    started = time.perf_counter()
    with open_warehouse(s.warehouse_path) as con:
        _, model_id = _serving_model(con, s)
        n = embeddings.merge_text_shards(con, [r["vectors"] for r in shards])
    shutil.rmtree(
        embeddings.shard_dir(s.data_dir, to_utc_naive(start), to_utc_naive(end)),
        ignore_errors=True,
    )
    seconds = time.perf_counter() - started + sum(r["seconds"] for r in shards)
    return {
        "texts_embedded": n,
        "model_id": model_id,
        "embed_shards": len(shards),
        "embed_seconds": round(seconds, 3),
    }


def forget_users(
    user_ids: list[str],
    reason: str | None = None,
    purge_landing: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Erase users everywhere (the ``interest_forget`` DAG's task; see :mod:`erasure`)."""
    from interest_pipeline import erasure

    s = settings or get_settings()
    return erasure.forget_users(
        s.warehouse_path, user_ids, reason, s.landing_dir if purge_landing else None
    )
