"""Top-N recommendations per user, with the evidence behind each item.

Score of item j for user u: ``w · features(u, j)`` with the weights of the ranker in force
(:mod:`interest_pipeline.ranker`: fitted daily on the warehouse's history; before the first
fit, or with too little history, the documented defaults of :class:`ScoringConfig`). The
features (:data:`FEATURES`):

- ``content``: the user's interest vector (one decayed average of everything) against the
  item's document embedding, ``cos(v_u, e_j)``.
- ``interests``: several interests instead of one average. Every contribution c of the user's
  latest ``evidence_events`` events (an engaged item's document or a query/tag text) is an
  interest with importance ``a_c = weight * decay`` (as in the fold); the feature is the power
  mean ``(sum_c a_c * max(0, cos(t_c, e_j)) ** p / sum_c a_c) ** (1 / p)`` over the positive
  contributions. ``p = 1`` is an average; a large ``p`` scores an item by the interest it is
  closest to, so a user who buys candles and garden tools is not recommended the midpoint.
- ``popularity``: a recency-popularity prior, ``log1p(P_j) / log1p(max P)`` with
  ``P_j = sum over the users who engaged positively with j of 2 ** (-age / popularity_half_life)``,
  age of each user's latest such event (counted no later than the end of the hour it arrived
  in), over everyone's events known at the interval end.
- ``cooccurrence``: behaviour, item-to-item: ``sum_i C(i, j)`` over the items i the user engaged
  with positively, ``C(i, j)`` = users who engaged with both, scaled to [0, 1] by the user's
  best item.

``P`` and ``C`` are catalogue-wide: the warehouse keeps them as exact aggregates updated per
interval (:mod:`interest_pipeline.catalogue_stats`), so their cost follows the hour, not the
history; the rest reads only the scored users' (and their followees') rows.
- ``own_recency``: the user's own decayed engagement with j among those latest events (a venue
  visited, an item viewed or carted), scaled by the user's strongest.
- ``new_item``: 1 for an item nobody has engaged with positively yet.
- ``social``: the people the user follows (the graph as of the interval), each counted with the
  decay of their latest positive event on j, scaled to [0, 1] (:mod:`interest_pipeline.social`).
- ``social_taste``: the social component of the user's interest against the item,
  ``cos(s_u, e_j)``, where ``s_u`` is the decayed mean of the interest vectors of the people u
  follows (``user_social_vectors``, as of the interval). With ``content`` it fuses the user's
  own interest and their followees' into one direction, ``w_content v_u + w_social_taste s_u``,
  in the proportion the fit finds.
- ``social_few``, ``social_taste_few``: the same two for a user with fewer than
  ``FEW_OWN_EVENTS`` events of their own (among their latest ``evidence_events``), where
  ``social`` and ``social_taste`` are 0 (and the other way round): what the people one follows
  say counts for more when one has said little oneself, so the fit weighs the two groups apart.

Only items the interest vector points towards qualify (``cos(v_u, e_j) > 0``): a user known
only from cancellations gets no list rather than the items least like what they returned (or
the merely popular ones). A user with no taste of their own (no events with a text, e.g. only
follows) whose followees engaged with something gets the new-visitor order (trending) plus the
ranker's fitted ``social_boost`` times the ``social`` signal: the people they follow move the
popular items they engaged with up (:meth:`_Context.follow_only_row`). Items the
user already bought or rated are excluded. The user's best new item takes rank
``INTEREST_NEW_ITEM_RANK`` when none ranks higher. Evidence for an item =
the user's past contributions (item documents or query/tag texts, decayed and weighted as in
the fold) that point most towards it.

Who gets a list as of an interval end: every user with a new version then; at the daily refresh
(the interval ending at midnight UTC) also every user active within
``INTEREST_REFRESH_HORIZON_HOURS``; and the new-visitor list (trending now) is written every
hour to ``new_user_recommendations``; also every user who followed or unfollowed someone in the
interval, and the followers of every user with a new version (their social signal changed).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from interest_pipeline.catalogue_stats import CatalogueStats, catalogue_stats
from interest_pipeline.config import max_event_skew_hours
from interest_pipeline.evidence import TRENDING_EVIDENCE, EvidenceWriter
from interest_pipeline.social import (
    follows_sql,
    social_evidence,
    social_signal,
    social_vectors_as_of,
)
from interest_pipeline.user_vectors import CONTRIBUTIONS_SQL, decay, embeddings_of
from interest_pipeline.warehouse import (
    database_path,
    insert_arrow,
    query_arrow,
    transaction,
    vectors_to_numpy,
)

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa
    import scipy.sparse as sp

    from interest_pipeline.ranker import Ranker

log = logging.getLogger(__name__)

CONSUMED_EVENT_TYPES = ("purchase", "rate")
# Users scored per matrix multiply: bounds memory at block x items floats.
_USER_BLOCK = 1024
# Distinct texts compared with the catalogue per matrix product of the several-interests term:
# bounds its float64 block (texts x items) to about 100 MB at 6,000 items.
_TEXT_BLOCK = 2048
# The several-interests rows (texts x items) kept for the hour, and the co-occurrence counts
# (items x items) made dense: at most 256 MB of float64 each.
_POWERED_CELLS = 32_000_000
# Users whose features are scored at once: their (users, features, items) block is about
# 100 MB at 6,000 items.
_SCORE_BLOCK = 256
# Users whose evidence is computed in one product (their texts x the union of their lists).
_EVIDENCE_BLOCK = 256


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


@dataclass(frozen=True)
class _Catalogue:
    """The embedded catalogue by item id: ids, their documents' text hashes, embeddings."""

    ids: np.ndarray
    hashes: np.ndarray
    vectors: np.ndarray

    @functools.cached_property
    def by_hash(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions in hash order, the hashes in that order): sorted once per catalogue,
        not once per hour."""
        import numpy as np

        order = np.argsort(self.hashes, kind="stable")
        return order, self.hashes[order]


# The catalogue last loaded per (warehouse file, model id). An embedding is a function of
# (model id, text hash), so while the items' hashes are the same so are their vectors: an
# evaluation scoring hundreds of hours reads the hashes, not 1,600 x 384 floats, each hour.
_CATALOGUES: dict[tuple[str, str], _Catalogue] = {}


def _load_items(con: duckdb.DuckDBPyConnection, model_id: str) -> _Catalogue:
    import numpy as np

    table = query_arrow(
        con,
        """
        select item_documents.item_id, item_documents.text_hash
        from item_documents
        semi join text_embeddings
            on item_documents.text_hash = text_embeddings.text_hash
            and text_embeddings.model_id = ?
        order by item_documents.item_id
        """,
        [model_id],
    )
    ids = table.column("item_id").to_numpy(zero_copy_only=False)
    hashes = table.column("text_hash").to_numpy(zero_copy_only=False)
    path = database_path(con)
    kept = _CATALOGUES.get((path, model_id)) if path is not None else None
    if kept is not None and np.array_equal(kept.ids, ids) and np.array_equal(kept.hashes, hashes):
        return kept
    catalogue = _Catalogue(ids, hashes, embeddings_of(con, model_id, hashes.tolist()))
    if path is not None:
        _CATALOGUES.clear()  # one at a time: a process scores one warehouse
        _CATALOGUES[(path, model_id)] = catalogue
    return catalogue


def _text_vectors(
    con: duckdb.DuckDBPyConnection, model_id: str, hashes: np.ndarray, catalogue: _Catalogue
) -> np.ndarray:
    """The embeddings of these text hashes, in order: those of item documents from the
    catalogue, the others (queries, tags) read."""
    import numpy as np

    if not len(catalogue.ids):
        return embeddings_of(con, model_id, hashes.tolist())
    out = np.zeros((len(hashes), catalogue.vectors.shape[1]), dtype=np.float32)
    order, sorted_hashes = catalogue.by_hash
    at = np.searchsorted(sorted_hashes, hashes)
    found = (at < len(order)) & (sorted_hashes[np.minimum(at, len(order) - 1)] == hashes)
    out[found] = catalogue.vectors[order[at[found]]]
    if not found.all():
        out[~found] = embeddings_of(con, model_id, hashes[~found].tolist(), out.shape[1])
    return out


# Each user's latest ``$limit`` events among the rows of ``{source}``, newest first. A top-k
# aggregate keeps a heap of k per user while reading the few columns it needs, so the cost
# follows the scored users' events rather than sorting (or joining embeddings to) the whole
# history; the embedding join then sees at most k events per user.
_TOP_EVENTS_SQL = """
select unnest(latest, recursive := true)
from (
    select max_by(
        {{
            'event_id': event_id,
            'user_id': user_id,
            'event_type': event_type,
            'event_at': event_at,
            'weight': weight,
            'item_id': item_id,
            'query_text': query_text
        }},
        (event_at, event_id),
        $limit
    ) as latest
    from {source}
    group by user_id
)
"""
# The same over the interactions up to the interval that ``{where}`` keeps (still a template).
_LATEST_EVENTS_SQL = _TOP_EVENTS_SQL.replace(
    "{source}", "user_item_interactions where interval_start <= $interval_start and {where}"
)
# Windows of recent intervals (hours) searched in turn for a user's latest events before the
# whole history (only a speed-up: the result is the same; see _latest_events).
_RECENT_WINDOWS_HOURS = (24, 24 * 7, 24 * 7 * 8)


def _latest_events(con: duckdb.DuckDBPyConnection, interval_start: datetime, limit: int) -> None:
    """``_rec_latest``: the latest ``limit`` events of each user of ``_rec_users``.

    Most users' latest events are in the last hours, and an event can be dated at most
    INTEREST_MAX_EVENT_SKEW_HOURS after its arrival hour (dbt quarantines the rest): so the
    intervals of a recent window are read first, and a user whose ``limit``-th latest event
    there is newer than anything an earlier interval can hold is done. The others go on to the
    intervals of a longer window, and only those left (new or quiet users) to the rest of their
    history. Each step reads only the intervals the previous ones did not, and merges what it
    finds into the users' latest so far: every row of history is read at most once, and a
    long history of active users is not rescanned every hour.
    """
    params = {"interval_start": interval_start, "limit": limit}
    con.execute("create or replace temp table _rec_pending as select user_id from _rec_users")
    # The pending users' latest events so far (within the intervals read).
    con.execute(
        "create or replace temp table _rec_best as " + _LATEST_EVENTS_SQL.format(where="false"),
        params,
    )
    con.execute("create or replace temp table _rec_latest as select * from _rec_best")
    best = 0  # rows in _rec_best: a step that finds or settles nothing skips its writes
    newer = None  # intervals from this one on have been read
    for hours in (*_RECENT_WINDOWS_HOURS, None):
        window = interval_start - timedelta(hours=hours - 1) if hours else None
        where, step = ["user_id in (select user_id from _rec_pending)"], dict(params)
        if window is not None:
            where.append("interval_start >= $window")
            step["window"] = window
        if newer is not None:
            where.append("interval_start < $newer")
            step["newer"] = newer
        found = _count(con.execute(
            "create or replace temp table _rec_found as "
            + _LATEST_EVENTS_SQL.format(where=" and ".join(where)),
            step,
        ))
        if found and best:
            best = _merge_latest(con, limit, best)
        elif found:
            best = _count(con.execute("insert into _rec_best select * from _rec_found"))
        newer = window
        if window is None:
            break
        if not best:
            continue  # nothing found yet, so nobody to settle
        # Done: limit events, all newer than an event of an earlier interval can be.
        done = _count(con.execute(
            """
            create or replace temp table _rec_done as
            select user_id from _rec_best
            group by user_id
            having count(*) >= $limit and min(event_at) > $older_bound
            """,
            # An earlier interval ends by ``window`` (one hour after its start at the latest),
            # so its events are dated at most that plus the skew.
            {
                "limit": limit,
                "older_bound": window + timedelta(hours=1 + max_event_skew_hours()),
            },
        ))
        if done:
            best -= _count(con.execute(
                "insert into _rec_latest select * from _rec_best "
                "where user_id in (select user_id from _rec_done)"
            ))
            for table in ("_rec_best", "_rec_pending"):
                con.execute(
                    f"delete from {table} where user_id in (select user_id from _rec_done)"
                )
    if best:
        con.execute("insert into _rec_latest select * from _rec_best")
    for temp in ("_rec_pending", "_rec_best", "_rec_found", "_rec_done"):
        con.execute(f"drop table if exists {temp}")


def _count(result: duckdb.DuckDBPyConnection) -> int:
    """The row count a DuckDB write statement returns (rows created, inserted or deleted)."""
    ((n,),) = result.fetchall()
    return int(n)


def _merge_latest(con: duckdb.DuckDBPyConnection, limit: int, best: int) -> int:
    """Fold ``_rec_found`` (latest events within newly read intervals) into ``_rec_best``
    (``best`` rows): only the users found there change, to the latest ``limit`` of both.
    Returns the rows of ``_rec_best`` after."""
    con.execute(
        "create or replace temp table _rec_merged as "
        + _TOP_EVENTS_SQL.format(
            source="(select * from _rec_best "
            "where user_id in (select user_id from _rec_found) "
            "union all select * from _rec_found)"
        ),
        {"limit": limit},
    )
    best -= _count(
        con.execute("delete from _rec_best where user_id in (select user_id from _rec_found)")
    )
    best += _count(con.execute("insert into _rec_best select * from _rec_merged"))
    con.execute("drop table _rec_merged")
    return best


def _evidence_contributions(
    con: duckdb.DuckDBPyConnection, model_id: str, interval_start: datetime, limit: int
) -> pa.Table:
    """The contributions of each scored user's latest ``limit`` events up to this interval,
    ordered by user, newest first."""
    _latest_events(con, interval_start, limit)
    inner = CONTRIBUTIONS_SQL.format(interactions="select * from _rec_latest")
    try:
        return query_arrow(
            con,
            f"""
            select contributions.*, items.title
            from ({inner}) as contributions
            left join items
                on contributions.text_kind = 'item' and contributions.item_id = items.item_id
            order by contributions.user_id, contributions.event_at desc,
                contributions.event_id desc, contributions.text_kind
            """,
            {"model_id": model_id},
        )
    finally:
        con.execute("drop table if exists _rec_latest")


def _consumed(
    con: duckdb.DuckDBPyConnection, interval_start: datetime
) -> dict[str, np.ndarray]:
    """Per scored user, the catalogue positions of the items they consumed (never shown
    again). Needs ``_rec_users`` and ``_rec_items`` registered."""
    import numpy as np

    rows = con.execute(
        f"""
        select consumed.user_id, list(_rec_items.j order by _rec_items.j)
        from (
            select distinct user_id, item_id
            from user_item_interactions
            where interval_start <= ?
                and event_type in {CONSUMED_EVENT_TYPES}
                and item_id is not null
                and user_id in (select user_id from _rec_users)
        ) as consumed
        inner join _rec_items on consumed.item_id = _rec_items.item_id
        group by consumed.user_id
        """,
        [interval_start],
    ).fetchall()
    return {user: np.array(js, dtype=np.int64) for user, js in rows}


# Who is due a list as of an interval end (see the module docstring); parameters $end,
# $model_id, $refresh (the daily refresh is due) and $active_since.
_USERS_DUE_SQL = """
with fresh as (
    select user_id, vector from user_interest_vectors
    where as_of = $end and model_id = $model_id
),
stale as (
    select user_id, arg_max(vector, as_of) as vector
    from user_interest_vectors
    where $refresh and model_id = $model_id and as_of < $end
        and user_id not in (select user_id from fresh)
    group by user_id
    having max(last_event_at) >= $active_since
),
social as (
    -- Whose social side changed (a new social version: they (un)followed someone in
    -- the interval, or someone they follow has a new version).
    select user_id from user_social_vectors
    where as_of = $end and model_id = $model_id
),
social_only as (
    select social.user_id, (
        select arg_max(versions.vector, versions.as_of)
        from user_interest_vectors as versions
        where versions.user_id = social.user_id and versions.model_id = $model_id
            and versions.as_of <= $end
    ) as vector
    from social
    where social.user_id not in (select user_id from fresh)
        and social.user_id not in (select user_id from stale)
)
select {columns} from (
    select * from fresh
    union all
    select * from stale
    union all
    select * from social_only
)
order by user_id
"""


def users_due(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_end: datetime,
    vectors: bool = True,
) -> pa.Table:
    """The users due a list as of ``interval_end`` (user_id, and their interest vector unless
    ``vectors`` is False; a user with only follows has a null vector), by user id."""
    return query_arrow(
        con,
        _USERS_DUE_SQL.format(columns="user_id, vector" if vectors else "user_id"),
        {
            "end": interval_end,
            "model_id": model_id,
            "refresh": refresh_due(interval_end),
            "active_since": interval_end - timedelta(hours=refresh_horizon_hours()),
        },
    )


def write_recommendations(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_start: datetime,
    interval_end: datetime,
    top_n: int,
    half_life_hours: float,
    evidence_events: int,
    config: ScoringConfig | None = None,
    users: Collection[str] | None = None,
    new_user: bool = True,
) -> dict[str, int]:
    """Replace the recommendations ``as_of = interval_end``: every user with a new version,
    and, at the daily refresh, every user active within the refresh horizon (so changing
    popularity and co-occurrence reach users who did not act); plus the new-visitor list.

    ``users``: replace only the lists of these users (of those due; the other rows of the
    interval stay as they are), and ``new_user=False``: leave the new-visitor list alone. An
    evaluation rescoring after a scoring change writes only the lists its cut-offs read
    (:mod:`interest_pipeline.eval_lists`); a user's list depends on no other user scored
    with it, so those lists are the same as in a full run."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from interest_pipeline.ranker import ranker_in_force

    config = config or scoring_config()
    ranker = ranker_in_force(con, model_id, interval_end, config)
    refresh = refresh_due(interval_end)
    users_table = users_due(con, model_id, interval_end)
    only = None
    if users is not None:
        only = pa.array(sorted(users), pa.string())
        users_table = users_table.filter(pc.is_in(users_table.column("user_id"), only))
    con.execute(NEW_USER_DDL)
    with transaction(con):
        if only is None:
            con.execute(
                "delete from recommendations where as_of = ? and model_id = ?",
                [interval_end, model_id],
            )
        else:
            con.execute(
                "delete from recommendations where as_of = ? and model_id = ? "
                "and user_id in (select unnest(?::varchar[]))",
                [interval_end, model_id, only.to_pylist()],
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
            config,
            ranker,
        )
        insert_arrow(con, "recommendations", rows)
        if new_user:
            new_user_rows = new_user_list(con, model_id, interval_end, top_n, ranker)
            con.execute(
                "delete from new_user_recommendations where as_of = ? and model_id = ?",
                [interval_end, model_id],
            )
            insert_arrow(con, "new_user_recommendations", new_user_rows)
    written = len(set(rows.column("user_id").to_pylist())) if rows.num_rows else 0
    return {
        "recommendations_written": rows.num_rows,
        "users_recommended": written,
        "users_refreshed": users_table.num_rows if refresh else 0,
        "ranker_version": ranker.version,
    }


NEW_USER_DDL = """
create table if not exists new_user_recommendations (
    as_of timestamp not null,
    model_id varchar not null,
    rank integer not null,
    item_id varchar not null,
    score double not null,
    ranker_version varchar not null
);
"""


def new_item_slot() -> int:
    """INTEREST_NEW_ITEM_RANK (default 20, the last of a default list; 0: none): the rank given
    to the user's best new item (one nobody has engaged with yet) when none is ranked
    higher. Measured on retail, the slot at rank 10 cost 4 % of NDCG@10 for no new-item hit
    in the first ten, so by default it takes the last place."""
    return int(os.environ.get("INTEREST_NEW_ITEM_RANK", "20"))


def refresh_horizon_hours() -> float:
    """INTEREST_REFRESH_HORIZON_HOURS (default 168): users active within it get a re-scored
    list at the daily refresh."""
    return float(os.environ.get("INTEREST_REFRESH_HORIZON_HOURS", "168"))


def refresh_due(interval_end: datetime) -> bool:
    """The daily refresh runs at the interval ending at midnight UTC."""
    return interval_end.hour == 0 and interval_end.minute == 0


def new_user_list(
    con: duckdb.DuckDBPyConnection, model_id: str, as_of: datetime, top_n: int, ranker: Ranker
) -> pa.Table:
    """The list served to a user with no history at ``as_of``: trending now, by the
    recency-popularity with the ranker's fitted half-life."""
    import pyarrow as pa

    from interest_pipeline.ranker import trending_order

    ranked = trending_order(con, as_of, ranker.trending_half_life_hours, top_n)
    items = [item for item, _ in ranked]
    n = len(items)
    return pa.table(
        {
            "as_of": pa.array([as_of] * n, pa.timestamp("us")),
            "model_id": pa.array([model_id] * n, pa.string()),
            "rank": pa.array(range(1, n + 1), pa.int32()),
            "item_id": pa.array(items, pa.string()),
            "score": pa.array([score for _, score in ranked], pa.float64()),
            "ranker_version": pa.array([ranker.version] * n, pa.string()),
        }
    )


FEATURES = (
    "content",
    "interests",
    "popularity",
    "cooccurrence",
    "own_recency",
    "new_item",
    "social",
    "social_taste",
    "social_few",
    "social_taste_few",
)
# A user with fewer events of their own than this (with a text, among their latest
# evidence_events) has their social features in the ``_few`` columns: the issue's "little
# history", where the graph has the most to add.
FEW_OWN_EVENTS = 3
# Where a user's (social, social_taste) go: the ``_few`` pair for a user with little history.
_SOCIAL_COLUMNS = {
    False: (FEATURES.index("social"), FEATURES.index("social_taste")),
    True: (FEATURES.index("social_few"), FEATURES.index("social_taste_few")),
}


class _Context:
    """What scoring needs, read once per (interval, scored users): the catalogue, each user's
    latest contributions, consumed items and the catalogue-wide statistics."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        model_id: str,
        users: list[str],
        interval_start: datetime,
        interval_end: datetime,
        half_life_hours: float,
        evidence_events: int,
        config: ScoringConfig,
        trending_half_lives: Sequence[float] = (),
    ) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        self.config = config
        catalogue = _load_items(con, model_id)
        self.item_ids, self.item_vecs = catalogue.ids, catalogue.vectors
        n_items = len(self.item_ids)
        con.register("_rec_users", pa.table({"user_id": pa.array(users, pa.string())}))
        con.register(
            "_rec_items",
            pa.table({
                "item_id": pa.array(self.item_ids.tolist(), pa.string()),
                "j": pa.array(np.arange(n_items), pa.int32()),
            }),
        )
        try:
            self.consumed = _consumed(con, interval_start)
            rows = _evidence_contributions(con, model_id, interval_start, evidence_events)
            _collect_engaged_pairs(con, interval_start)
            self.social = social_signal(
                con, interval_start, interval_end, half_life_hours, n_items
            )
            self.social_vecs = social_vectors_as_of(con, model_id, interval_end, "_rec_users")
            ev_times = rows.column("event_at").to_numpy().astype("datetime64[us]")
            ages = (np.datetime64(interval_end, "us") - ev_times) / np.timedelta64(1, "h")
            self.ev_coef = rows.column("weight").to_numpy(zero_copy_only=False) * decay(
                ages, half_life_hours
            )
            # Nobody with a taste (has_taste) or people they follow (has_social) gets no
            # list: then the catalogue-wide statistics are not read (an evaluation's rescore
            # scores the hours of users with only cancellations by themselves).
            if (self.ev_coef > 0).any() or self.social:
                stats = catalogue_stats(
                    con, self.item_ids.tolist(), interval_start,
                    (config.popularity_half_life_hours, *trending_half_lives),
                )
            else:
                stats = CatalogueStats.nothing(
                    n_items, (config.popularity_half_life_hours, *trending_half_lives)
                )
            self.prior = _popularity_prior(stats.popularity[config.popularity_half_life_hours])
            # Recency-popularity by each trending half-life, for users with no taste of their
            # own (:meth:`follow_only_row`).
            self.trending = {float(h): stats.popularity[float(h)] for h in trending_half_lives}
            self.engaged = stats.engaged
            # Catalogue positions of the items nobody engaged with yet (in catalogue order).
            self.new_items = np.flatnonzero(~self.engaged)
            self.behaviour = _Cooccurrence(con, len(users), stats.cooccurrence)
        finally:
            con.execute("drop table if exists _rec_engaged")
            con.unregister("_rec_users")
            con.unregister("_rec_items")

        ev_users = rows.column("user_id").to_numpy(zero_copy_only=False)
        # Each distinct text's embedding once (text_vecs), and per contribution its text
        # (ev_text): the latest events of many users repeat the same documents. Texts are
        # numbered in hash order, so a user's several-interests sum runs over their texts in
        # the same order whoever else is scored in the hour (the same floats to the bit).
        texts = pc.dictionary_encode(rows.column("text_hash").combine_chunks())
        hashes = texts.dictionary.to_numpy(zero_copy_only=False)
        order = np.argsort(hashes, kind="stable")
        number = np.empty(len(order), dtype=np.int64)
        number[order] = np.arange(len(order))
        self.ev_text = number[texts.indices.to_numpy()]
        self.text_vecs = _text_vectors(con, model_id, hashes[order], catalogue)
        # Each contribution's catalogue position (-1: a query or tag, or an item not listed).
        position = pc.index_in(
            rows.column("item_id"), value_set=pa.array(self.item_ids.tolist(), pa.string())
        )
        self.ev_item = pc.fill_null(
            pc.if_else(pc.equal(rows.column("text_kind"), "item"), position, None), -1
        ).to_numpy().astype(np.int64)
        # What evidence shows of each contribution (see interest_pipeline.evidence).
        self.contributions = rows.select(
            ["event_type", "item_id", "text_kind", "title", "text", "event_at"]
        )
        self.ev_bounds = _group_bounds(ev_users, np.array(users, dtype=object))
        # 1 on the first contribution of each event (an event's contributions are adjacent:
        # the rows are ordered by user, time and event): a user's events are their sum.
        ev_ids = rows.column("event_id").to_numpy(zero_copy_only=False)
        self.ev_first = np.ones(len(ev_ids), dtype=np.int64)
        self.ev_first[1:] = (ev_ids[1:] != ev_ids[:-1]) | (ev_users[1:] != ev_users[:-1])
        self._powered_rows: np.ndarray | None = None  # see _powered
        self._powered_done: np.ndarray | None = None

    def own_events(self, user: str) -> int:
        """The user's events with a text among their latest ``evidence_events``."""
        lo, hi = self.ev_bounds.get(user, (0, 0))
        return int(self.ev_first[lo:hi].sum())

    def has_taste(self, user: str) -> bool:
        """False for a user known only from negative signals (cancellations): the vector points
        away from what they returned, which is no taste to match."""
        lo, hi = self.ev_bounds.get(user, (0, 0))
        return bool((self.ev_coef[lo:hi] > 0).any())

    def interests(self, users: Sequence[str]) -> np.ndarray:
        """The several-interests term of each of ``users`` over the catalogue, (users, items).

        Computed for a block of users at once: every distinct text among their positive
        contributions is compared with the catalogue once, in a few large matrix products,
        and each user's power mean is a sparse weighted sum of those rows. Contributions of
        the same text (a venue visited again, a search repeated, an item many users engaged
        with) have the same embedding, so their terms merge with the summed importance: the
        same power mean at the cost of the block's distinct texts, not of its events.
        """
        import numpy as np
        import scipy.sparse as sp

        p = self.config.interests_power
        n_items = len(self.item_ids)
        rows, texts, weights = [], [], []
        totals = np.zeros(len(users), dtype=np.float64)
        for i, user in enumerate(users):
            lo, hi = self.ev_bounds.get(user, (0, 0))
            coef = self.ev_coef[lo:hi]
            positive = coef > 0
            if positive.any():
                rows.append(np.full(int(positive.sum()), i))
                texts.append(self.ev_text[lo:hi][positive])
                weights.append(coef[positive])
                totals[i] = coef[positive].sum()
        out = np.zeros((len(users), n_items), dtype=np.float64)
        if not rows or not n_items:
            return out
        distinct, column = np.unique(np.concatenate(texts), return_inverse=True)
        importance = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows), column)),
            shape=(len(users), len(distinct)),
        )  # duplicates summed: one column per distinct text, in text (hash) order
        importance.sort_indices()
        # Each user's row in one product, summing over their texts in text order: the same
        # floats whoever else is in the block (an evaluation scores a few users of an hour).
        for group in _groups_within(importance, _TEXT_BLOCK):
            part = importance[group]
            used = np.unique(part.indices)
            out[group] = part[:, used] @ self._powered(distinct[used])
        has = totals > 0
        out[has] = (out[has] / totals[has, None]) ** (1.0 / p)
        return out

    def _powered(self, texts: np.ndarray) -> np.ndarray:
        """``max(0, cos(t, e_j)) ** p`` of each of ``texts`` (distinct, sorted) with the
        catalogue. The blocks of users mostly share their texts (the same item documents), so
        each text's row is computed once per hour and kept, while all of the hour's texts
        fit in ``_POWERED_CELLS``; beyond that, per call."""
        import numpy as np

        def compute(rows: np.ndarray) -> np.ndarray:
            sims = np.maximum(self.text_vecs[rows] @ self.item_vecs.T, 0.0)
            return _power(sims, self.config.interests_power)

        n_texts, n_items = len(self.text_vecs), len(self.item_ids)
        if n_texts * n_items > _POWERED_CELLS:
            return compute(texts)
        if self._powered_rows is None:
            self._powered_rows = np.zeros((n_texts, n_items), dtype=np.float64)
            self._powered_done = np.zeros(n_texts, dtype=bool)
        missing = texts[~self._powered_done[texts]]
        if len(missing):
            self._powered_rows[missing] = compute(missing)
            self._powered_done[missing] = True
        return self._powered_rows[texts]

    def features(
        self, user: str, cosines: np.ndarray, interests: np.ndarray | None = None
    ) -> np.ndarray:
        """The user's features over the catalogue, shape (len(FEATURES), items);
        ``interests``: the user's row of :meth:`interests` when computed for a block."""
        row = self.interests([user])[0] if interests is None else interests
        return self.block_features([user], cosines[None, :], row[None, :])[0]

    def block_features(
        self, users: Sequence[str], cosines: np.ndarray, interests: np.ndarray
    ) -> np.ndarray:
        """The features of a block of users, shape (users, len(FEATURES), items); row k is
        user k's (``cosines`` and ``interests``: their rows of the block's matrices).

        Each user's slice is contiguous, so ``np.matmul(weights, block)`` scores every user
        with the same arithmetic as ``weights @ features(user)``: the same scores to the bit.
        """
        import numpy as np

        n_items = len(self.item_ids)
        out = np.zeros((len(users), len(FEATURES), n_items), dtype=np.float64)
        out[:, 0] = cosines
        out[:, 1] = interests
        out[:, 2] = self.prior
        out[:, 5] = ~self.engaged
        # The users' own decayed engagement with each item (clicks, views, carts: items not
        # consumed, which stay recommendable), scaled by each user's strongest.
        spans = [self.ev_bounds.get(user, (0, 0)) for user in users]
        index = _positions(spans)
        owner, _ = _ragged(np.array([hi - lo for lo, hi in spans], dtype=np.int64))
        keep = (self.ev_item[index] >= 0) & (self.ev_coef[index] > 0)
        own = np.zeros((len(users), n_items), dtype=np.float64)
        # Per user the same additions in the same (event) order as one user at a time.
        np.add.at(own.reshape(-1), owner[keep] * n_items + self.ev_item[index[keep]],
                  self.ev_coef[index[keep]])
        engaged = np.unique(owner[keep])
        out[engaged, 4] = own[engaged] / own[engaged].max(axis=1, keepdims=True)
        ks, behaviour = self.behaviour.rows(users)
        out[ks, 3] = behaviour
        for k, user in enumerate(users):
            signal, taste = _SOCIAL_COLUMNS[self.own_events(user) < FEW_OWN_EVENTS]
            if user in self.social:
                self.social.row(user, out=out[k, signal])
            if user in self.social_vecs:
                out[k, taste] = self.item_vecs @ self.social_vecs[user][0]
        return out

    def has_social(self, user: str) -> bool:
        """True when people the user follows engaged with some item."""
        return user in self.social

    def follows_only(self, user: str) -> bool:
        """True for a user with no taste of their own (e.g. only follows) whose followees
        engaged with something: their list comes from :meth:`follow_only_row`."""
        return not self.has_taste(user) and self.has_social(user)

    def follow_only_row(self, user: str, half_life_hours: float, boost: float) -> np.ndarray:
        """The scores of a user with no taste of their own: the new-visitor order (trending:
        recency-popularity with ``half_life_hours``, scaled to [0, 1]) plus ``boost`` times
        the social signal (:func:`interest_pipeline.social.social_signal`, in [0, 1]). Only
        items someone engaged with qualify, as in the new-visitor list, so with ``boost`` 0
        the list is exactly that list (ties by catalogue order, that is by item id)."""
        import numpy as np

        popularity = self.trending[float(half_life_hours)]
        top = popularity.max() if len(popularity) else 0.0
        row = popularity / top if top > 0 else np.zeros_like(popularity)
        if boost:
            row = row + boost * self.social.row(user)
        row[~self.engaged] = -np.inf
        self._drop_consumed(user, row)
        return row

    def mask(self, user: str, row: np.ndarray, cosines: np.ndarray) -> None:
        """Disqualify, in place, what a user with a taste of their own must not be shown:
        items their interest points away from (``cos <= 0``), and what they consumed."""
        self.mask_block([user], row[None, :], cosines[None, :])

    def mask_block(self, users: Sequence[str], rows: np.ndarray, cosines: np.ndarray) -> None:
        """:meth:`mask` for a block of users (row k: user k), in place."""
        import numpy as np

        rows[cosines <= 0] = -np.inf
        for row, user in zip(rows, users, strict=True):
            self._drop_consumed(user, row)

    def _drop_consumed(self, user: str, row: np.ndarray) -> None:
        """Items bought or rated are never shown again."""
        import numpy as np

        consumed = self.consumed.get(user)
        if consumed is not None:
            row[consumed] = -np.inf

    def best_new_items(self, rows: np.ndarray, interests: np.ndarray) -> np.ndarray:
        """Per user of a block (``rows``: their scores, disqualified items -inf;
        ``interests``: their several-interests rows), their best new item (nobody engaged with
        it yet) by the several-interests term, or -1 when no new item qualifies for them."""
        import numpy as np

        if not len(self.new_items):
            return np.full(len(rows), -1)
        new = self.new_items
        cold = np.where(np.isfinite(rows[:, new]), interests[:, new], -np.inf)
        best = np.argmax(cold, axis=1)  # the first of equals: catalogue order
        value = cold[np.arange(len(rows)), best]
        return np.where(np.isfinite(value) & (value > 0), new[best], -1)

    def with_new_item(self, top: np.ndarray, new: int, rank: int) -> np.ndarray:
        """The list with the user's best new item ``new`` (:meth:`best_new_items`; -1: none)
        at ``rank`` unless a new item is ranked above it already: only a new item's text can
        carry it, and without a slot the popularity and co-occurrence terms always crowd it
        out."""
        import numpy as np

        if rank <= 0 or len(top) < rank - 1 or new < 0:
            return top
        if (~self.engaged[top[:rank]]).any():
            return top
        return np.concatenate([top[: rank - 1], [new], top[rank - 1 :]])[: max(len(top), rank)]

    def evidence_pull(
        self, users: Sequence[str], tops: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per user, how much each of their contributions pulls them towards each item of
        their list (importance x cosine), padded with -inf to (users, most contributions,
        longest list); and each user's first contribution's position. One product of the
        block's distinct texts with the union of its lists, then gathered."""
        import numpy as np

        spans = [self.ev_bounds.get(user, (0, 0)) for user in users]
        counts = np.array([hi - lo for lo, hi in spans], dtype=np.int64)
        lengths = np.array([len(top) for top in tops], dtype=np.int64)
        pull = np.full((len(users), int(counts.max(initial=0)), int(lengths.max(initial=0))),
                       -np.inf)
        contribution = _positions(spans)
        listed = np.concatenate([*tops, np.zeros(0, np.int64)])
        texts = np.unique(self.ev_text[contribution])
        items = np.unique(listed)
        sims = self.text_vecs[texts] @ self.item_vecs[items].T
        # Each user's contributions (c) and listed items (i) as padded positions in sims.
        c_user, c_at = _ragged(counts)
        i_user, i_at = _ragged(lengths)
        text_of = np.zeros(pull.shape[:2], dtype=np.int64)
        text_of[c_user, c_at] = np.searchsorted(texts, self.ev_text[contribution])
        coef = np.zeros(pull.shape[:2])
        coef[c_user, c_at] = self.ev_coef[contribution]
        item_of = np.zeros((len(users), pull.shape[2]), dtype=np.int64)
        item_of[i_user, i_at] = np.searchsorted(items, listed)
        valid = np.zeros(pull.shape, dtype=bool)
        valid[c_user, c_at] = np.arange(pull.shape[2]) < lengths[c_user, None]
        cosines = sims[text_of[:, :, None], item_of[:, None, :]]
        pull[valid] = (cosines * coef[:, :, None])[valid]
        return pull, np.array([lo for lo, _ in spans], dtype=np.int64)

    def social_entries(self, user: str, top: np.ndarray) -> list[dict | None] | None:
        """Per listed item, its social evidence entry (people the user follows engaged with
        it) or None; None for a user whose followees engaged with nothing. For a user with
        only follows (:meth:`follows_only`), whose list is the trending order, an item none
        of them engaged with is there for being trending, and says so."""
        if user not in self.social:
            return None
        people, signal = self.social.at(user, top)
        otherwise = TRENDING_EVIDENCE if self.follows_only(user) else None
        return [
            social_evidence(int(n), float(x)) if n else otherwise
            for n, x in zip(people.tolist(), signal.tolist(), strict=True)
        ]


class _Lists:
    """The hour's recommended rows, collected list by list and written as one table."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.users: list[str] = []
        self.tops: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.evidence = EvidenceWriter(ctx.contributions)

    def add(self, lists: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Users' lists, each (user, the scores ``row`` of the catalogue, the list ``top``:
        catalogue positions in rank order), with their evidence."""
        import numpy as np

        users = [user for user, _, _ in lists]
        tops = [top for _, _, top in lists]
        self.users += users
        self.tops += tops
        self.scores += [row[top] for _, row, top in lists]
        pull, offsets = self.ctx.evidence_pull(users, tops)
        self.evidence.add_lists(
            pull, offsets, np.array([len(top) for top in tops], dtype=np.int64),
            [self.ctx.social_entries(user, top) for user, top in zip(users, tops, strict=True)],
        )

    @staticmethod
    def schema() -> pa.Schema:
        """The rows' columns, as the recommendations table has them."""
        import pyarrow as pa

        return pa.schema([
            ("user_id", pa.string()), ("as_of", pa.timestamp("us")), ("rank", pa.int32()),
            ("item_id", pa.string()), ("score", pa.float64()), ("model_id", pa.string()),
            ("evidence", pa.string()), ("ranker_version", pa.string()),
        ])

    def table(
        self, con: duckdb.DuckDBPyConnection, as_of: datetime, model_id: str, ranker_version: str
    ) -> pa.Table:
        """Rows (user_id, as_of, rank, item_id, score, model_id, evidence, ranker_version)."""
        import numpy as np
        import pyarrow as pa

        counts = np.array([len(top) for top in self.tops], dtype=np.int64)
        total = int(counts.sum())
        top = np.concatenate(self.tops) if self.tops else np.zeros(0, np.int64)
        starts = np.cumsum(counts) - counts
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        columns = [
            np.repeat(np.array(self.users, dtype=object), counts),
            np.full(total, np.datetime64(as_of, "us")),
            np.arange(total) - np.repeat(starts, counts) + 1,
            self.ctx.item_ids[top] if total else np.zeros(0, dtype=object),
            scores,
            np.full(total, model_id, dtype=object),
            self.evidence.column(con),
            np.full(total, ranker_version, dtype=object),
        ]
        schema = self.schema()
        return pa.Table.from_arrays(
            [c if isinstance(c, pa.ChunkedArray) else pa.array(c, f.type)
             for c, f in zip(columns, schema, strict=True)],
            schema=schema,
        )


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
    ranker: Ranker | None = None,
) -> pa.Table:
    """Top-N rows (user_id, as_of, rank, item_id, score, model_id, evidence, ranker_version)
    for the users of ``users_table`` (user_id, unit interest vector), from what is known at
    ``interval_end`` (events of intervals up to the one starting at ``interval_start``), scored
    by ``ranker`` (default: the documented default weights of ``config``)."""
    from interest_pipeline.ranker import default_ranker

    ranker = ranker or default_ranker(config)
    new_item_rank = new_item_slot()
    users = users_table.column("user_id").to_numpy(zero_copy_only=False)
    if not users_table.num_rows:
        return _Lists.schema().empty_table()
    ctx = _Context(
        con, model_id, users.tolist(), interval_start, interval_end,
        half_life_hours, evidence_events, config, (ranker.trending_half_life_hours,),
    )
    out = _Lists(ctx)
    if len(ctx.item_ids):
        user_vecs = _vectors_or_zeros(users_table.column("vector"), ctx.item_vecs.shape[1])
        n = min(top_n, len(ctx.item_ids))
        for block in range(0, len(users), _USER_BLOCK):
            cosines = user_vecs[block : block + _USER_BLOCK] @ ctx.item_vecs.T
            interests = ctx.interests(users[block : block + _USER_BLOCK])
            _score_block(
                ctx, users[block : block + _USER_BLOCK], cosines, interests, ranker, n,
                new_item_rank, out,
            )
    return out.table(con, interval_end, model_id, ranker.version)


def _vectors_or_zeros(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """The users' vectors as a matrix; a user with no vector yet (only follows) gets zeros."""
    import numpy as np
    import pyarrow.compute as pc

    if column.null_count == 0:
        return vectors_to_numpy(column)
    out = np.zeros((len(column), dim), dtype=np.float32)
    present = pc.is_valid(column).to_numpy(zero_copy_only=False)
    if present.any():
        out[present] = vectors_to_numpy(column.filter(pc.is_valid(column)))
    return out



def _score_block(
    ctx: _Context,
    users: Sequence[str],
    cosines: np.ndarray,
    interests: np.ndarray,
    ranker: Ranker,
    n: int,
    new_item_rank: int,
    out: _Lists,
) -> None:
    """Rank the catalogue for each user of a block and append their rows to ``out``."""
    import numpy as np

    weights = ranker.weight_vector()
    lists: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}
    scored = []  # users with a taste of their own, scored by the ranker
    for i, user in enumerate(users):
        if ctx.follows_only(user):
            row = ctx.follow_only_row(
                user, ranker.trending_half_life_hours, ranker.social_boost()
            )
            top = _top(row, n)
            lists[i] = (user, row, top[np.isfinite(row[top])])
        elif ctx.has_taste(user):
            scored.append(i)
    rank = min(new_item_rank, n)
    for lo in range(0, len(scored), _SCORE_BLOCK):
        idx = scored[lo : lo + _SCORE_BLOCK]
        names = [users[i] for i in idx]
        rows = np.matmul(weights, ctx.block_features(names, cosines[idx], interests[idx]))
        ctx.mask_block(names, rows, cosines[idx])
        best_new = ctx.best_new_items(rows, interests[idx])
        for user, row, top, new, i in zip(names, rows, _tops(rows, n), best_new, idx, strict=True):
            top = top[np.isfinite(row[top])]
            lists[i] = (user, row, ctx.with_new_item(top, new, rank))
    ranked = [lists[i] for i in sorted(lists)]
    for lo in range(0, len(ranked), _EVIDENCE_BLOCK):
        out.add(ranked[lo : lo + _EVIDENCE_BLOCK])


def _groups_within(matrix: sp.csr_matrix, columns: int) -> list[np.ndarray]:
    """The rows of ``matrix`` in consecutive groups whose nonzero columns number at most
    ``columns`` together (a row with more is a group of its own)."""
    import numpy as np

    if matrix.shape[1] <= columns:
        return [np.arange(matrix.shape[0])]
    groups: list[np.ndarray] = []
    start, seen = 0, set()
    for row in range(matrix.shape[0]):
        new = set(matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]].tolist()) - seen
        if row > start and len(seen) + len(new) > columns:
            groups.append(np.arange(start, row))
            start, seen = row, set()
            new = set(matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]].tolist())
        seen |= new
    if matrix.shape[0] > start:
        groups.append(np.arange(start, matrix.shape[0]))
    return groups


def _tops(rows: np.ndarray, n: int) -> list[np.ndarray]:
    """:func:`_top` of every row of a block: one partial sort of the block, then each row's
    n best ordered by (-score, position); a row with ties across its n-th score (or fewer
    than n finite scores) is done by :func:`_top`, so every list is exactly its ``_top``."""
    import numpy as np

    m = rows.shape[1]
    if n >= m or not len(rows):
        return [_top(row, n) for row in rows]
    best = np.argpartition(rows, m - n, axis=1)[:, m - n :]
    values = np.take_along_axis(rows, best, axis=1)
    nth = values.min(axis=1)
    # The n best are exactly the scores >= the n-th unless another score ties with it.
    exact = ((rows >= nth[:, None]).sum(axis=1) == n) & np.isfinite(nth)
    ordered = np.take_along_axis(best, np.lexsort((best, -values), axis=-1), axis=1)
    return [ordered[k] if exact[k] else _top(rows[k], n) for k in range(len(rows))]


def _top(row: np.ndarray, n: int) -> np.ndarray:
    """The positions of the ``n`` best scores, ordered by (-score, position): exactly the
    first n of a stable sort of the whole row, from a partial sort of what can be in them
    (every score at least the n-th best, ties included)."""
    import numpy as np

    if n >= len(row):
        return np.argsort(-row, kind="stable")
    nth = np.partition(row, len(row) - n)[len(row) - n]
    candidates = np.flatnonzero(row >= nth)
    # Stable sort on (-score, item order) keeps ties deterministic across reruns.
    return candidates[np.argsort(-row[candidates], kind="stable")][:n]


def _power(x: np.ndarray, p: float) -> np.ndarray:
    """``x ** p`` in float64; a power of two by repeated squaring, which is several times
    faster than ``**`` over a contributions x catalogue matrix (the default p is 16)."""
    import numpy as np

    x = x.astype(np.float64)
    steps = np.log2(p) if p >= 1 else 0.5
    if steps != int(steps):
        return x**p
    for _ in range(int(steps)):
        x = x * x
    return x


def _collect_engaged_pairs(con: duckdb.DuckDBPyConnection, interval_start: datetime) -> None:
    """The positive (user, catalogue item) pairs up to the interval of the scored users and of
    the people they follow, with the latest event of each, into the temp table
    ``_rec_engaged`` (user_id, j, last_event_at): what co-occurrence (the user's own items) and
    the social signal (their followees' items) read. Catalogue-wide statistics come from
    :mod:`interest_pipeline.catalogue_stats`, not from here, so this reads only those users'
    rows. Needs ``_rec_users`` and ``_rec_items`` registered; the caller drops the table.
    """
    params = {"interval_start": interval_start}
    # The people first, as a table: a semi-join on a small table lets DuckDB filter the scan
    # of history by user before reading its other columns (from a CTE it did not: 10x slower).
    con.execute(
        f"""
        create or replace temp table _rec_people as
        select user_id from _rec_users
        union
        select followee from ({follows_sql("user_id in (select user_id from _rec_users)")})
        """,
        params,
    )
    con.execute(
        """
        create or replace temp table _rec_engaged as
        select interactions.user_id, _rec_items.j, max(interactions.event_at) as last_event_at
        from user_item_interactions as interactions
        inner join _rec_items on interactions.item_id = _rec_items.item_id
        where interactions.interval_start <= $interval_start and interactions.weight > 0
            and interactions.user_id in (select user_id from _rec_people)
        group by interactions.user_id, _rec_items.j
        """,
        params,
    )
    con.execute("drop table _rec_people")


class _Cooccurrence:
    """B(u, .) for the users being scored (see the module docstring): the users' own items
    (``_rec_engaged``, see :func:`_collect_engaged_pairs`) times the co-occurrence counts,
    scaled to [0, 1] by each user's best item. Read once per hour; each block's rows are
    computed when scored (:meth:`rows`), so memory follows a block, not the hour's users x
    items."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, n_users: int, counts: sp.csr_matrix
    ) -> None:
        import numpy as np
        import pyarrow.compute as pc
        import scipy.sparse as sp

        pairs = query_arrow(
            con,
            "select user_id, j from _rec_engaged "
            "where user_id in (select user_id from _rec_users)",
        )
        encoded = pc.dictionary_encode(pairs.column("user_id").combine_chunks())
        self._index = {u: n for n, u in enumerate(encoded.dictionary.to_pylist())}
        n_items = counts.shape[0]
        self._x = sp.csr_matrix(
            (
                np.ones(pairs.num_rows),
                (encoded.indices.to_numpy(), pairs.column("j").to_numpy()),
            ),
            shape=(len(self._index), n_items),
        )
        # Counts are whole numbers, so a dense product sums them exactly as the sparse one
        # (and each row's sum is the same whichever rows are in the product). Dense pays for
        # itself when the users outnumber the items (a busy hour: it skips a sparse result
        # about as dense as the catalogue) and the catalogue's square fits _POWERED_CELLS.
        dense = n_users >= n_items and n_items**2 <= _POWERED_CELLS and bool(self._index)
        self._right = counts.toarray() if dense else counts

    def rows(self, users: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The positions in ``users`` of those with a co-occurrence row (some item of theirs
        co-occurs with something), and those rows, (positions, items)."""
        import numpy as np
        import scipy.sparse as sp

        at = [(k, self._index[u]) for k, u in enumerate(users) if u in self._index]
        if not at:
            return np.zeros(0, np.int64), np.zeros((0, self._x.shape[1]))
        ks = np.array([k for k, _ in at], dtype=np.int64)
        values = self._x[[n for _, n in at]] @ self._right
        values = np.asarray(values.toarray() if sp.issparse(values) else values, np.float64)
        top = values.max(axis=1)
        keep = top > 0
        return ks[keep], values[keep] / top[keep, None]


def _popularity_prior(popularity: np.ndarray) -> np.ndarray:
    """log1p(P_j) / log1p(max P) (P_j: :mod:`interest_pipeline.catalogue_stats`)."""
    import numpy as np

    prior = np.log1p(popularity)
    top = prior.max() if len(prior) else 0.0
    return prior / top if top > 0 else prior


def _positions(spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """The rows of ``[lo, hi)`` spans, span after span."""
    import numpy as np

    return np.concatenate([np.arange(lo, hi) for lo, hi in spans] + [np.zeros(0, np.int64)])


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``counts`` members laid end to end: each member's group and its
    position within the group."""
    import numpy as np

    group = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return group, np.arange(int(counts.sum())) - starts[group]


def _group_bounds(sorted_keys: np.ndarray, keys: np.ndarray) -> dict[str, tuple[int, int]]:
    """Row ranges of each key in an array sorted by key."""
    import numpy as np

    left = np.searchsorted(sorted_keys, keys, side="left")
    right = np.searchsorted(sorted_keys, keys, side="right")
    return {k: (int(lo), int(hi)) for k, lo, hi in zip(keys, left, right, strict=True)}
