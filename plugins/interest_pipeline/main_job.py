"""The main job (``make run``): replay sample logs, run the hourly DAG for each hour, summarise.

Usage: ``interest-main-job [--dataset movielens|retail] [--start ISO --end ISO]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from interest_pipeline.config import DAG_ID, airflow_env, get_settings

log = logging.getLogger(__name__)


def hours_in(start: datetime, end: datetime) -> list[datetime]:
    """Start of every whole hour in [start, end)."""
    first = start.replace(minute=0, second=0, microsecond=0)
    return [first + timedelta(hours=i) for i in range(int((end - first) / timedelta(hours=1)))]


def migrate_airflow_db(env: dict[str, str]) -> None:
    """Create or upgrade Airflow's metadata DB (SQLite under AIRFLOW_HOME by default)."""
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)


def run_hours(hours: list[datetime]) -> list[tuple[datetime, str]]:
    """Run the DAG through Airflow (``dag.test``) for each interval starting at ``hours``.

    Returns (interval start, run state) per hour; stops at the first failed run, since later
    intervals build on it.
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags[DAG_ID]
    results = []
    started = time.monotonic()
    for i, hour in enumerate(hours, start=1):
        # A manual run of an interval timetable covers the interval that ends at its logical
        # date, so the run for [H, H+1h) is requested at H+1h.
        run = dag.test(logical_date=_aware(hour + timedelta(hours=1)))
        state = str(getattr(run.state, "value", run.state))
        results.append((hour, state))
        print(
            f"[{i}/{len(hours)}] {hour:%Y-%m-%d %H:00} {state} "
            f"({time.monotonic() - started:.0f}s elapsed)",
            flush=True,
        )
        if state != "success":
            failed = [ti.task_id for ti in run.get_task_instances() if ti.state == "failed"]
            print(f"run for {hour} failed in task(s): {', '.join(failed) or '?'}", file=sys.stderr)
            break
    return results


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def summarise(start: datetime, end: datetime, n_hours: int, user: str | None) -> dict[str, Any]:
    """Counts over the window plus one user's recommendations, read from the warehouse."""
    from interest_pipeline.warehouse import open_warehouse

    settings = get_settings()
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        totals = con.execute(
            """
            select count(*), coalesce(sum(event_lines_landed), 0), coalesce(sum(events_in), 0),
                coalesce(sum(duplicates), 0), coalesce(sum(quarantined), 0),
                coalesce(sum(texts_embedded), 0), coalesce(sum(users_updated), 0),
                coalesce(sum(recommendations_written), 0)
            from pipeline_runs where interval_start >= ? and interval_start < ?
            """,
            [start, end],
        ).fetchone()
        assert totals is not None
        distinct_users = con.execute(
            "select count(distinct user_id) from user_interest_vectors where as_of > ? and as_of <= ?",
            [start, end],
        ).fetchone()
        if user is None:
            row = con.execute(
                """
                select user_id from recommendations where as_of > ? and as_of <= ?
                group by user_id order by count(distinct as_of) desc, user_id limit 1
                """,
                [start, end],
            ).fetchone()
            user = row[0] if row else None
        recs: list[tuple] = []
        if user is not None:
            recs = con.execute(
                """
                select r.rank, r.item_id, i.title, r.score, r.evidence, r.as_of
                from recommendations as r
                left join items as i on r.item_id = i.item_id
                where r.user_id = ? and r.as_of = (
                    select max(as_of) from recommendations where user_id = ? and as_of <= ?)
                order by r.rank
                """,
                [user, user, end],
            ).fetchall()
        tables = {
            name: con.execute(f"select count(*) from {name}").fetchone()[0]  # type: ignore[index]
            for name in (
                "raw.event_lines",
                "raw.item_lines",
                "stg_landing__events",
                "quarantine",
                "items",
                "item_documents",
                "user_item_interactions",
                "text_embeddings",
                "user_interest_vectors",
                "current_user_interest",
                "recommendations",
                "pipeline_runs",
            )
        }
    keys = (
        "hours_recorded", "event_lines_landed", "events_ingested", "duplicates", "quarantined",
        "texts_embedded", "user_versions_written", "recommendations_written",
    )
    return {
        "hours_run": n_hours,
        **dict(zip(keys, totals, strict=True)),
        "distinct_users_updated": distinct_users[0] if distinct_users else 0,
        "example_user": user,
        "example_recommendations": recs,
        "table_rows": tables,
    }


def print_summary(summary: dict[str, Any], top: int = 10) -> None:
    """Human-readable summary of the main job."""
    print("\n== interest-pipeline main job ==")
    for key in (
        "hours_run", "event_lines_landed", "events_ingested", "duplicates", "quarantined",
        "texts_embedded", "distinct_users_updated", "user_versions_written",
        "recommendations_written",
    ):
        print(f"{key:>26}: {summary[key]}")
    print("\n   rows per table:")
    for name, count in summary["table_rows"].items():
        print(f"{name:>26}: {count}")
    user = summary["example_user"]
    recs = summary["example_recommendations"]
    if not user:
        print("\n(no recommendations were written in this window)")
        return
    print(f"\n   top {min(top, len(recs))} recommendations for {user} as of {recs[0][5]}:")
    for rank, item_id, title, score, evidence, _ in recs[:top]:
        why = "; ".join(
            f"{e['event_type']} '{e['text']}'" for e in json.loads(evidence)[:2]
        )
        print(f"  {rank:>2}. {score:.3f} {item_id} {title!s:.50}")
        print(f"        because: {why}")


def main(argv: list[str] | None = None) -> int:
    from interest_pipeline.replay import DEFAULT_WINDOWS, replay

    parser = argparse.ArgumentParser(
        prog="interest-main-job",
        description="Replay sample logs into the landing zone, run the hourly DAG through "
        "Airflow for every hour of the window, and print a summary.",
    )
    parser.add_argument("--dataset", choices=sorted(DEFAULT_WINDOWS), default="retail")
    parser.add_argument("--start", type=datetime.fromisoformat, help="window start (UTC)")
    parser.add_argument("--end", type=datetime.fromisoformat, help="window end (UTC)")
    parser.add_argument("--user", help="user whose recommendations the summary shows")
    parser.add_argument(
        "--skip-replay",
        action="store_true",
        help="run over the landing zone as it is (any logs in the contract's format)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    settings = get_settings()
    env = airflow_env(settings)
    os.environ.update(env)
    start, end = DEFAULT_WINDOWS[args.dataset]
    start, end = args.start or start, args.end or end

    began = time.monotonic()
    if not args.skip_replay:
        replayed = replay(args.dataset, start, end, settings.landing_dir)
        start, end = replayed.start, replayed.end
        print(
            f"replayed {replayed.events} events and {replayed.items} items of {args.dataset} "
            f"into {settings.landing_dir} ({replayed.event_partitions_written} partitions "
            f"written, {replayed.event_partitions_unchanged} unchanged)",
            flush=True,
        )
    migrate_airflow_db(env)
    hours = hours_in(start, end)
    results = run_hours(hours)
    failed = [h for h, state in results if state != "success"]
    summary = summarise(start, end, len(results), args.user)
    print_summary(summary)
    print(f"\nwall time: {time.monotonic() - began:.0f}s; warehouse: {settings.warehouse_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
