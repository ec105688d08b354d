"""Shared pieces of the benchmark suite: paths, machine description, result rows, sample events.

Every figure the suite reports is a ratio against a baseline measured in the same run, or a
curve: the machine is shared and noisy, so absolute seconds only mean something next to a
baseline taken minutes apart under the same load.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = RESULTS_DIR / "work"

# The seed: the Online Retail II sample from 08:00 (its first busy hour, where the replay also
# lands all 1,600 catalog items) for two days; hour 08 is run through the pipeline once, so the
# seed warehouse holds the catalogue, its embeddings and every table a run touches.
SEED_DATASET = "retail"
SEED_WINDOW = (datetime(2010, 11, 10, 8), datetime(2010, 11, 12, 0))
SEED_HOUR = datetime(2010, 11, 10, 8)
HOUR = timedelta(hours=1)


@dataclass
class Row:
    """One line of the results table."""

    section: str
    metric: str
    value: float | int | str | None
    unit: str = ""
    baseline: float | int | str | None = None
    baseline_metric: str = ""
    ratio: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and _is_number(self.value) and _is_number(self.baseline):
            self.ratio = self.value / self.baseline if self.baseline else None


@dataclass
class Section:
    """What one benchmark module returns: table rows plus raw details (curves, samples)."""

    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: Any, unit: str = "", **kw: Any) -> Row:
        row = Row(self.name, metric, value, unit, **kw)
        self.rows.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rows": [asdict(r) for r in self.rows], "details": self.details}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def section_main(run: Callable[[Any], Section]) -> None:
    """Entry point of a section module: ``python bench/x.py --out FILE [--quick]``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    section = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(section.to_json(), indent=2, default=str))


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }
    for package in ("torch", "duckdb", "numpy", "sentence-transformers", "dbt-core",
                    "dbt-duckdb", "apache-airflow", "faiss-cpu", "usearch"):
        info[package] = _version(package)
    return info


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


# --- the pipeline, stage by stage, in this process ------------------------------------------

def settings_for(data_dir: Path, warehouse: Path | None = None) -> Any:
    """Settings of a private pipeline instance (its own warehouse, landing zone, dbt target);
    every tunable as configured in the environment."""
    import dataclasses

    from interest_pipeline.config import get_settings

    return dataclasses.replace(
        get_settings(),
        data_dir=data_dir,
        warehouse_path=warehouse or data_dir / "warehouse.duckdb",
        landing_dir=data_dir / "landing",
        airflow_home=data_dir / "airflow",
    )


PIPELINE_STAGES = ("ingest", "dbt", "embed", "fold", "recommend")


def embed_step(start: datetime, end: datetime, settings: Any) -> dict[str, Any]:
    """The DAG's embedding step in this process: plan shards, encode each, merge.

    (The DAG maps embed_text_shard over the shards; here they run one after another.) Falls
    back to stages.embed_new_texts where the package has no sharded path.
    """
    from interest_pipeline import stages

    if not hasattr(stages, "plan_embedding_shards"):
        return stages.embed_new_texts(start, end, settings)
    shards = stages.plan_embedding_shards(start, end, settings)
    results = [stages.embed_text_shard(path, settings) for path in shards]
    return stages.merge_text_embeddings(start, end, results, settings)


def run_hour(
    settings: Any, start: datetime, stages_to_run: tuple[str, ...] = PIPELINE_STAGES,
    record: bool = True, publish: bool = False,
) -> dict[str, Any]:
    """Run one hour through the pipeline's stage functions (what each DAG task calls); with
    ``publish``, then the readers' snapshot, as the DAG's last task does.

    Returns every stage's result and its wall seconds under ``<stage>_wall``.
    """
    from interest_pipeline import stages

    functions = {
        "ingest": stages.ingest_landing_partition,
        "dbt": stages.build_dbt_models,
        "embed": embed_step,
        "fold": stages.update_user_vectors,
        "recommend": stages.write_recommendations,
    }
    end = start + HOUR
    out: dict[str, Any] = {}
    results = []
    for name in stages_to_run:
        seconds, result = timed(functions[name], start, end, settings)
        out[f"{name}_wall"] = seconds
        out.update(result)
        results.append(result)
    if record:
        seconds, _ = timed(stages.record_run_stats, start, end, results, settings)
        out["record_wall"] = seconds
    if publish:
        seconds, _ = timed(stages.publish_snapshot, start, end, settings)
        out["publish_wall"] = seconds
    out["total_wall"] = sum(v for k, v in out.items() if k.endswith("_wall"))
    return out


# --- sample events, replicated --------------------------------------------------------------

def replay_seed(landing_dir: Path) -> None:
    from interest_pipeline.replay import replay

    replay(SEED_DATASET, SEED_WINDOW[0], SEED_WINDOW[1], landing_dir)


def sample_events(landing_dir: Path) -> list[dict[str, Any]]:
    """Every real event of the replayed sample window, in landing order."""
    events = []
    for path in sorted((landing_dir / "events").rglob("*.jsonl")):
        with path.open() as fh:
            events.extend(json.loads(line) for line in fh if line.strip())
    return events


def write_events_partition(
    landing_dir: Path,
    hour: datetime,
    sample: list[dict[str, Any]],
    n: int,
    id_tag: str,
    new_users: bool,
) -> Path:
    """Land ``n`` real sample events in the partition of ``hour``, replicated as needed.

    Copy k of a sample event gets event_id ``<id>~<id_tag>.<k>``; with ``new_users`` its user
    becomes ``<user>~<k>`` (more events, more users: a bigger shop), otherwise the user stays
    (more events of the same people). Times keep their minute and second inside ``hour``.
    """
    folder = landing_dir / "events" / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-00000.jsonl"
    size = len(sample)
    prefix = f"{hour:%Y-%m-%dT%H}:"
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with path.open("w") as fh:
        for i in range(n):
            k, src = divmod(i, size)
            event = dict(sample[src])
            event["event_id"] = f"{event['event_id']}~{id_tag}.{k}"
            if new_users and k:
                event["user_id"] = f"{event['user_id']}~{k}"
            event["event_time"] = prefix + str(event["event_time"])[14:19] + "Z"
            fh.write(dumps(event))
            fh.write("\n")
    return path


def build_seed(work: Path) -> Path:
    """The seed data dir: sample landed, hour 08 run through the whole pipeline once.

    Re-used when present (it is a fixture, not a measurement).
    """
    seed = work / "seed"
    marker = seed / "ready"
    if marker.exists():
        return seed
    if seed.exists():
        shutil.rmtree(seed)
    settings = settings_for(seed)
    replay_seed(settings.landing_dir)
    run_hour(settings, SEED_HOUR)
    marker.write_text("ok")
    return seed


def clone_data_dir(seed: Path, target: Path, with_landing: bool = False) -> Path:
    """A private copy of the seed's warehouse (and dbt target, so partial parsing is warm)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(seed / "warehouse.duckdb", target / "warehouse.duckdb")
    if (seed / "dbt").exists():
        shutil.copytree(seed / "dbt", target / "dbt")
    if with_landing:
        shutil.copytree(seed / "landing", target / "landing")
    else:
        (target / "landing").mkdir()
    _warm_dbt_parse(target)
    return target


def _warm_dbt_parse(data_dir: Path) -> None:
    """``dbt parse`` for a cloned data dir, untimed. dbt's partial-parse cache is keyed on the
    rendered profile, which holds the warehouse path: the copied cache is the seed's, so the
    clone's first build would re-parse the whole project (about 2.5 s), which a deployment
    pays once after a move, never in an hour's run."""
    from interest_pipeline.transform import dbt_command

    cmd, env = dbt_command(settings_for(data_dir), "parse", "--no-write-json")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dbt parse failed for {data_dir}:\n{proc.stdout[-2000:]}")
