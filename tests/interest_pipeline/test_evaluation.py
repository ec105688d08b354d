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


def test_an_event_landing_late_before_the_cut_off_is_in_the_next_evaluation_of_it(con):
    """The history at a cut-off is kept in memory for the next cut-offs, while the
    interactions before it are unchanged."""
    _history(con)
    assert "z" not in ev.baseline_lists(con, T, ["u9"], k=10)["popularity_all"]["u9"]
    _event(con, "late", "u5", "z", -3 * HOUR)
    assert "z" in ev.baseline_lists(con, T, ["u9"], k=10)["popularity_all"]["u9"]


# ---------------------------------------------------------------- evaluate_as_of


def _recommend(con, user, as_of, items, model_id="m"):
    for rank, item in enumerate(items, start=1):
        con.execute(
            "insert into recommendations (user_id, as_of, rank, item_id, score, model_id, evidence)"
            " values (?, ?, ?, ?, 1.0, ?, '[]')",
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


def test_the_hourly_task_scores_the_peers_once_a_day(con):
    for item in "abcd":
        add_item(con, item, f"item {item}")
    _history(con)
    _event(con, "f1", "u1", "c", 2 * HOUR)
    _event(con, "f2", "u1", "d", 26 * HOUR)

    def methods(interval_end):
        ev.evaluate_interval(con, interval_end, 24.0, "m")
        return {
            r[0] for r in con.execute(
                "select distinct method from evaluation where interval_end = ?",
                [interval_end - 24 * HOUR],
            ).fetchall()
        }

    assert methods(T + 24 * HOUR) == set(ev.METHODS)  # the cut-off at midnight
    assert methods(T + 25 * HOUR) == set(ev.METHODS) - set(ev.PEERS)


def test_list_ages_are_hours_since_the_list_in_force_was_written(con):
    _recommend(con, "u1", T - 30 * HOUR, ["a"])
    _recommend(con, "u1", T - 6 * HOUR, ["b"])
    _recommend(con, "u2", T - 2 * HOUR, ["a"])
    _recommend(con, "u2", T + HOUR, ["b"])  # after T: not in force yet
    assert ev.list_ages_hours(con, T, "m", ["u1", "u2", "u3"]) == [6.0, 2.0]


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


def test_the_methods_and_the_peer_baselines(con):
    assert ev.METHODS == (
        "model", "popularity_7d", "popularity_all", "cooccurrence", "ease", "itemknn"
    )
    _history(con)
    lists = ev.baseline_lists(con, T, ["u3", "u9"], k=3)
    # u3 engaged with a and c, both bought: the peers only offer b.
    assert lists["ease"]["u3"][0] == "b" and lists["itemknn"]["u3"] == ["b"]
    assert "a" not in lists["ease"]["u3"] and "c" not in lists["ease"]["u3"]
    assert "u9" not in lists["ease"] and "u9" not in lists["itemknn"]


# ---------------------------------------------------------------- peers' hyper-parameters


def _tuning_history(con, z_next):
    """At T - 24 h, z has item a. b shares a user with a and has one user; c shares three and
    has fifteen: plain cosine prefers b, shrunk cosine (shrink 10) prefers c. z buys ``z_next``
    in [T - 24 h, T)."""
    _event(con, "z0", "z", "a", -10 * DAY)
    _event(con, "w1a", "w1", "a", -10 * DAY)
    _event(con, "w1b", "w1", "b", -10 * DAY)
    for n in (2, 3, 4):
        _event(con, f"w{n}a", f"w{n}", "a", -10 * DAY)
        _event(con, f"w{n}c", f"w{n}", "c", -10 * DAY)
    for n in range(12):
        _event(con, f"v{n}", f"v{n}", "c", -10 * DAY)
    _event(con, "z1", "z", z_next, -22 * HOUR)


@pytest.mark.parametrize(
    ("z_next", "chosen"), [("c", {"neighbours": 20, "shrink": 10.0}),
                           ("b", {"neighbours": 20, "shrink": 0.0})]
)
def test_hyperparameters_are_the_ones_that_win_on_the_split_before_the_cut_off(
    con, z_next, chosen
):
    _tuning_history(con, z_next)
    _event(con, "late", "z", "b" if z_next == "c" else "c", 2 * HOUR)  # after T: never seen
    found = ev.choose_hyperparameters(con, T, 24.0)
    knn = found["itemknn"]
    # Every neighbour count gives the same list here: the first in grid order wins the tie.
    assert knn["params"] == chosen
    assert knn["tuned_as_of"] == T - DAY and knn["tuning_users"] == 1
    assert knn["tuning_ndcg@10"] == pytest.approx(1.0)
    assert [p["ndcg@10"] for p in knn["grid"]] == pytest.approx(
        [1.0, 1 / math.log2(3)] * 3 if z_next == "b" else [1 / math.log2(3), 1.0] * 3
    )
    assert found["ease"]["params"] in ev.PEER_GRIDS["ease"]


def test_without_tuning_users_the_first_grid_point_is_used(con):
    _history(con)  # nothing happens in [T - 3 d, T - 2 d)
    found = ev.choose_hyperparameters(con, T - 2 * DAY, 24.0)
    for method in ev.PEERS:
        assert found[method]["params"] == ev.PEER_GRIDS[method][0]
        assert found[method]["tuning_users"] == 0
        assert found[method]["tuning_ndcg@10"] is None


def _count_peer_fits(monkeypatch) -> dict[str, int]:
    """Count the EASE and ItemKNN fits from now on (the in-process fit cache emptied)."""
    from collections import OrderedDict

    from interest_pipeline import baselines

    monkeypatch.setattr(ev, "_PEER_CACHE", OrderedDict())
    calls = {"ease": 0, "itemknn": 0}
    for method in calls:
        fit = getattr(baselines, f"{method}_lists")

        def counted(*args, _fit=fit, _method=method, **kwargs):
            calls[_method] += 1
            return _fit(*args, **kwargs)

        monkeypatch.setattr(baselines, f"{method}_lists", counted)
    return calls


def test_a_peer_fit_is_done_once_per_data_and_point(con, monkeypatch):
    calls = _count_peer_fits(monkeypatch)
    _tuning_history(con, "c")
    # Cut-off T - 24 h: nothing to tune on before it, so the first point, fitted at T - 24 h.
    earlier = ev.evaluate_cutoff(con, T - DAY, 24.0, "m")
    assert earlier.hyperparameters["itemknn"]["params"] == ev.PEER_GRIDS["itemknn"][0]
    assert calls == {"ease": 1, "itemknn": 1}
    # Cut-off T tunes on the fits at T - 24 h: that one is not redone.
    ev.choose_hyperparameters(con, T, 24.0)
    grid = {m: len(ev.PEER_GRIDS[m]) for m in calls}
    assert calls == grid
    ev.choose_hyperparameters(con, T, 24.0)
    assert calls == grid


# ---------------------------------------------------------------- new-visitor list, per-user values


NEW_USER_DDL = """
create table new_user_recommendations (
    as_of timestamp, model_id varchar, rank integer, item_id varchar, score double,
    ranker_version varchar
)
"""


def _new_user_list(con, as_of, items, model_id="m"):
    for rank, item in enumerate(items, start=1):
        con.execute(
            "insert into new_user_recommendations values (?, ?, ?, ?, 1.0, 'v1')",
            [as_of, model_id, rank, item],
        )


def test_users_without_a_personal_list_get_the_new_visitor_list_in_force(con):
    _history(con)
    _recommend(con, "u1", T - DAY, ["d"])
    users = ["u1", "u2", "u8"]
    assert ev.model_lists(con, T, "m", users) == {"u1": ["d"]}  # no table: as before
    con.execute(NEW_USER_DDL)
    _new_user_list(con, T - 2 * DAY, ["p", "q"])  # superseded
    _new_user_list(con, T - DAY, ["a", "c", "z"][::-1])  # in force: z, c, a
    _new_user_list(con, T + HOUR, ["q"])  # after T
    _new_user_list(con, T - HOUR, ["q"], model_id="other")  # another model
    lists = ev.model_lists(con, T, "m", users)
    assert lists == {
        "u1": ["d"],  # a personal list wins
        "u2": ["z", "c"],  # bought a before T
        "u8": ["z", "c", "a"],  # never seen
    }
    _event(con, "f1", "u8", "c", 2 * HOUR)
    rows = ev.evaluate_as_of(con, T, 24.0, "m", ks=(10,))
    assert _rows_by_key(rows, "all")[("model", "hit_rate", 10)] == 1.0


def test_evaluate_cutoff_gives_per_user_values_behind_the_means(con):
    for item in "abcdz":
        add_item(con, item, f"item {item}")
    _history(con)
    _recommend(con, "u1", T - DAY, ["d", "z"])
    _event(con, "f1", "u1", "z", 2 * HOUR)
    _event(con, "f2", "u2", "c", 2 * HOUR)
    _event(con, "f3", "u8", "c", 2 * HOUR)
    found = ev.evaluate_cutoff(con, T, 24.0, "m")
    assert found.users == {"known": ["u1", "u2"], "all": ["u1", "u2", "u8"]}
    assert found.per_user["known"]["model"][("ndcg", 10)] == pytest.approx(
        [1 / math.log2(3), 0.0]
    )
    assert found.per_user["all"]["model"][("recall", 20)] == [1.0, 0.0, 0.0]
    means = {(r["population"], r["method"], r["metric"], r["k"]): r["value"] for r in found.rows}
    for population, methods in found.per_user.items():
        for method, values in methods.items():
            for (metric, k), per_user in values.items():
                assert len(per_user) == len(found.users[population])
                assert sum(per_user) / len(per_user) == pytest.approx(
                    means[(population, method, metric, k)]
                )
    assert set(found.hyperparameters) == set(ev.PEERS)
    assert {r["method"] for r in found.rows} == set(ev.METHODS)


# ---------------------------------------------------------------- eval: what a rerun reuses


def _eval_settings(tmp_path, model="m"):
    import dataclasses

    from interest_pipeline.eval_cli import scratch_settings

    return dataclasses.replace(scratch_settings(tmp_path, tmp_path / "landing"), model=model)


def _evaluated(found):
    """What a report is made of, per cut-off, as text: equal text is equal bytes in the report."""
    return [
        repr((c.as_of, c.rows, c.users, c.per_user, c.hyperparameters, c.own_events,
              c.list_ages))
        for c in found
    ]


def test_a_rerun_reads_the_baselines_of_each_cut_off_and_reports_the_same(
    con, tmp_path, monkeypatch
):
    from interest_pipeline import embeddings, eval_cli

    _tuning_history(con, "c")
    _event(con, "late", "z", "b", 2 * HOUR)
    _event(con, "late2", "w2", "b", 30 * HOUR)
    model_id = embeddings.resolve_model("m")[0]
    _recommend(con, "z", T - DAY, ["b", "c"], model_id)
    con.close()
    settings = _eval_settings(tmp_path)
    eval_cli._write_state(tmp_path, {"data": {"fingerprint": "one"}})
    times = [T - DAY, T, T + DAY]
    calls = _count_peer_fits(monkeypatch)
    computed = eval_cli.evaluate_cutoffs(settings, times, 24.0, tmp_path)
    assert calls["ease"] > 0 and calls["itemknn"] > 0
    stored = sorted((tmp_path / "baselines").glob("*/*.pkl"))
    assert len(stored) == len(times)

    calls = _count_peer_fits(monkeypatch)
    monkeypatch.setattr(ev, "_history", lambda *a: pytest.fail("history built on a rerun"))
    again = eval_cli.evaluate_cutoffs(settings, times, 24.0, tmp_path)
    assert calls == {"ease": 0, "itemknn": 0}
    assert _evaluated(again) == _evaluated(computed)
    assert any(r["value"] for c in again for r in c.rows if r["method"] == "ease")
    # And the evaluation table of the rerun holds the same rows.
    from interest_pipeline.warehouse import open_warehouse

    with open_warehouse(settings.warehouse_path) as check:
        recorded = check.execute(
            "select interval_end, population, method, metric, k, value, users_evaluated "
            "from evaluation order by all"
        ).fetchall()
    expected = sorted(
        (c.as_of, r["population"], r["method"], r["metric"], r["k"], r["value"],
         r["users_evaluated"])
        for c in computed for r in c.rows
    )
    assert recorded == expected


def test_baselines_of_other_data_are_not_reused(con, tmp_path, monkeypatch):
    from interest_pipeline import eval_cli

    _tuning_history(con, "c")
    con.close()
    settings = _eval_settings(tmp_path)
    eval_cli._write_state(tmp_path, {"data": {"fingerprint": "one"}})
    first = eval_cli.evaluate_cutoffs(settings, [T], 24.0, tmp_path)
    old = list((tmp_path / "baselines").iterdir())
    eval_cli._write_state(tmp_path, {"data": {"fingerprint": "two"}})
    calls = _count_peer_fits(monkeypatch)
    second = eval_cli.evaluate_cutoffs(settings, [T], 24.0, tmp_path)
    assert calls["ease"] > 0 and calls["itemknn"] > 0
    assert _evaluated(second) == _evaluated(first)  # same warehouse here, so the same numbers
    assert not any(folder.exists() for folder in old)  # the stale folder is removed


def test_kept_baselines_are_keyed_by_everything_they_depend_on(con, tmp_path):
    from interest_pipeline import eval_cli

    _tuning_history(con, "c")
    _event(con, "soon", "w1", "c", 2 * HOUR)  # relevant at T
    store = eval_cli.BaselineStore(tmp_path, {"fingerprint": "one"})

    def key(as_of=T, horizon_hours=24.0, ks=ev.KS, peers=True):
        return store.key(con, as_of, horizon_hours, ks, peers)

    store.put(key(), "kept")
    assert store.get(key()) == "kept"
    others = [key(as_of=T + HOUR), key(horizon_hours=12.0), key(ks=(10, 50)), key(peers=False)]
    _event(con, "after", "u9", "late", 30 * HOUR)  # lands after T + 24 h: not read
    assert store.get(key()) == "kept"
    # The same data key over marts rebuilt otherwise (other dbt code or settings): a row
    # before T + 24 h has another weight.
    con.execute("update user_item_interactions set weight = -3.0 where event_id = 'soon'")
    others.append(key())
    assert [store.get(k) for k in others] == [None] * len(others)


# A tiny warehouse the pipeline's fold, training and recommend run on, as run_pipeline drives
# them; ingest, dbt and embed are stubbed (the marts and embeddings are made by hand).
PIPELINE_START = datetime(2024, 3, 1)
PIPELINE_END = PIPELINE_START + 2 * DAY


def _pipeline_warehouse(con, fake_encoder, model_id):
    from interest_pipeline.embeddings import embed_new_texts
    from tests.builders import add_follow

    titles = {
        "m1": "space adventure robots", "m2": "space adventure aliens", "m3": "space robots war",
        "m4": "romantic comedy paris", "m5": "romantic drama", "m6": "robots in paris",
    }
    for item, title in titles.items():
        add_item(con, item, title)
    hours = []
    for n, (user, item, hour) in enumerate([
        ("u1", "m1", 3), ("u2", "m4", 3), ("u1", "m2", 9), ("u3", "m3", 20), ("u2", "m5", 27),
        ("u3", "m6", 30), ("u1", "m4", 40), ("u4", "m1", 40),
    ]):
        start = PIPELINE_START + hour * HOUR
        add_event(con, f"e{n}", user, "view", start + 10 * timedelta(minutes=1), start,
                  item_id=item)
        hours.append(start)
    add_follow(con, "f1", "u4", "u1", PIPELINE_START + 30 * HOUR, PIPELINE_START + 30 * HOUR)
    hours.append(PIPELINE_START + 30 * HOUR)
    embed_new_texts(con, model_id, lambda: fake_encoder, PIPELINE_START, PIPELINE_END)
    return sorted(set(hours))


def _pipeline_outputs(path) -> dict[str, list[tuple]]:
    from interest_pipeline.warehouse import open_warehouse

    with open_warehouse(path) as con:
        tables = [r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main' "
            "and table_name in ('recommendations', 'new_user_recommendations', "
            "'user_interest_vectors', 'user_social_vectors')"
        ).fetchall()]
        return {t: table_contents(con, t) for t in sorted(tables)}


def test_a_rescore_of_the_scoring_alone_does_not_fold_and_gives_a_full_rescores_results(
    con, tmp_path, monkeypatch, fake_encoder, caplog
):
    import dataclasses
    import json

    from interest_pipeline import embeddings, eval_cli, stages

    settings = _eval_settings(tmp_path, model="fake")
    hours = _pipeline_warehouse(con, fake_encoder, embeddings.resolve_model("fake")[0])
    con.close()
    monkeypatch.setattr(eval_cli, "busy_hours", lambda *a: hours)
    monkeypatch.setattr(stages, "ingest_landing_partition", lambda *a: None)
    monkeypatch.setattr(stages, "embed_new_texts", lambda *a: None)
    monkeypatch.setattr(eval_cli._InProcessDbt, "run", lambda *a: None)
    folds = []
    fold = eval_cli._fold
    monkeypatch.setattr(
        eval_cli, "_fold", lambda s, c, a, b: (folds.append(b), fold(s, c, a, b))
    )

    caplog.set_level("INFO", logger="interest_pipeline.catalogue_stats")
    cold = eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert cold["hours_folded"] == cold["hours_scored"] == len(folds) > 0
    cold_scans = caplog.text.count("from a scan")
    caplog.clear()
    first = _pipeline_outputs(settings.warehouse_path)
    assert first["user_interest_vectors"] and first["user_social_vectors"]

    # A scoring change, not the fold's: content similarity in place of popularity.
    monkeypatch.setenv("INTEREST_SCORE_CONTENT_WEIGHT", "1")
    monkeypatch.setenv("INTEREST_SCORE_POPULARITY_WEIGHT", "0")
    folds.clear()
    rescored = eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert rescored["hours_scored"] == cold["hours_scored"]
    assert rescored["hours_folded"] == 0 and folds == []
    # The statistics state was forgotten and rebuilt at the first hour, then advanced: hours
    # are not computed from scans of history (only the training cut-offs are, as cold).
    assert caplog.text.count("from a scan") == cold_scans
    skipped = _pipeline_outputs(settings.warehouse_path)
    assert skipped["user_interest_vectors"] == first["user_interest_vectors"]
    assert skipped["recommendations"] != first["recommendations"]  # re-scored all the same

    # An older state, without the fold key: a rescore folds every hour, as it always did.
    state_path = tmp_path / "eval_state.json"
    state = json.loads(state_path.read_text())
    del state["fold"]
    state["scoring"] = None
    state_path.write_text(json.dumps(state))
    full = eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert full["hours_folded"] == full["hours_scored"] == len(folds) > 0
    assert _pipeline_outputs(settings.warehouse_path) == skipped

    # Another half-life is the fold's: it folds again.
    folds.clear()
    longer = dataclasses.replace(settings, half_life_hours=settings.half_life_hours * 2)
    eval_cli.run_pipeline(longer, PIPELINE_START, PIPELINE_END, tmp_path)
    assert len(folds) == full["hours_scored"]


def _stub_preparation(monkeypatch, hours):
    """run_pipeline over a warehouse made by hand: nothing to ingest, build or embed."""
    from interest_pipeline import eval_cli, stages

    monkeypatch.setattr(eval_cli, "busy_hours", lambda *a: hours)
    monkeypatch.setattr(stages, "ingest_landing_partition", lambda *a: None)
    monkeypatch.setattr(stages, "embed_new_texts", lambda *a: None)
    monkeypatch.setattr(eval_cli._InProcessDbt, "run", lambda *a: None)


def _in_force(path, model_id, cutoffs, horizon):
    """Per cut-off, the lists an evaluation reads and their ages (what its report is made of)."""
    from interest_pipeline.warehouse import open_warehouse

    with open_warehouse(path) as c:
        out = {}
        for t in cutoffs:
            users = sorted(ev.evaluated_users(c, t, horizon))
            out[t] = (ev.model_lists(c, t, model_id, users),
                      ev.list_ages_hours(c, t, model_id, users))
        return out


def test_a_rescore_for_cut_offs_writes_only_the_lists_they_read_and_reads_the_same(
    con, tmp_path, monkeypatch, fake_encoder
):
    import dataclasses

    from interest_pipeline import embeddings, eval_cli

    # One evidence event: a user whose latest event is a cancellation has no taste, no list.
    settings = dataclasses.replace(_eval_settings(tmp_path, model="fake"), evidence_events=1)
    model_id = embeddings.resolve_model("fake")[0]
    hours = _pipeline_warehouse(con, fake_encoder, model_id)
    # u5 views m2 at 05:00 and cancels a purchase at 22:00: due a list at 23:00 (new version)
    # and 24:00 (the daily refresh), both empty, so at the cut-off 24:00 the list in force is
    # the one of 06:00. They view m6 at 44:00: evaluated at the cut-off 24:00 alone.
    for name, kind, item, hour, weight in (
        ("c1", "view", "m2", 5, 1.0), ("c2", "purchase", "m3", 22, -3.0),
        ("c3", "view", "m6", 44, 1.0),
    ):
        start = PIPELINE_START + hour * HOUR
        add_event(con, name, "u5", kind, start + 5 * timedelta(minutes=1), start,
                  item_id=item, weight=weight)
        hours.append(start)
    hours = sorted(set(hours))
    con.close()
    _stub_preparation(monkeypatch, hours)
    cutoffs = eval_cli.cutoffs(PIPELINE_START + 12 * HOUR, PIPELINE_END, 6.0, 24.0)
    cold = eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)

    monkeypatch.setenv("INTEREST_SCORE_CONTENT_WEIGHT", "1")
    monkeypatch.setenv("INTEREST_SCORE_POPULARITY_WEIGHT", "0")
    targeted = eval_cli.run_pipeline(
        settings, PIPELINE_START, PIPELINE_END, tmp_path, (cutoffs, 24.0)
    )
    read = _in_force(settings.warehouse_path, model_id, cutoffs, 24.0)
    assert 0 < targeted["lists_written"] < cold["lists_written"]
    # The same cut-offs again: nothing to do; other cut-offs: their lists are written.
    again = eval_cli.run_pipeline(
        settings, PIPELINE_START, PIPELINE_END, tmp_path, (cutoffs, 24.0)
    )
    assert again["hours_scored"] == 0
    assert eval_cli.run_pipeline(
        settings, PIPELINE_START, PIPELINE_END, tmp_path, (cutoffs[1:], 24.0)
    )["hours_scored"] == targeted["hours_scored"]

    # Every list, as the DAG writes them (a targeted state does not serve this run).
    full = eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert full["lists_written"] == cold["lists_written"]
    assert read == _in_force(settings.warehouse_path, model_id, cutoffs, 24.0)
    u5 = {t: lists["u5"] for t, (lists, _) in read.items() if "u5" in lists}
    assert list(u5) == [PIPELINE_START + 24 * HOUR] and u5[PIPELINE_START + 24 * HOUR]
    # At 24:00 the lists of 23:00 and 24:00 are empty: the one in force is 06:00's.
    from interest_pipeline.warehouse import open_warehouse

    with open_warehouse(settings.warehouse_path) as c:
        written = [r[0] for r in c.execute(
            "select distinct as_of from recommendations where user_id = 'u5' and as_of <= ? "
            "order by 1", [PIPELINE_START + 24 * HOUR],
        ).fetchall()]
    assert written == [PIPELINE_START + 6 * HOUR]

    # A first run that knows its cut-offs (no state: every hour prepared, folded and trained)
    # writes the same few lists.
    (tmp_path / "eval_state.json").unlink()
    first = eval_cli.run_pipeline(
        settings, PIPELINE_START, PIPELINE_END, tmp_path, (cutoffs, 24.0)
    )
    assert first["hours_folded"] == first["hours_scored"] == targeted["hours_scored"]
    assert first["lists_written"] == targeted["lists_written"]
    assert _in_force(settings.warehouse_path, model_id, cutoffs, 24.0) == read


def _rankers(path) -> list[tuple]:
    from interest_pipeline.warehouse import open_warehouse

    with open_warehouse(path) as c:
        return c.execute("select * exclude (fitted_at) from rankers order by as_of").fetchall()


def test_a_rescore_that_leaves_the_fit_alone_keeps_the_rankers(
    con, tmp_path, monkeypatch, fake_encoder
):
    from interest_pipeline import embeddings, eval_cli, stages

    settings = _eval_settings(tmp_path, model="fake")
    model_id = embeddings.resolve_model("fake")[0]
    hours = _pipeline_warehouse(con, fake_encoder, model_id)
    con.close()
    _stub_preparation(monkeypatch, hours)
    fits = []
    train = stages.train_ranker
    monkeypatch.setattr(
        stages, "train_ranker", lambda *a, **k: (fits.append(a[1]), train(*a, **k))[1]
    )
    eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert fits

    # Where the new item goes in a list is not the fit's: the rankers are kept.
    monkeypatch.setenv("INTEREST_NEW_ITEM_RANK", "1")
    fits.clear()
    kept = eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert kept["hours_scored"] > 0 and fits == []
    outputs = _pipeline_outputs(settings.warehouse_path)
    kept_rankers = _rankers(settings.warehouse_path)
    # The same with every ranker fitted again (an older state, without the training key).
    import json

    state_path = tmp_path / "eval_state.json"
    state = json.loads(state_path.read_text())
    del state["training"]
    state["scoring"] = None
    state_path.write_text(json.dumps(state))
    eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert fits
    assert _pipeline_outputs(settings.warehouse_path) == outputs
    assert _rankers(settings.warehouse_path) == kept_rankers

    # A change the fit reads (a scoring weight's default) fits again.
    fits.clear()
    monkeypatch.setenv("INTEREST_SCORE_CONTENT_WEIGHT", "1")
    eval_cli.run_pipeline(settings, PIPELINE_START, PIPELINE_END, tmp_path)
    assert fits
