from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pytest

from interest_pipeline.embeddings import embed_new_texts
from interest_pipeline.recommendations import (
    ScoringConfig,
    _top,
    _tops,
    scoring_config,
    write_recommendations,
)
from interest_pipeline.user_vectors import update_user_vectors
from tests.builders import add_event, add_item, table_contents

H0 = datetime(2024, 3, 1, 10)
H1 = H0 + timedelta(hours=1)


# The single-vector cosine ranking these tests were written for; the tuned defaults blend in
# more (tested below and in test_evaluation / the offline evaluation).
CONTENT_ONLY = ScoringConfig(
    content_weight=1.0, interests_weight=0.0, popularity_weight=0.0, cooccurrence_weight=0.0
)


def _run(con, fake_encoder, top_n=3, config=CONTENT_ONLY):
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    update_user_vectors(con, "fake", H0, H1, 24.0)
    return write_recommendations(con, "fake", H0, H1, top_n, 24.0, 100, config)


def _catalogue(con):
    for item_id, title in [
        ("m1", "space adventure robots"),
        ("m2", "space adventure aliens"),
        ("m3", "space robots war"),
        ("m4", "romantic comedy paris"),
        ("m5", "romantic drama"),
    ]:
        add_item(con, item_id, title)


def test_top_n_by_similarity_excluding_rated_and_bought_items(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "rate", H0, H0, item_id="m1", weight=3.0)
    add_event(con, "e2", "u1", "purchase", H0, H0, item_id="m3", weight=3.0)
    add_event(con, "e3", "u1", "view", H0, H0, item_id="m4", weight=0.1)  # viewed: still eligible
    counts = _run(con, fake_encoder, top_n=3)
    assert counts == {
        "recommendations_written": 3,
        "users_recommended": 1,
        "users_refreshed": 0,  # H0's end is not the daily refresh
        "ranker_version": "default",  # no ranker fitted yet
    }
    rows = con.execute(
        "select rank, item_id, score, model_id from recommendations where user_id = 'u1' "
        "order by rank"
    ).fetchall()
    items = [r[1] for r in rows]
    assert "m1" not in items and "m3" not in items
    assert items[0] == "m2"  # shares "space adventure" with what u1 liked
    assert [r[0] for r in rows] == [1, 2, 3]
    scores = [r[2] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r[3] for r in rows} == {"fake"}


def test_evidence_names_the_events_behind_an_item(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "rate", H0, H0, item_id="m1", weight=3.0)
    add_event(con, "e2", "u1", "search", H0, H0, query_text="aliens", weight=1.0)
    _run(con, fake_encoder)
    (evidence,) = con.execute(
        "select evidence from recommendations where user_id = 'u1' and item_id = 'm2'"
    ).fetchone()
    evidence = json.loads(evidence)
    texts = {e["text"] for e in evidence}
    assert texts == {"space adventure robots", "aliens"}
    assert all(e["contribution"] > 0 for e in evidence)
    kinds = {e["event_type"]: e["item_id"] for e in evidence}
    assert kinds == {"rate": "m1", "search": None}


def test_rerun_replaces_the_interval(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "rate", H0, H0, item_id="m1", weight=3.0)
    add_event(con, "e2", "u2", "search", H0, H0, query_text="romantic paris")
    _run(con, fake_encoder)
    before = table_contents(con, "recommendations")
    assert len(before) == 4  # u1: m2, m3; u2: m4, m5 (only positive scores qualify)
    write_recommendations(con, "fake", H0, H1, 3, 24.0, 100, CONTENT_ONLY)
    assert table_contents(con, "recommendations") == before


def test_a_user_known_only_from_a_cancellation_gets_no_recommendations(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "purchase", H0, H0, item_id="m1", weight=-3.0)
    assert _run(con, fake_encoder)["recommendations_written"] == 0
    assert _run(con, fake_encoder, config=ScoringConfig())["recommendations_written"] == 0


def _scores(con, user):
    return dict(
        con.execute(
            "select item_id, score from recommendations where user_id = ? order by rank", [user]
        ).fetchall()
    )


def test_scoring_config_reads_the_environment(monkeypatch):
    monkeypatch.setenv("INTEREST_SCORE_POPULARITY_WEIGHT", "0.25")
    monkeypatch.setenv("INTEREST_SCORE_INTERESTS_POWER", "4")
    config = scoring_config()
    assert config.popularity_weight == 0.25
    assert config.interests_power == 4.0
    assert config.content_weight == ScoringConfig().content_weight


def test_behaviour_term_adds_co_occurring_items(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "rate", H0, H0, item_id="m1", weight=3.0)
    add_event(con, "e2", "u2", "rate", H0, H0, item_id="m1", weight=3.0)
    add_event(con, "e3", "u2", "rate", H0, H0, item_id="m3", weight=3.0)
    _run(con, fake_encoder)
    assert list(_scores(con, "u1"))[:2] == ["m2", "m3"]  # tie on similarity
    config = replace(CONTENT_ONLY, cooccurrence_weight=0.5)
    write_recommendations(con, "fake", H0, H1, 3, 24.0, 100, config)
    scores = _scores(con, "u1")
    assert list(scores)[:2] == ["m3", "m2"]  # u2 engaged with m1 and m3
    assert scores["m3"] == pytest.approx(scores["m2"] + 0.5)


def test_popularity_prior_breaks_a_tie_towards_the_popular_item(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "rate", H0, H0, item_id="m1", weight=3.0)
    for n in range(3):  # m3 is popular with others
        add_event(con, f"p{n}", f"other{n}", "purchase", H0, H0, item_id="m3", weight=3.0)
    _run(con, fake_encoder)
    plain = list(_scores(con, "u1"))
    assert plain[:2] == ["m2", "m3"]  # equal similarity: item order breaks the tie
    prior = replace(CONTENT_ONLY, popularity_weight=0.1, popularity_half_life_hours=24.0)
    write_recommendations(con, "fake", H0, H1, 3, 24.0, 100, prior)
    scores = _scores(con, "u1")
    assert list(scores)[:2] == ["m3", "m2"]
    assert scores["m3"] == pytest.approx(scores["m2"] + 0.1)  # m3 is the most popular: prior 1


def test_several_interests_score_an_item_by_the_interest_it_is_closest_to(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "search", H0, H0, query_text="aliens", weight=1.0)
    _run(con, fake_encoder)
    only_interests = replace(
        CONTENT_ONLY, content_weight=0.0, interests_weight=1.0, interests_power=3.0
    )
    write_recommendations(con, "fake", H0, H1, 3, 24.0, 100, only_interests)
    aliens, m2 = fake_encoder.encode(["aliens", "space adventure aliens"])
    # One contribution: the power mean is its (positive) similarity, whatever the power.
    assert _scores(con, "u1")["m2"] == pytest.approx(float(aliens @ m2), rel=1e-5)


def test_the_prior_never_makes_items_eligible(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "purchase", H0, H0, item_id="m1", weight=-3.0)
    add_event(con, "p1", "u2", "purchase", H0, H0, item_id="m4", weight=3.0)
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    update_user_vectors(con, "fake", H0, H1, 24.0)
    write_recommendations(con, "fake", H0, H1, 3, 24.0, 100, ScoringConfig(popularity_weight=1.0))
    assert _scores(con, "u1") == {}


def _evidence_items(con, user):
    rows = con.execute("select evidence from recommendations where user_id = ?", [user]).fetchall()
    return {e["item_id"] for (evidence,) in rows for e in json.loads(evidence)}


def test_evidence_comes_from_the_users_latest_events_by_event_time(con, fake_encoder):
    _catalogue(con)
    # An earlier partition, and a late event landing in this one with the oldest time.
    add_event(con, "e0", "u1", "view", H0 - timedelta(minutes=50), H0 - timedelta(hours=1),
              item_id="m5", weight=1.0)
    add_event(con, "e1", "u1", "view", H0 - timedelta(hours=3), H0, item_id="m4", weight=1.0)
    add_event(con, "e2", "u1", "view", H0 + timedelta(minutes=10), H0, item_id="m2", weight=1.0)
    add_event(con, "e3", "u1", "view", H0 + timedelta(minutes=20), H0, item_id="m3", weight=1.0)
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    update_user_vectors(con, "fake", H0, H1, 24.0)
    write_recommendations(con, "fake", H0, H1, 5, 24.0, 2, CONTENT_ONLY)
    assert _evidence_items(con, "u1") == {"m2", "m3"}
    write_recommendations(con, "fake", H0, H1, 5, 24.0, 3, CONTENT_ONLY)
    assert _evidence_items(con, "u1") == {"m2", "m3", "m5"}  # e0 is newer than the late e1
    write_recommendations(con, "fake", H0, H1, 5, 24.0, 100, CONTENT_ONLY)
    assert _evidence_items(con, "u1") == {"m2", "m3", "m4", "m5"}


def test_latest_events_read_recent_hours_first_and_match_the_whole_history(con):
    import pyarrow as pa

    from interest_pipeline.recommendations import _LATEST_EVENTS_SQL, _latest_events

    start = H0 + timedelta(hours=40)
    for h in range(41):
        at = H0 + timedelta(hours=h)
        add_event(con, f"a{h}", "busy", "view", at + timedelta(minutes=30), at, item_id="m1")
        add_event(con, f"b{h}", "busy", "view", at + timedelta(minutes=30), at, item_id="m2")
    add_event(con, "q1", "quiet", "view", H0, H0, item_id="m3")  # only long ago
    # Dated an hour after its arrival hour (the allowed skew), in an hour before the recent
    # ones: it is still among the latest.
    old = start - timedelta(hours=30)
    add_event(con, "s1", "skewed", "view", old + timedelta(hours=2), old, item_id="m4")
    for h in range(24):
        at = start - timedelta(hours=h)
        add_event(con, f"s{h + 2}", "skewed", "view", old + timedelta(minutes=h), at, item_id="m5")
    # A few events in each window and before them all: their latest are merged across the
    # windows read in turn.
    for n, hours_ago in enumerate((1, 3, 50, 100, 24 * 60, 24 * 70)):
        at = start - timedelta(hours=hours_ago)
        add_event(con, f"w{n}", "spread", "view", at, at, item_id="m6")
    con.register(
        "_rec_users", pa.table({"user_id": ["busy", "quiet", "skewed", "spread", "nobody"]})
    )
    _latest_events(con, start, 5)
    fast = con.execute("select * from _rec_latest order by all").fetchall()
    whole = con.execute(
        _LATEST_EVENTS_SQL.format(where="user_id in (select user_id from _rec_users)")
        + " order by all",
        {"interval_start": start, "limit": 5},
    ).fetchall()
    assert fast == whole
    assert {row[1] for row in fast} == {"busy", "quiet", "skewed", "spread"}
    assert "s1" in {row[0] for row in fast}
    assert {row[0] for row in fast if row[1] == "spread"} == {"w0", "w1", "w2", "w3", "w4"}


@pytest.mark.parametrize("seed", range(3))
def test_a_blocks_lists_are_each_rows_own_list(seed):
    """Ranking a block of users at once gives every user exactly the list ranking them one by
    one gives, ties (broken by catalogue order) and disqualified items included."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 4, (60, 30)).astype(np.float64)  # ties everywhere
    rows[rng.random(rows.shape) < 0.4] = -np.inf
    rows[:10] = rng.random((10, 30))  # no ties
    rows[10] = -np.inf  # nothing left to show
    for n in (1, 5, 29, 30, 40):
        for row, top in zip(rows, _tops(rows, n), strict=True):
            assert top.tolist() == _top(row, n).tolist()


def test_a_users_list_is_the_same_whoever_else_is_scored_in_the_hour(con, fake_encoder):
    """What an evaluation's rescore relies on (interest_pipeline.eval_lists): writing one
    user's list alone gives the rows, scores to the bit, that the whole hour gives them."""
    _catalogue(con)
    words = ["space", "robots", "aliens", "paris", "romantic", "drama", "war", "comedy"]
    rng = np.random.default_rng(7)
    queries = [" ".join(rng.choice(words, 5, replace=False)) for _ in range(10)]
    for u in range(4):
        # The same texts in other orders and with other weights for each user, so that the
        # hour's first-seen order of the texts differs from any one user's.
        for k, q in enumerate(rng.permutation(queries)[:8]):
            at = H0 + timedelta(minutes=k)
            add_event(con, f"u{u}-{k}", f"u{u}", "search", at, H0, query_text=str(q),
                      weight=float(rng.uniform(0.2, 3.0)))
    add_event(con, "v1", "u2", "view", H0, H0, item_id="m4", weight=1.0)
    blend = replace(scoring_config(), interests_power=3.0)
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    update_user_vectors(con, "fake", H0, H1, 24.0)
    write_recommendations(con, "fake", H0, H1, 5, 24.0, 100, blend)
    every = table_contents(con, "recommendations")
    new_user = table_contents(con, "new_user_recommendations")
    assert {row[0] for row in every} == {"u0", "u1", "u2", "u3"}
    for u in ("u0", "u1", "u2", "u3"):
        written = write_recommendations(
            con, "fake", H0, H1, 5, 24.0, 100, blend, users={u}, new_user=False
        )
        assert written["users_recommended"] == 1
        assert table_contents(con, "recommendations") == every
    # Nobody: nothing is written, nothing removed; the new-visitor list is left alone.
    con.execute("delete from new_user_recommendations")
    assert write_recommendations(
        con, "fake", H0, H1, 5, 24.0, 100, blend, users=set(), new_user=False
    )["recommendations_written"] == 0
    assert table_contents(con, "recommendations") == every
    assert table_contents(con, "new_user_recommendations") == []
    write_recommendations(con, "fake", H0, H1, 5, 24.0, 100, blend, users=set())
    assert table_contents(con, "new_user_recommendations") == new_user


def test_the_catalogue_kept_in_memory_follows_the_items_and_their_texts(con, fake_encoder):
    from interest_pipeline.recommendations import _load_items

    _catalogue(con)
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    first = _load_items(con, "fake")
    assert _load_items(con, "fake") is first  # nothing changed: nothing read again
    add_item(con, "m6", "robots in paris")
    con.execute(
        "update item_documents set document = 'space opera', text_hash = sha256('space opera') "
        "where item_id = 'm1'"
    )
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    second = _load_items(con, "fake")
    assert second.ids.tolist() == ["m1", "m2", "m3", "m4", "m5", "m6"]
    expected = fake_encoder.encode(["space opera", "robots in paris"])
    assert np.array_equal(second.vectors[[0, 5]], np.asarray(expected, np.float32))
    assert np.array_equal(second.vectors[1:5], first.vectors[1:5])
