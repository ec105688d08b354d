"""3e. Erasure: forgetting users on a warehouse of 1M events (real sample events replicated).

An hour of 1M events (about 40k users) goes through ingest, dbt, embed and fold; then one
user, and then ten more, are forgotten (`interest forget`: delete every row, register, rewrite
the file, republish the snapshot). The baseline is publishing the snapshot, the one file copy
every run already makes: the rewrite is a copy of the live data, so it costs about as much.
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
    sample_events,
    section_main,
    settings_for,
    timed,
    write_events_partition,
)


def run(args: Any) -> Section:
    from interest_pipeline import erasure, snapshot
    from interest_pipeline.warehouse import connect

    section = Section("erasure: forget users")
    seed = build_seed(WORK_DIR)
    sample = sample_events(seed / "landing")
    n = 20_000 if args.quick else 1_000_000
    data = clone_data_dir(seed, WORK_DIR / "erasure")
    settings = settings_for(data)
    hour = SEED_HOUR + 24 * HOUR
    write_events_partition(settings.landing_dir, hour, sample, n, "e", new_users=True)
    built = run_hour(settings, hour, ("ingest", "dbt", "embed", "fold"))
    con = connect(settings.warehouse_path, read_only=True)
    try:
        users = [r[0] for r in con.execute(
            "select user_id from user_interest_vectors group by 1 order by count(*) desc, 1 "
            "limit 11"
        ).fetchall()]
        (events,) = con.execute("select count(*) from stg_landing__events").fetchall()[0]
    finally:
        con.close()
    size_mb = settings.warehouse_path.stat().st_size / 1e6
    publish_seconds, _ = timed(snapshot.publish_snapshot, settings.warehouse_path, hour,
                               hour + HOUR, full=True)
    one_seconds, one = timed(erasure.forget_users, settings.warehouse_path, users[:1])
    ten_seconds, ten = timed(erasure.forget_users, settings.warehouse_path, users[1:])
    baseline = round(publish_seconds, 2)
    for label, seconds, result in (("1 user", one_seconds, one), ("10 users", ten_seconds, ten)):
        section.add(
            f"forget {label} ({events:,} events, {size_mb:.0f} MB)", round(seconds, 2), "s",
            baseline=baseline, baseline_metric="publish_snapshot (one file copy)",
            note=f"rows {result['rows_seconds']:.2f} s, rewrite {result['rewrite_seconds']:.2f} s, "
                 f"snapshot {result['snapshot_seconds']:.2f} s; "
                 f"{sum(result['rows_deleted'].values())} rows deleted",
        )
    # Ingest of the same hour again, now that the registry holds 11 users: every landed line's
    # user and target are matched against it.
    from interest_pipeline import stages

    reingest_seconds, reingested = timed(stages.ingest_landing_partition, hour, hour + HOUR,
                                         settings)
    section.add(
        f"ingest {n:,} lines with 11 users registered", round(reingest_seconds, 2), "s",
        baseline=round(built["ingest_wall"], 2), baseline_metric="same hour, registry empty",
        note=f"{reingested.get('lines_erased', 0)} lines dropped as erased",
    )
    section.details = {"events": events, "warehouse_mb": size_mb, "one": one, "ten": ten,
                       "publish_snapshot_seconds": publish_seconds}
    return section


if __name__ == "__main__":
    section_main(run)
