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
`interest_pipeline` package; the graph is shared with `interest_pipeline_daily`, which backfills
whole days at a time.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable

from interest_pipeline.pipeline_dag import build_pipeline_dag

# Module level, so the DAG processor finds the DAG in this file.
dag = build_pipeline_dag(
    dag_id="interest_pipeline_hourly",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    doc_md=__doc__,
    tags=["interest-pipeline", "hourly"],
)
