"""Fold an interval's events into versioned, time-decaying user interest vectors.

Each event contributes ``weight * 2 ** (-age / half_life) * embedding(text)`` where the age is
measured to the version's ``as_of`` (the interval end) and the text is the item's document
and/or the query/tag text. A version stores the unnormalised decayed sum (``state``), so the
next version is ``state * 2 ** (-(as_of - prev_as_of) / half_life) + new contributions`` —
exactly the contract's sum over all past events, at a cost that grows with the hour's events,
not with the user's history.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from interest_pipeline.warehouse import (
    insert_arrow,
    numpy_to_vectors,
    query_arrow,
    transaction,
    vectors_to_numpy,
)

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

# A decayed sum this small has no direction (e.g. a purchase and its cancellation).
_MIN_NORM = 1e-9

# One row per (event, text) contribution of the events ``{interactions}`` selects (columns of
# user_item_interactions): an item event contributes its item's document, a search/tag event its
# query text; a tag contributes both. Unordered and without the embeddings: each caller orders
# the rows it reads, and reads each distinct text's embedding once.
CONTRIBUTIONS_SQL = """
with interactions as (
    {interactions}
),
contributions as (
    select
        interactions.event_id,
        interactions.user_id,
        interactions.event_type,
        interactions.event_at,
        interactions.weight,
        interactions.item_id,
        'item' as text_kind,
        item_documents.text_hash
    from interactions
    inner join item_documents on interactions.item_id = item_documents.item_id
    union all
    select
        event_id,
        user_id,
        event_type,
        event_at,
        weight,
        item_id,
        'query' as text_kind,
        sha256(query_text) as text_hash
    from interactions
    where query_text is not null
)
select
    contributions.*,
    text_embeddings.text
from contributions
inner join text_embeddings
    on contributions.text_hash = text_embeddings.text_hash
    and text_embeddings.model_id = $model_id
"""


def decay(age_hours: np.ndarray | float, half_life_hours: float) -> np.ndarray | float:
    """2 ** (-age / half_life), with future-dated events (clock skew) treated as age 0."""
    import numpy as np

    return np.exp2(-np.maximum(age_hours, 0.0) / half_life_hours)


def _hours_between(later: datetime, earlier: np.ndarray) -> np.ndarray:
    import numpy as np

    delta = np.datetime64(later, "us") - earlier.astype("datetime64[us]")
    return delta / np.timedelta64(1, "h")


def update_user_vectors(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_start: datetime,
    interval_end: datetime,
    half_life_hours: float,
) -> dict[str, int]:
    """Write the version ``as_of = interval_end`` for every user whose vector changed, and
    then the social component of every user whose followees' interest or follows changed
    (:func:`interest_pipeline.social.update_social_vectors`, which reads the new versions).

    Replaces any rows of this ``as_of`` (same model) in one transaction, so a rerun is exact.
    Returns counts: users_updated, users_without_text (events but no embeddable text),
    social_updated.
    """
    from interest_pipeline.social import update_social_vectors

    with transaction(con):
        counts = _write_interest_versions(
            con, model_id, interval_start, interval_end, half_life_hours
        )
        counts["social_updated"] = update_social_vectors(
            con, model_id, interval_start, interval_end, half_life_hours
        )
    return counts


def _write_interest_versions(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_start: datetime,
    interval_end: datetime,
    half_life_hours: float,
) -> dict[str, int]:
    """The interest versions of ``update_user_vectors`` (the caller holds the transaction)."""
    import numpy as np
    import pyarrow as pa
    import scipy.sparse as sp

    # The contributions without their embeddings, then each distinct text's embedding once:
    # a busy hour repeats the same items' documents many times, and the embeddings are the
    # widest column by far.
    contrib = query_arrow(
        con,
        f"""
        select user_id, event_at, weight, text_hash
        from ({CONTRIBUTIONS_SQL.format(interactions=_INTERVAL_EVENTS_SQL)})
        order by user_id, event_at, event_id, text_kind
        """,
        {"interval_start": interval_start, "model_id": model_id},
    )
    users_with_events = {
        row[0]
        for row in con.execute(
            "select distinct user_id from user_item_interactions where interval_start = ?",
            [interval_start],
        ).fetchall()
    }
    con.execute(
        "delete from user_interest_vectors where as_of = ? and model_id = ?",
        [interval_end, model_id],
    )
    if contrib.num_rows == 0:
        return {"users_updated": 0, "users_without_text": len(users_with_events)}

    users, user_idx = _unique(contrib.column("user_id"))
    hashes, text_idx = _unique(contrib.column("text_hash"))
    emb = embeddings_of(con, model_id, hashes.tolist()).astype(np.float64)
    ages = _hours_between(interval_end, contrib.column("event_at").to_numpy())
    coef = contrib.column("weight").to_numpy(zero_copy_only=False).astype(np.float64)
    coef = coef * decay(ages, half_life_hours)
    # (users x distinct texts), repeated (user, text) pairs summed: the fold of every event
    fold = sp.csr_matrix((coef, (user_idx, text_idx)), shape=(len(users), len(hashes)))
    new_state = np.asarray(fold @ emb)

    prev = _previous_versions(con, model_id, interval_end, list(users))
    event_counts = _events_per_user(con, interval_start, list(users))
    dim = emb.shape[1]
    state = np.zeros((len(users), dim), dtype=np.float64)
    total_events = np.zeros(len(users), dtype=np.int64)
    last_event = np.full(len(users), np.datetime64("NaT"), dtype="datetime64[us]")
    for i, user in enumerate(users):
        p = prev.get(user)
        if p is not None:
            p_state, p_as_of, p_count, p_last = p
            state[i] = p_state * decay(_hours(interval_end, p_as_of), half_life_hours)
            total_events[i] = p_count
            last_event[i] = np.datetime64(p_last, "us")
    state += new_state
    user_last = _max_per_user(user_idx, contrib.column("event_at").to_numpy(), len(users))
    last_event = np.where(
        np.isnat(last_event) | (user_last > last_event), user_last, last_event
    )
    counts_now = np.array([event_counts.get(u, 0) for u in users], dtype=np.int64)
    total_events += counts_now

    norms = np.linalg.norm(state, axis=1)
    keep = norms > _MIN_NORM
    vectors = state[keep] / norms[keep, None]
    n = int(keep.sum())
    rows = pa.table(
        {
            "user_id": pa.array(users[keep].tolist(), pa.string()),
            "as_of": pa.array([interval_end] * n, pa.timestamp("us")),
            "model_id": pa.array([model_id] * n, pa.string()),
            "vector": numpy_to_vectors(vectors),
            "state": numpy_to_vectors(state[keep]),
            "events_in_interval": pa.array(counts_now[keep], pa.int32()),
            "event_count": pa.array(total_events[keep], pa.int64()),
            "last_event_at": pa.array(last_event[keep], pa.timestamp("us")),
        }
    )
    insert_arrow(con, "user_interest_vectors", rows)
    if n < len(users):
        log.info("%d users have a zero decayed sum and keep their previous version", len(users) - n)
    return {
        "users_updated": n,
        "users_without_text": len(users_with_events) - len(users),
    }


def _unique(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` of a string column, by hashing (Arrow's
    dictionary encoding) and then sorting only the distinct values: a busy hour has a
    million contributions but far fewer users and texts."""
    import numpy as np
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column.combine_chunks())
    values = encoded.dictionary.to_numpy(zero_copy_only=False)
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return values[order], rank[encoded.indices.to_numpy()]


_INTERVAL_EVENTS_SQL = (
    "select * from user_item_interactions where interval_start = $interval_start"
)


def embeddings_of(
    con: duckdb.DuckDBPyConnection, model_id: str, hashes: list[str], dim: int | None = None
) -> np.ndarray:
    """The (float32) embeddings of the texts with these hashes, in that order (``dim``: the
    width to give an empty result)."""
    import numpy as np
    import pyarrow as pa

    con.register("_fold_texts", pa.table({
        "text_hash": pa.array(hashes, pa.string()),
        "position": pa.array(np.arange(len(hashes)), pa.int64()),
    }))
    try:
        table = query_arrow(
            con,
            """
            select embedding from text_embeddings
            inner join _fold_texts using (text_hash)
            where model_id = ?
            order by position
            """,
            [model_id],
        )
    finally:
        con.unregister("_fold_texts")
    if table.num_rows != len(hashes):  # the cache holds one row per (model, text)
        raise RuntimeError(f"text_embeddings: {table.num_rows} rows for {len(hashes)} texts")
    return vectors_to_numpy(table.column("embedding"), dim)


def _hours(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 3600.0


def _max_per_user(user_idx: np.ndarray, times: np.ndarray, n_users: int) -> np.ndarray:
    import numpy as np

    ticks = times.astype("datetime64[us]").astype(np.int64)
    out = np.full(n_users, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(out, user_idx, ticks)
    return out.astype("datetime64[us]")


def _previous_versions(
    con: duckdb.DuckDBPyConnection, model_id: str, as_of: datetime, users: list[str]
) -> dict[str, tuple[np.ndarray, datetime, int, datetime]]:
    """The newest version before ``as_of`` of each user (same model)."""
    import pyarrow as pa

    con.register("_fold_users", pa.table({"user_id": pa.array(users, pa.string())}))
    try:
        # Keys first, from narrow columns; then the states of exactly those rows. Picking the
        # newest row while carrying the state would read every version's state (the widest
        # column, growing with history) before discarding all but one per user.
        table = query_arrow(
            con,
            """
            with latest as (
                select user_id, max(as_of) as as_of
                from user_interest_vectors
                where model_id = $model_id and as_of < $as_of
                    and user_id in (select user_id from _fold_users)
                group by user_id
            )
            select versions.user_id, versions.state, versions.as_of, versions.event_count,
                versions.last_event_at
            from user_interest_vectors as versions
            inner join latest
                on versions.user_id = latest.user_id and versions.as_of = latest.as_of
            where versions.model_id = $model_id
            """,
            {"model_id": model_id, "as_of": as_of},
        )
    finally:
        con.unregister("_fold_users")
    states = vectors_to_numpy(table.column("state")).astype("float64")
    rows = table.select(["user_id", "as_of", "event_count", "last_event_at"]).to_pylist()
    return {
        r["user_id"]: (states[i], r["as_of"], r["event_count"], r["last_event_at"])
        for i, r in enumerate(rows)
    }


def _events_per_user(
    con: duckdb.DuckDBPyConnection, interval_start: datetime, users: list[str]
) -> dict[str, int]:
    rows = con.execute(
        "select user_id, count(*) from user_item_interactions "
        "where interval_start = ? group by user_id",
        [interval_start],
    ).fetchall()
    return dict(rows)


def vector_as_of(
    con: duckdb.DuckDBPyConnection, user_id: str, as_of: datetime, model_id: str
) -> tuple[datetime, np.ndarray] | None:
    """Time travel: the version of ``user_id`` in force at ``as_of`` (newest with as_of <= T)."""
    table = query_arrow(
        con,
        """
        select as_of, vector from user_interest_vectors
        where user_id = ? and model_id = ? and as_of <= ?
        order by as_of desc
        limit 1
        """,
        [user_id, model_id, as_of],
    )
    if table.num_rows == 0:
        return None
    return table.column("as_of")[0].as_py(), vectors_to_numpy(table.column("vector"))[0]
