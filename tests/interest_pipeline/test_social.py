"""The social dimension on a small hand-built graph: follow, unfollow, a followee's change
reaching their followers, time travel across an unfollow, and a user with only follows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from interest_pipeline.embeddings import embed_new_texts
from interest_pipeline.recommendations import ScoringConfig, write_recommendations
from interest_pipeline.social import follows_as_of
from interest_pipeline.user_vectors import update_user_vectors
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
    _use_weights(con, {**default_weights(ScoringConfig()), "social": 5.0})
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
