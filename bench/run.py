"""The benchmark suite (`make bench`): runs every section, prints one table, writes JSON.

Each section runs in its own process (its own environment, memory and model), in this order:
embedding (it also builds the seed warehouse the others copy), dbt before/after, incremental
cost, scale, top-N, orchestration, the read API. Every figure is a ratio against a baseline
measured in the same run, or a curve: the machine may be shared, so absolute seconds alone mean
little.

Output: bench/results/<UTC time>.json and bench/results/latest.json (git-ignored), plus the
committed copies bench/latest.json and bench/latest.md (the table the README shows).

Usage: python bench/run.py [--quick] [--only embedding,dbt,...,api] [--keep-work]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, RESULTS_DIR, WORK_DIR, machine  # noqa: E402

SECTIONS = (
    "embedding", "dbt", "incremental", "scale", "topn", "orchestration", "api", "erasure",
    "social", "late_data", "rebuild", "eval",
)

# The matmul ceiling is measured with the library's own CPU detection: OPENBLAS_CORETYPE /
# OPENBLAS_L2_SIZE (set on some machines for the tests) are dropped for that section only.
_SECTION_ENV_DROP = {"embedding": ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


def run_section(name: str, quick: bool) -> dict[str, Any]:
    out = WORK_DIR / f"{name}.json"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _SECTION_ENV_DROP.get(name, ())}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    cmd = [sys.executable, str(BENCH_DIR / f"bench_{name}.py"), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    print(f"== {name} ...", flush=True)
    started = time.monotonic()
    log = WORK_DIR / f"{name}.log"
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        print(f"== {name} FAILED after {seconds:.0f} s (log {log}):\n{tail}", flush=True)
        return {"name": name, "rows": [], "details": {}, "error": tail, "seconds": seconds}
    result = json.loads(out.read_text())
    result["seconds"] = seconds
    print(f"== {name} done in {seconds:.0f} s", flush=True)
    return result


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def table(sections: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["section", "metric", "value", "baseline", "ratio", "note"]]
    for section in sections:
        if section.get("error"):
            rows.append([section["name"], "FAILED", "", "", "", section["error"].splitlines()[-1]])
        for r in section["rows"]:
            baseline = (f"{_fmt(r['baseline'], r['unit'])} ({r['baseline_metric']})"
                        if r["baseline"] is not None else "")
            ratio = f"{r['ratio']:.3g}" if r["ratio"] is not None else ""
            rows.append([r["section"], r["metric"], _fmt(r["value"], r["unit"]), baseline, ratio,
                         r["note"]])
    return rows


def to_markdown(rows: list[list[str]], info: dict[str, Any], when: str) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = [
        f"Measured {when} on {info['nproc']} cores of an {info['cpu_model']}, "
        f"{info['memory_gb']} GB, Python {info['python']}, torch {info['torch']}, "
        f"duckdb {info['duckdb']}, dbt-core {info['dbt-core']}, airflow "
        f"{info['apache-airflow']} (load average at start {info['load_average_at_start'][0]:.1f}: "
        "a shared machine, so read the ratios, not the seconds).",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def print_table(rows: list[list[str]]) -> None:
    widths = [min(max(len(r[i]) for r in rows), cap)
              for i, cap in enumerate((22, 52, 18, 52, 7, 200))]
    for n, row in enumerate(rows):
        cells = [c if len(c) <= w or i == 5 else c[: w - 1] + "~"
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep bench/results/work (warehouses, logs) afterwards")
    args = parser.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    info = machine()
    started = time.monotonic()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [run_section(name, args.quick) for name in SECTIONS if name in chosen]
    total = time.monotonic() - started
    rows = table(sections)
    print()
    print_table(rows)
    print(f"\n{len(sections)} sections in {total / 60:.1f} min")
    result = {"when": when, "machine": info, "quick": args.quick, "total_seconds": total,
              "sections": sections}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(result, indent=2, default=str)
    (RESULTS_DIR / f"{stamp}.json").write_text(text)
    (RESULTS_DIR / "latest.json").write_text(text)
    complete = not args.quick and chosen == list(SECTIONS)
    if complete:
        # The committed copy: only a full run replaces it.
        (BENCH_DIR / "latest.json").write_text(text)
        (BENCH_DIR / "latest.md").write_text(to_markdown(rows, info, when))
    print(f"results: {RESULTS_DIR / 'latest.json'}"
          + (f", {BENCH_DIR / 'latest.md'}" if complete else ""))
    if not args.keep_work:
        for path in WORK_DIR.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
    return 1 if any(s.get("error") for s in sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())
