"""The main job (``make run``): replay sample logs, backfill them through Airflow, summarise.

It starts the local Airflow components that are not running (and waits until they are up),
creates an Airflow backfill of the window, which the real scheduler runs in interval order,
shows progress, and stops what it started. By default the backfill runs the hourly DAG, one run
per hour; ``--daily`` runs the daily backfill DAG instead, one run per whole UTC day (the window
is widened to whole days).

While it waits it watches the scheduler: when its process is gone or its heartbeat is older
than ``INTEREST_SCHEDULER_HEARTBEAT_TIMEOUT`` it fails with what to run; the backfill is kept,
and running the same command again carries on with it. When a run fails it cancels the rest of
the backfill (see :func:`cancel_backfill`): the later hours build on the failed one.

Usage: ``interest-main-job [--dataset movielens|retail] [--start ISO --end ISO] [--daily]``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shlex
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from interest_pipeline import airflow_local, progress
from interest_pipeline.config import (
    DAG_ID,
    DAILY_DAG_ID,
    get_settings,
    scheduler_heartbeat_timeout,
)
from interest_pipeline.pipeline_dag import BACKFILL_END_CONF, BACKFILL_REPROCESS_CONF

log = logging.getLogger(__name__)

# On SQLite a backfill's runs are written in one transaction that holds the write lock (see
# airflow_local.immediate_transactions), about 15 ms per run here; the other Airflow processes
# wait for it up to their 60 s busy timeout. A bigger backfill is refused (use --daily).
MAX_SQLITE_BACKFILL_RUNS = 1000
PROGRESS_EVERY = 30.0  # seconds between progress lines while a run takes long


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
    """The backfill could not be created or did not complete; the message says why."""


class RunFailed(BackfillFailed):
    """A run of the backfill failed; the message names the task and its log and says what
    became of the rest of the backfill."""


class SchedulerDown(BackfillFailed):
    """The scheduler died (or hangs) while the backfill waited for it; the backfill is kept."""


def create_backfill(
    runs: list[datetime],
    env: dict[str, str],
    reprocess: bool = False,
    dag_id: str = DAG_ID,
) -> int:
    """Create an Airflow backfill of ``dag_id``'s intervals starting at ``runs``; return its id.

    Safe while the scheduler runs, even right after it started: the backfill is made by the
    function behind ``airflow backfill create`` and the REST API, in this process, inside
    :func:`airflow_local.immediate_transactions`, so on SQLite all its runs commit in one
    transaction that holds the write lock from its start (the CLI's own transactions lost
    races against the scheduler and then deleted runs it was running, which killed it).

    If a backfill of the same DAG and window is still active (say a dead scheduler left it),
    that one is returned: it carries on where it stopped.
    """
    from airflow.api_fastapi.common.dagbag import resolve_run_on_latest_version
    from airflow.exceptions import AirflowException
    from airflow.models.backfill import (
        AlreadyRunningBackfill,
        ReprocessBehavior,
        _create_backfill,
    )
    from airflow.utils.session import create_session

    if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite") and (
        len(runs) > MAX_SQLITE_BACKFILL_RUNS
    ):
        raise BackfillFailed(
            f"{len(runs)} runs are more than one backfill creates at once on SQLite "
            f"({MAX_SQLITE_BACKFILL_RUNS}): use --daily or a shorter window"
        )
    _wait_for_dag(dag_id)
    with create_session() as session:
        # what `airflow backfill create` passes by default
        latest = resolve_run_on_latest_version(None, dag_id, session, fallback=True)
    try:
        with airflow_local.immediate_transactions():
            backfill = _create_backfill(
                dag_id=dag_id,
                from_date=_aware(runs[0]),
                to_date=_aware(runs[-1]),
                max_active_runs=1,
                reverse=False,
                # Where the backfill ends: the fold recomputes the later hours its runs
                # make stale once, at its last run (stages.update_user_vectors).
                dag_run_conf={
                    BACKFILL_END_CONF: (runs[-1] + _run_length(dag_id)).isoformat(),
                    BACKFILL_REPROCESS_CONF: reprocess,
                },
                triggering_user_name=getpass.getuser(),
                # By default hours that already succeeded are not redone (each hour is
                # idempotent, so redoing them would change nothing); --reprocess redoes them.
                reprocess_behavior=ReprocessBehavior.COMPLETED if reprocess
                else ReprocessBehavior.FAILED,
                run_on_latest_version=latest,
            )
    except AlreadyRunningBackfill:
        return _active_backfill(dag_id, runs)
    except (AirflowException, ValueError) as exc:
        raise BackfillFailed(f"airflow could not create the backfill: {exc}") from exc
    return backfill.id


def _run_length(dag_id: str) -> timedelta:
    """The length of one run's interval of the DAG."""
    return timedelta(days=1) if dag_id == DAILY_DAG_ID else timedelta(hours=1)


def _active_backfill(dag_id: str, runs: list[datetime]) -> int:
    """The id of the active backfill of ``dag_id`` if it covers exactly ``runs``."""
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    with create_session() as session:
        active = (
            session.query(Backfill)
            .filter(Backfill.dag_id == dag_id, Backfill.completed_at.is_(None))
            .order_by(Backfill.id.desc()).first()
        )
        if active is None:  # it completed in the meantime
            raise BackfillFailed(f"a backfill of {dag_id} was active a moment ago: try again")
        window = (_aware(active.from_date), _aware(active.to_date))
        backfill_id, paused = active.id, active.is_paused
    if window != (_aware(runs[0]), _aware(runs[-1])):
        raise BackfillFailed(
            f"backfill {backfill_id} of {dag_id} ({window[0]:%Y-%m-%d %H:%M} to "
            f"{window[1]:%Y-%m-%d %H:%M}) is still active and Airflow allows one per DAG: wait "
            "for it, or cancel it in the UI (Browse > Backfills)"
        )
    if paused:
        raise BackfillFailed(
            f"backfill {backfill_id} of {dag_id} for this window is paused: unpause it in the "
            "UI (Browse > Backfills) or cancel it there, then run this again"
        )
    print(f"backfill {backfill_id} of {dag_id} for this window is still active: following it",
          flush=True)
    return backfill_id


def wait_for_backfill(
    runs: list[datetime],
    env: dict[str, str],
    backfill_id: int,
    poll_seconds: float = 3.0,
    dag_id: str = DAG_ID,
    heartbeat_timeout: float | None = None,
) -> int:
    """Wait for the scheduler to run the backfill, printing progress (runs done / total).

    Returns the number of runs. Raises RunFailed when a run fails, after cancelling the rest
    of the backfill; SchedulerDown when the scheduler's process is gone or it has not
    heartbeated for ``heartbeat_timeout`` seconds (``INTEREST_SCHEDULER_HEARTBEAT_TIMEOUT``).
    """
    if heartbeat_timeout is None:
        heartbeat_timeout = scheduler_heartbeat_timeout()
    total = len(runs)
    last_done, told = -1, time.monotonic()
    # Lines on stdout, like the rest of the main job's report (a bar on a terminal).
    with progress.track("backfill", total, "runs done", emit=_print_stdout) as bar:
        while True:
            states, complete = _backfill_states(backfill_id)
            failed = sorted(run_id for run_id, state in states.items() if state == "failed")
            if failed:
                raise RunFailed(
                    _describe_failure(failed[0], env, dag_id) + "\n"
                    + _cancel_rest(backfill_id, states, total)
                )
            # Hours skipped because they already succeeded count as done.
            done = total - len(states) + sum(1 for state in states.values() if state == "success")
            if complete and done == total:
                if done != last_done:
                    bar.show(done)
                return total
            problem = None if complete else airflow_local.scheduler_problem(env, heartbeat_timeout)
            if problem:
                raise SchedulerDown(
                    f"{problem}; backfill {backfill_id} is kept ({done}/{total} runs done)"
                )
            now = time.monotonic()
            if done != last_done or now - told >= PROGRESS_EVERY:
                running = sorted(r for r, state in states.items() if state == "running")
                bar.show(done, f"running {running[0]}" if running else "")
                last_done, told = done, now
            time.sleep(poll_seconds)


def _print_stdout(line: str) -> None:
    print(line, flush=True)


def _backfill_states(backfill_id: int) -> tuple[dict[str, str], bool]:
    """State of each run of the backfill, and whether Airflow marked the backfill complete."""
    from airflow.models import DagRun
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun.run_id, DagRun.state).filter(
            DagRun.backfill_id == backfill_id
        ).all()
        complete = session.get(Backfill, backfill_id).completed_at is not None
    return {run_id: str(getattr(state, "value", state)) for run_id, state in runs}, complete


def _cancel_rest(backfill_id: int, states: dict[str, str], total: int) -> str:
    """Cancel the backfill and say what became of its runs (one line)."""
    failed = sum(1 for state in states.values() if state == "failed")
    cancelled = cancel_backfill(backfill_id)
    after, _ = _backfill_states(backfill_id)
    succeeded = sum(1 for state in after.values() if state == "success") + total - len(after)
    running = sorted(r for r, state in after.items() if state == "running")
    still = f"; {running[0]} was already running and finishes" if running else ""
    return (
        f"backfill {backfill_id} cancelled: {succeeded} run(s) done, {failed} failed, "
        f"{cancelled} not started and marked failed{still}"
    )


def cancel_backfill(backfill_id: int) -> int:
    """Cancel the backfill as Airflow's REST API does; return how many runs it stopped.

    Pause it (the scheduler starts none of its runs any more), mark its queued runs failed,
    mark it completed. A run already running finishes. Later hours build on earlier ones, so
    once one fails the rest waits for the fix instead of running on a gap, and a rerun of the
    same window (reprocess "failed") redoes exactly the failed and cancelled runs.
    """
    from airflow.models import DagRun
    from airflow.models.backfill import Backfill, BackfillDagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select, update

    with airflow_local.immediate_transactions(), create_session() as session:
        backfill = session.get(Backfill, backfill_id)
        if backfill is None or backfill.completed_at is not None:
            return 0
        backfill.is_paused = True
        session.commit()  # before the runs change: the scheduler starts no new one
        stopped = session.execute(
            update(DagRun)
            .where(
                DagRun.id.in_(select(BackfillDagRun.dag_run_id).where(
                    BackfillDagRun.backfill_id == backfill_id
                )),
                DagRun.state == DagRunState.QUEUED,
            )
            .values(state=DagRunState.FAILED)
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
        session.refresh(backfill)
        backfill.completed_at = datetime.now(UTC)
    return stopped


def _describe_failure(run_id: str, env: dict[str, str], dag_id: str) -> str:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tasks = sorted({task_id for (task_id,) in session.query(TaskInstance.task_id).filter(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
            TaskInstance.state == "failed",
        )})
    lines = [f"run {run_id} failed"]
    logs = Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) / f"dag_id={dag_id}" / f"run_id={run_id}"
    for task_id in tasks:
        # the latest attempt's log (a mapped task has one per map index)
        paths = list(logs.glob(f"task_id={task_id}/**/attempt=*.log"))
        latest = max(paths, key=lambda path: path.stat().st_mtime) if paths else None
        lines.append(f"  failing task: {task_id}; log: {latest or logs / f'task_id={task_id}'}")
    return "\n".join(lines)


def _wait_for_dag(dag_id: str, timeout: float = 180.0) -> None:
    """Wait until the dag-processor has parsed the DAG into the metadata DB."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    def pending() -> list[str]:
        with create_session() as session:
            model = session.get(DagModel, dag_id)
            parsed = model is not None and not model.is_stale
        return [] if parsed else [f"DAG {dag_id} to be parsed"]

    try:
        airflow_local.wait_for("backfill", pending, timeout, poll=2.0)
    except TimeoutError as exc:
        raise BackfillFailed(f"{exc}: see the dag-processor log") from exc


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
            "select count(distinct user_id) from user_interest_vectors "
            "where as_of > ? and as_of <= ?",
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
    # This process's own Airflow logging (a line per run created, ...) would drown the progress
    # lines; the Airflow components it starts get ``env``, with the level they had.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
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
    rerun = shlex.join(["interest-main-job", *(sys.argv[1:] if argv is None else argv)])
    # Stop only what this job starts: an Airflow someone else started keeps running.
    launched = [c for c, pid in airflow_local.status(env).items() if pid is None]
    try:
        if launched:
            print(f"starting airflow ({', '.join(launched)}) ...", flush=True)
            airflow_local.start(env)
        backfill_id = create_backfill(runs, env, reprocess=args.reprocess, dag_id=dag_id)
        print(f"backfill {backfill_id} of {dag_id}: {len(runs)} runs, {n_hours} hours "
              f"[{runs[0]:%Y-%m-%d %H:00}, {runs[-1] + step:%Y-%m-%d %H:00})",
              flush=True)
        wait_for_backfill(runs, env, backfill_id, dag_id=dag_id)
    except SchedulerDown as exc:
        print(f"interest-main-job: {exc}: run `interest-airflow stop`, then `{rerun}` again to "
              "finish it", file=sys.stderr)
        return 1
    except RunFailed as exc:
        print(f"interest-main-job: {exc}\nfix the cause, then run `{rerun}` again: runs that "
              "succeeded are not redone", file=sys.stderr)
        return 1
    except (BackfillFailed, RuntimeError, TimeoutError) as exc:
        print(f"interest-main-job: {exc}", file=sys.stderr)
        return 1
    finally:
        if launched:
            airflow_local.stop(env, only=launched)
    summary = summarise(start, end, n_hours, args.user)
    print_summary(summary)
    print(f"\nwall time: {time.monotonic() - began:.0f}s; warehouse: {settings.warehouse_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
