"""Top-N recommendations per changed user, with the evidence behind each item.

Score of item j for user u (weights and knobs are configuration, see :class:`ScoringConfig`)::

    score(u, j) = content_weight   * cos(v_u, e_j)
                + interests_weight * M_p(u, j)
                + popularity_weight * prior(j)
                + cooccurrence_weight * B(u, j)

- ``cos(v_u, e_j)``: the user's interest vector (one decayed average of everything) against the
  item's document embedding.
- ``M_p(u, j)``: several interests instead of one average. Every contribution c of the user's
  latest ``evidence_events`` events (an engaged item's document or a query/tag text) is an
  interest with importance ``a_c = weight * decay`` (as in the fold); ``M_p`` is the power mean
  ``(sum_c a_c * max(0, cos(t_c, e_j)) ** p / sum_c a_c) ** (1 / p)`` over the positive
  contributions. ``p = 1`` is an average; a large ``p`` scores an item by the interest it is
  closest to, so a user who buys candles and garden tools is not recommended the midpoint.
- ``B(u, j)``: behaviour, item-to-item co-occurrence: ``sum_i C(i, j)`` over the items i the
  user engaged with positively, ``C(i, j)`` = users who engaged with both, scaled to [0, 1] by
  the user's best item.
- ``prior(j)``: a recency-popularity prior, ``log1p(P_j) / log1p(max P)`` with
  ``P_j = sum over the users who engaged positively with j of 2 ** (-age / popularity_half_life)``,
  age of each user's latest such event, over everyone's events known at the interval end.

Only items the interest vector points towards qualify (``cos(v_u, e_j) > 0``): a user known
only from cancellations gets no list rather than the items least like what they returned (or
the merely popular ones). Items the user already bought or rated are excluded. Evidence for an
item = the user's past contributions (item documents or query/tag texts, decayed and weighted
as in the fold) that point most towards it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from interest_pipeline.user_vectors import CONTRIBUTIONS_SQL, decay
from interest_pipeline.warehouse import (
    insert_arrow,
    query_arrow,
    transaction,
    vectors_to_numpy,
)

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

CONSUMED_EVENT_TYPES = ("purchase", "rate")
EVIDENCE_PER_ITEM = 3
# Users scored per matrix multiply: bounds memory at block x items floats.
_USER_BLOCK = 1024


@dataclass(frozen=True)
class ScoringConfig:
    """Weights of the score's parts (env var, default).

    Attributes:
        content_weight: INTEREST_SCORE_CONTENT_WEIGHT, weight of cos(interest vector, item).
        interests_weight: INTEREST_SCORE_INTERESTS_WEIGHT, weight of the several-interests
            term M_p.
        interests_power: INTEREST_SCORE_INTERESTS_POWER, p of the power mean M_p.
        popularity_weight: INTEREST_SCORE_POPULARITY_WEIGHT, weight of the popularity prior.
        popularity_half_life_hours: INTEREST_SCORE_POPULARITY_HALF_LIFE_HOURS, half-life of
            the events counted by the prior.
        cooccurrence_weight: INTEREST_SCORE_COOCCURRENCE_WEIGHT, weight of the behaviour term.
    """

    content_weight: float = 0.0
    interests_weight: float = 1.0
    interests_power: float = 16.0
    popularity_weight: float = 0.5
    popularity_half_life_hours: float = 168.0
    cooccurrence_weight: float = 1.0


_ENV = {
    "content_weight": "INTEREST_SCORE_CONTENT_WEIGHT",
    "interests_weight": "INTEREST_SCORE_INTERESTS_WEIGHT",
    "interests_power": "INTEREST_SCORE_INTERESTS_POWER",
    "popularity_weight": "INTEREST_SCORE_POPULARITY_WEIGHT",
    "popularity_half_life_hours": "INTEREST_SCORE_POPULARITY_HALF_LIFE_HOURS",
    "cooccurrence_weight": "INTEREST_SCORE_COOCCURRENCE_WEIGHT",
}


def scoring_config() -> ScoringConfig:
    """The scoring configuration from the environment (defaults: :class:`ScoringConfig`)."""
    default = ScoringConfig()
    return ScoringConfig(
        **{
            field: float(os.environ.get(env, getattr(default, field)))
            for field, env in _ENV.items()
        }
    )


def _load_items(con: duckdb.DuckDBPyConnection, model_id: str) -> tuple[np.ndarray, np.ndarray]:
    table = query_arrow(
        con,
        """
        select item_documents.item_id, text_embeddings.embedding
        from item_documents
        inner join text_embeddings
            on item_documents.text_hash = text_embeddings.text_hash
            and text_embeddings.model_id = ?
        order by item_documents.item_id
        """,
        [model_id],
    )
    ids = table.column("item_id").to_numpy(zero_copy_only=False)
    return ids, vectors_to_numpy(table.column("embedding"))


# Each scored user's latest ``$limit`` events up to the interval, newest first. A top-k
# aggregate keeps a heap of k per user while reading the few columns it needs, so the cost
# follows the scored users' events rather than sorting (or joining embeddings to) the whole
# history; the embedding join below then sees at most k events per user.
_LATEST_EVENTS_SQL = """
select unnest(latest, recursive := true)
from (
    select max_by(
        {
            'event_id': event_id,
            'user_id': user_id,
            'event_type': event_type,
            'event_at': event_at,
            'weight': weight,
            'item_id': item_id,
            'query_text': query_text
        },
        (event_at, event_id),
        $limit
    ) as latest
    from user_item_interactions
    where interval_start <= $interval_start and user_id in (select user_id from _rec_users)
    group by user_id
)
"""


def _evidence_contributions(
    con: duckdb.DuckDBPyConnection, model_id: str, interval_start: datetime, limit: int
) -> pa.Table:
    """The contributions of each scored user's latest ``limit`` events up to this interval,
    ordered by user, newest first."""
    inner = CONTRIBUTIONS_SQL.format(interactions=_LATEST_EVENTS_SQL)
    return query_arrow(
        con,
        f"""
        select contributions.*, items.title
        from ({inner}) as contributions
        left join items
            on contributions.text_kind = 'item' and contributions.item_id = items.item_id
        order by contributions.user_id, contributions.event_at desc, contributions.event_id desc,
            contributions.text_kind
        """,
        {"interval_start": interval_start, "model_id": model_id, "limit": limit},
    )


def _consumed(con: duckdb.DuckDBPyConnection, interval_start: datetime) -> dict[str, set[str]]:
    rows = con.execute(
        f"""
        select distinct user_id, item_id
        from user_item_interactions
        where interval_start <= ?
            and event_type in {CONSUMED_EVENT_TYPES}
            and item_id is not null
            and user_id in (select user_id from _rec_users)
        """,
        [interval_start],
    ).fetchall()
    out: dict[str, set[str]] = {}
    for user, item in rows:
        out.setdefault(user, set()).add(item)
    return out


def _evidence_for(
    items: np.ndarray,
    contrib_vectors: np.ndarray,
    contrib_coef: np.ndarray,
    contrib_meta: list[dict],
) -> list[list[dict]]:
    """For each recommended item, the contributions pushing the user most towards it."""
    import numpy as np

    if len(contrib_coef) == 0:
        return [[] for _ in range(len(items))]
    pull = (contrib_vectors @ items.T) * contrib_coef[:, None]  # contributions x items
    out = []
    for j in range(items.shape[0]):
        order = np.argsort(-pull[:, j], kind="stable")[:EVIDENCE_PER_ITEM]
        out.append(
            [
                {**contrib_meta[k], "contribution": round(float(pull[k, j]), 4)}
                for k in order
                if pull[k, j] > 0
            ]
        )
    return out


def write_recommendations(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_start: datetime,
    interval_end: datetime,
    top_n: int,
    half_life_hours: float,
    evidence_events: int,
    config: ScoringConfig | None = None,
) -> dict[str, int]:
    """Replace the recommendations ``as_of = interval_end`` for users with a new version."""
    users_table = query_arrow(
        con,
        """
        select user_id, vector from user_interest_vectors
        where as_of = ? and model_id = ?
        order by user_id
        """,
        [interval_end, model_id],
    )
    with transaction(con):
        con.execute(
            "delete from recommendations where as_of = ? and model_id = ?",
            [interval_end, model_id],
        )
        rows = recommend(
            con,
            model_id,
            users_table,
            interval_start,
            interval_end,
            top_n,
            half_life_hours,
            evidence_events,
            config or scoring_config(),
        )
        insert_arrow(con, "recommendations", rows)
    users = len(set(rows.column("user_id").to_pylist())) if rows.num_rows else 0
    return {
        "recommendations_written": rows.num_rows,
        "users_recommended": users_table.num_rows if rows.num_rows else users,
    }


def recommend(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    users_table: pa.Table,
    interval_start: datetime,
    interval_end: datetime,
    top_n: int,
    half_life_hours: float,
    evidence_events: int,
    config: ScoringConfig,
) -> pa.Table:
    """Top-N rows (user_id, as_of, rank, item_id, score, model_id, evidence) for the users of
    ``users_table`` (user_id, unit interest vector), from what is known at ``interval_end``
    (events of intervals up to the one starting at ``interval_start``)."""
    import numpy as np
    import pyarrow as pa

    out: dict[str, list] = {k: [] for k in ("user_id", "rank", "item_id", "score", "evidence")}
    item_ids, item_vecs = _load_items(con, model_id)
    if users_table.num_rows and len(item_ids):
        users = users_table.column("user_id").to_numpy(zero_copy_only=False)
        user_vecs = vectors_to_numpy(users_table.column("vector"))
        item_index = {item: j for j, item in enumerate(item_ids)}
        con.register("_rec_users", pa.table({"user_id": pa.array(users.tolist(), pa.string())}))
        con.register(
            "_rec_items",
            pa.table({
                "item_id": pa.array(item_ids.tolist(), pa.string()),
                "j": pa.array(np.arange(len(item_ids)), pa.int32()),
            }),
        )
        try:
            consumed = _consumed(con, interval_start)
            evidence_rows = _evidence_contributions(con, model_id, interval_start, evidence_events)
            if config.popularity_weight or config.cooccurrence_weight:
                _collect_engaged_pairs(con, interval_start)
            prior = (
                _popularity_prior(
                    con, len(item_ids), interval_end, config.popularity_half_life_hours
                )
                if config.popularity_weight
                else None
            )
            behaviour = (
                _cooccurrence(con, users.tolist(), len(item_ids))
                if config.cooccurrence_weight
                else {}
            )
        finally:
            con.execute("drop table if exists _rec_engaged")
            con.unregister("_rec_users")
            con.unregister("_rec_items")

        ev_users = evidence_rows.column("user_id").to_numpy(zero_copy_only=False)
        ev_vecs = vectors_to_numpy(evidence_rows.column("embedding"))
        ev_times = evidence_rows.column("event_at").to_numpy().astype("datetime64[us]")
        ages = (np.datetime64(interval_end, "us") - ev_times) / np.timedelta64(1, "h")
        ev_coef = evidence_rows.column("weight").to_numpy(zero_copy_only=False) * decay(
            ages, half_life_hours
        )
        ev_meta = [
            {
                "event_type": r["event_type"],
                "item_id": r["item_id"] if r["text_kind"] == "item" else None,
                "text": r["title"] if r["text_kind"] == "item" else r["text"],
                "event_at": r["event_at"].isoformat(sep=" "),
            }
            for r in evidence_rows.select(
                ["event_type", "item_id", "text_kind", "title", "text", "event_at"]
            ).to_pylist()
        ]
        ev_bounds = _group_bounds(ev_users, users)

        n = min(top_n, len(item_ids))
        for block in range(0, len(users), _USER_BLOCK):
            cosines = user_vecs[block : block + _USER_BLOCK] @ item_vecs.T
            for i in range(cosines.shape[0]):
                user = users[block + i]
                lo, hi = ev_bounds.get(user, (0, 0))
                if not (ev_coef[lo:hi] > 0).any():
                    # Known only from negative signals (cancellations): the vector points away
                    # from what they returned, which is no taste to match.
                    continue
                row = _blend(
                    cosines[i], item_vecs, ev_vecs[lo:hi], ev_coef[lo:hi], prior, config
                )
                if user in behaviour:
                    row += config.cooccurrence_weight * behaviour[user]
                # Only items the interest points towards: a user known only from cancellations
                # has a vector pointing away from what they returned, not a taste to match.
                row[cosines[i] <= 0] = -np.inf
                for item in consumed.get(user, ()):
                    j = item_index.get(item)
                    if j is not None:
                        row[j] = -np.inf
                # Stable sort on (-score, item order) keeps ties deterministic across reruns.
                top = np.argsort(-row, kind="stable")[:n]
                top = top[np.isfinite(row[top])]
                evidence = _evidence_for(
                    item_vecs[top], ev_vecs[lo:hi], ev_coef[lo:hi], ev_meta[lo:hi]
                )
                for rank, (j, ev) in enumerate(zip(top, evidence, strict=True), start=1):
                    out["user_id"].append(user)
                    out["rank"].append(rank)
                    out["item_id"].append(item_ids[j])
                    out["score"].append(float(row[j]))
                    out["evidence"].append(json.dumps(ev, ensure_ascii=False))
    count = len(out["user_id"])
    return pa.table(
        {
            "user_id": pa.array(out["user_id"], pa.string()),
            "as_of": pa.array([interval_end] * count, pa.timestamp("us")),
            "rank": pa.array(out["rank"], pa.int32()),
            "item_id": pa.array(out["item_id"], pa.string()),
            "score": pa.array(out["score"], pa.float64()),
            "model_id": pa.array([model_id] * count, pa.string()),
            "evidence": pa.array(out["evidence"], pa.string()),
        }
    )


def _blend(
    cosines: np.ndarray,
    item_vecs: np.ndarray,
    contrib_vecs: np.ndarray,
    contrib_coef: np.ndarray,
    prior: np.ndarray | None,
    config: ScoringConfig,
) -> np.ndarray:
    """One user's score over the catalogue (see the module docstring)."""
    import numpy as np

    score = config.content_weight * cosines.astype(np.float64)
    positive = contrib_coef > 0
    if config.interests_weight and positive.any():
        coef = contrib_coef[positive]
        sims = np.maximum(contrib_vecs[positive] @ item_vecs.T, 0.0).astype(np.float64)
        p = config.interests_power
        mean = (coef @ sims**p) / coef.sum()
        score += config.interests_weight * mean ** (1.0 / p)
    if prior is not None:
        score += config.popularity_weight * prior
    return score


def _collect_engaged_pairs(con: duckdb.DuckDBPyConnection, interval_start: datetime) -> None:
    """Everyone's positive (user, catalogue item) pairs up to the interval, with the latest
    event of each, into the temp table ``_rec_engaged`` (user_id, j, last_event_at).

    Both the popularity prior and co-occurrence read it: the history is scanned once. Needs
    ``_rec_items`` (item_id, j: catalogue position) registered; the caller drops the table.
    """
    con.execute(
        """
        create or replace temp table _rec_engaged as
        select interactions.user_id, _rec_items.j, max(interactions.event_at) as last_event_at
        from user_item_interactions as interactions
        inner join _rec_items on interactions.item_id = _rec_items.item_id
        where interactions.interval_start <= ? and interactions.weight > 0
        group by interactions.user_id, _rec_items.j
        """,
        [interval_start],
    )


def _cooccurrence(
    con: duckdb.DuckDBPyConnection, users: list[str], n_items: int
) -> dict[str, np.ndarray]:
    """B(u, .) for the users being scored (see the module docstring), from everyone's events.

    Reads ``_rec_engaged`` (see :func:`_collect_engaged_pairs`). The pairs come back as
    integer columns and the user ids are dictionary-encoded by Arrow: no Python object per
    pair, so the cost per pair of history stays a fraction of a microsecond.
    """
    import numpy as np
    import pyarrow.compute as pc
    import scipy.sparse as sp

    pairs = query_arrow(con, "select user_id, j from _rec_engaged")
    if pairs.num_rows == 0:
        return {}
    encoded = pc.dictionary_encode(pairs.column("user_id").combine_chunks())
    user_ids = encoded.dictionary.to_pylist()
    x = sp.csr_matrix(
        (
            np.ones(pairs.num_rows),
            (encoded.indices.to_numpy(), pairs.column("j").to_numpy()),
        ),
        shape=(len(user_ids), n_items),
    )
    co = (x.T @ x).tocsr()
    co.setdiag(0)
    u_index = {u: n for n, u in enumerate(user_ids)}
    scored = [u for u in users if u in u_index]
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(scored), _USER_BLOCK):
        block = scored[start : start + _USER_BLOCK]
        values = np.asarray((x[[u_index[u] for u in block]] @ co).todense(), dtype=np.float64)
        for user, row in zip(block, values, strict=True):
            top = row.max()
            if top > 0:
                out[user] = row / top
    return out


# Popularity terms are summed as integers (units of 2 ** -50): an integer sum is exact in any
# order, so parallel threads give identical tables on every rerun without sorting each item's
# users first.
_FIXED_POINT = 2.0**50


def _popularity_prior(
    con: duckdb.DuckDBPyConnection,
    n_items: int,
    interval_end: datetime,
    half_life_hours: float,
) -> np.ndarray:
    """log1p(P_j) / log1p(max P): P_j = users who engaged with j, each decayed by the age of
    their latest positive event on it (a wholesaler's fifty lines count once).

    Reads ``_rec_engaged`` (see :func:`_collect_engaged_pairs`)."""
    import numpy as np

    rows = con.execute(
        """
        select
            j,
            sum(
                cast(
                    round(
                        pow(2.0, -greatest(date_diff('second', last_event_at, $end), 0)
                            / 3600.0 / $half_life)
                        * $scale
                    ) as bigint
                )
            ) as popularity
        from _rec_engaged
        group by j
        """,
        {
            "end": interval_end,
            "half_life": half_life_hours,
            "scale": _FIXED_POINT,
        },
    ).fetchall()
    prior = np.zeros(n_items, dtype=np.float64)
    for j, popularity in rows:
        prior[j] = np.log1p(float(popularity) / _FIXED_POINT)
    top = prior.max() if len(prior) else 0.0
    return prior / top if top > 0 else prior


def _group_bounds(sorted_keys: np.ndarray, keys: np.ndarray) -> dict[str, tuple[int, int]]:
    """Row ranges of each key in an array sorted by key."""
    import numpy as np

    left = np.searchsorted(sorted_keys, keys, side="left")
    right = np.searchsorted(sorted_keys, keys, side="right")
    return {k: (int(lo), int(hi)) for k, lo, hi in zip(keys, left, right, strict=True)}
