"""3f. Social: an hour of 1,000 changed users over a follow graph of 1M edges.

The graph: 1,000,000 `follow` events land in one hour (ingested and built by dbt, not
measured): every one of the measured hour's users gets about 20 followers, and the rest of the
edges join 50,000 other people, most of whom have no events of their own. The measured
hour: 20,000 real sample events of about 1,000 users through ingest, dbt, fold and recommend.
Its recommend stage re-scores the changed users and their followers (the social fan-out) and
computes the social signal from the graph as of the hour. The baseline is the same hour
without the graph.
"""

from __future__ import annotations

import json
import random
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
    write_events_partition,
)

EDGES = 1_000_000
OTHERS = 50_000
FOLLOWERS_EACH = 20


def _users_of(partition: Path) -> list[str]:
    with partition.open() as fh:
        return sorted({json.loads(line)["user_id"] for line in fh})


def _write_graph(landing: Path, hour: Any, targets: list[str], edges: int, seed: int = 7) -> int:
    """Land ``edges`` follow events in ``hour``'s partition; returns the edges to ``targets``."""
    rng = random.Random(seed)
    folder = landing / "events" / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{hour:%Y-%m-%dT%H}:00:00Z"
    to_targets = min(edges, len(targets) * FOLLOWERS_EACH)
    with (folder / "part-graph.jsonl").open("w") as fh:
        for i in range(edges):
            follower = f"g{rng.randrange(OTHERS)}"
            followee = targets[i % len(targets)] if i < to_targets else f"g{rng.randrange(OTHERS)}"
            fh.write(json.dumps({
                "event_id": f"graph-{i}", "event_time": stamp, "user_id": follower,
                "event_type": "follow", "target_user_id": followee,
            }, separators=(",", ":")) + "\n")
    return to_targets


def _measured(settings: Any, hour: Any) -> dict[str, Any]:
    return run_hour(settings, hour, ("ingest", "dbt", "embed", "fold", "recommend"))


def run(args: Any) -> Section:
    section = Section("social: follow graph")
    seed = build_seed(WORK_DIR)
    sample = sample_events(seed / "landing")
    edges = 20_000 if args.quick else EDGES
    graph_hour = SEED_HOUR + 24 * HOUR
    hour = graph_hour + HOUR
    results = {}
    for name, with_graph in (("without", False), ("with", True)):
        data = clone_data_dir(seed, WORK_DIR / f"social-{name}")
        settings = settings_for(data)
        # About 1,000 users (the sample has about 50 per 1,000 events).
        events = 2_000 if args.quick else 20_000
        partition = write_events_partition(settings.landing_dir, hour, sample, events, "soc",
                                           new_users=True)
        users = _users_of(partition)
        if with_graph:
            _write_graph(settings.landing_dir, graph_hour, users, edges)
            run_hour(settings, graph_hour, ("ingest", "dbt"))
        results[name] = _measured(settings, hour)
        print(f"social {name}: {results[name]}", flush=True)
    with_, without = results["with"], results["without"]
    for stage in ("fold", "recommend"):
        section.add(
            f"{stage}: hour of {len(users):,} users, {edges:,}-edge graph",
            round(with_[f"{stage}_wall"], 2), "s",
            baseline=round(without[f"{stage}_wall"], 2),
            baseline_metric="same hour, no graph",
            note=(
                f"users recommended {with_.get('users_recommended')} "
                f"(without graph {without.get('users_recommended')}): the changed users "
                f"and their followers"
            ) if stage == "recommend" else "",
        )
    section.details = {"edges": edges, "users": len(users), "with": with_, "without": without}
    return section


if __name__ == "__main__":
    section_main(run)
