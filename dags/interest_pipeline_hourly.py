"""
### Hourly user interest pipeline

Every hour, for the data interval `[H, H+1h)` (UTC):

1. **ingest_landing_partition** copies `events/` and `items/` partition `date=…/hour=H` of the
   landing zone into `raw.event_lines` / `raw.item_lines` (a missing partition is an empty hour).
2. **build_dbt_models** runs `dbt build` for the interval: staging parses, casts, converts times
   to UTC and deduplicates on `event_id`; bad lines go to `quarantine` with a reason; marts hold
   `user_item_interactions` (weighted) and `item_documents` (the text that gets embedded).
3. **plan_embedding_shards** writes the item documents and query/tag texts not yet cached for
   the model to Parquet shards (one shard below 2,048 texts, so an ordinary hour stays cheap);
   **embed_text_shard**, mapped over the shards, encodes each on any worker without opening the
   warehouse (the model loads only if there is a shard); **merge_text_embeddings**, the single
   writer, inserts them into `text_embeddings` (one row per model and text hash).
4. **update_user_vectors** folds the hour's events into time-decaying interest vectors and
   writes a version `as_of = data_interval_end` for each user whose vector changed.
5. **write_recommendations** writes the top-N items per changed user with score and evidence.
6. **evaluate_recommendations** scores the recommendations of one horizon (24 h) ago, and the
   baselines, against the events since (`evaluation`).
7. **record_run_stats** writes the interval's row of `pipeline_runs`.
8. **publish_snapshot** copies the warehouse to `<warehouse>.snapshot`, which the `interest`
   CLI reads while a later run holds the (single-writer) DuckDB file.

Every task replaces exactly its interval's rows, so reruns and backfills are idempotent. Runs
go one at a time in interval order (`max_active_runs=1`; backfills run oldest first) because
each version of a user's vector builds on the previous one. When an earlier interval is
(re)processed after later ones, `update_user_vectors` recomputes the later versions and their
recommendations, so the tables converge to what in-order processing gives. Logic lives in the
`interest_pipeline` package.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task

from interest_pipeline import stages

# Early enough for every sample dataset (MovieLens starts in 1996); catchup is off, so only
# explicit backfills reach back there.
START_DATE = datetime(1995, 1, 1, tzinfo=UTC)


@dag(
    dag_id="interest_pipeline_hourly",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 1,
        "retry_delay": timedelta(seconds=30),
        # One slot: DuckDB allows a single writing process per file (created by
        # `interest-airflow start` / the main job).
        "pool": "duckdb_writer",
    },
    tags=["interest-pipeline", "hourly"],
    doc_md=__doc__,
)
def interest_pipeline_hourly() -> None:
    @task
    def ingest_landing_partition(data_interval_start=None, data_interval_end=None) -> dict:
        """Copy the hour's landing partition into the warehouse's raw tables."""
        return stages.ingest_landing_partition(data_interval_start, data_interval_end)

    @task
    def build_dbt_models(data_interval_start=None, data_interval_end=None) -> dict:
        """`dbt build` for the interval: stage, deduplicate, quarantine, build marts."""
        return stages.build_dbt_models(data_interval_start, data_interval_end)

    @task
    def plan_embedding_shards(data_interval_start=None, data_interval_end=None) -> list[str]:
        """Write the texts not yet cached for the model to Parquet shards (paths via XCom)."""
        return stages.plan_embedding_shards(data_interval_start, data_interval_end)

    # Not in the writer pool: a shard reads and writes only its own Parquet files, so shards
    # run in parallel across workers.
    @task(pool="default_pool")
    def embed_text_shard(texts_path: str) -> dict:
        """Encode one shard of texts to a vectors Parquet file."""
        return stages.embed_text_shard(texts_path)

    # none_failed: an hour with nothing to embed maps zero shards (skipped) and still merges.
    @task(trigger_rule="none_failed")
    def merge_text_embeddings(
        shards: list[dict], data_interval_start=None, data_interval_end=None
    ) -> dict:
        """Insert the encoded shards into text_embeddings: the single writer."""
        return stages.merge_text_embeddings(data_interval_start, data_interval_end, shards)

    @task
    def update_user_vectors(data_interval_start=None, data_interval_end=None) -> dict:
        """Write a new interest-vector version for each user whose vector changed."""
        return stages.update_user_vectors(data_interval_start, data_interval_end)

    @task
    def write_recommendations(data_interval_start=None, data_interval_end=None) -> dict:
        """Top-N recommendations with evidence for the users updated this hour."""
        return stages.write_recommendations(data_interval_start, data_interval_end)

    @task
    def evaluate_recommendations(data_interval_start=None, data_interval_end=None) -> dict:
        """Score the recommendations of one horizon ago and the baselines against later events."""
        return stages.evaluate_recommendations(data_interval_start, data_interval_end)

    @task
    def record_run_stats(
        results: list[dict], data_interval_start=None, data_interval_end=None
    ) -> dict:
        """Write the interval's run-health row to pipeline_runs."""
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
    recommended = write_recommendations()
    evaluated = evaluate_recommendations()

    ingested >> built >> planned
    embedded >> folded >> recommended >> evaluated
    stats = record_run_stats([ingested, built, embedded, folded, recommended, evaluated])
    stats >> publish_snapshot()


interest_pipeline_hourly()
