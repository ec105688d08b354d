from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from interest_pipeline import evaluation as ev
from tests.builders import add_event, add_item, table_contents

T = datetime(2024, 3, 8, 0)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def _at(offset: timedelta) -> tuple[datetime, datetime]:
    """(event_at, interval_start) of an event at T + offset."""
    at = T + offset
    return at, at.replace(minute=0, second=0)


def _event(con, event_id, user, item, offset, event_type="purchase", weight=3.0):
    at, interval = _at(offset)
    add_event(con, event_id, user, event_type, at, interval, item_id=item, weight=weight)


# ---------------------------------------------------------------- metric functions


def test_metrics_match_hand_computed_values():
    ranked = ["a", "b", "c", "d"]
    relevant = {"b", "d", "x"}
    assert ev.recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert ev.recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)
    assert ev.hit_rate_at_k(ranked, relevant, 1) == 0.0
    assert ev.hit_rate_at_k(ranked, relevant, 2) == 1.0
    # DCG@2 = 1/log2(3); ideal over min(3, 2) = 2 relevant items: 1 + 1/log2(3).
    assert ev.ndcg_at_k(ranked, relevant, 2) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    )
    # DCG@4 = 1/log2(3) + 1/log2(5); ideal over min(3, 4) = 3: 1 + 1/log2(3) + 1/2.
    assert ev.ndcg_at_k(ranked, relevant, 4) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    )
    assert ev.ndcg_at_k(["b", "d"], {"b", "d"}, 10) == pytest.approx(1.0)
    assert ev.catalogue_coverage([["a", "b"], ["b", "c", "z"]], 10, 2) == pytest.approx(0.3)


def test_a_user_without_a_list_is_a_miss_not_dropped():
    relevant = {"u1": {"a"}, "u2": {"b", "c"}}
    scores = ev.score_lists({"u1": ["a", "q"]}, relevant, catalogue_size=4, ks=(10,))
    assert scores[("users", None)] == 2
    assert scores[("recall", 10)] == pytest.approx(0.5)  # u1: 1, u2 (no list): 0
    assert scores[("ndcg", 10)] == pytest.approx(0.5)
    assert scores[("hit_rate", 10)] == pytest.approx(0.5)
    assert scores[("coverage", 10)] == pytest.approx(0.5)  # {a, q} of 4


def test_new_item_recall_only_counts_items_never_seen_before():
    relevant = {"u1": {"old", "new"}, "u2": {"old"}}
    scores = ev.score_lists({"u1": ["new"]}, relevant, 10, new_items={"new"}, ks=(10,))
    assert scores[("new_item_recall", 10)] == 1.0  # only u1 has a new relevant item
    assert ev.score_lists({}, {}, 10, ks=(10,))[("recall", 10)] is None


# ---------------------------------------------------------------- baselines


def _history(con):
    """u1..u4 before T; popularity over 7 days differs from all-time popularity."""
    _event(con, "h1", "u1", "a", -10 * DAY)
    _event(con, "h2", "u2", "a", -10 * DAY)
    _event(con, "h3", "u3", "a", -9 * DAY)
    _event(con, "h4", "u1", "b", -2 * DAY)
    _event(con, "h5", "u2", "b", -2 * DAY)
    _event(con, "h6", "u3", "c", -1 * DAY)
    _event(con, "h7", "u4", "a", -1 * DAY, event_type="view", weight=0.5)
    _event(con, "h8", "u4", "d", -1 * DAY, weight=-3.0)  # a cancellation is no popularity


def test_baselines_on_a_tiny_fixture(con):
    _history(con)
    lists = ev.baseline_lists(con, T, ["u3", "u4", "u9"], k=3)
    # all time: a (4 users, incl. u4's view), b (2), c (1); in the last 7 days: b (2), a, c (1).
    assert lists["popularity_all"]["u9"] == ["a", "b", "c"]
    assert lists["popularity_7d"]["u9"] == ["b", "a", "c"]
    # u3 bought a and c: excluded; u4 only viewed a, which stays eligible.
    assert lists["popularity_all"]["u3"] == ["b"]
    assert lists["popularity_7d"]["u4"] == ["b", "a", "c"]
    # Co-occurrence: u3 engaged with a, c; b co-occurs with a twice (u1, u2); a, c consumed.
    assert lists["cooccurrence"]["u3"] == ["b"]
    # u4 engaged with a: b (u1, u2) twice, c (u3) once; a is only viewed, so not consumed,
    # but an item never co-occurs with itself.
    assert lists["cooccurrence"]["u4"] == ["b", "c"]
    assert "u9" not in lists["cooccurrence"]  # no history: no list (a miss when evaluated)


def test_events_landing_after_the_cut_off_are_not_known(con):
    _history(con)
    _event(con, "f1", "u5", "z", 2 * HOUR)
    _event(con, "f2", "u6", "z", 3 * HOUR)
    assert "z" not in ev.baseline_lists(con, T, ["u9"], k=10)["popularity_all"]["u9"]


# ---------------------------------------------------------------- evaluate_as_of


def _recommend(con, user, as_of, items, model_id="m"):
    for rank, item in enumerate(items, start=1):
        con.execute(
            "insert into recommendations values (?, ?, ?, ?, 1.0, ?, '[]')",
            [user, as_of, rank, item, model_id],
        )


def _rows_by_key(rows, population="known"):
    return {
        (r["method"], r["metric"], r["k"]): r["value"]
        for r in rows
        if r["population"] == population
    }


def test_relevant_items_exclude_consumed_and_cancelled(con):
    _history(con)
    _event(con, "f1", "u1", "a", 2 * HOUR)  # bought before: not relevant
    _event(con, "f2", "u1", "c", 3 * HOUR)
    _event(con, "f3", "u2", "c", 4 * HOUR, weight=-3.0)  # a cancellation: not relevant
    _event(con, "f4", "u3", "b", 30 * HOUR)  # after the horizon
    assert ev.relevant_items(con, T, 24.0) == {"u1": {"c"}}


def test_evaluate_as_of_uses_the_version_in_force_and_counts_missing_users(con):
    for item in "abcdz":
        add_item(con, item, f"item {item}")
    _history(con)
    _recommend(con, "u1", T - 5 * DAY, ["c"])  # superseded
    _recommend(con, "u1", T - DAY, ["d", "z"])  # in force at T
    _recommend(con, "u1", T + HOUR, ["c"])  # after T: not used
    _event(con, "f1", "u1", "z", 2 * HOUR)
    _event(con, "f2", "u2", "c", 2 * HOUR)  # u2 has no recommendation: a miss
    _event(con, "f3", "u8", "c", 2 * HOUR)  # new user: only in the "all" population
    rows = ev.evaluate_as_of(con, T, 24.0, "m", ks=(10,))
    known = _rows_by_key(rows)
    assert known[("model", "users", None)] == 2
    assert known[("model", "hit_rate", 10)] == pytest.approx(0.5)
    assert known[("model", "recall", 10)] == pytest.approx(0.5)
    assert known[("model", "ndcg", 10)] == pytest.approx((1 / math.log2(3)) / 2)
    # u1 consumed a, b: popularity gives c first (d is only cancelled, never popular).
    assert known[("popularity_all", "hit_rate", 10)] == pytest.approx(0.5)
    everyone = _rows_by_key(rows, "all")
    assert everyone[("model", "users", None)] == 3
    assert everyone[("model", "hit_rate", 10)] == pytest.approx(1 / 3)
    # z had no event before T: a new item, found by the model only.
    assert known[("model", "new_item_recall", 10)] == pytest.approx(1.0)
    assert known[("popularity_7d", "new_item_recall", 10)] == pytest.approx(0.0)
    assert {r["users_evaluated"] for r in rows if r["population"] == "known"} == {2}


def test_record_and_evaluate_interval_are_idempotent(con):
    for item in "abcd":
        add_item(con, item, f"item {item}")
    _history(con)
    _recommend(con, "u1", T - DAY, ["c"])
    _event(con, "f1", "u1", "c", 2 * HOUR)
    summary = ev.evaluate_interval(con, T + 24 * HOUR, 24.0, "m")
    assert summary["evaluated_as_of"] == T.isoformat()
    assert summary["users_evaluated"] == 1
    assert summary["model_ndcg@10"] == pytest.approx(1.0)
    first = [r[:-1] for r in table_contents(con, "evaluation")]
    ev.evaluate_interval(con, T + 24 * HOUR, 24.0, "m")
    assert [r[:-1] for r in table_contents(con, "evaluation")] == first
    assert con.execute("select distinct interval_end from evaluation").fetchall() == [(T,)]


def test_weighted_means_weight_by_users():
    rows = [
        {"population": "known", "method": "model", "metric": "ndcg", "k": 10, "value": 1.0,
         "users_evaluated": 1},
        {"population": "known", "method": "model", "metric": "ndcg", "k": 10, "value": 0.0,
         "users_evaluated": 3},
        {"population": "known", "method": "model", "metric": "users", "k": None, "value": 1,
         "users_evaluated": 1},
        {"population": "known", "method": "model", "metric": "users", "k": None, "value": 3,
         "users_evaluated": 3},
    ]
    means = ev.weighted_means(rows)
    assert means[("known", "model", "ndcg", 10)] == pytest.approx(0.25)
    assert means[("known", "model", "users", None)] == 4
