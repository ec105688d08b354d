from __future__ import annotations

import json
from datetime import datetime, timedelta

from interest_pipeline.embeddings import embed_new_texts
from interest_pipeline.recommendations import write_recommendations
from interest_pipeline.user_vectors import update_user_vectors
from tests.builders import add_event, add_item, table_contents

H0 = datetime(2024, 3, 1, 10)
H1 = H0 + timedelta(hours=1)


def _run(con, fake_encoder, top_n=3):
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    update_user_vectors(con, "fake", H0, H1, 24.0)
    return write_recommendations(con, "fake", H0, H1, top_n, 24.0, 100)


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
    assert counts == {"recommendations_written": 3, "users_recommended": 1}
    rows = con.execute(
        "select rank, item_id, score, model_id from recommendations where user_id = 'u1' order by rank"
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
    assert len(before) == 6
    write_recommendations(con, "fake", H0, H1, 3, 24.0, 100)
    assert table_contents(con, "recommendations") == before


def test_a_user_known_only_from_a_cancellation_gets_no_recommendations(con, fake_encoder):
    _catalogue(con)
    add_event(con, "e1", "u1", "purchase", H0, H0, item_id="m1", weight=-3.0)
    counts = _run(con, fake_encoder)
    assert counts["recommendations_written"] == 0
