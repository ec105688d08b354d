"""Baseline recommenders for the evaluation: pure functions on the history known at a cut-off.

Every list function takes ``pairs`` (the (user, item) pairs of positive-weight item events
known at T, or their :class:`Interactions`), the ``users`` to recommend to, each user's
``consumed`` items (never recommended) and ``k``, and returns ``{user: [item ids]}`` best
first. Ties break by item id.

- **Popularity** (:func:`popularity_order`, :func:`top_excluding`): items by distinct users.
- **Co-occurrence** (:func:`cooccurrence_lists`): score(j) = sum over the user's items i of the
  number of users who engaged with both i and j; only items with a positive score qualify.
- **EASE^R** (:func:`ease_lists`, Steck 2019, "Embarrassingly Shallow Autoencoders"): with X
  the binary user x item matrix, ``G = XᵀX + λI``, ``P = G⁻¹``, ``B = -P / diag(P)`` (column j
  divided by ``P_jj``), ``diag(B) = 0``; scores ``X_u B``, ranked over every item of the model
  (its scores are a regression's, meaningful below zero too). The model is dense, so it is
  fitted on the ``max_items`` (default :data:`EASE_MAX_ITEMS`) items with the most distinct
  users (ties by item id); the other items are neither inputs nor outputs of EASE, and a user
  with none of those items gets no list. A fit costs one inversion: about 0.5 s for 3,000 items
  on 2 cores.
- **Item kNN** (:func:`itemknn_lists`): cosine between item columns of X with a shrinkage term,
  ``sim(i, j) = |U_i ∩ U_j| / (sqrt|U_i| sqrt|U_j| + shrink)``; each item j keeps its
  ``neighbours`` most similar items i (ties by item id); scores ``X_u S``, positive ones only.

A user with no known positive item (or, for kNN and co-occurrence, no positive score) gets no
list: the evaluation counts that user as a miss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp

log = logging.getLogger(__name__)

EASE_MAX_ITEMS = 3000
# EASE's scores come through an inversion whose rounding depends on the LAPACK routine, its
# build and its threads: items tied in exact arithmetic (say, the items of one and the same
# user) come out a few units in the last place apart, in an order that rounding sets. Scores
# are rounded to this many decimals before ranking, so those ties break by item id, as every
# baseline's ties do, on any machine.
EASE_SCORE_DECIMALS = 9
# Users scored per matrix product: bounds the dense score block (users x items).
_BLOCK = 512


def popularity_order(events: Iterable[tuple], since: datetime | None) -> list[str]:
    """Items of ``(user, item, event_at)`` events at or after ``since`` (all if None), by
    distinct users engaging (desc), then item id."""
    users_per_item: dict[str, set[str]] = {}
    for user, item, at in events:
        if since is None or at >= since:
            users_per_item.setdefault(item, set()).add(user)
    return sorted(users_per_item, key=lambda item: (-len(users_per_item[item]), item))


def top_excluding(order: Sequence[str], exclude: set[str], k: int) -> list[str]:
    """The first ``k`` items of ``order`` not in ``exclude``."""
    out = []
    for item in order:
        if item not in exclude:
            out.append(item)
            if len(out) == k:
                break
    return out


class Interactions:
    """The binary user x item matrix of some (user, item) pairs, built once to share between
    fits (every list function takes it in place of the pairs); users and items sorted by id, so
    index order is id order (the tie-break)."""

    def __init__(self, x: sp.spmatrix, users: np.ndarray, items: np.ndarray) -> None:
        import numpy as np

        self.x = x.tocsr()
        self.users = users
        self.items = items
        self.user_index = {u: n for n, u in enumerate(users)}
        self.item_index = {i: n for n, i in enumerate(items)}
        self._engaged = np.diff(self.x.indptr) > 0
        # Computed once per matrix and shared by every fit on it (a grid of peers' points, and
        # the cut-offs that see the same history): see cooccurrence() and similarity().
        self._cooccurrence: sp.csc_matrix | None = None
        self._ranked: dict[float, _RankedSimilarity] = {}

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Interactions:
        """The matrix of (user, item) pairs (repeats count once)."""
        import numpy as np
        import scipy.sparse as sp

        pairs = list(pairs)
        users, rows = np.unique(np.array([u for u, _ in pairs], dtype=str), return_inverse=True)
        items, cols = np.unique(np.array([i for _, i in pairs], dtype=str), return_inverse=True)
        x = sp.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(users), len(items)))
        x.sum_duplicates()
        x.data[:] = 1.0
        return cls(x, users.astype(object), items.astype(object))

    def with_items(self, keep: np.ndarray) -> Interactions:
        """The same users on the items at the (ascending) indices ``keep``."""
        return Interactions(self.x[:, keep], self.users, self.items[keep])

    def cooccurrence(self) -> sp.csc_matrix:
        """Off-diagonal X^T X, CSC with each column's rows sorted (the kNN tie-break)."""
        if self._cooccurrence is None:
            self._cooccurrence = _cooccurrence_of(self.x)
        return self._cooccurrence

    def similarity(self, neighbours: int, shrink: float) -> sp.csc_matrix:
        """:func:`itemknn_similarity` of this matrix, its columns ranked once per ``shrink``."""
        ranked = self._ranked.get(shrink)
        if ranked is None:
            ranked = self._ranked[shrink] = _RankedSimilarity.of(
                self.x, self.cooccurrence(), shrink
            )
        return ranked.top(neighbours)

    def known(self, users: Iterable[str]) -> list[str]:
        """The ``users`` with an item in the matrix, sorted: only they can get a list."""
        out = set()
        for user in users:
            n = self.user_index.get(user)
            if n is not None and self._engaged[n]:
                out.add(user)
        return sorted(out)

    def rank(
        self,
        users: Iterable[str],
        consumed: Mapping[str, set[str]],
        k: int,
        scores_of: Callable[[sp.csr_matrix], Any],
        positive_only: bool,
    ) -> dict[str, list[str]]:
        """Top-k lists of ``users`` (all in the matrix); ``scores_of(rows of X)`` gives their
        dense score block. Consumed items never qualify; with ``positive_only`` neither do
        items scoring <= 0."""
        import numpy as np

        users = list(users)
        out: dict[str, list[str]] = {}
        for start in range(0, len(users), _BLOCK):
            block = users[start : start + _BLOCK]
            scores = np.asarray(scores_of(self.x[[self.user_index[u] for u in block]]))
            for row, user in zip(scores, block, strict=True):
                eligible = row > 0 if positive_only else np.ones(len(row), dtype=bool)
                for item in consumed.get(user, ()):
                    j = self.item_index.get(item)
                    if j is not None:
                        eligible[j] = False
                ranked = _top_k(row, np.flatnonzero(eligible), k)
                if len(ranked):
                    out[user] = self.items[ranked].tolist()
        return out


def _interactions(pairs: Iterable[tuple[str, str]] | Interactions) -> Interactions:
    return pairs if isinstance(pairs, Interactions) else Interactions.of(pairs)


def _top_k(row: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best candidate indices: highest score first, then lowest index."""
    import numpy as np

    if len(candidates) > k:
        # Keep everything tied with the k-th score so the tie-break below stays exact.
        kth = np.partition(row[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[row[candidates] >= kth]
    return candidates[np.lexsort((candidates, -row[candidates]))][:k]


def cooccurrence_lists(
    pairs: Iterable[tuple[str, str]] | Interactions,
    users: Iterable[str],
    consumed: Mapping[str, set[str]],
    k: int,
) -> dict[str, list[str]]:
    """Item-to-item co-occurrence lists (see the module docstring)."""
    m = _interactions(pairs)
    users = m.known(users)
    if not users:
        return {}
    co = m.cooccurrence().tocsr()
    return m.rank(users, consumed, k, lambda rows: (rows @ co).todense(), positive_only=True)


def ease_lists(
    pairs: Iterable[tuple[str, str]] | Interactions,
    users: Iterable[str],
    consumed: Mapping[str, set[str]],
    k: int,
    l2: float = 200.0,
    max_items: int = EASE_MAX_ITEMS,
) -> dict[str, list[str]]:
    """EASE^R lists with L2 penalty ``l2`` (λ) on the ``max_items`` most engaged items."""
    import numpy as np

    m = _interactions(pairs)
    users_per_item = np.diff(m.x.tocsc().indptr)
    if len(users_per_item) > max_items:
        # Most users first, then item id (index order); kept in index order.
        order = np.lexsort((np.arange(len(users_per_item)), -users_per_item))
        m = m.with_items(np.sort(order[:max_items]))
        log.info("EASE on the %d most engaged of %d items", max_items, len(users_per_item))
    users = m.known(users)
    if not users:  # nothing to score: skip the inversion
        return {}
    weights = ease_weights(m.x, l2)
    return m.rank(
        users, consumed, k,
        lambda rows: np.round(rows @ weights, EASE_SCORE_DECIMALS),
        positive_only=False,
    )


def ease_weights(x: sp.spmatrix, l2: float) -> np.ndarray:
    """EASE^R's item x item weights B for the binary matrix ``x`` (users x items)."""
    import numpy as np
    import scipy.linalg

    gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    # LAPACK's getri: half the time of numpy's inv (a solve against the identity).
    weights = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    del gram
    weights /= -np.diag(weights)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def itemknn_similarity(x: sp.spmatrix, neighbours: int, shrink: float) -> sp.csc_matrix:
    """Shrunk cosine between the item columns of ``x``, each column j keeping its
    ``neighbours`` largest entries (ties by row index); zero diagonal."""
    return _RankedSimilarity.of(x, _cooccurrence_of(x), shrink).top(neighbours)


def _cooccurrence_of(x: sp.spmatrix) -> sp.csc_matrix:
    """Off-diagonal X^T X of the binary matrix ``x``, CSC with each column's rows sorted."""
    co = (x.T @ x).tocsc()
    co.setdiag(0)
    co.eliminate_zeros()
    co.sort_indices()
    return co


@dataclass(frozen=True)
class _RankedSimilarity:
    """Every shrunk cosine of a co-occurrence matrix (CSC, rows sorted) with its rank in its
    column: 0 the most similar, ties by row index."""

    rows: np.ndarray
    cols: np.ndarray
    sim: np.ndarray
    rank: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(cls, x: sp.spmatrix, co: sp.csc_matrix, shrink: float) -> _RankedSimilarity:
        import numpy as np

        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        counts = np.diff(co.indptr)
        rows = co.indices
        cols = np.repeat(np.arange(co.shape[1]), counts)
        sim = co.data / (norms[rows] * norms[cols] + shrink)
        rank = np.zeros(len(sim), dtype=np.int64)
        for j in np.flatnonzero(counts > 1):
            lo, hi = co.indptr[j], co.indptr[j + 1]
            # Rows are sorted, so a stable sort on -similarity breaks ties by row index.
            rank[lo + np.argsort(-sim[lo:hi], kind="stable")] = np.arange(hi - lo)
        return cls(rows, cols, sim, rank, co.shape)

    def top(self, neighbours: int) -> sp.csc_matrix:
        """Each column's ``neighbours`` best entries."""
        import scipy.sparse as sp

        keep = self.rank < neighbours
        return sp.csc_matrix(
            (self.sim[keep], (self.rows[keep], self.cols[keep])), shape=self.shape
        )


def itemknn_lists(
    pairs: Iterable[tuple[str, str]] | Interactions,
    users: Iterable[str],
    consumed: Mapping[str, set[str]],
    k: int,
    neighbours: int = 50,
    shrink: float = 10.0,
) -> dict[str, list[str]]:
    """Item-based kNN lists (see the module docstring)."""
    m = _interactions(pairs)
    users = m.known(users)
    if not users:
        return {}
    sim = m.similarity(neighbours, shrink).tocsr()
    return m.rank(users, consumed, k, lambda rows: (rows @ sim).todense(), positive_only=True)
