"""3a. Scale: events per hour from 1k to 1M (real sample events replicated with new ids and
users): seconds per stage, and a linear fit (constant + slope) per stage.

At the largest size the busy hour (ingest + dbt + fold + recommend) is reported against the
issue's 30 s; ingest and dbt against their bytes-scanned floor, DuckDB reading the hour's file
once into memory (``read_json``, best of 3, same run); fold and recommend against their FLOP
floor at the machine's float32 matmul rate measured in the same run: the fold multiplies each
contribution's embedding once (2 x contributions x dim), the recommend stage at least compares
every scored user with every item (2 x users x items x dim).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embedding import matmul_rate  # noqa: E402
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
BUSY_HOUR_TARGET_SECONDS = 30.0
DIM = 384


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
    landed: dict[int, Path] = {}
    for n in sizes:
        data = clone_data_dir(seed, WORK_DIR / "scale")
        settings = settings_for(data)
        write_seconds, landed[n] = timed(
            write_events_partition, settings.landing_dir, hour, sample, n, "s", new_users=True
        )
        result = run_hour(settings, hour, ("ingest", "dbt", "embed", "fold", "recommend"))
        curve[n] = {
            "landing_write_seconds": write_seconds,
            **{f"{s}_seconds": result.get(f"{s}_wall") for s in (*STAGES, "embed", "record")},
            "users_updated": result.get("users_updated"),
            "users_recommended": result.get("users_recommended"),
            "texts_embedded": result.get("texts_embedded"),
            "items": _count(settings, "items"),
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
    top = sizes[-1]
    busy = sum(curve[top][f"{stage}_seconds"] for stage in STAGES)
    section.add(
        f"busy hour at {top:,} events: ingest + dbt + fold + recommend", round(busy, 1), "s",
        baseline=BUSY_HOUR_TARGET_SECONDS, baseline_metric="target",
        note=" + ".join(f"{stage} {curve[top][f'{stage}_seconds']:.1f}" for stage in STAGES),
    )
    scan_seconds = scan_floor(landed[top])
    megabytes = landed[top].stat().st_size / 1e6
    for stage in ("ingest", "dbt"):
        section.add(
            f"{stage} at {top:,} events against its bytes-scanned floor",
            round(curve[top][f"{stage}_seconds"], 2), "s",
            baseline=round(scan_seconds, 3),
            baseline_metric="DuckDB read_json of the hour's file into memory",
            note=f"{megabytes:.0f} MB at {megabytes / scan_seconds:.0f} MB/s (same run)",
        )
    rate = matmul_rate(seconds=1.0)["flops"]
    floors = {
        "fold": 2.0 * top * DIM,
        "recommend": 2.0 * curve[top]["users_recommended"] * curve[top]["items"] * DIM,
    }
    for stage, flop in floors.items():
        section.add(
            f"{stage} at {top:,} events against its FLOP floor", round(
                curve[top][f"{stage}_seconds"], 2), "s",
            baseline=round(flop / rate, 3), baseline_metric="FLOP floor at the matmul rate",
            note=f"{flop / 1e9:.1f} GFLOP at {rate / 1e9:.0f} GFLOP/s (same run)",
        )
    section.details = {"events_per_hour": list(sizes), "curve": curve, "matmul_flops": rate}
    return section


def scan_floor(path: Path, repeats: int = 3) -> float:
    """Seconds for DuckDB to read a JSON-lines file once into an in-memory table (best of
    ``repeats``): every byte read and every line parsed, nothing checked or kept on disk."""
    import duckdb

    con = duckdb.connect()
    try:
        best = float("inf")
        for _ in range(repeats):
            seconds, _ = timed(con.execute, "create or replace table lines as select * from "
                               "read_json(?, format = 'newline_delimited')", [str(path)])
            best = min(best, seconds)
        return best
    finally:
        con.close()


def _count(settings: Any, table: str) -> int:
    from interest_pipeline.warehouse import connect

    con = connect(settings.warehouse_path, read_only=True)
    try:
        return con.execute(f"select count(*) from {table}").fetchone()[0]
    finally:
        con.close()


if __name__ == "__main__":
    section_main(run)
