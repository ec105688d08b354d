"""The social dimension: whom a user follows, as of any time, and what those people engage with.

The follow graph is a state that changes: ``follow`` and ``unfollow`` events (both carry
``target_user_id``) are kept in ``user_item_interactions`` like every event, and the graph as of
an interval is, per (user, followee), the newest of those events known by then: an edge exists
when it is a ``follow``. Time travel therefore comes for free: the list as of T uses the graph
as of T.

The social signal of item j for user u (the ``social`` feature of the ranker) is the number of
people u follows who engaged positively with j, each counted with the decay of their latest such
event (``2 ** (-age / half_life)``, the fold's half-life), scaled to [0, 1] by u's best item. Its
weight is fitted with the other features' (zero until a fit adopts it), and it shows in the
evidence as "N people you follow engaged with it".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa

SOCIAL_EVENT_TYPES = ("follow", "unfollow")


def follows_sql(only: str = "true") -> str:
    """SQL of the follow graph known at the interval starting at ``$interval_start``:
    (user_id, followee) rows. ``only`` is a condition on the follow events' ``user_id`` /
    ``target_user_id`` applied before the newest event per edge is picked (both are part of
    the edge, so the result is the same as filtering after), so that the cost follows the
    edges asked for, not the graph."""
    return f"""
select user_id, target_user_id as followee
from (
    select
        user_id,
        target_user_id,
        event_type,
        row_number() over (
            partition by user_id, target_user_id
            order by event_at desc, interval_start desc, event_id desc
        ) as newest
    from user_item_interactions
    where event_type in ('follow', 'unfollow')
        and interval_start <= $interval_start
        and user_id <> target_user_id
        and ({only})
)
where newest = 1 and event_type = 'follow'
"""


def follows_as_of(
    con: duckdb.DuckDBPyConnection, interval_start: datetime, user_id: str | None = None
) -> list[tuple[str, str]]:
    """The edges (user, followee) of the graph known at the interval starting then (of one
    user, if given)."""
    if user_id is None:
        return con.execute(
            follows_sql() + " order by 1, 2", {"interval_start": interval_start}
        ).fetchall()
    return con.execute(
        follows_sql("user_id = $user") + " order by 1, 2",
        {"interval_start": interval_start, "user": user_id},
    ).fetchall()


class SocialSignal:
    """Per scored user, the social feature over the catalogue, kept sparse: the catalogue
    positions the people they follow engaged with, the feature there and how many of those
    people. A dense row per user would cost users x catalogue floats (hundreds of MB for the
    followers of an hour's users over a large catalogue); only the scored block's rows are
    ever dense (:meth:`row`)."""

    def __init__(
        self,
        users: list[str],
        starts: np.ndarray,
        items: np.ndarray,
        values: np.ndarray,
        people: np.ndarray,
        n_items: int,
    ) -> None:
        # users[u]'s entries are items/values/people[starts[u]:starts[u + 1]], items ascending.
        self._index = {user: k for k, user in enumerate(users)}
        self._starts = starts
        self._items = items
        self._values = values
        self._people = people
        self._n_items = n_items

    def __contains__(self, user: object) -> bool:
        return user in self._index

    def __len__(self) -> int:
        return len(self._index)

    def _span(self, user: str) -> slice:
        k = self._index[user]
        return slice(int(self._starts[k]), int(self._starts[k + 1]))

    def row(self, user: str, out: np.ndarray | None = None) -> np.ndarray:
        """The feature over the catalogue (zeros for a user whose followees engaged with
        nothing), written into ``out`` (a zeroed row, e.g. the user's slice of the block's
        features) when given, so that no row is made only to be copied."""
        import numpy as np

        if out is None:
            out = np.zeros(self._n_items, dtype=np.float64)
        if user in self._index:
            span = self._span(user)
            out[self._items[span]] = self._values[span]
        return out

    def at(self, user: str, js: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At catalogue positions ``js``: how many people the user follows engaged with each
        (0: none) and the feature there."""
        import numpy as np

        span = self._span(user)
        items = self._items[span]
        where = np.minimum(np.searchsorted(items, js), max(len(items) - 1, 0))
        found = items[where] == js if len(items) else np.zeros(len(js), dtype=bool)
        people = np.where(found, self._people[span][where], 0)
        values = np.where(found, self._values[span][where], 0.0)
        return people, values


def social_signal(
    con: duckdb.DuckDBPyConnection,
    interval_start: datetime,
    interval_end: datetime,
    half_life_hours: float,
    n_items: int,
) -> SocialSignal:
    """Per scored user: the social feature over the catalogue, and per item how many of the
    people they follow engaged with it (for the evidence).

    Reads ``_rec_users`` (the scored users) and ``_rec_engaged`` (everyone's positive
    (user, item position j, latest event) pairs) that the recommend stage prepared.
    """
    import numpy as np
    import pyarrow.compute as pc

    from interest_pipeline.warehouse import query_arrow

    table = query_arrow(
        con,
        f"""
        with follows as ({follows_sql("user_id in (select user_id from _rec_users)")})
        select
            follows.user_id,
            engaged.j,
            count(*) as people,
            sum(pow(2.0, -greatest(date_diff('second', engaged.last_event_at, $end), 0)
                / 3600.0 / $half_life)) as signal
        from follows
        inner join _rec_engaged as engaged on engaged.user_id = follows.followee
        group by 1, 2
        order by 1, 2
        """,
        {"interval_start": interval_start, "end": interval_end, "half_life": half_life_hours},
    )
    # Rows come ordered by user: each user's entries are one run of the encoded column.
    codes = pc.dictionary_encode(table.column("user_id").combine_chunks())
    users = codes.dictionary.to_pylist()
    idx = codes.indices.to_numpy()
    starts = np.concatenate(
        ([0], np.flatnonzero(idx[1:] != idx[:-1]) + 1, [len(idx)])
    ).astype(np.int64)
    values = table.column("signal").to_numpy().astype(np.float64)
    if len(values):
        # Scaled to [0, 1] by each user's best item (a user whose best is 0 stays 0).
        top = np.repeat(np.maximum.reduceat(values, starts[:-1]), np.diff(starts))
        np.divide(values, top, out=values, where=top > 0)
    return SocialSignal(
        users,
        starts,
        table.column("j").to_numpy().astype(np.int64),
        values,
        table.column("people").to_numpy().astype(np.int64),
        n_items,
    )


def social_evidence(people: int, score: float) -> dict:
    """The evidence entry for an item that ``people`` followees engaged with."""
    noun = "person" if people == 1 else "people"
    return {
        "event_type": "social",
        "item_id": None,
        "text": f"{people} {noun} you follow engaged with it",
        "people": people,
        "contribution": round(float(score), 4),
    }


# --------------------------------------------------------------------------------------------
# The social component of a user's interest: the people they follow, as one vector
# --------------------------------------------------------------------------------------------


def update_social_vectors(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_start: datetime,
    interval_end: datetime,
    half_life_hours: float,
) -> int:
    """Write the social version ``as_of = interval_end`` of every user whose social component
    changed in the interval; returns how many.

    The social vector of u is the unit-length weighted mean of the newest interest vectors of
    the people u follows (the graph known at the interval), each weighted by
    ``2 ** (-age of their latest event / half_life)``: a followee active lately counts more.
    All weights age at the same rate, so the direction changes only when a followee gets a
    new version or the graph changes; exactly those users are recomputed: whoever followed or
    unfollowed someone in the interval, and the followers of everyone with a new interest
    version at ``interval_end``. The cost follows the changed users and their followers, not
    the graph. Rows of this ``as_of`` are replaced, so a rerun is exact. Run it after the
    interval's interest versions are written; the caller holds the transaction. The table
    is ``user_social_vectors`` (DDL in :mod:`interest_pipeline.warehouse`).
    """
    from interest_pipeline.warehouse import insert_arrow

    con.execute(
        "delete from user_social_vectors where as_of = ? and model_id = ?",
        [interval_end, model_id],
    )
    params = {"interval_start": interval_start, "end": interval_end, "model_id": model_id}
    changed = follows_sql(
        "target_user_id in (select user_id from user_interest_vectors "
        "where as_of = $end and model_id = $model_id)"
    )
    affected = [
        row[0]
        for row in con.execute(
            f"""
            select user_id from user_item_interactions
            where interval_start = $interval_start and event_type in {SOCIAL_EVENT_TYPES}
            union
            select user_id from ({changed})
            order by 1
            """,
            params,
        ).fetchall()
    ]
    if not affected:
        return 0
    insert_arrow(
        con, "user_social_vectors",
        _social_versions(con, model_id, affected, interval_start, interval_end, half_life_hours),
    )
    return len(affected)


def social_vectors_as_of(
    con: duckdb.DuckDBPyConnection, model_id: str, as_of: datetime, users_table: str
) -> dict[str, tuple[np.ndarray, int]]:
    """Time travel: (unit social vector, followees) in force at ``as_of`` of each user in the
    registered table ``users_table`` (column user_id) that has one."""
    from interest_pipeline.warehouse import query_arrow, table_exists, vectors_to_numpy

    if not table_exists(con, "user_social_vectors"):
        return {}
    table = query_arrow(
        con,
        f"""
        with latest as (
            select user_id, max(as_of) as as_of
            from user_social_vectors
            where model_id = $model_id and as_of <= $as_of
                and user_id in (select user_id from {users_table})
            group by user_id
        )
        select versions.user_id, versions.vector, versions.followees
        from user_social_vectors as versions
        inner join latest
            on versions.user_id = latest.user_id and versions.as_of = latest.as_of
        where versions.model_id = $model_id and versions.vector is not null
        order by versions.user_id
        """,
        {"model_id": model_id, "as_of": as_of},
    )
    if table.num_rows == 0:
        return {}
    vecs = vectors_to_numpy(table.column("vector"))
    return {
        user: (vecs[i], count)
        for i, (user, count) in enumerate(
            zip(table.column("user_id").to_pylist(), table.column("followees").to_pylist(),
                strict=True)
        )
    }


def _social_versions(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    affected: list[str],
    interval_start: datetime,
    interval_end: datetime,
    half_life_hours: float,
) -> pa.Table:
    """The social version as of ``interval_end`` of each of ``affected`` (sorted ids), from
    the graph known at the interval and the followees' newest interest versions."""
    import numpy as np
    import pyarrow as pa
    import scipy.sparse as sp

    from interest_pipeline.warehouse import query_arrow, vectors_to_numpy

    params = {"interval_start": interval_start, "end": interval_end, "model_id": model_id}
    con.register("_social_users", pa.table({"user_id": pa.array(affected, pa.string())}))
    try:
        # Keys first from narrow columns, then the vectors of exactly those rows (as the fold
        # reads previous versions): the vector column is the widest and grows with history.
        edges = query_arrow(
            con,
            f"""
            with follows as ({follows_sql("user_id in (select user_id from _social_users)")}),
            latest as (
                select user_id, max(as_of) as as_of
                from user_interest_vectors
                where model_id = $model_id and as_of <= $end
                    and user_id in (select followee from follows)
                group by user_id
            )
            select follows.user_id, versions.vector, versions.last_event_at
            from follows
            inner join latest on latest.user_id = follows.followee
            inner join user_interest_vectors as versions
                on versions.user_id = latest.user_id and versions.as_of = latest.as_of
                and versions.model_id = $model_id
            order by follows.user_id, follows.followee
            """,
            params,
        )
    finally:
        con.unregister("_social_users")
    index = {user: i for i, user in enumerate(affected)}
    n = len(affected)
    followees = np.zeros(n, dtype=np.int64)
    sums = None
    if edges.num_rows:
        rows = np.array([index[u] for u in edges.column("user_id").to_pylist()], dtype=np.int64)
        vecs = vectors_to_numpy(edges.column("vector")).astype(np.float64)
        last = edges.column("last_event_at").to_numpy().astype("datetime64[us]")
        ages = (np.datetime64(interval_end, "us") - last) / np.timedelta64(1, "h")
        weights = np.power(2.0, -np.maximum(ages, 0.0) / half_life_hours)
        fold = sp.csr_matrix((weights, (rows, np.arange(len(rows)))), shape=(n, len(rows)))
        sums = np.asarray(fold @ vecs)
        followees = np.bincount(rows, minlength=n)
    # A list column with nulls (no followee with an interest): built from Python lists.
    vectors: list[list[float] | None] = [None] * n
    if sums is not None:
        norms = np.linalg.norm(sums, axis=1)
        for i in np.flatnonzero(norms > 1e-9):
            vectors[i] = (sums[i] / norms[i]).astype(np.float32).tolist()
    table = pa.table(
        {
            "user_id": pa.array(affected, pa.string()),
            "as_of": pa.array([interval_end] * n, pa.timestamp("us")),
            "model_id": pa.array([model_id] * n, pa.string()),
            "vector": pa.array(vectors, pa.list_(pa.float32())),
            "followees": pa.array(followees, pa.int32()),
        }
    )
    return table


def recompute_social_vectors(
    con: duckdb.DuckDBPyConnection, users: list[str], half_life_hours: float
) -> int:
    """Recompute every existing social version of ``users`` from the graph and interest
    versions as they are now (after an erasure removed someone they followed, whose
    interest must not live on in theirs); returns the rows rewritten."""
    from interest_pipeline.warehouse import insert_arrow

    if not users:
        return 0
    keys = con.execute(
        "select distinct model_id, as_of from user_social_vectors "
        "where user_id in (select unnest(?::varchar[])) order by 1, 2",
        [users],
    ).fetchall()
    rewritten = 0
    for model_id, as_of in keys:
        who = [r[0] for r in con.execute(
            "select user_id from user_social_vectors where model_id = ? and as_of = ? "
            "and user_id in (select unnest(?::varchar[])) order by 1",
            [model_id, as_of, users],
        ).fetchall()]
        con.execute(
            "delete from user_social_vectors where model_id = ? and as_of = ? "
            "and user_id in (select unnest(?::varchar[]))",
            [model_id, as_of, who],
        )
        # The fold goes hour by hour: a version as of T was computed for [T - 1 h, T).
        start = as_of - timedelta(hours=1)
        insert_arrow(
            con, "user_social_vectors",
            _social_versions(con, model_id, who, start, as_of, half_life_hours),
        )
        rewritten += len(who)
    return rewritten
