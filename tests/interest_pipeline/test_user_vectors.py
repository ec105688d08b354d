from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from interest_pipeline.embeddings import embed_new_texts
from interest_pipeline.user_vectors import update_user_vectors, vector_as_of
from interest_pipeline.warehouse import query_arrow, vectors_to_numpy
from tests.builders import add_event, add_item, table_contents

H0 = datetime(2024, 3, 1, 10)
H1 = H0 + timedelta(hours=1)
H2 = H0 + timedelta(hours=2)
HALF_LIFE = 10.0


def _embed(con, fake_encoder, *hours):
    for h in hours:
        embed_new_texts(con, "fake", lambda: fake_encoder, h)


def _vec(fake_encoder, text):
    return fake_encoder.encode([text])[0].astype(np.float64)


def _version(con, user, as_of):
    t = query_arrow(
        con,
        "select vector, state, event_count, events_in_interval, last_event_at, model_id "
        "from user_interest_vectors where user_id = ? and as_of = ?",
        [user, as_of],
    )
    assert t.num_rows == 1
    return t


def test_fold_matches_the_contract_decay_sum(con, fake_encoder):
    add_item(con, "i1", "toy story pixar")
    add_event(con, "e1", "u1", "rate", H0 + timedelta(minutes=30), H0, item_id="i1", weight=2.0)
    add_event(con, "e2", "u1", "search", H1 + timedelta(minutes=15), H1, query_text="crime heist")
    # a tag contributes both its item's document and its text
    add_event(con, "e3", "u1", "tag", H1 + timedelta(minutes=45), H1, item_id="i1",
              query_text="funny", weight=0.5)
    _embed(con, fake_encoder, H0, H1)

    update_user_vectors(con, "fake", H0, H1, HALF_LIFE)
    update_user_vectors(con, "fake", H1, H2, HALF_LIFE)

    a, b, c = (_vec(fake_encoder, t) for t in ("toy story pixar", "crime heist", "funny"))
    # Every event decays by its age at the version's as_of (H2), per the contract.
    expected = (
        2.0 * 2 ** (-1.5 / HALF_LIFE) * a
        + 1.0 * 2 ** (-0.75 / HALF_LIFE) * b
        + 0.5 * 2 ** (-0.25 / HALF_LIFE) * (a + c)
    )
    v2 = _version(con, "u1", H2)
    state = vectors_to_numpy(v2.column("state"))[0]
    np.testing.assert_allclose(state, expected, rtol=1e-5, atol=1e-6)
    vector = vectors_to_numpy(v2.column("vector"))[0]
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    assert v2.column("event_count")[0].as_py() == 3
    assert v2.column("events_in_interval")[0].as_py() == 2
    assert v2.column("last_event_at")[0].as_py() == H1 + timedelta(minutes=45)
    assert v2.column("model_id")[0].as_py() == "fake"


def test_versions_only_for_users_with_events_in_the_hour(con, fake_encoder):
    add_item(con, "i1", "toy story")
    add_event(con, "e1", "u1", "view", H0, H0, item_id="i1")
    add_event(con, "e2", "u2", "view", H0, H0, item_id="i1")
    add_event(con, "e3", "u2", "view", H1, H1, item_id="i1")
    # u3 follows someone: an event, but no text, so no new vector
    add_event(con, "e4", "u3", "follow", H1, H1)
    _embed(con, fake_encoder, H0, H1)
    update_user_vectors(con, "fake", H0, H1, HALF_LIFE)
    counts = update_user_vectors(con, "fake", H1, H2, HALF_LIFE)
    # (u3's follow gives u3 a social version: nobody it follows has an interest yet)
    assert counts == {"users_updated": 1, "users_without_text": 1, "social_updated": 1}
    rows = con.execute("select user_id, as_of from user_interest_vectors order by all").fetchall()
    assert rows == [("u1", H1), ("u2", H1), ("u2", H2)]
    current = con.execute(
        "select user_id, as_of from current_user_interest order by all"
    ).fetchall()
    assert current == [("u1", H1), ("u2", H2)]


def test_rerun_of_an_interval_is_identical(con, fake_encoder):
    add_item(con, "i1", "toy story")
    add_item(con, "i2", "heat")
    add_event(con, "e1", "u1", "view", H0, H0, item_id="i1")
    add_event(con, "e2", "u1", "view", H1, H1, item_id="i2")
    _embed(con, fake_encoder, H0, H1)
    update_user_vectors(con, "fake", H0, H1, HALF_LIFE)
    update_user_vectors(con, "fake", H1, H2, HALF_LIFE)
    before = table_contents(con, "user_interest_vectors")
    update_user_vectors(con, "fake", H1, H2, HALF_LIFE)
    update_user_vectors(con, "fake", H0, H1, HALF_LIFE)
    assert table_contents(con, "user_interest_vectors") == before


def test_a_purchase_and_its_cancellation_leave_no_direction(con, fake_encoder):
    add_item(con, "i1", "mug")
    add_event(con, "e1", "u1", "purchase", H0, H0, item_id="i1", weight=3.0)
    add_event(con, "e2", "u1", "purchase", H0, H0, item_id="i1", weight=-3.0)
    _embed(con, fake_encoder, H0)
    assert update_user_vectors(con, "fake", H0, H1, HALF_LIFE)["users_updated"] == 0


def test_time_travel_returns_the_version_in_force(con, fake_encoder):
    add_item(con, "i1", "toy story")
    add_item(con, "i2", "heat")
    add_event(con, "e1", "u1", "view", H0, H0, item_id="i1")
    add_event(con, "e2", "u1", "view", H1, H1, item_id="i2", weight=5.0)
    _embed(con, fake_encoder, H0, H1)
    update_user_vectors(con, "fake", H0, H1, HALF_LIFE)
    update_user_vectors(con, "fake", H1, H2, HALF_LIFE)

    assert vector_as_of(con, "u1", H0, "fake") is None
    as_of, vec = vector_as_of(con, "u1", H1 + timedelta(minutes=59), "fake")
    assert as_of == H1
    np.testing.assert_allclose(vec, _vec(fake_encoder, "toy story"), atol=1e-6)
    as_of, _ = vector_as_of(con, "u1", H2 + timedelta(days=3), "fake")
    assert as_of == H2
    assert vector_as_of(con, "u1", H2, "other-model") is None


@pytest.mark.parametrize("model", ["fake"])
def test_vectors_are_unit_length(con, fake_encoder, model):
    for i in range(5):
        add_item(con, f"i{i}", f"item number {i}")
        add_event(con, f"e{i}", f"u{i % 2}", "view", H0, H0, item_id=f"i{i}", weight=i + 1)
    _embed(con, fake_encoder, H0)
    update_user_vectors(con, model, H0, H1, HALF_LIFE)
    v = vectors_to_numpy(query_arrow(con, "select vector from user_interest_vectors").column(0))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
