"""The main job (``make run``): replay sample logs, backfill them through Airflow, summarise.

It starts the local Airflow (unless it is already running), creates an Airflow backfill of the
window, which the real scheduler runs in interval order, shows progress, and stops what it
started. By default the backfill runs the hourly DAG, one run per hour; ``--daily`` runs the
daily backfill DAG instead, one run per whole UTC day (the window is widened to whole days).

Usage: ``interest-main-job [--dataset movielens|retail] [--start ISO --end ISO] [--daily]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from interest_pipeline import airflow_local
from interest_pipeline.airflow_local import airflow_bin
from interest_pipeline.config import DAG_ID, DAILY_DAG_ID, get_settings

log = logging.getLogger(__name__)


def hours_in(start: datetime, end: datetime) -> list[datetime]:
    """Start of every whole hour in [start, end)."""
    first = start.replace(minute=0, second=0, microsecond=0)
    return [first + timedelta(hours=i) for i in range(int((end - first) / timedelta(hours=1)))]


def days_covering(start: datetime, end: datetime) -> list[datetime]:
    """Start of every UTC day that [start, end) touches."""
    first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    days = [first]
    while days[-1] + timedelta(days=1) < end:
        days.append(days[-1] + timedelta(days=1))
    return days


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class BackfillFailed(RuntimeError):
    """A run of the backfill failed; the message names the task and its log."""


def create_backfill(
    runs: list[datetime],
    env: dict[str, str],
    reprocess: bool = False,
    dag_id: str = DAG_ID,
    scheduler_running: bool = False,
) -> int:
    """Create an Airflow backfill of ``dag_id``'s intervals starting at ``runs``; return its id.

    Created while the scheduler is stopped where possible, else once it is idle (see
    :func:`wait_until_idle`): SQLite serialises writers, and the many inserts of a backfill can
    lose the race against a busy scheduler ("database is locked").
    """
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    _wait_for_dag(env, dag_id)
    if scheduler_running:
        wait_until_idle((DAG_ID, DAILY_DAG_ID))
    cmd = [
        airflow_bin(), "backfill", "create", "--dag-id", dag_id,
        "--from-date", _aware(runs[0]).isoformat(),
        "--to-date", _aware(runs[-1]).isoformat(),
        "--max-active-runs", "1",
        # By default hours that already succeeded are not redone (each hour is idempotent, so
        # redoing them would change nothing); --reprocess redoes them anyway.
        "--reprocess-behavior", "completed" if reprocess else "failed",
    ]
    for attempt in range(3):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode == 0 or "database is locked" not in proc.stderr:
            break
        _drop_unfinished_backfills(dag_id)
        time.sleep(5 * (attempt + 1))
    if proc.returncode != 0:
        raise BackfillFailed(f"airflow backfill create failed:\n{proc.stderr[-2000:]}")
    with create_session() as session:
        backfill = (
            session.query(Backfill).filter(Backfill.dag_id == dag_id)
            .order_by(Backfill.id.desc()).first()
        )
        assert backfill is not None
        return backfill.id


def _drop_unfinished_backfills(dag_id: str) -> None:
    """Remove a backfill left half-created by a lock error, so the retry may create it."""
    from airflow.models import DagRun
    from airflow.models.backfill import Backfill, BackfillDagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        for backfill in session.query(Backfill).filter(
            Backfill.dag_id == dag_id, Backfill.completed_at.is_(None)
        ):
            started = session.query(DagRun).filter(
                DagRun.backfill_id == backfill.id, DagRun.state != "queued"
            ).count()
            if started:
                continue  # a backfill that is already running is not ours to drop
            session.query(BackfillDagRun).filter(
                BackfillDagRun.backfill_id == backfill.id
            ).delete()
            session.query(DagRun).filter(DagRun.backfill_id == backfill.id).delete()
            session.delete(backfill)


def wait_for_backfill(
    runs: list[datetime],
    env: dict[str, str],
    backfill_id: int,
    poll_seconds: float = 3.0,
    dag_id: str = DAG_ID,
) -> int:
    """Wait for the scheduler to run the backfill, printing progress (runs done / total).

    Returns the number of runs; raises BackfillFailed with the failing task and its log path.
    """
    from airflow.models import DagRun
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    total = len(runs)
    started = time.monotonic()
    last_done = -1
    while True:
        with create_session() as session:
            runs = session.query(DagRun).filter(DagRun.backfill_id == backfill_id).all()
            states = {r.run_id: str(getattr(r.state, "value", r.state)) for r in runs}
            failed = [r for r in runs if states[r.run_id] == "failed"]
            if failed:
                raise BackfillFailed(_describe_failure(failed[0], env, dag_id))
            done = sum(1 for st in states.values() if st == "success")
            # Hours skipped because they already succeeded count as done.
            skipped = total - len(runs)
            complete = session.get(Backfill, backfill_id).completed_at is not None
        if done != last_done:
            print(
                f"backfill: {done + skipped}/{total} runs done "
                f"({time.monotonic() - started:.0f}s)",
                flush=True,
            )
            last_done = done
        if complete and done == len(runs):
            return total
        time.sleep(poll_seconds)


def _describe_failure(run: Any, env: dict[str, str], dag_id: str) -> str:
    failed = [ti for ti in run.get_task_instances() if ti.state == "failed"]
    lines = [f"run {run.run_id} failed"]
    logs = Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) / f"dag_id={dag_id}" / f"run_id={run.run_id}"
    for ti in failed:
        paths = sorted(logs.glob(f"task_id={ti.task_id}/attempt=*.log"))
        where = paths[-1] if paths else logs / f"task_id={ti.task_id}"
        lines.append(f"  failing task: {ti.task_id}; log: {where}")
    return "\n".join(lines)


def wait_until_idle(dag_ids: tuple[str, ...], timeout: float = 900.0, poll: float = 3.0) -> None:
    """Wait until no run of ``dag_ids`` is queued, running or due to be created.

    For a scheduler that is already running: creating a backfill writes many rows, and on
    SQLite a write that collides with the scheduler's can fail half-way ("database is
    locked"), after which Airflow deletes the half-made runs, possibly under the scheduler's
    feet. An idle scheduler writes little, so the backfill is created then.
    """
    from airflow.configuration import conf
    from airflow.models import DagRun
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    deadline = time.monotonic() + timeout
    told = False
    while True:
        with create_session() as session:
            active = session.query(DagRun).filter(
                DagRun.dag_id.in_(dag_ids), DagRun.state.in_(("queued", "running"))
            ).count()
            # A freshly parsed DAG's latest interval is due at once: the scheduler is about to
            # create its run (unless it creates no scheduled runs at all).
            due = 0
            if conf.getboolean("scheduler", "use_job_schedule"):
                due = session.query(DagModel).filter(
                    DagModel.dag_id.in_(dag_ids),
                    DagModel.is_paused.is_(False),
                    DagModel.next_dagrun_create_after <= datetime.now(UTC),
                ).count()
        if not active and not due:
            return
        if time.monotonic() > deadline:
            raise BackfillFailed(
                f"{active + due} run(s) of {', '.join(dag_ids)} still active or due after "
                f"{timeout:.0f}s"
            )
        if not told:
            print("waiting for the scheduler's own runs to finish before creating the backfill",
                  flush=True)
            told = True
        time.sleep(poll)


def _wait_for_dag(env: dict[str, str], dag_id: str, timeout: float = 180.0) -> None:
    """Wait until the dag-processor has parsed the DAG into the metadata DB."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            model = session.get(DagModel, dag_id)
            if model is not None and not model.is_stale:
                return
        time.sleep(2)
    raise BackfillFailed(f"DAG {dag_id} was not parsed within {timeout:.0f}s: see the dag-processor log")


def summarise(start: datetime, end: datetime, n_hours: int, user: str | None) -> dict[str, Any]:
    """Counts over the window plus one user's recommendations, read from the warehouse."""
    from interest_pipeline.warehouse import fetch_one, open_warehouse

    settings = get_settings()
    with open_warehouse(settings.warehouse_path, read_only=True) as con:
        totals = fetch_one(
            con,
            """
            select count(*), coalesce(sum(event_lines_landed), 0), coalesce(sum(events_in), 0),
                coalesce(sum(duplicates), 0), coalesce(sum(quarantined), 0),
                coalesce(sum(texts_embedded), 0), coalesce(sum(users_updated), 0),
                coalesce(sum(recommendations_written), 0)
            from pipeline_runs where interval_start >= ? and interval_start < ?
            """,
            [start, end],
        )
        assert totals is not None
        distinct_users = fetch_one(
            con,
            "select count(distinct user_id) from user_interest_vectors where as_of > ? and as_of <= ?",
            [start, end],
        )
        if user is None:
            row = fetch_one(
                con,
                """
                select user_id from recommendations where as_of > ? and as_of <= ?
                group by user_id order by count(distinct as_of) desc, user_id limit 1
                """,
                [start, end],
            )
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
            name: con.execute(f"select count(*) from {name}").fetchall()[0][0]
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
                "new_user_recommendations",
                "rankers",
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
        "Airflow for every hour of the window (or the daily DAG for every day), and print a "
        "summary.",
    )
    parser.add_argument("--dataset", choices=sorted(DEFAULT_WINDOWS), default="retail")
    parser.add_argument("--start", type=datetime.fromisoformat, help="window start (UTC)")
    parser.add_argument("--end", type=datetime.fromisoformat, help="window end (UTC)")
    parser.add_argument("--user", help="user whose recommendations the summary shows")
    parser.add_argument(
        "--reprocess",
        action="store_true",
        help="also rerun hours that already succeeded (backfill --reprocess-behavior completed)",
    )
    parser.add_argument(
        "--daily",
        action="store_true",
        help=f"backfill with {DAILY_DAG_ID}, one run per whole UTC day (the window is widened "
        "to whole days): far fewer task starts and dbt builds than one run per hour",
    )
    parser.add_argument(
        "--skip-replay",
        action="store_true",
        help="run over the landing zone as it is (any logs in the contract's format)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    settings = get_settings()
    env = airflow_local.local_env()
    os.environ.update(env)  # before airflow is imported: its config is read at import
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
    if args.daily:
        dag_id, runs, step = DAILY_DAG_ID, days_covering(start, end), timedelta(days=1)
        start, end = runs[0], runs[-1] + step
    else:
        dag_id, runs, step = DAG_ID, hours_in(start, end), timedelta(hours=1)
    n_hours = len(hours_in(start, end))
    already_running = all(airflow_local.status(env).values())
    try:
        if already_running:
            backfill_id = create_backfill(
                runs, env, reprocess=args.reprocess, dag_id=dag_id, scheduler_running=True
            )
        else:
            airflow_local.prepare(env)
            subprocess.run(
                [airflow_bin(), "dags", "reserialize"], env=env, check=True, capture_output=True
            )
            backfill_id = create_backfill(runs, env, reprocess=args.reprocess, dag_id=dag_id)
            print("starting airflow (scheduler, dag-processor, api-server, triggerer) ...",
                  flush=True)
            airflow_local.start(env)
        print(f"backfill {backfill_id} of {dag_id}: {len(runs)} runs, {n_hours} hours "
              f"[{runs[0]:%Y-%m-%d %H:00}, {runs[-1] + step:%Y-%m-%d %H:00})",
              flush=True)
        wait_for_backfill(runs, env, backfill_id, dag_id=dag_id)
    except BackfillFailed as exc:
        print(f"interest-main-job: {exc}", file=sys.stderr)
        return 1
    finally:
        if not already_running:
            airflow_local.stop(env)
    summary = summarise(start, end, n_hours, args.user)
    print_summary(summary)
    print(f"\nwall time: {time.monotonic() - began:.0f}s; warehouse: {settings.warehouse_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
