"""The fitted ranker: the fit itself, the training task's behaviour, and how the recommend
stage uses what it fitted (new-visitor list, daily refresh, ranker version on every row)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta

import numpy as np
import pytest

from interest_pipeline import ranker
from interest_pipeline.embeddings import embed_new_texts
from interest_pipeline.recommendations import (
    FEATURES,
    ScoringConfig,
    refresh_due,
    write_recommendations,
)
from interest_pipeline.user_vectors import update_user_vectors
from tests.builders import add_event, add_item

DAY0 = datetime(2024, 3, 1)
HOUR = timedelta(hours=1)
SMALL = ranker.RankerSettings(
    training_days=6, cutoff_every_hours=24, users_per_cutoff=50, min_training_users=5,
    validation_days=1,
)


def test_the_listwise_fit_learns_which_feature_predicts_the_relevant_item():
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(200):
        x = rng.random((30, 3))
        y = np.zeros(30)
        y[np.argmax(x[:, 1])] = 1.0  # feature 1 decides; 0 and 2 are noise
        xs.append(x)
        ys.append(y)
    w = ranker.fit_listwise(xs, ys)
    assert w[1] > 5 * abs(w[0]) and w[1] > 5 * abs(w[2])
    assert ranker.ndcg_on_candidates(w, xs, ys) > 0.9
    assert ranker.ndcg_on_candidates(np.array([1.0, 0.0, 0.0]), xs, ys) < 0.5


def test_the_fit_is_deterministic():
    rng = np.random.default_rng(1)
    xs = [rng.random((10, 4)) for _ in range(20)]
    ys = [np.eye(10)[i % 10] for i in range(20)]
    assert np.array_equal(ranker.fit_listwise(xs, ys), ranker.fit_listwise(xs, ys))


@pytest.mark.parametrize("seed", range(3))
def test_ndcg_of_all_users_at_once_equals_each_users_own(seed):
    """The stacked NDCG@10 of every user equals ranking each user's candidates alone (a
    stable sort: ties in candidate order), users with fewer than 10 candidates included."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(40):
        n = int(rng.integers(1, 30))
        xs.append(rng.integers(0, 3, (n, 3)) * 0.5)  # many ties
        y = (rng.random(n) < 0.2).astype(float)
        y[int(rng.integers(n))] = 1.0
        ys.append(y)
    w = rng.normal(size=3)
    discounts = 1.0 / np.log2(np.arange(2, 12))
    expected = []
    for x, y in zip(xs, ys, strict=True):
        order = np.argsort(-(x @ w), kind="stable")[:10]
        ideal = discounts[: min(int(y.sum()), 10)].sum()
        expected.append(float((y[order] * discounts[: len(order)]).sum() / ideal))
    assert ranker._Stacked(xs, ys).per_user(w) == pytest.approx(expected, abs=1e-12)


def test_ndcg_on_candidates_of_a_perfect_and_a_reversed_order():
    x = np.array([[3.0], [2.0], [1.0]])
    y = np.array([1.0, 0.0, 0.0])
    assert ranker.ndcg_on_candidates(np.array([1.0]), [x], [y]) == pytest.approx(1.0)
    assert ranker.ndcg_on_candidates(np.array([-1.0]), [x], [y]) == pytest.approx(0.5)


def test_the_fit_is_due_daily_at_midnight_only():
    s = ranker.RankerSettings()
    assert ranker.is_due(DAY0, s)
    assert not ranker.is_due(DAY0 + HOUR, s)
    assert ranker.is_due(DAY0 + 6 * HOUR, ranker.RankerSettings(every_hours=6))
    assert not ranker.is_due(DAY0, ranker.RankerSettings(enabled=False))


def _shop(con, fake_encoder, days: int = 8, users: int = 12) -> None:
    """A shop whose users keep buying the items that co-occur with what they bought: users
    u0..u5 buy from the 'red' family, u6..u11 from the 'blue' one, one item a day each, the
    families' items named alike."""
    for family in ("red", "blue"):
        for k in range(days + 2):
            add_item(con, f"{family}{k}", f"{family} thing number{k}")
    for day in range(days):
        at = DAY0 + timedelta(days=day, hours=10)
        for u in range(users):
            family = "red" if u < users // 2 else "blue"
            item = f"{family}{(day + u) % (days + 2)}"
            add_event(con, f"e{day}-{u}", f"u{u}", "purchase", at, at.replace(minute=0),
                      item_id=item, weight=3.0)
    embed_new_texts(con, "fake", lambda: fake_encoder, DAY0)
    hour = DAY0
    while hour < DAY0 + timedelta(days=days):
        update_user_vectors(con, "fake", hour, hour + HOUR, 168.0)
        hour += HOUR


def test_too_little_history_keeps_the_defaults_and_says_so(con, fake_encoder):
    _shop(con, fake_encoder, days=2)
    needs_more = dataclasses.replace(SMALL, min_training_users=50)  # 12 users at 1 cut-off
    result = ranker.train_ranker(con, "fake", DAY0 + timedelta(days=2), 168.0, 100,
                                 ScoringConfig(), needs_more)
    assert result["ranker_fallback"] is True
    row = con.execute("select fallback, reason, weights from rankers").fetchall()
    assert row[0][0] is True and "too little history" in row[0][1]
    assert json.loads(row[0][2]) == ranker.default_weights(ScoringConfig())


def test_a_fit_is_stored_versioned_and_in_force_from_its_time_on(con, fake_encoder):
    _shop(con, fake_encoder)
    fit_at = DAY0 + timedelta(days=8)
    result = ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    assert result["ranker_training_users"] >= SMALL.min_training_users
    ((version, weights, cutoffs, as_of),) = con.execute(
        "select ranker_version, weights, training_cutoffs, as_of from rankers"
    ).fetchall()
    assert version == result["ranker_version"] and as_of == fit_at
    assert set(json.loads(weights)) == set(FEATURES)
    # Training cut-offs leave the horizon after them inside the known history.
    assert cutoffs >= 1
    # A rerun at the same time replaces its row with the same version (idempotent).
    again = ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    assert again["ranker_version"] == version
    assert con.execute("select count(*) from rankers").fetchall() == [(1,)]
    # Before its time the defaults are in force; from it on, the fit.
    assert ranker.ranker_in_force(con, "fake", fit_at - HOUR, ScoringConfig()).version == "default"
    assert ranker.ranker_in_force(con, "fake", fit_at + HOUR, ScoringConfig()).version == version


def test_training_sees_nothing_after_its_own_time(con, fake_encoder):
    """A fit at T is the same whatever happened after T."""
    _shop(con, fake_encoder)
    fit_at = DAY0 + timedelta(days=6)
    first = ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    late = DAY0 + timedelta(days=7, hours=5)
    add_event(con, "late", "u0", "purchase", late, late.replace(minute=0), item_id="blue3",
              weight=3.0)
    second = ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    assert first == second


def test_every_row_names_its_ranker_and_new_visitors_get_the_trending_list(con, fake_encoder):
    _shop(con, fake_encoder)
    fit_at = DAY0 + timedelta(days=8)
    version = ranker.train_ranker(
        con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL
    )["ranker_version"]
    at = fit_at + timedelta(hours=10)
    add_event(con, "x", "u1", "purchase", at, at.replace(minute=0), item_id="red9", weight=3.0)
    start = at.replace(minute=0)
    update_user_vectors(con, "fake", start, start + HOUR, 168.0)
    write_recommendations(con, "fake", start, start + HOUR, 5, 168.0, 100)
    versions = con.execute("select distinct ranker_version from recommendations").fetchall()
    assert versions == [(version,)]
    new = con.execute(
        "select rank, item_id, ranker_version from new_user_recommendations "
        "where as_of = ? order by rank", [start + HOUR]
    ).fetchall()
    assert [r[0] for r in new] == [1, 2, 3, 4, 5]
    assert {r[2] for r in new} == {version}
    # Trending: the items most users bought most recently come first.
    ((top,),) = con.execute(
        "select item_id from new_user_recommendations where as_of = ? and rank = 1",
        [start + HOUR],
    ).fetchall()
    assert top in {f"red{k}" for k in range(10)} | {f"blue{k}" for k in range(10)}


def test_the_daily_refresh_rescores_the_weeks_active_users(con, fake_encoder):
    _shop(con, fake_encoder, days=3)
    midnight = DAY0 + timedelta(days=3)
    assert refresh_due(midnight) and not refresh_due(midnight + HOUR)
    # Nobody acted in the hour ending at midnight: only the refresh writes lists.
    counts = write_recommendations(con, "fake", midnight - HOUR, midnight, 3, 168.0, 100)
    assert counts["users_refreshed"] == 12
    users = con.execute(
        "select count(distinct user_id) from recommendations where as_of = ?", [midnight]
    ).fetchall()
    assert users == [(12,)]
    quiet = write_recommendations(con, "fake", midnight, midnight + HOUR, 3, 168.0, 100)
    assert quiet["users_refreshed"] == 0 and quiet["recommendations_written"] == 0


# --------------------------------------------------------------------------------------------
# The per-process memo of training cut-offs
# --------------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """The cut-offs whose examples are computed (not served from the memo), in call order;
    the memo starts empty."""
    monkeypatch.setattr(ranker, "_CUTOFF_CACHE", type(ranker._CUTOFF_CACHE)())
    calls: list[datetime] = []
    compute = ranker._cutoff_examples

    def counting(con, model_id, cutoff, *args):
        calls.append(cutoff)
        return compute(con, model_id, cutoff, *args)

    monkeypatch.setattr(ranker, "_cutoff_examples", counting)
    return calls


def _daily_fits(con, days: range, memo: bool) -> list[tuple]:
    """Fit at the midnights of ``days`` (memo=False: the memo cleared before every fit); the
    rows written, every column but the wall-clock ``fitted_at``."""
    for day in days:
        if not memo:
            ranker._CUTOFF_CACHE.clear()
        ranker.train_ranker(con, "fake", DAY0 + timedelta(days=day), 168.0, 100,
                            ScoringConfig(), SMALL)
    return con.execute(
        "select * exclude (fitted_at) from rankers order by as_of"
    ).fetchall()


def test_the_cutoff_memo_gives_the_same_rankers_with_fewer_computations(
    con, fake_encoder, counted
):
    _shop(con, fake_encoder, days=10)
    # First-time visitors, one a day: the trending half-life has new users to be chosen on.
    for day in range(1, 10):
        at = DAY0 + timedelta(days=day, hours=15)
        add_event(con, f"n{day}", f"new{day}", "purchase", at, at.replace(minute=0),
                  item_id=f"red{day % 3}", weight=3.0)
    days = range(6, 11)
    without = _daily_fits(con, days, memo=False)
    computed_without = list(counted)
    ranker._CUTOFF_CACHE.clear()
    counted.clear()
    with_memo = _daily_fits(con, days, memo=True)
    # Exactly the same rows: weights JSON, version digest, trending half-life, validation.
    assert with_memo == without
    assert len(with_memo) == len(days)
    validation = [json.loads(row[-1]) for row in with_memo]
    assert all(v["fitted_ndcg@10"] > 0 for v in validation)
    assert all(max(v["trending_ndcg@10_sum"].values()) > 0 for v in validation)
    # Each cut-off (days 1..9) computed once with the memo; without it, at every fit.
    assert sorted(counted) == sorted(set(computed_without))
    assert counted == sorted(set(counted)) == [DAY0 + timedelta(days=d) for d in range(1, 10)]
    assert len(computed_without) == 5 + 6 * (len(days) - 1)


def test_changed_data_at_a_memoized_cutoff_is_recomputed(con, fake_encoder, counted):
    _shop(con, fake_encoder, days=10)
    fit_at = DAY0 + timedelta(days=7)  # cut-offs at days 1..6, each reading up to T + 24 h
    ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    counted.clear()
    ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    assert counted == []  # all six from the memo
    # A late-arriving purchase in the hour starting at day 5, 10:00: read by the cut-offs at
    # days 5 (its relevant items) and 6 (its history), not by the earlier ones.
    late = DAY0 + timedelta(days=5, hours=10)
    add_event(con, "extra", "u0", "purchase", late, late, item_id="blue4", weight=3.0)
    ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    assert counted == [DAY0 + timedelta(days=5), DAY0 + timedelta(days=6)]
    memoized = con.execute("select * exclude (fitted_at) from rankers").fetchall()
    ranker._CUTOFF_CACHE.clear()
    ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    assert con.execute("select * exclude (fitted_at) from rankers").fetchall() == memoized
    # Another feature set (INTEREST_RANKER_FEATURES) is another computation too.
    counted.clear()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INTEREST_RANKER_FEATURES", "interests,popularity")
        ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    assert len(counted) == 6


# --------------------------------------------------------------------------------------------
# The social side: its weights chosen on top of the fit without it
# --------------------------------------------------------------------------------------------

NO_SOCIAL = ",".join(f for f in FEATURES if f not in ranker.SOCIAL_FEATURES)


def _shop_with_follows(con, fake_encoder, step: int = 1) -> None:
    """The shop, where user k follows user k + step. User k + 1 buys today what user k buys
    tomorrow, so following the next user predicts; user k + 6 buys from the other family, so
    following them misleads."""
    from tests.builders import add_follow

    for u in range(12):
        add_follow(con, f"f{u}", f"u{u}", f"u{(u + step) % 12}", DAY0, DAY0)
    _shop(con, fake_encoder)


def test_the_examples_without_the_social_side_are_those_of_a_run_without_it(
    con, fake_encoder, monkeypatch
):
    """The social decision compares against exactly what INTEREST_RANKER_FEATURES without the
    social features fits on: the same users, candidates and features."""
    _shop_with_follows(con, fake_encoder)
    # Few candidates per feature, so the social features' own are not all among the others'.
    monkeypatch.setattr(ranker, "CANDIDATES_PER_FEATURE", 2)
    cutoff = DAY0 + timedelta(days=5)
    full = ranker._cutoff(con, "fake", cutoff, SMALL, 168.0, 100, ScoringConfig())
    examples = ranker._Examples(list(full.x), list(full.y), [cutoff] * len(full.y),
                                list(full.core))
    assert ranker._has_social(examples)
    assert not all(core.all() for core in full.core)  # the social features add candidates
    core = ranker._without_social(examples)
    monkeypatch.setenv("INTEREST_RANKER_FEATURES", NO_SOCIAL)
    ablated = ranker._cutoff(con, "fake", cutoff, SMALL, 168.0, 100, ScoringConfig())
    assert len(core.x) == len(ablated.x) > 0
    for mine, theirs in zip(core.x, ablated.x, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(core.y, ablated.y, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def _fit_with_and_without_social(con, monkeypatch) -> tuple[dict, dict, dict]:
    """(weights, validation) of a fit, and the weights of the same fit without the social
    features (INTEREST_RANKER_FEATURES)."""
    fit_at = DAY0 + timedelta(days=8)
    ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    ((weights, validation),) = con.execute("select weights, validation from rankers").fetchall()
    with monkeypatch.context() as env:
        env.setenv("INTEREST_RANKER_FEATURES", NO_SOCIAL)
        ranker.train_ranker(con, "fake", fit_at, 168.0, 100, ScoringConfig(), SMALL)
    ((ablated,),) = con.execute("select weights from rankers").fetchall()
    return json.loads(weights), json.loads(validation), json.loads(ablated)


def test_a_misleading_social_side_weighs_nothing(con, fake_encoder, monkeypatch):
    """Following someone of the other family misleads: the social features weigh 0, and the
    rest is the fit without them."""
    _shop_with_follows(con, fake_encoder, step=6)
    weights, validation, ablated = _fit_with_and_without_social(con, monkeypatch)
    assert validation["social"]["kept"] is False
    assert weights["social"] == weights["social_taste"] == 0.0
    assert weights == ablated


def test_a_social_side_that_predicts_is_added_to_the_fit_without_it(
    con, fake_encoder, monkeypatch
):
    """Following the user who buys today what you buy tomorrow predicts: the social weight is
    chosen above 0, and every other weight is the one a run without the social features
    fits (here a fit that beats poor defaults)."""
    _shop_with_follows(con, fake_encoder, step=1)
    poor = dict.fromkeys(FEATURES, 0.0) | {"popularity": -1.0}
    monkeypatch.setattr(ranker, "default_weights", lambda config: dict(poor))
    weights, validation, ablated = _fit_with_and_without_social(con, monkeypatch)
    assert validation["gain_95ci"][0] > 0  # fitted, not the defaults
    assert validation["social"]["kept"] is True and weights["social"] > 0
    others = [f for f in FEATURES if f not in ranker.SOCIAL_FEATURES]
    assert {f: weights[f] for f in others} == {f: ablated[f] for f in others}
    assert ablated["social"] == ablated["social_taste"] == 0.0


def _examples(
    social_points_at_relevant: list[bool], split: datetime, feature: str = "social"
) -> ranker._Examples:
    """Three candidates a user: popularity ranks an irrelevant one first; the social
    ``feature`` points at the relevant one (True) or at the other irrelevant one (False). One
    user per entry, the first half before ``split``, the rest after."""
    col = {f: k for k, f in enumerate(FEATURES)}
    out = ranker._Examples()
    half = len(social_points_at_relevant) // 2
    for i, hit in enumerate(social_points_at_relevant):
        x = np.zeros((3, len(FEATURES)))
        x[:, col["popularity"]] = [1.0, 0.6, 0.5]  # candidate 1 is the relevant one
        x[1 if hit else 2, col[feature]] = 1.0
        out.x.append(x)
        out.y.append(np.array([0.0, 1.0, 0.0]))
        out.cutoff.append(split - timedelta(days=1) if i < half else split + timedelta(days=1))
        out.core.append(np.array([True, True, False]))
    return out


def test_the_social_weight_is_chosen_on_the_earlier_cut_offs_and_checked_on_the_later():
    split = DAY0 + timedelta(days=5)
    core = dict.fromkeys(FEATURES, 0.0) | {"popularity": 1.0}
    # Predicts on both sides of the split: chosen, just strong enough to lift the relevant
    # candidate over the popular one.
    weights, details = ranker._social_side(_examples([True] * 40, split), core, split)
    group = details["social"]
    assert details["kept"] is True and group["held_out_gain_95ci"][0] > 0
    assert 0.4 < weights["social"] <= 1.0 and weights["popularity"] == 1.0
    # Predicts before the split and misleads after it: the held-out check drops it.
    weights, details = ranker._social_side(
        _examples([True] * 20 + [False] * 20, split), core, split
    )
    group = details["social"]
    assert group["train_shares"]["social"] > 0 and group["held_out_gain_95ci"][1] < 0
    assert details["kept"] is False and weights == core
    # Misleads everywhere: 0 is the best share.
    weights, details = ranker._social_side(_examples([False] * 40, split), core, split)
    assert details["social"]["train_shares"]["social"] == 0.0 and weights == core


def test_the_users_with_little_history_get_their_own_social_weight():
    """The people one follows predict for the users with little history of their own and
    mislead the others: the ``_few`` weight is chosen, the other stays 0, each group's choice
    checked on its own held-out users."""
    split = DAY0 + timedelta(days=5)
    core = dict.fromkeys(FEATURES, 0.0) | {"popularity": 1.0}
    few = _examples([True] * 40, split, feature="social_few")
    many = _examples([False] * 40, split)
    both = ranker._Examples(
        few.x + many.x, few.y + many.y, few.cutoff + many.cutoff, few.core + many.core
    )
    weights, details = ranker._social_side(both, core, split)
    assert details["social_few"]["kept"] is True and 0.4 < weights["social_few"] <= 1.0
    assert details["social"]["kept"] is False and weights["social"] == 0.0
    assert details["kept"] is True


def test_a_ranker_fitted_before_the_split_weighs_little_history_as_everyone():
    """A rankers row without the ``_few`` weights (written before they existed) keeps scoring
    every follower as it did; a row with them weighs the groups apart."""
    col = {f: k for k, f in enumerate(FEATURES)}
    old = ranker.Ranker("old", {"social": 0.2, "social_taste": 0.1}, 168.0)
    w = old.weight_vector()
    assert w[col["social_few"]] == 0.2 and w[col["social_taste_few"]] == 0.1
    new = ranker.Ranker("new", {"social": 0.2, "social_taste": 0.1, "social_few": 0.0}, 168.0)
    assert new.weight_vector()[col["social_few"]] == 0.0


def test_the_social_boost_is_the_best_one_only_when_it_wins_beyond_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 300)
    clear_win = {(24.0, b): base + (0.1 if b == 0.3 else 0.0) for b in ranker.SOCIAL_BOOSTS}
    boost, details = ranker._social_boost([clear_win], 24.0)
    assert boost == 0.3 and details["gain_95ci"][0] > 0 and details["users"] == 300
    # One user better off, the rest alike: the best mean, but not told from noise.
    lucky = {key: values.copy() for key, values in clear_win.items()}
    for b in ranker.SOCIAL_BOOSTS:
        lucky[(24.0, b)] = base.copy()
    lucky[(24.0, 1.0)][0] += 0.5
    assert ranker._social_boost([lucky], 24.0)[0] == 0.0
    # A tie keeps 0 (the new-visitor list): the smaller boost wins ties.
    tie = {(24.0, b): base for b in ranker.SOCIAL_BOOSTS}
    assert ranker._social_boost([tie], 24.0) == (0.0, {"users": 300, "ndcg@10": {
        f"{b:g}": round(float(base.mean()), 4) for b in ranker.SOCIAL_BOOSTS}})


def test_a_cut_off_ranks_the_users_who_only_follow_and_skips_them_when_nobody_follows(
    con, fake_encoder
):
    """The social boost is fitted on the users with follows and no taste of their own; a
    cut-off whose new users follow nobody has none to rank."""
    from interest_pipeline.evaluation import relevant_items
    from tests.builders import add_follow

    _shop(con, fake_encoder)
    cutoff = DAY0 + timedelta(days=5)
    later = cutoff + timedelta(hours=10)
    add_event(con, "n1", "newbie", "purchase", later, later.replace(minute=0),
              item_id="red3", weight=3.0)
    relevant = relevant_items(con, cutoff, SMALL.horizon_hours)
    assert "newbie" in relevant
    scope = ranker._Scope("fake", SMALL, 168.0, 100, ScoringConfig())
    assert ranker._follow_only_ndcg(con, scope, cutoff, relevant) is None
    add_follow(con, "fn", "newbie", "u3", DAY0, DAY0)
    ranked = ranker._follow_only_ndcg(con, scope, cutoff, relevant)
    assert ranked is not None
    assert {len(values) for values in ranked.values()} == {1}  # newbie, at every grid point
