"""2. Incremental cost: one hourly run at a fixed number of events after 10, 1,000 and 8,760 hours
(a year) of accumulated history (quick: 10 and 100). The cost must follow the hour's events, not
the history: last/first <= 1.2 (issue 15, target 2). The hour's cost includes publishing the
readers' snapshot (``publish_snapshot``), as the DAG's last task does, after two untimed
publishes (both snapshot generations exist after any real history).

History is written straight into the tables: one real hour (the template, sample events run
through every stage) is copied by SQL to the hours before it, with new event ids, in two shapes:
the same users every hour (every user's history grows with every hour: the hardest case for the
per-user work, the fold's previous version and the evidence) and new users every hour (the
catalogue-wide popularity and co-occurrence statistics grow with every hour).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HOUR,
    PIPELINE_STAGES,
    SEED_HOUR,
    WORK_DIR,
    Section,
    build_seed,
    clone_data_dir,
    median,
    run_hour,
    sample_events,
    section_main,
    settings_for,
    timed,
    write_events_partition,
)

EVENTS_PER_HOUR = 1000
MAX_RATIO = 1.2

# (table, expressions replacing columns: every time moves back k hours, event ids get a suffix,
# and in the "new users" shape so do user ids)
_HISTORY = {
    "raw.event_lines": {"interval_start": None, "interval_end": None},
    "main.stg_landing__events": {
        "event_id": "id", "user_id": "user", "event_at": None, "interval_start": None,
    },
    "main.user_item_interactions": {
        "event_id": "id", "user_id": "user", "event_at": None, "interval_start": None,
    },
    "main.quarantine": {"interval_start": None, "interval_end": None},
    "main.user_interest_vectors": {"user_id": "user", "as_of": None, "last_event_at": None},
    "main.recommendations": {"user_id": "user", "as_of": None},
    "main.pipeline_runs": {"interval_start": None, "interval_end": None},
}
_KEY = {"main.user_interest_vectors": "as_of", "main.recommendations": "as_of"}

SHAPES = ("same users", "new users")  # the two shapes of history (module docstring)


def write_history(
    warehouse: Path, template_start: datetime, hours: int, new_users: bool = False
) -> dict[str, int]:
    """Copy the template hour's rows to the ``hours - 1`` hours before it. Returns row counts."""
    from interest_pipeline.catalogue_stats import catalogue_stats
    from interest_pipeline.warehouse import open_warehouse, transaction

    counts = {}
    with open_warehouse(warehouse) as con:
        with transaction(con):
            _copy_template(con, template_start, hours, new_users, counts)
            # The catalogue statistics as the hourly runs would have kept them up to here
            # (rebuilt once from a scan: the history was written behind their back).
            items = [r[0] for r in con.execute("select item_id from item_documents").fetchall()]
            catalogue_stats(con, sorted(items), template_start, ())
        con.execute("checkpoint")
    return counts


def _copy_template(
    con: Any, template_start: datetime, hours: int, new_users: bool, counts: dict
) -> None:
    for table, columns in _HISTORY.items():
        key = _KEY.get(table, "interval_start")
        value = template_start + HOUR if key == "as_of" else template_start
        replace = ", ".join(
            f"t.{col} || '~h' || r.k as {col}" if kind in ("id", "user")
            else f"t.{col} - to_hours(r.k) as {col}"
            for col, kind in columns.items()
            if kind != "user" or new_users
        )
        con.execute(
            f"insert into {table} select t.* replace ({replace}) "
            f"from {table} as t, range(1, ?) as r(k) where t.{key} = ?",
            [hours, value],
        )
        (n,) = con.execute(f"select count(*) from {table}").fetchall()[0]
        counts[table] = n


def run(args: Any) -> Section:
    from interest_pipeline import snapshot

    section = Section("incremental cost")
    seed = build_seed(WORK_DIR)
    sample = sample_events(seed / "landing")
    levels = (10, 100) if args.quick else (10, 1000, 8760)
    cases = [(shape, level) for shape in SHAPES for level in levels]
    first_measured = SEED_HOUR + (levels[-1] + 1) * HOUR  # after the longest history
    template = first_measured - HOUR
    per_case: dict[tuple[str, int], dict[str, Any]] = {}
    for shape, level in cases:
        folder = f"incremental_{shape.replace(' ', '_')}_{level}"
        settings = settings_for(clone_data_dir(seed, WORK_DIR / folder))
        write_events_partition(settings.landing_dir, template, sample, EVENTS_PER_HOUR, "t0",
                               new_users=False)
        run_hour(settings, template)
        history_seconds, counts = timed(
            write_history, settings.warehouse_path, template, level, shape == "new users"
        )
        # Both snapshot generations exist after the runs of a real history: publish twice,
        # untimed, so that the measured hours publish as an hourly run does.
        for _ in snapshot.GENERATIONS:
            snapshot.publish_snapshot(settings.warehouse_path)
        per_case[shape, level] = {
            "settings": settings,
            "shape": shape,
            "hours_of_history": level,
            "rows_after_history": counts,
            "warehouse_bytes_after_history": settings.warehouse_path.stat().st_size,
            "history_write_seconds": history_seconds,
            "runs": [],
        }
    # The cases take turns, hour by hour, so a change in the machine's load hits all of them.
    for i in range(2 if args.quick else 3):
        hour = first_measured + i * HOUR
        for case in cases:
            settings = per_case[case]["settings"]
            write_events_partition(settings.landing_dir, hour, sample, EVENTS_PER_HOUR,
                                   f"m{i}", new_users=False)
            per_case[case]["runs"].append(run_hour(settings, hour, publish=True))
    for entry in per_case.values():
        del entry["settings"]
        runs = entry["runs"]
        entry["median_total"] = median(r["total_wall"] for r in runs)
        entry["median_by_stage"] = {
            s: median(r[f"{s}_wall"] for r in runs)
            for s in (*PIPELINE_STAGES, "record", "publish")
        }
    first, last = levels[0], levels[-1]
    for shape in SHAPES:
        base = per_case[shape, first]
        for level in levels[1:]:
            cur = per_case[shape, level]
            row = section.add(
                f"hourly run, {EVENTS_PER_HOUR} events, after {level} h of history ({shape})",
                round(cur["median_total"], 2), "s",
                baseline=round(base["median_total"], 2),
                baseline_metric=f"same after {first} h",
                note="; ".join(
                    f"{s} x{cur['median_by_stage'][s] / max(base['median_by_stage'][s], 1e-3):.2f}"
                    for s in ("ingest", "dbt", "fold", "recommend", "publish")
                ),
            )
            if level == last:
                verdict = "OK" if row.ratio <= MAX_RATIO else "ABOVE"
                row.note = f"{verdict} target <= {MAX_RATIO}; " + row.note
    section.details = {
        "events_per_hour": EVENTS_PER_HOUR,
        "cases": [per_case[case] for case in cases],
    }
    return section


if __name__ == "__main__":
    section_main(run)
