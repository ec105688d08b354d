"""The pipeline's task graph, shared by the hourly DAG and the daily backfill DAG.

Both DAG files hold their schedule, documentation and config and call
:func:`build_pipeline_dag`; the graph is written once here so the two cannot drift apart. The
stages handle an interval of any whole number of hours (see :mod:`interest_pipeline.stages`).
Airflow is imported inside the function: this module is imported by the DAG files only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# Early enough for every sample dataset (MovieLens starts in 1996); catchup is off, so only
# explicit backfills reach back there.
START_DATE = datetime(1995, 1, 1, tzinfo=UTC)

# One slot: DuckDB allows a single writing process per file (created by
# `interest-airflow start` / the main job).
WRITER_POOL = "duckdb_writer"

# Run types of the Airflow DagRunType enum a backfill-only DAG processes: a backfill, or a run
# someone triggered by hand for a chosen interval; its own scheduled runs are left to the
# hourly DAG.
BACKFILL_ONLY_RUN_TYPES = ("backfill", "manual")

# The run conf of a backfill created by interest-main-job: the end of its last interval (ISO
# 8601, UTC) and whether it redoes completed runs (stages.update_user_vectors).
BACKFILL_END_CONF = "backfill_end"
BACKFILL_REPROCESS_CONF = "backfill_reprocess"


def runs_interval(run_type: str, backfill_only: bool) -> bool:
    """Whether a DAG run of this type processes its interval (``run_type``: a DagRunType
    value, e.g. ``"scheduled"``)."""
    return not backfill_only or run_type in BACKFILL_ONLY_RUN_TYPES


def build_pipeline_dag(
    dag_id: str, schedule: Any, doc_md: str, tags: list[str], backfill_only: bool = False
) -> Any:
    """The pipeline DAG: ingest → dbt → embed (mapped shards) → fold → train ranker → recommend
    → evaluate
    → run stats → snapshot, every warehouse writer in the one-slot pool.

    Args:
        dag_id: The DAG id (also its file name).
        schedule: The timetable; its data interval is what every task processes.
        doc_md: Markdown shown in the UI.
        tags: UI tags.
        backfill_only: Add a first task that skips the whole run unless it is a backfill or a
            manual run, for a DAG that must stay unpaused (backfills need that) but must not
            redo what the hourly DAG already does on schedule.
    """
    from airflow.sdk import dag, get_current_context, task

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args={
            "retries": 1,
            "retry_delay": timedelta(seconds=30),
            "pool": WRITER_POOL,
        },
        tags=tags,
        doc_md=doc_md,
    )
    def pipeline() -> None:
        from interest_pipeline import stages

        @task
        def ingest_landing_partition(data_interval_start=None, data_interval_end=None) -> dict:
            """Copy the interval's landing partitions into the warehouse's raw tables."""
            return stages.ingest_landing_partition(data_interval_start, data_interval_end)

        @task
        def build_dbt_models(data_interval_start=None, data_interval_end=None) -> dict:
            """`dbt build` for the interval: stage, deduplicate, quarantine, build marts."""
            return stages.build_dbt_models(data_interval_start, data_interval_end)

        @task
        def plan_embedding_shards(data_interval_start=None, data_interval_end=None) -> list[str]:
            """Write the texts not yet cached for the model to Parquet shards (paths via XCom)."""
            return stages.plan_embedding_shards(data_interval_start, data_interval_end)

        # Not in the writer pool: a shard reads and writes only its own Parquet files, so
        # shards run in parallel across workers.
        @task(pool="default_pool")
        def embed_text_shard(texts_path: str) -> dict:
            """Encode one shard of texts to a vectors Parquet file."""
            return stages.embed_text_shard(texts_path)

        # none_failed: an interval with nothing to embed maps zero shards (skipped) and still
        # merges.
        @task(trigger_rule="none_failed")
        def merge_text_embeddings(
            shards: list[dict], data_interval_start=None, data_interval_end=None
        ) -> dict:
            """Insert the encoded shards into text_embeddings: the single writer."""
            return stages.merge_text_embeddings(data_interval_start, data_interval_end, shards)

        @task
        def update_user_vectors(
            data_interval_start=None, data_interval_end=None, dag_run=None
        ) -> dict:
            """Write a new interest-vector version for each user whose vector changed."""
            # A backfill made by interest-main-job says where it ends: later intervals that
            # its hours make stale are then recomputed once, by its last run.
            conf = (dag_run.conf if dag_run is not None else None) or {}
            end = conf.get(BACKFILL_END_CONF)
            return stages.update_user_vectors(
                data_interval_start, data_interval_end,
                backfill_end=datetime.fromisoformat(end) if end else None,
                reprocess=bool(conf.get(BACKFILL_REPROCESS_CONF, False)),
            )

        @task
        def train_ranker(data_interval_start=None, data_interval_end=None) -> dict:
            """Fit the blend of the score's signals on the warehouse's history when due."""
            return stages.train_ranker(data_interval_start, data_interval_end)

        @task
        def write_recommendations(data_interval_start=None, data_interval_end=None) -> dict:
            """Top-N recommendations with evidence for the users updated in each hour."""
            return stages.write_recommendations(data_interval_start, data_interval_end)

        @task
        def evaluate_recommendations(data_interval_start=None, data_interval_end=None) -> dict:
            """Score the recommendations of one horizon ago and the baselines against later
            events."""
            return stages.evaluate_recommendations(data_interval_start, data_interval_end)

        @task
        def record_run_stats(
            results: list[dict], data_interval_start=None, data_interval_end=None
        ) -> dict:
            """Write each hour's run-health row to pipeline_runs."""
            return stages.record_run_stats(data_interval_start, data_interval_end, results)

        @task
        def publish_snapshot(data_interval_start=None, data_interval_end=None) -> dict:
            """Publish a read-only copy of the warehouse for the CLI while later runs write."""
            return stages.publish_snapshot(data_interval_start, data_interval_end)

        ingested = ingest_landing_partition()
        built = build_dbt_models()
        planned = plan_embedding_shards()
        embedded = merge_text_embeddings(embed_text_shard.expand(texts_path=planned))
        folded = update_user_vectors()
        trained = train_ranker()
        recommended = write_recommendations()
        evaluated = evaluate_recommendations()

        if backfill_only:
            # Opens no warehouse, so not in the writer pool.
            @task.short_circuit(pool="default_pool")
            def skip_scheduled_runs() -> bool:
                """Go on for a backfill or manual run; skip the whole run otherwise."""
                run_type = get_current_context()["dag_run"].run_type
                return runs_interval(str(getattr(run_type, "value", run_type)), backfill_only)

            skip_scheduled_runs() >> ingested

        ingested >> built >> planned
        embedded >> folded >> trained >> recommended >> evaluated
        stats = record_run_stats(
            [ingested, built, embedded, folded, trained, recommended, evaluated]
        )
        stats >> publish_snapshot()

    return pipeline()
