"""
### Daily backfill of the user interest pipeline

The same tasks as `interest_pipeline_hourly`, for a whole UTC day `[D, D+1d)` per run: for
backfilling history fast. Use it with `airflow backfill create --dag-id interest_pipeline_daily
--from-date D1 --to-date D2` (or `interest-main-job --daily`); keep `interest_pipeline_hourly`
for the live hours.

What a day run does, and why it is cheaper than 24 hourly runs:

- **ingest_landing_partition** copies the day's 24 hourly partitions, each under its own
  arrival hour.
- **build_dbt_models** runs `dbt build` **once** for the day (the models read
  `[interval_start, interval_end)`; every row keeps the hour it arrived in, and deduplication
  keeps the earliest hour's copy), instead of 24 dbt processes.
- **plan_embedding_shards / embed_text_shard / merge_text_embeddings** embed the day's new
  texts in one go: the model loads at most once.
- **update_user_vectors**, **write_recommendations**, **evaluate_recommendations** and
  **record_run_stats** still go hour by hour inside the task, so every hour gets its own vector
  versions (`as_of` = the hour's end), recommendations, evaluation and `pipeline_runs` row:
  the tables equal what 24 hourly runs give.
- About 10 task starts per day instead of 240.

**skip_scheduled_runs**: the DAG must stay unpaused for backfills, so the scheduler also
creates a run for each new day; those runs skip everything, because the hourly DAG has done
that day already. Backfill and manual runs go on. Both DAGs share the one-slot `duckdb_writer`
pool, so their warehouse writers never overlap.
"""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable

from interest_pipeline.pipeline_dag import build_pipeline_dag

# Module level, so the DAG processor finds the DAG in this file.
dag = build_pipeline_dag(
    dag_id="interest_pipeline_daily",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    doc_md=__doc__,
    tags=["interest-pipeline", "daily", "backfill"],
    backfill_only=True,
)
