"""3a. Scale: events per hour from 1k to 1M (real sample events replicated with new ids and
users): seconds per stage, and a linear fit (constant + slope) per stage.

At 1M events the recommend stage is left out to keep `make bench` within 30 minutes: it scores
every updated user (about 40k there) one by one; its curve up to 100k shows its slope.
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

STAGES = ("ingest", "dbt", "fold", "recommend")
RECOMMEND_UP_TO = 100_000


def linear_fit(ns: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares seconds = a + b * n; returns (a seconds, b seconds per event)."""
    import numpy as np

    if len(ns) < 2:
        return float("nan"), float("nan")
    b, a = np.polyfit(np.asarray(ns, float), np.asarray(seconds, float), 1)
    return float(a), float(b)


def run(args: Any) -> Section:
    section = Section("scale: events per hour")
    seed = build_seed(WORK_DIR)
    sample = sample_events(seed / "landing")
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000, 1_000_000)
    hour = SEED_HOUR + 24 * HOUR  # an hour the sample leaves empty
    curve: dict[int, dict[str, Any]] = {}
    for n in sizes:
        data = clone_data_dir(seed, WORK_DIR / "scale")
        settings = settings_for(data)
        write_seconds, _ = timed(write_events_partition, settings.landing_dir, hour, sample, n,
                                 "s", new_users=True)
        run_stages = ("ingest", "dbt", "embed", "fold") + (
            ("recommend",) if n <= RECOMMEND_UP_TO else ())
        result = run_hour(settings, hour, run_stages)
        curve[n] = {
            "landing_write_seconds": write_seconds,
            **{f"{s}_seconds": result.get(f"{s}_wall") for s in (*STAGES, "embed", "record")},
            "users_updated": result.get("users_updated"),
            "texts_embedded": result.get("texts_embedded"),
        }
        print(f"scale {n}: {curve[n]}", flush=True)
    small = sizes[0]
    for stage in STAGES:
        ns = [n for n in sizes if curve[n][f"{stage}_seconds"] is not None]
        secs = [curve[n][f"{stage}_seconds"] for n in ns]
        a, b = linear_fit(ns, secs)
        top = ns[-1]
        section.add(
            f"{stage} at {top:,} events/hour", round(curve[top][f"{stage}_seconds"], 2), "s",
            baseline=round(curve[small][f"{stage}_seconds"], 3),
            baseline_metric=f"same at {small:,} ({top // small:,}x fewer events)",
            note=f"fit {a:.2f} s + {b * 1e6:.1f} us/event; per event at {top:,}: "
                 f"{curve[top][f'{stage}_seconds'] / top * 1e6:.1f} us",
        )
    section.details = {"events_per_hour": list(sizes), "curve": curve}
    return section


if __name__ == "__main__":
    section_main(run)
