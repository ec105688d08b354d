"""5. The slowest per-hour stage, dbt: before/after, measured in the same run.

Before: the interval passed as ``--vars`` (what transform.py did until this suite): every hour
changes dbt's vars hash, so dbt discards its partial-parse cache and re-parses the project, and
it writes manifest.json and run_results.json. After: transform.run_dbt_build, which writes the
interval to raw.dbt_run_interval and runs ``dbt build`` without vars (partial parsing stays
effective) and without the JSON artifacts. Both run the same project on the same warehouse,
alternating hour by hour, each with its own dbt target dir (its own parse cache).
"""

from __future__ import annotations

import json
import subprocess
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
    median,
    section_main,
    settings_for,
    timed,
)


def dbt_build_with_vars(settings: Any, start: Any, end: Any, target: Path) -> None:
    """The previous hourly invocation: interval as --vars, JSON artifacts written."""
    from interest_pipeline.transform import dbt_command

    dbt_vars = {"interval_start": f"{start:%Y-%m-%d %H:%M:%S}",
                "interval_end": f"{end:%Y-%m-%d %H:%M:%S}"}
    cmd, env = dbt_command(
        settings, "build", "--exclude-resource-type", "unit_test", "--vars", json.dumps(dbt_vars)
    )
    cmd[cmd.index("--target-path") + 1] = str(target)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])


def run(args: Any) -> Section:
    from interest_pipeline import stages
    from interest_pipeline.transform import run_dbt_build

    section = Section("dbt stage (slowest per-hour stage): before/after")
    seed = build_seed(WORK_DIR)
    data = clone_data_dir(seed, WORK_DIR / "dbt_before_after", with_landing=True)
    settings = settings_for(data)
    old_target = data / "dbt" / "target_vars"
    rounds = 2 if args.quick else 3
    # Warm both parse caches first (the very first build of each parses from scratch).
    hour = SEED_HOUR + HOUR
    stages.ingest_landing_partition(hour, hour + HOUR, settings)
    run_dbt_build(settings, hour, hour + HOUR)
    dbt_build_with_vars(settings, hour, hour + HOUR, old_target)
    before, after = [], []
    for i in range(rounds):
        for variant in ("after", "before") if i % 2 == 0 else ("before", "after"):
            hour += HOUR
            stages.ingest_landing_partition(hour, hour + HOUR, settings)
            if variant == "after":
                seconds, _ = timed(run_dbt_build, settings, hour, hour + HOUR)
                after.append(seconds)
            else:
                seconds, _ = timed(dbt_build_with_vars, settings, hour, hour + HOUR, old_target)
                before.append(seconds)
    section.add(
        "dbt build of one sample hour, after", round(median(after), 2), "s",
        baseline=round(median(before), 2),
        baseline_metric="before: interval as --vars (full re-parse every hour)",
        note=f"median of {rounds} hours each, alternating; saved "
             f"{median(before) - median(after):.1f} s per hour",
    )
    section.details = {"before_seconds": before, "after_seconds": after}
    return section


if __name__ == "__main__":
    section_main(run)
