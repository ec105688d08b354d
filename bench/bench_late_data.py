"""3g. Late data: a backfill of N hours behind M processed hours.

The seed's sample hours are processed from hour N on (the M "live" hours, in order); then the
first N hours arrive late and are backfilled, oldest first, as the backfill DAG runs them.
Twice, on clones of the same warehouse: as a plain run per hour (each run that changes its
hour recomputes every later processed hour: N x M recomputations) and as a backfill made by
``interest-main-job`` (its runs carry the backfill's end, so the later hours are recomputed
once, by its last run). The tables of both must equal in-order processing; the row reports the
recomputations and the backfill's fold seconds against the plain runs'.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HOUR,
    SEED_HOUR,
    WORK_DIR,
    Section,
    build_seed,
    clone_data_dir,
    run_hour,
    section_main,
    settings_for,
    timed,
)

TABLES = ("user_interest_vectors", "recommendations", "user_social_vectors")


def _tables(settings: Any) -> dict[str, list]:
    from interest_pipeline.warehouse import connect

    con = connect(settings.warehouse_path, read_only=True)
    try:
        return {t: sorted(con.execute(f"select * from {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        con.close()


def _busy_hours(seed: Path) -> list[Any]:
    from datetime import datetime

    folders = (seed / "landing" / "events").glob("date=*/hour=*")
    return sorted(
        datetime.strptime(f"{f.parent.name[5:]} {f.name[5:]}", "%Y-%m-%d %H") for f in folders
    )


def _prepare(seed: Path, name: str, hours: list[Any]) -> Any:
    """A clone of the seed with the sample landed and ``hours`` run through every stage."""
    settings = settings_for(clone_data_dir(seed, WORK_DIR / f"late-{name}", with_landing=True))
    for hour in hours:
        run_hour(settings, hour)
    return settings


def _backfill(settings: Any, late: list[Any], conf: bool) -> dict[str, Any]:
    """The late hours, oldest first, as DAG runs do them; the fold's seconds and the later
    hours recomputed."""
    from interest_pipeline import stages

    backfill_end = late[-1] + HOUR if conf else None
    recomputed = 0
    fold_seconds = 0.0
    for hour in late:
        run_hour(settings, hour, ("ingest", "dbt", "embed"), record=False)
        seconds, result = timed(
            stages.update_user_vectors, hour, hour + HOUR, settings, backfill_end=backfill_end
        )
        fold_seconds += seconds
        recomputed += result["later_intervals_recomputed"]
        run_hour(settings, hour, ("recommend",))
    return {"fold_seconds": fold_seconds, "recomputed": recomputed}


def run(args: Any) -> Section:
    section = Section("late data")
    seed = build_seed(WORK_DIR)
    n_late, n_live = (3, 4) if args.quick else (8, 12)
    # Busy sample hours after the seed's own: an hour without events changes nothing.
    hours = [h for h in _busy_hours(seed) if h > SEED_HOUR][: n_late + n_live]
    late, live = hours[:n_late], hours[n_late:]
    reference = _tables(_prepare(seed, "in-order", hours))
    results = {}
    for name, conf in (("per-run", False), ("backfill", True)):
        settings = _prepare(seed, name, live)
        results[name] = _backfill(settings, late, conf)
        results[name]["equal_to_in_order"] = _tables(settings) == reference
        print(f"late data {name}: {results[name]}", flush=True)
    before, after = results["per-run"], results["backfill"]
    note = (
        f"tables equal to in-order processing: per-run {before['equal_to_in_order']}, "
        f"backfill {after['equal_to_in_order']}"
    )
    section.add(
        f"backfill of {n_late} late hours behind {n_live} processed: later hours recomputed",
        after["recomputed"], "hours",
        baseline=before["recomputed"], baseline_metric="a plain run per late hour",
        note=note,
    )
    section.add(
        f"backfill of {n_late} late hours behind {n_live} processed: fold seconds",
        round(after["fold_seconds"], 2), "s",
        baseline=round(before["fold_seconds"], 2), baseline_metric="a plain run per late hour",
    )
    section.details = {"late": [str(h) for h in late], "live": [str(h) for h in live],
                       **results}
    return section


if __name__ == "__main__":
    section_main(run)
