"""3i. Evaluation speed: a rerun of `interest eval` after a scoring change, with and without
what a rerun keeps (each cut-off's baselines; the fold, when only the scoring changed).

Online Retail II, 2010-11-01 to 11-29 (four weeks; cut-offs every 6 h from a week in), run as
`interest eval` in its own process, three times on one work dir:

1. **cold**: a new work dir (replay, per-day ingest + dbt + embed, fold + ranker + recommend
   hour by hour, then every cut-off with its baselines);
2. **rerun after a scoring change** (`INTEREST_NEW_ITEM_RANK`, a recommend setting): only
   the lists the cut-offs read (:mod:`interest_pipeline.eval_lists`), the model's lists and
   the metrics are computed again (the fold's vectors, the rankers' fits and the baselines are
   kept: none of them reads that setting);
3. **the same rerun without what a rerun keeps**, the baseline: the cold work dir put back
   (at the same path: the path is part of its data key, so a copy elsewhere would rebuild the
   warehouse), its kept baselines and fold key removed and `--all-lists`, so every hour is
   folded and trained again, every list written and every baseline refitted, as a rerun did
   before. Its report must equal the kept rerun's;
4. **a rerun after a change the fit reads** (`INTEREST_SCORE_CONTENT_WEIGHT`, a default
   weight the daily fit starts from), on the work dir of 3: the rankers are fitted again.

The rows: the rerun against that baseline (wall seconds, then its pipeline and evaluation
parts), and both reruns against the cold run; the issue's targets (cold 5 min, rerun 1 min,
for the four weeks) go in a note.

Quick mode: three days (2010-11-08 to 11-11), cut-offs from 11-09 12:00 (three): a smoke run
of about a minute and a half.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, WORK_DIR, Section, section_main  # noqa: E402

COLD_TARGET_SECONDS = 300.0
RERUN_TARGET_SECONDS = 60.0
WINDOW = ("2010-11-01T00:00", "2010-11-29T00:00")
QUICK_WINDOW = ("2010-11-08T00:00", "2010-11-11T00:00")
QUICK_REPORT_FROM = "2010-11-09T12:00"
# A scoring change that leaves the interest vectors alone (the new-item slot of the lists).
SCORING_CHANGE = {"INTEREST_NEW_ITEM_RANK": "19"}
# A scoring change the rankers' fit reads (the default weights it starts from).
FIT_CHANGE = {**SCORING_CHANGE, "INTEREST_SCORE_CONTENT_WEIGHT": "0.1"}
# The baseline: every hour folded and trained again, every list written, every baseline
# refitted.
BEFORE = "same rerun, nothing kept, every list (as before)"


def _eval(workdir: Path, out_dir: Path, window: tuple[str, str], report_from: str | None,
          env: dict[str, str], *extra: str) -> tuple[float, dict[str, Any]]:
    """One `interest eval` run in its own process: (wall seconds, its --json result)."""
    cmd = [
        sys.executable, "-m", "interest_pipeline.eval_cli", "--dataset", "retail",
        "--start", window[0], "--end", window[1], "--workdir", str(workdir),
        "--out-dir", str(out_dir), "--json", *extra,
    ]
    if report_from:
        cmd += ["--report-from", report_from]
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False,
        cwd=REPO_ROOT,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"interest eval failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    print(f"interest eval in {workdir.name} {env or ''}: {seconds:.1f} s, pipeline "
          f"{result['pipeline']}, evaluation {result['evaluate_seconds']} s", flush=True)
    return seconds, result


def _numbers(result: dict[str, Any]) -> Any:
    """What the report says (tables, intervals, per-user values), without paths or timings."""
    keys = ("results", "comparisons", "cutoffs", "hyperparameters", "list_age_hours",
            "model_per_user")
    return {k: result.get(k) for k in keys}


def _forget_kept(workdir: Path) -> None:
    """Remove what a rerun keeps beyond the warehouse (the baselines and the fold key), so the
    work dir reruns as before."""
    shutil.rmtree(workdir / "baselines", ignore_errors=True)
    state_file = workdir / "eval_state.json"
    state = json.loads(state_file.read_text())
    state.pop("fold", None)
    state_file.write_text(json.dumps(state))


def _folded(result: dict[str, Any]) -> str:
    pipeline = result["pipeline"]
    return f"{pipeline['hours_folded']} of {pipeline['hours_scored']} hours folded"


def run(args: Any) -> Section:
    section = Section("evaluation speed")
    window = QUICK_WINDOW if args.quick else WINDOW
    report_from = QUICK_REPORT_FROM if args.quick else None
    base = WORK_DIR / "eval"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    workdir, saved = base / "w", base / "w-cold"
    cold, cold_result = _eval(workdir, base / "o-cold", window, report_from, {})
    shutil.copytree(workdir, saved)
    rerun, kept = _eval(workdir, base / "o-rerun", window, report_from, SCORING_CHANGE)
    # Back at the same path: the path is part of the work dir's data key.
    shutil.rmtree(workdir)
    saved.rename(workdir)
    _forget_kept(workdir)
    before, plain = _eval(
        workdir, base / "o-before", window, report_from, SCORING_CHANGE, "--all-lists"
    )
    same = _numbers(kept) == _numbers(plain)
    refit, refit_result = _eval(workdir, base / "o-refit", window, report_from, FIT_CHANGE)
    change = ", ".join(f"{k}={v}" for k, v in SCORING_CHANGE.items())
    cutoffs = len(cold_result["cutoffs"])
    section.add(
        "rerun after a scoring change", round(rerun, 1), "s",
        baseline=round(before, 1), baseline_metric=BEFORE,
        note=f"{change}; report equal to the baseline's: {same}",
    )
    section.add(
        "rerun after a scoring change: pipeline", kept["pipeline"]["pipeline_seconds"], "s",
        baseline=plain["pipeline"]["pipeline_seconds"], baseline_metric=BEFORE,
        note=f"fold skipped: {_folded(kept)} (baseline: {_folded(plain)}); lists written "
             f"{kept['pipeline']['lists_written']:,} (baseline: "
             f"{plain['pipeline']['lists_written']:,})",
    )
    section.add(
        "rerun after a scoring change: evaluation", kept["evaluate_seconds"], "s",
        baseline=plain["evaluate_seconds"], baseline_metric=BEFORE,
        note=f"baselines kept: {cutoffs} cut-offs",
    )
    span = f"retail {window[0][:10]} .. {window[1][:10]}, {cutoffs} cut-offs"
    if not args.quick:
        span += (
            f"; issue's targets: cold <= {COLD_TARGET_SECONDS:.0f} s "
            f"{'met' if cold <= COLD_TARGET_SECONDS else 'MISSED'}, rerun <= "
            f"{RERUN_TARGET_SECONDS:.0f} s {'met' if rerun <= RERUN_TARGET_SECONDS else 'MISSED'}"
        )
    section.add(
        "rerun after a scoring change against the cold run", round(rerun, 1), "s",
        baseline=round(cold, 1), baseline_metric="first (cold) interest eval, same window",
        note=span,
    )
    change = ", ".join(f"{k}={v}" for k, v in FIT_CHANGE.items())
    section.add(
        "rerun after a change the fit reads, against the cold run", round(refit, 1), "s",
        baseline=round(cold, 1), baseline_metric="first (cold) interest eval, same window",
        note=f"{change}: the rankers fitted again; pipeline "
             f"{refit_result['pipeline']['pipeline_seconds']} s, evaluation "
             f"{refit_result['evaluate_seconds']} s",
    )
    section.details = {
        "window": window, "report_from": report_from, "scoring_change": SCORING_CHANGE,
        "fit_change": FIT_CHANGE,
        "cold_seconds": cold, "rerun_seconds": rerun, "rerun_before_seconds": before,
        "rerun_refit_seconds": refit, "numbers_equal": same,
        "runs": {
            name: {"pipeline": r["pipeline"], "evaluate_seconds": r["evaluate_seconds"]}
            for name, r in (
                ("cold", cold_result), ("rerun", kept), ("before", plain),
                ("refit", refit_result),
            )
        },
    }
    return section


if __name__ == "__main__":
    section_main(run)
