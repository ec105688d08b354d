"""
### Rebuild under another model (manually triggered)

Re-embeds every text and recomputes every vector version, ranker and list of the processed
history under another embedding model, then switches the warehouse to it in one step:

```
airflow dags trigger interest_rebuild --conf '{"model": "/models/my-sentence-transformer"}'
```

`model` is `"default"` (all-MiniLM-L6-v2), a sentence-transformers model name or a local path.
Until the switch every reader and every hourly run keeps the model being served; the old
model's rows are kept. The one task runs in the one-slot `duckdb_writer` pool, so it never
writes while a pipeline task does, and hourly runs wait for it. A model that cannot be loaded,
the model already served or a warehouse with nothing processed fails the task at once (no
retry), having written nothing. Same code as `interest rebuild --model M`; see
`interest_pipeline.rebuild` and the README's "Changing the model".
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from interest_pipeline.pipeline_dag import START_DATE, WRITER_POOL


@dag(
    dag_id="interest_rebuild",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    # A retry resumes an interrupted rebuild: its embeddings are kept, its partial rows redone.
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "pool": WRITER_POOL},
    params={
        "model": Param(type="string", minLength=1, pattern=r"\S",
                       description='"default", a sentence-transformers model name or a local '
                       "path"),
    },
    tags=["interest-pipeline", "model"],
    doc_md=__doc__,
)
def interest_rebuild() -> None:
    @task
    def rebuild_model(params=None) -> dict:
        """Embed, recompute every processed hour under the model, switch, republish."""
        from airflow.sdk.exceptions import AirflowFailException

        from interest_pipeline import rebuild
        from interest_pipeline.config import get_settings

        try:
            return rebuild.rebuild_model(get_settings(), params["model"])
        except rebuild.RebuildError as exc:  # a refusal: retrying cannot change it
            raise AirflowFailException(str(exc)) from None

    rebuild_model()


dag = interest_rebuild()
