"""
### Forget users (manually triggered)

Erases the users given in the run's conf from the warehouse, every version and copy, and
registers them so that no later backfill brings them back:

```
airflow dags trigger interest_forget --conf '{"users": ["u1", "u2"], "reason": "request 42"}'
```

Add `"purge_landing": true` to also rewrite the landing files that held their lines (only for
a landing zone the pipeline owns). The one task runs in the one-slot `duckdb_writer` pool, so
it never writes while a pipeline task does. Same code as `interest forget`; see
`interest_pipeline.erasure` and the README's "Forgetting a user".
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from interest_pipeline.pipeline_dag import START_DATE, WRITER_POOL


@dag(
    dag_id="interest_forget",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "pool": WRITER_POOL},
    params={
        "users": Param([], type="array", items={"type": "string"}, minItems=1,
                       description="user ids to forget"),
        "reason": Param(None, type=["null", "string"],
                        description="why (kept in the registry; no personal data)"),
        "purge_landing": Param(False, type="boolean",
                               description="also rewrite the landing files without their lines"),
    },
    tags=["interest-pipeline", "privacy"],
    doc_md=__doc__,
)
def interest_forget() -> None:
    @task
    def forget_users(params=None) -> dict:
        """Delete the users' rows everywhere, register them, rewrite the file."""
        from interest_pipeline import stages

        return stages.forget_users(
            list(params["users"]), params.get("reason"), bool(params.get("purge_landing"))
        )

    forget_users()


dag = interest_forget()
