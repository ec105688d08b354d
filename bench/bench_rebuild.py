"""3g. Model change: `interest rebuild --model M` on the sample warehouse and a 1M-event one.

There is one real model on disk, so the "new" model is the same all-MiniLM-L6-v2 named by its
load path instead of ``default``: another model_id, so every text is embedded again and every
hour recomputed, exactly the work a different model costs (the load includes a fresh ONNX
export under the new id, as a new model's first use would).

- **Sample**: the seed's retail sample processed hour by hour from 08:00 (16 hours, through
  midnight, so the daily refresh and a ranker fit fall inside; ``--quick``: 4 hours), then
  rebuilt.
- **1M events**: the seed's hour plus one hour of 1M replicated sample events (about 40k users;
  ``--quick``: 20k), processed, then rebuilt.

The baseline of each is what the hourly runs spent recomputing the same hours (their fold,
ranker fit and recommend stages, measured in this run over exactly the hours rebuilt); the
rebuild adds loading the model and embedding every text (the catalogue's and every query's),
which the hourly runs spread over the history.
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


def _process(settings: Any, hours: list[Any]) -> dict[str, float]:
    """Run the hours through the pipeline in the DAG's order (the ranker fit between fold and
    recommend), run stats recorded; the stages' wall seconds summed over the hours."""
    from interest_pipeline import stages

    walls = {"embed": 0.0, "fold": 0.0, "train": 0.0, "recommend": 0.0}
    for hour in hours:
        built = run_hour(settings, hour, ("ingest", "dbt", "embed", "fold"), record=False)
        seconds, fitted = timed(stages.train_ranker, hour, hour + HOUR, settings)
        walls["train"] += seconds
        scored = run_hour(settings, hour, ("recommend",), record=False)
        stages.record_run_stats(hour, hour + HOUR, [built, fitted, scored], settings)
        for stage in ("embed", "fold"):
            walls[stage] += built[f"{stage}_wall"]
        walls["recommend"] += scored["recommend_wall"]
    return walls


def _copy_partition(source: Path, target: Path, hour: Any) -> None:
    """The landed partitions of one hour (events and items), so it can be processed again."""
    import shutil

    for kind in ("events", "items"):
        folder = Path(kind) / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        if (source / folder).exists():
            shutil.copytree(source / folder, target / folder)


def _rebuild(section: Section, label: str, settings: Any, walls: dict[str, float],
             model: str) -> dict[str, Any]:
    """Rebuild under ``model``, check the switch, add the rows; the rebuild's result."""
    from interest_pipeline import rebuild
    from interest_pipeline.warehouse import connect

    con = connect(settings.warehouse_path, read_only=True)
    try:
        (events,) = con.execute("select count(*) from user_item_interactions").fetchall()[0]
        old_versions = con.execute("select count(*) from user_interest_vectors").fetchall()[0][0]
    finally:
        con.close()
    seconds, result = timed(rebuild.rebuild_model, settings, model)
    con = connect(settings.warehouse_path, read_only=True)
    try:
        served = rebuild.serving_model(con, settings)[1]
        kept = con.execute(
            "select count(*) from user_interest_vectors where model_id = ?",
            [result["previous_model_id"]],
        ).fetchall()[0][0]
    finally:
        con.close()
    assert result["status"] == "switched" and served == result["model_id"], result
    assert kept == old_versions, "the old model's versions must be kept"
    hours = result["intervals_recomputed"]
    hourly = walls["fold"] + walls["train"] + walls["recommend"]
    section.add(
        f"{label}: rebuild ({hours} hours, {events:,} events)", round(seconds, 2), "s",
        baseline=round(hourly, 2), baseline_metric="hourly fold + ranker + recommend",
        note=f"load {result['load_seconds']:.1f} s, embed {result['embed_seconds']:.1f} s "
             f"({result['texts_embedded']:,} texts), recompute "
             f"{result['recompute_seconds']:.1f} s, switch {result['switch_seconds']:.2f} s, "
             f"snapshot {result['snapshot_seconds']:.2f} s; "
             f"{result['versions_written']:,} versions, "
             f"{result['social_versions_written']:,} social, "
             f"{result['recommendations_written']:,} recommendations, "
             f"{result['rankers_fitted']} rankers",
    )
    section.add(
        f"{label}: recompute per hour", round(result["seconds_per_interval"], 3), "s",
        baseline=round(hourly / max(hours, 1), 3),
        baseline_metric="the same, per hour",
    )
    return {"events": events, "walls": walls, "seconds": seconds, **result}


def run(args: Any) -> Section:
    from interest_pipeline import embeddings, snapshot

    section = Section("rebuild: model change")
    seed = build_seed(WORK_DIR)
    # The default model by its load path: the same weights under another model_id.
    model = embeddings.resolve_model("default")[1]

    data = clone_data_dir(seed, WORK_DIR / "rebuild-sample", with_landing=True)
    settings = settings_for(data)
    # The seed's hour again too, so the hourly walls cover exactly the hours rebuilt.
    hours = [SEED_HOUR + k * HOUR for k in range(4 if args.quick else 16)]
    walls = _process(settings, hours)
    snapshot.publish_snapshot(settings.warehouse_path, hours[-1], hours[-1] + HOUR)
    sample = _rebuild(section, "sample", settings, walls, model)

    n = 20_000 if args.quick else 1_000_000
    data = clone_data_dir(seed, WORK_DIR / "rebuild-1m")
    settings = settings_for(data)
    _copy_partition(seed / "landing", settings.landing_dir, SEED_HOUR)
    hour = SEED_HOUR + 24 * HOUR
    write_events_partition(settings.landing_dir, hour, sample_events(seed / "landing"), n, "r",
                           new_users=True)
    walls = _process(settings, [SEED_HOUR, hour])
    snapshot.publish_snapshot(settings.warehouse_path, hour, hour + HOUR)
    big = _rebuild(section, f"{n:,} events", settings, walls, model)

    section.details = {"model": model, "sample": sample, "big": big}
    return section


if __name__ == "__main__":
    section_main(run)
