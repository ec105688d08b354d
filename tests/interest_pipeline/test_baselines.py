from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from interest_pipeline import baselines as bl

# u1..u4 over four items; d only with u4, a and b together twice.
PAIRS = [
    ("u1", "a"), ("u1", "b"),
    ("u2", "a"), ("u2", "b"), ("u2", "c"),
    ("u3", "b"), ("u3", "c"),
    ("u4", "c"), ("u4", "d"),
]
ITEMS = ["a", "b", "c", "d"]


def _dense(pairs, users, items):
    x = np.zeros((len(users), len(items)))
    for u, i in pairs:
        x[users.index(u), items.index(i)] = 1.0
    return x


def _ease_by_column_ridge(x, l2):
    """EASE's B column by column: ridge regression of item j on the other items (the
    constrained problem min ||X - XB||² + λ||B||², diag(B) = 0, solved one column at a time)."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        rest = [i for i in range(n) if i != j]
        xr = x[:, rest]
        b[rest, j] = np.linalg.solve(xr.T @ xr + l2 * np.eye(n - 1), xr.T @ x[:, j])
    return b


# ---------------------------------------------------------------- EASE


def test_ease_weights_match_the_closed_form_and_the_column_ridge():
    x = _dense(PAIRS, ["u1", "u2", "u3", "u4"], ITEMS)
    got = bl.ease_weights(sp.csr_matrix(x), l2=2.0)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(4))
    closed = np.eye(4) - p / np.diag(p)  # Steck's B = I - P diagMat(1 / diag(P))
    np.testing.assert_allclose(got, closed, atol=1e-12)
    np.testing.assert_allclose(got, _ease_by_column_ridge(x, 2.0), atol=1e-12)
    assert np.all(np.diag(got) == 0)


def test_ease_lists_rank_by_x_b_and_exclude_consumed():
    x = _dense(PAIRS, ["u1", "u2", "u3", "u4"], ITEMS)
    b = _ease_by_column_ridge(x, 1.0)
    scores = x[0] @ b  # u1 = {a, b}
    expected = [ITEMS[j] for j in sorted(range(4), key=lambda j: (-scores[j], j)) if j != 0]
    lists = bl.ease_lists(PAIRS, ["u1", "u9"], {"u1": {"a"}}, k=3, l2=1.0)
    assert lists == {"u1": expected}  # u9 has no item: no list
    assert "a" not in lists["u1"] and len(lists["u1"]) == 3


def test_ease_ranks_every_item_and_breaks_ties_by_item_id():
    # Two disconnected groups: u1's items {a, b} say nothing about y, x (score exactly 0), which
    # still fill the list, in id order.
    pairs = [("u1", "a"), ("u2", "a"), ("u2", "b"), ("u3", "y"), ("u3", "x")]
    lists = bl.ease_lists(pairs, ["u1"], {"u1": {"a"}}, k=3, l2=1.0)
    assert lists == {"u1": ["b", "x", "y"]}


def test_ease_ties_within_the_inversion_s_rounding_break_by_item_id(monkeypatch):
    """x and y score 0 for u1 in exact arithmetic; an inversion that rounds y a hair above x
    (as another LAPACK routine or thread count may) still ranks x first."""
    pairs = [("u1", "a"), ("u2", "a"), ("u2", "b"), ("u3", "y"), ("u3", "x")]
    exact = bl.ease_weights

    def rounded_apart(x, l2):
        weights = exact(x, l2)
        weights[0, 3] += 1e-13  # a -> y (items in id order: a, b, x, y)
        return weights

    monkeypatch.setattr(bl, "ease_weights", rounded_apart)
    assert bl.ease_lists(pairs, ["u1"], {"u1": {"a"}}, k=3, l2=1.0) == {"u1": ["b", "x", "y"]}


def test_ease_caps_the_items_at_the_most_engaged():
    # b: 3 users, c: 3, a: 2, d: 2; three items keep b, c and a (a beats d by id).
    pairs = [p for p in PAIRS if p != ("u4", "c")] + [("u1", "c"), ("u5", "d")]
    lists = bl.ease_lists(pairs, ["u2", "u4", "u5"], {}, k=10, l2=1.0, max_items=3)
    assert set(lists) == {"u2"}  # u4 and u5 only have d: not scored by EASE, no list
    assert sorted(lists["u2"]) == ["a", "b", "c"]


# ---------------------------------------------------------------- item kNN


def test_itemknn_similarity_is_shrunk_cosine_and_keeps_top_neighbours_by_id():
    x = sp.csr_matrix(_dense(PAIRS, ["u1", "u2", "u3", "u4"], ITEMS))
    full = bl.itemknn_similarity(x, neighbours=10, shrink=0.0).toarray()
    # a: {u1, u2}, b: {u1, u2, u3}, c: {u2, u3, u4}, d: {u4}
    assert full[0, 1] == pytest.approx(2 / math.sqrt(2 * 3))
    assert full[1, 2] == pytest.approx(2 / 3)
    assert full[2, 3] == pytest.approx(1 / math.sqrt(3))
    assert full[0, 3] == 0 and np.all(np.diag(full) == 0)
    shrunk = bl.itemknn_similarity(x, neighbours=10, shrink=1.0).toarray()
    assert shrunk[0, 1] == pytest.approx(2 / (math.sqrt(6) + 1))
    # Column a's neighbours: b (0.816), c (1/sqrt(6) = 0.408): one neighbour keeps b.
    top1 = bl.itemknn_similarity(x, neighbours=1, shrink=0.0).toarray()
    assert np.flatnonzero(top1[:, 0]).tolist() == [1]
    # Ties: in the column of p, q and r are equally similar; one neighbour keeps q (lower id).
    y = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))  # p, q, r
    assert np.flatnonzero(bl.itemknn_similarity(y, 1, 0.0).toarray()[:, 0]).tolist() == [1]


def test_itemknn_lists_shrinkage_favours_better_supported_neighbours():
    # z has a; b co-occurs with a once (b has 1 user), c three times (c has 15 users).
    pairs = [("z", "a"), ("w1", "a"), ("w1", "b")]
    pairs += [(f"w{n}", item) for n in (2, 3, 4) for item in ("a", "c")]
    pairs += [(f"v{n}", "c") for n in range(12)]
    consumed = {"z": {"a"}}
    # cosine: b 1/sqrt(5) = 0.447 > c 3/sqrt(75) = 0.346; shrink 10: b 0.082 < c 0.161.
    assert bl.itemknn_lists(pairs, ["z"], consumed, 5, shrink=0.0) == {"z": ["b", "c"]}
    assert bl.itemknn_lists(pairs, ["z"], consumed, 5, shrink=10.0) == {"z": ["c", "b"]}


def test_itemknn_ties_break_by_item_id_and_users_without_items_get_no_list():
    pairs = [("u1", "a"), ("u1", "c"), ("u2", "a"), ("u2", "b"), ("u3", "x")]
    # For u3 (only x) nothing co-occurs: no positive score, no list. u9: no items at all.
    lists = bl.itemknn_lists(
        [*pairs, ("u4", "a")], ["u3", "u4", "u9"], {}, 5, neighbours=5, shrink=0.0
    )
    assert lists == {"u4": ["b", "c"]}  # b and c are equally similar to a


def test_fits_sharing_one_matrix_give_each_fit_s_own_lists():
    """A grid of item-kNN points (and co-occurrence) on one matrix reuse its co-occurrence
    and each shrink's ranking: every list is the one of a fit on a matrix of its own."""
    pairs = [("z", "a"), ("w1", "a"), ("w1", "b")]
    pairs += [(f"w{n}", item) for n in (2, 3, 4) for item in ("a", "c")]
    pairs += [(f"v{n}", "c") for n in range(12)] + [("v1", "d"), ("v2", "d"), ("w2", "d")]
    users = ["z", "w1", "v1", "w3"]
    shared = bl.Interactions.of(pairs)
    for neighbours, shrink in ((1, 10.0), (5, 0.0), (1, 0.0), (5, 10.0)):
        alone = bl.itemknn_lists(bl.Interactions.of(pairs), users, {}, 5, neighbours, shrink)
        assert bl.itemknn_lists(shared, users, {}, 5, neighbours, shrink) == alone
    assert bl.cooccurrence_lists(shared, users, {}, 5) == bl.cooccurrence_lists(
        pairs, users, {}, 5
    )


# ---------------------------------------------------------------- co-occurrence, popularity


def test_cooccurrence_counts_shared_users_and_breaks_ties_by_id():
    lists = bl.cooccurrence_lists(PAIRS, ["u1", "u4", "u9"], {"u1": {"a", "b"}}, k=5)
    # u1 {a, b}: c co-occurs with a once (u2), with b twice (u2, u3): 3; d never.
    assert lists["u1"] == ["c"]
    # u4 {c, d}: b co-occurs with c twice; a (with c), c (with d), d (with c) once each.
    assert lists["u4"] == ["b", "a", "c", "d"]
    assert "u9" not in lists
    assert bl.cooccurrence_lists([], ["u1"], {}, 5) == {}


def test_popularity_order_and_top_excluding():
    from datetime import datetime

    t0, t1 = datetime(2024, 1, 1), datetime(2024, 1, 8)
    events = [("u1", "a", t0), ("u2", "a", t0), ("u1", "b", t1), ("u3", "c", t1)]
    assert bl.popularity_order(events, None) == ["a", "b", "c"]
    assert bl.popularity_order(events, t1) == ["b", "c"]
    assert bl.top_excluding(["a", "b", "c"], {"a"}, 1) == ["b"]
