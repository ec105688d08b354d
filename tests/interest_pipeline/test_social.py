"""The social dimension on a small hand-built graph: follow, unfollow, a followee's change
reaching their followers, time travel across an unfollow, and a user with only follows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from interest_pipeline.embeddings import embed_new_texts
from interest_pipeline.evidence import TRENDING_EVIDENCE
from interest_pipeline.recommendations import ScoringConfig, write_recommendations
from interest_pipeline.social import follows_as_of, social_signal
from interest_pipeline.user_vectors import update_user_vectors, vector_as_of
from tests.builders import add_event, add_follow, add_item

H = [datetime(2024, 3, 1, 10) + timedelta(hours=i) for i in range(4)]
# The social signal alone, so the lists show exactly what it does.
SOCIAL_ONLY = {"social": 1.0}


def _catalogue(con) -> None:
    for item_id, title in [("x", "red lamp"), ("y", "blue lamp"), ("z", "red chair")]:
        add_item(con, item_id, title)


def _use_weights(con, weights: dict[str, float]) -> None:
    """A ranker in force from the start with these weights (what a daily fit would adopt)."""
    from interest_pipeline.ranker import RANKERS_DDL

    con.execute(RANKERS_DDL)
    con.execute("delete from rankers")
    con.execute(
        "insert into rankers values ('test', 'fake', ?, ?, 168, false, 'test', 0, 0, '{}', "
        "now()::timestamp)",
        [H[0], json.dumps(weights)],
    )


def _hour(con, fake_encoder, i: int) -> None:
    """Fold and recommend hour i."""
    embed_new_texts(con, "fake", lambda: fake_encoder, H[i])
    update_user_vectors(con, "fake", H[i], H[i] + timedelta(hours=1), 24.0)
    write_recommendations(
        con, "fake", H[i], H[i] + timedelta(hours=1), 3, 24.0, 100, ScoringConfig()
    )


def _list(con, user: str, as_of: datetime) -> list[str]:
    return [r[0] for r in con.execute(
        "select item_id from recommendations where user_id = ? and as_of = ? order by rank",
        [user, as_of],
    ).fetchall()]


def test_the_graph_as_of_a_time_follows_follows_and_unfollows(con):
    add_follow(con, "f1", "u", "a", H[0], H[0])
    add_follow(con, "f2", "u", "b", H[0], H[0])
    add_follow(con, "f3", "u", "a", H[2], H[2], event_type="unfollow")
    add_follow(con, "f4", "v", "v", H[0], H[0])  # following oneself is no edge

    assert follows_as_of(con, H[0]) == [("u", "a"), ("u", "b")]
    assert follows_as_of(con, H[1]) == [("u", "a"), ("u", "b")]
    assert follows_as_of(con, H[2]) == [("u", "b")]
    # following again later restores the edge
    add_follow(con, "f5", "u", "a", H[3], H[3])
    assert follows_as_of(con, H[3]) == [("u", "a"), ("u", "b")]


def test_a_user_with_only_follows_gets_what_they_follow_engage_with(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "a", "click", H[0], H[0], item_id="x")
    add_event(con, "e2", "a", "click", H[0], H[0], item_id="y")
    add_event(con, "e3", "b", "click", H[0], H[0], item_id="x")
    add_follow(con, "f1", "u", "a", H[0], H[0])
    add_follow(con, "f2", "u", "b", H[0], H[0])

    _use_weights(con, SOCIAL_ONLY)
    _hour(con, fake_encoder, 0)

    assert _list(con, "u", H[1]) == ["x", "y"]  # two people engaged with x, one with y
    (evidence,) = con.execute(
        "select evidence from recommendations where user_id = 'u' and item_id = 'x'"
    ).fetchone()
    first = json.loads(evidence)[0]
    assert first["event_type"] == "social" and first["people"] == 2
    assert first["text"] == "2 people you follow engaged with it"


def test_a_user_with_only_follows_gets_the_trending_order_moved_by_the_fitted_boost(
    con, fake_encoder, monkeypatch
):
    """Without a boost (no fit had such users, or ``social`` is ablated) the list is the
    new-visitor list; with the fitted boost, what the people u follows engaged with moves up."""
    _catalogue(con)
    for k, user in enumerate(["p1", "p2", "p3"]):  # x is popular with people u does not follow
        add_event(con, f"p{k}", user, "click", H[0], H[0], item_id="x")
    add_event(con, "a1", "a", "click", H[0], H[0], item_id="y")
    add_follow(con, "f1", "u", "a", H[0], H[0])

    _use_weights(con, SOCIAL_ONLY)  # a fit without a social_boost
    _hour(con, fake_encoder, 0)
    new_visitor = [r[0] for r in con.execute(
        "select item_id from new_user_recommendations where as_of = ? order by rank", [H[1]]
    ).fetchall()]
    assert _list(con, "u", H[1]) == new_visitor == ["x", "y"]

    _use_weights(con, {**SOCIAL_ONLY, "social_boost": 3.0})
    _hour(con, fake_encoder, 0)
    assert _list(con, "u", H[1]) == ["y", "x"]
    evidence = dict(con.execute(
        "select item_id, evidence from recommendations where user_id = 'u'"
    ).fetchall())
    assert json.loads(evidence["y"])[0]["text"] == "1 person you follow engaged with it"
    assert json.loads(evidence["x"]) == [TRENDING_EVIDENCE]  # nobody u follows: trending

    # The ablation without the social signal serves the new-visitor list again.
    monkeypatch.setenv("INTEREST_RANKER_FEATURES", "content,interests,popularity")
    _hour(con, fake_encoder, 0)
    assert _list(con, "u", H[1]) == ["x", "y"]


def test_a_followees_change_reaches_the_follower_and_an_unfollow_takes_it_back(
    con, fake_encoder
):
    _catalogue(con)
    add_event(con, "e1", "u", "click", H[0], H[0], item_id="x")
    add_follow(con, "f1", "u", "a", H[0], H[0])
    _use_weights(con, SOCIAL_ONLY)
    _hour(con, fake_encoder, 0)
    before = _list(con, "u", H[1])

    # a engages with z an hour later: u did nothing, but is re-scored with z in the list.
    add_event(con, "e2", "a", "click", H[1], H[1], item_id="z")
    _hour(con, fake_encoder, 1)
    assert before[0] != "z" and _list(con, "u", H[2])[0] == "z"

    # u unfollows a: re-scored at once, a's items no longer carry a social signal.
    add_follow(con, "f2", "u", "a", H[2], H[2], event_type="unfollow")
    _hour(con, fake_encoder, 2)
    after = con.execute(
        "select evidence from recommendations where user_id = 'u' and as_of = ?", [H[3]]
    ).fetchall()
    assert after  # re-scored because of the unfollow
    assert all(e["event_type"] != "social" for (ev,) in after for e in json.loads(ev))
    # time travel: the list in force at H[2] still shows the social item
    assert _list(con, "u", H[2])[0] == "z"


def test_without_follows_the_social_weight_changes_nothing(con, fake_encoder):
    """Retail and MovieLens have no follows: their lists are the same whatever the weight."""
    from interest_pipeline.ranker import default_weights

    _catalogue(con)
    add_event(con, "e1", "u", "click", H[0], H[0], item_id="x")
    add_event(con, "e2", "w", "click", H[0], H[0], item_id="y")
    add_event(con, "e3", "w", "click", H[0], H[0], item_id="x")
    _hour(con, fake_encoder, 0)
    lists = con.execute(
        "select * exclude (ranker_version) from recommendations order by all"
    ).fetchall()
    con.execute("delete from recommendations")
    _use_weights(
        con, {**default_weights(ScoringConfig()), "social": 5.0, "social_taste": 5.0}
    )
    _hour(con, fake_encoder, 0)
    assert lists and con.execute(
        "select * exclude (ranker_version) from recommendations order by all"
    ).fetchall() == lists


def test_the_profile_names_whom_the_user_follows_as_of_the_version(con, capsys):
    from interest_pipeline import cli

    add_follow(con, "f1", "u", "a", H[0], H[0])
    add_follow(con, "f2", "u", "b", H[0], H[0])
    add_follow(con, "f3", "w", "a", H[0], H[0])
    add_follow(con, "f4", "u", "a", H[1], H[1], event_type="unfollow")
    # what describe_profile reads for the version as of H[1] and as of H[2]
    assert follows_as_of(con, H[0], "u") == [("u", "a"), ("u", "b")]
    assert follows_as_of(con, H[1], "u") == [("u", "b")]

    cli.print_profile({
        "user_id": "u", "model_id": "fake", "as_of": H[2], "event_count": 1,
        "events_in_interval": 0, "last_event_at": H[0], "nearest_items": [], "themes": [],
        "nearest_texts": [], "follows": ["b"],
    })
    assert "follows 1 person: b" in capsys.readouterr().out


def _social_rows(con, user: str) -> list[tuple]:
    return con.execute(
        "select as_of, vector, followees from user_social_vectors where user_id = ? "
        "order by as_of",
        [user],
    ).fetchall()


def _social_as_of(con, user: str, as_of: datetime):
    import pyarrow as pa

    from interest_pipeline.social import social_vectors_as_of

    con.register("_who", pa.table({"user_id": [user]}))
    try:
        return social_vectors_as_of(con, "fake", as_of, "_who").get(user)
    finally:
        con.unregister("_who")


def _unit(v):
    import numpy as np

    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_the_social_vector_is_the_decayed_mean_of_the_followees_vectors(con, fake_encoder):
    """Follow, a followee's change reaching the follower, unfollow, time travel, rerun."""
    import numpy as np

    _catalogue(con)
    add_event(con, "e1", "a", "click", H[0], H[0], item_id="x")
    add_event(con, "e2", "b", "click", H[0], H[0], item_id="y")
    add_follow(con, "f1", "u", "a", H[0], H[0])
    add_follow(con, "f2", "u", "b", H[0], H[0])
    _hour(con, fake_encoder, 0)

    def vec(user, as_of):
        return np.asarray(vector_as_of(con, user, as_of, "fake")[1], dtype=np.float64)

    # Both followees were last active at the same time: equal weights.
    (as_of, v, n), = _social_rows(con, "u")
    assert (as_of, n) == (H[1], 2)
    np.testing.assert_allclose(v, _unit(vec("a", H[1]) + vec("b", H[1])), atol=1e-6)
    assert _social_rows(con, "a") == [] and _social_rows(con, "b") == []  # they follow nobody

    # a engages with z an hour later; u did nothing, yet u's social side moves towards a, who
    # now counts twice as much as b (24 h half-life: b's latest event is an hour older).
    add_event(con, "e3", "a", "click", H[1] + timedelta(minutes=30), H[1], item_id="z")
    _hour(con, fake_encoder, 1)
    as_of, v, n = _social_rows(con, "u")[-1]
    age_a, age_b = 0.5, 2.0
    expected = _unit(2 ** (-age_a / 24) * vec("a", H[2]) + 2 ** (-age_b / 24) * vec("b", H[2]))
    assert (as_of, n) == (H[2], 2)
    np.testing.assert_allclose(v, expected, atol=1e-6)
    rerun_before = _social_rows(con, "u")
    _hour(con, fake_encoder, 1)  # a rerun of the hour writes the same rows
    assert _social_rows(con, "u") == rerun_before

    # An hour in which nobody u follows changes writes no social version for u.
    _hour(con, fake_encoder, 2)
    assert [r[0] for r in _social_rows(con, "u")] == [H[1], H[2]]

    # u unfollows a: from then on the social side is b's alone; before, it was both.
    add_follow(con, "f3", "u", "a", H[3], H[3], event_type="unfollow")
    _hour(con, fake_encoder, 3)
    as_of, v, n = _social_rows(con, "u")[-1]
    assert (as_of, n) == (H[3] + timedelta(hours=1), 1)
    np.testing.assert_allclose(v, vec("b", H[3]), atol=1e-6)
    then, n_then = _social_as_of(con, "u", H[3])
    np.testing.assert_allclose(then, expected, atol=1e-6)
    assert n_then == 2
    assert _social_as_of(con, "u", H[1] - timedelta(minutes=1)) is None  # before any follow


def test_unfollowing_everyone_leaves_no_social_side(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "a", "click", H[0], H[0], item_id="x")
    add_follow(con, "f1", "u", "a", H[0], H[0])
    _hour(con, fake_encoder, 0)
    assert _social_as_of(con, "u", H[1])[1] == 1
    add_follow(con, "f2", "u", "a", H[1], H[1], event_type="unfollow")
    _hour(con, fake_encoder, 1)
    assert _social_rows(con, "u")[-1] == (H[2], None, 0)  # a version saying "none now"
    assert _social_as_of(con, "u", H[2]) is None


def test_the_social_taste_feature_ranks_what_the_followees_are_into(con, fake_encoder):
    """With only the social_taste weight, u (who follows a lamp lover) is shown lamps first,
    though nobody u follows engaged with the blue lamp itself."""
    for item_id, title in [("shade", "lamp shade"), ("base", "lamp base"),
                           ("hose", "garden hose"), ("rake", "garden rake"),
                           ("light", "garden lamp hose")]:
        add_item(con, item_id, title)
    # (u's own item shares a word with each: only items u's interest points towards qualify)
    add_event(con, "e1", "u", "click", H[0], H[0], item_id="light")
    add_event(con, "e2", "a", "click", H[0], H[0], item_id="shade")
    add_follow(con, "f1", "u", "a", H[0], H[0])
    _use_weights(con, {"social_taste": 1.0})
    _hour(con, fake_encoder, 0)
    assert _list(con, "u", H[1])[:2] == ["shade", "base"]
    _use_weights(con, {"content": 1.0})  # the user's own side alone: their garden things
    _hour(con, fake_encoder, 0)
    own = _list(con, "u", H[1])
    assert own[0] == "light" and "shade" not in own[:2]


def test_the_social_signal_counts_and_decays_each_users_followees_apart(con):
    """Per follower: each followee's latest engagement with an item decayed by its age,
    summed, scaled by that follower's best item; how many people is kept beside it."""
    import numpy as np
    import pyarrow as pa

    end = H[1]
    add_follow(con, "f1", "u", "a", H[0], H[0])
    add_follow(con, "f2", "u", "b", H[0], H[0])
    add_follow(con, "f3", "w", "b", H[0], H[0])
    con.register("_rec_users", pa.table({"user_id": ["u", "v", "w"]}))
    con.execute(
        "create temp table _rec_engaged (user_id varchar, j integer, last_event_at timestamp)"
    )
    con.execute(
        "insert into _rec_engaged values ('a', 2, ?), ('b', 2, ?), ('b', 0, ?)",
        [end, end - timedelta(hours=24), end],
    )

    signal = social_signal(con, H[0], end, 24.0, 3)

    # u: item 2 from a (1) and b a half-life ago (0.5), item 0 from b (1); best 1.5.
    np.testing.assert_allclose(signal.row("u"), [1 / 1.5, 0.0, 1.0])
    np.testing.assert_allclose(signal.row("w"), [1.0, 0.0, 0.5])
    assert "v" not in signal and not signal.row("v").any()  # follows nobody
    people, values = signal.at("u", np.array([0, 1, 2]))
    assert people.tolist() == [1, 0, 2]
    np.testing.assert_allclose(values, [1 / 1.5, 0.0, 1.0])


def test_a_users_social_features_are_those_of_their_history_group(con, fake_encoder):
    """A follower with fewer than FEW_OWN_EVENTS events of their own has the people they
    follow in the ``_few`` features, one with more in ``social`` and ``social_taste``, so the
    fit weighs the two apart. An event with both an item and a query is one event."""
    import numpy as np

    from interest_pipeline.recommendations import FEATURES, FEW_OWN_EVENTS, _Context

    _catalogue(con)
    add_event(con, "e0", "a", "click", H[0], H[0], item_id="x")
    add_event(con, "e1", "few", "search", H[0], H[0], item_id="y", query_text="lamp")
    add_event(con, "e2", "few", "click", H[0], H[0], item_id="z")
    for i in range(FEW_OWN_EVENTS):
        add_event(con, f"m{i}", "many", "click", H[0], H[0], item_id="y")
    add_follow(con, "f1", "few", "a", H[0], H[0])
    add_follow(con, "f2", "many", "a", H[0], H[0])
    embed_new_texts(con, "fake", lambda: fake_encoder, H[0])
    update_user_vectors(con, "fake", H[0], H[1], 24.0)

    users = ["few", "many"]
    ctx = _Context(con, "fake", users, H[0], H[1], 24.0, 100, ScoringConfig())
    assert [ctx.own_events(u) for u in users] == [2, FEW_OWN_EVENTS]
    n = len(ctx.item_ids)
    feats = ctx.block_features(users, np.zeros((2, n)), np.zeros((2, n)))
    col = {f: k for k, f in enumerate(FEATURES)}
    x = ctx.item_ids.tolist().index("x")
    mine, theirs = ("social_few", "social_taste_few"), ("social", "social_taste")
    for k, (has, lacks) in enumerate([(mine, theirs), (theirs, mine)]):
        assert feats[k, col[has[0]], x] == 1.0  # a engaged with x
        assert feats[k, col[has[1]]].any()
        assert not feats[k, [col[f] for f in lacks]].any()
