"""Stage functions as the DAG calls them: out-of-order history converges to in-order results."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from interest_pipeline import stages
from interest_pipeline.config import get_settings
from interest_pipeline.embeddings import embed_new_texts
from interest_pipeline.warehouse import SCHEMA_DDL, connect
from tests.builders import add_event, add_item, table_contents
from tests.conftest import MARTS_DDL

H = [datetime(2024, 3, 1, 10) + timedelta(hours=i) for i in range(5)]


def _warehouse(path, fake_encoder):
    con = connect(path)
    con.execute(SCHEMA_DDL)
    con.execute(MARTS_DDL)
    for item, title in [("a", "space robots"), ("b", "space aliens"), ("c", "romantic paris"),
                        ("d", "romantic drama"), ("e", "robots war")]:
        add_item(con, item, title)
    events = [
        (0, "u1", "a"), (0, "u2", "c"), (1, "u1", "e"), (2, "u2", "d"), (3, "u1", "b"),
        (3, "u2", "a"),
    ]
    for i, (h, user, item) in enumerate(events):
        add_event(con, f"e{i}", user, "rate", H[h] + timedelta(minutes=10), H[h], item_id=item)
    for h in H[:4]:
        embed_new_texts(con, "fake", lambda: fake_encoder, h)
    con.close()


def _process(settings, hour, **backfill):
    """One hour as a DAG run does it (``backfill``: the conf of a main-job backfill); the
    fold's result."""
    end = hour + timedelta(hours=1)
    result = stages.update_user_vectors(hour, end, settings, **backfill)
    stages.write_recommendations(hour, end, settings)
    # what record_run_stats leaves behind that the cascade relies on: the interval was processed
    con = connect(settings.warehouse_path)
    con.execute("delete from pipeline_runs where interval_start = ?", [hour])
    con.execute(
        "insert into pipeline_runs (interval_start, interval_end, event_lines_landed, "
        "item_lines_landed, events_in, duplicates, quarantined, items_upserted, texts_embedded, "
        "users_updated, recommendations_written, model_id, code_version, recorded_at) "
        "values (?, ?, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'fake', 'test', now()::timestamp)",
        [hour, end],
    )
    con.close()
    return result


def _outputs(path):
    con = connect(path, read_only=True)
    out = {t: table_contents(con, t) for t in ("user_interest_vectors", "recommendations")}
    con.close()
    return out


@pytest.fixture
def settings_for(tmp_path, fake_encoder):
    def make(name):
        path = tmp_path / f"{name}.duckdb"
        _warehouse(path, fake_encoder)
        return dataclasses.replace(get_settings(), warehouse_path=path, model="fake", top_n=3)

    return make


def test_backfilling_earlier_hours_after_later_ones_converges_to_in_order(settings_for):
    in_order = settings_for("in_order")
    for hour in H[:4]:
        _process(in_order, hour)

    late = settings_for("late")
    for hour in (H[2], H[3], H[0], H[1]):  # hours 0-1 arrive late, after 2-3 were processed
        _process(late, hour)

    assert _outputs(late.warehouse_path) == _outputs(in_order.warehouse_path)


def test_reprocessing_an_unchanged_hour_recomputes_nothing_later(settings_for):
    settings = settings_for("w")
    for hour in H[:4]:
        _process(settings, hour)
    result = stages.update_user_vectors(H[0], H[1], settings)
    assert result["later_intervals_recomputed"] == 0


def test_a_changed_earlier_hour_recomputes_every_later_processed_hour(settings_for):
    settings = settings_for("w")
    for hour in H[1:4]:
        _process(settings, hour)
    result = stages.update_user_vectors(H[0], H[1], settings)
    assert result["later_intervals_recomputed"] == 3


def test_a_late_backfill_recomputes_each_later_hour_once_and_converges(settings_for):
    """Issue 15: N late hours behind processed ones recompute those once per backfill, not
    once per run: the backfill's runs defer it to its last run."""
    in_order = settings_for("in_order")
    for hour in H[:4]:
        _process(in_order, hour)

    late = settings_for("late")
    for hour in H[2:4]:
        _process(late, hour)
    end = H[2]  # the backfill of hours 0-1 ends where the processed hours start
    first = _process(late, H[0], backfill_end=end)
    last = _process(late, H[1], backfill_end=end)
    assert (first["later_intervals_recomputed"], first["later_recompute_deferred"]) == (0, True)
    assert (last["later_intervals_recomputed"], last["later_recompute_deferred"]) == (2, False)
    assert _outputs(late.warehouse_path) == _outputs(in_order.warehouse_path)


def test_a_backfill_that_stops_half_way_leaves_nothing_stale_for_the_next_run(settings_for):
    in_order = settings_for("in_order")
    for hour in H[:5]:
        _process(in_order, hour)

    late = settings_for("late")
    for hour in H[1:4]:
        _process(late, hour)
    # a reprocessing backfill of hours 0-1 whose second run never comes
    assert _process(late, H[0], backfill_end=H[2], reprocess=True)["later_recompute_deferred"]
    # the next scheduled hour brings hours 1-3 up to date first, then folds onto them
    assert _process(late, H[4])["later_intervals_recomputed"] == 3
    assert _outputs(late.warehouse_path) == _outputs(in_order.warehouse_path)


def test_an_interval_is_split_into_its_hours_even_from_airflows_pendulum_datetimes():
    import pendulum

    start = pendulum.datetime(2024, 3, 1, tz="UTC")
    hours = stages.interval_hours(start, start.add(days=1))
    assert len(hours) == 24
    assert hours[0] == (datetime(2024, 3, 1, 0), datetime(2024, 3, 1, 1))
    assert hours[-1] == (datetime(2024, 3, 1, 23), datetime(2024, 3, 2, 0))
    assert all(type(a) is datetime and a.tzinfo is None for a, _ in hours)


@pytest.mark.parametrize(
    "start, end",
    [(H[0], H[0]), (H[1], H[0]), (H[0], H[0] + timedelta(minutes=90)),
     (H[0] + timedelta(minutes=30), H[2] + timedelta(minutes=30))],
)
def test_an_interval_that_is_not_whole_hours_is_refused(start, end):
    with pytest.raises(ValueError, match="not a whole number of UTC hours"):
        stages.interval_hours(start, end)


def test_a_stage_over_several_hours_reports_totals_and_each_hour(monkeypatch):
    results = iter([
        {"users_updated": 2, "ndcg": None, "model_id": "m"},
        {"users_updated": 3, "ndcg": 0.5, "model_id": "m"},
    ])
    out = stages._hour_by_hour("fold", H[0], H[2], lambda start, end: next(results))
    assert out["users_updated"] == 5
    assert out["ndcg"] == 0.5  # a metric is not summed: the last hour's
    assert out["fold_seconds"] == pytest.approx(
        sum(h["fold_seconds"] for h in out["per_hour"].values()))
    assert list(out["per_hour"]) == [H[0].isoformat(), H[1].isoformat()]
    assert out["per_hour"][H[1].isoformat()]["users_updated"] == 3
    single = stages._hour_by_hour("fold", H[0], H[1], lambda start, end: {"users_updated": 1})
    assert "per_hour" not in single and single["users_updated"] == 1
