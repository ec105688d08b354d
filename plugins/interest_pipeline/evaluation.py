"""Recommendation quality against later events, for the model and for baselines.

**Protocol at a cut-off T** (``evaluate_as_of``), horizon h:

- *Known at T*: the rows of ``user_item_interactions`` that landed in an interval ending by T
  (``interval_start < T``), i.e. what the pipeline had seen when it wrote the recommendations
  in force at T.
- *Relevant items* of user u: the items of u's positive-weight item events with
  ``T <= event_at < T + h`` that landed by ``T + h`` (the issue's "(T, T + h]", taken half-open
  like the hourly intervals so the events of the interval ending at T + h are exactly in),
  minus the items u had already consumed (bought or rated, any sign:
  ``recommendations.CONSUMED_EVENT_TYPES``) by T, since no method may recommend those.
  A cancelled purchase (negative quantity, negative weight) is not relevant.
- *Users evaluated*: every user with at least one relevant item. The ``all`` population is all
  of them; the ``known`` population (the headline) is those with at least one event known at
  T: a user the warehouse has never seen cannot have a personal recommendation. Within a
  population a user for whom a method has no list counts as a miss (zero on every metric),
  never dropped.
- *Model*: the recommendations in force at T, i.e. each user's newest version with
  ``as_of <= T`` (the hourly pipeline writes a version only for users whose vector changed).
  A user with no personal version gets, when the table ``new_user_recommendations`` exists,
  the newest new-visitor list of the model with ``as_of <= T`` (by rank), minus the items
  that user consumed by T; without that table such a user has no list.
- *Baselines*, from the events known at T, excluding each user's consumed items like the model
  (algorithms in :mod:`interest_pipeline.baselines`; ties break by item id):
  ``popularity_7d`` (distinct users with a positive-weight event on the item in [T - 7 d, T)),
  ``popularity_all`` (same over all known history), ``cooccurrence`` (item-to-item:
  score(j) = sum over the user's positively engaged items i of the number of users who engaged
  with both i and j; users with no co-occurring item get no list), and two peers, ``ease``
  (EASE^R on the most engaged items) and ``itemknn`` (item-based kNN, shrunk cosine).
- *Peers' hyper-parameters* (``PEER_GRIDS``) are chosen per cut-off on a time split strictly
  before T (:func:`choose_hyperparameters`): fitted on the events known at T - h, scored by
  NDCG@10 over the users known at T - h against their relevant items of [T - h, T); the best
  point (the first on ties) is then fitted on the events known at T. Fits are cached per
  process, so a run over cut-offs h apart fits each (data, point) once; at most one fit per
  grid point per cut-off otherwise (EASE: about 0.5 s each for 3,000 items on 2 cores).

**Metrics** (binary relevance; R = relevant set of a user, L = a method's ranked list, L_K its
first K items):

- ``recall@K = |L_K ∩ R| / |R|``
- ``hit_rate@K = 1 if |L_K ∩ R| > 0 else 0``
- ``ndcg@K = DCG / IDCG`` with ``DCG = sum_{i=1..K} rel_i / log2(i + 1)`` and ``IDCG`` the same
  sum over ``min(|R|, K)`` relevant items in the first ranks.
- each averaged over the users evaluated (missing lists count 0);
- ``coverage@K`` = distinct items in the users' L_K / catalogue size (items known at T);
- ``new_item_recall@K``: recall over the relevant items that had no known event at T
  (cold-start items; popularity and co-occurrence can never reach them);
- ``users`` = number of users evaluated (also in every row's ``users_evaluated``).

:func:`evaluate_cutoff` also returns every user's recall, NDCG and hit rate per method (the
paired samples of :func:`interest_pipeline.bootstrap.paired_bootstrap`) and the chosen
hyper-parameters; only the means go to the ``evaluation`` table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from interest_pipeline.recommendations import CONSUMED_EVENT_TYPES
from interest_pipeline.warehouse import database_path, insert_arrow, transaction

if TYPE_CHECKING:
    import duckdb

    from interest_pipeline import baselines

log = logging.getLogger(__name__)

# (method, params, k, data fingerprint) -> (users asked for, their lists), least recently used
# first. A run over cut-offs 6 h apart with a 24 h horizon reuses a fit four cut-offs (~50 fits)
# later; the bound keeps memory at a few lists per user per entry.
_PEER_CACHE: OrderedDict[tuple, tuple[frozenset[str], dict[str, list[str]]]] = OrderedDict()
_PEER_CACHE_SIZE = 64
# (database file, T, digest of the interactions before T) -> the history at T, oldest first:
# a cut-off's tuning split T - h is the history of the cut-off four before it (6 h apart, a
# 24 h horizon), so each is kept for the next few cut-offs (first in, first out: the lookups
# of the tuning splits must not keep old entries in place of the new ones).
_HISTORY_CACHE: OrderedDict[tuple, _History] = OrderedDict()
_HISTORY_CACHE_SIZE = 6

KS = (10, 20)
MODEL = "model"
PEERS = ("ease", "itemknn")
BASELINES = ("popularity_7d", "popularity_all", "cooccurrence", *PEERS)
METHODS = (MODEL, *BASELINES)
# Tuned per cut-off on the split before it (``choose_hyperparameters``). Order matters: ties,
# and cut-offs with no tuning user, go to the first point.
PEER_GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "ease": tuple({"l2": l2} for l2 in (10.0, 50.0, 200.0, 500.0, 1000.0)),
    "itemknn": tuple(
        {"neighbours": n, "shrink": shrink} for n in (20, 50, 200) for shrink in (0.0, 10.0)
    ),
}
POPULATIONS = ("known", "all")
RANKING_METRICS = ("recall", "ndcg", "hit_rate", "new_item_recall")
RECENT_POPULARITY = timedelta(days=7)

EVALUATION_DDL = """
create table if not exists evaluation (
    interval_end timestamp not null,   -- the cut-off T evaluated (recommendations as of T)
    horizon_hours double not null,
    population varchar not null,       -- 'known' (headline) or 'all'
    method varchar not null,           -- 'model' or a baseline
    metric varchar not null,           -- recall, ndcg, hit_rate, new_item_recall, coverage, users
    k integer,                         -- cut-off rank; null for 'users'
    value double,                      -- null when no user was evaluated
    users_evaluated integer not null,
    model_id varchar not null,
    evaluated_at timestamp not null
);
"""


# --------------------------------------------------------------------------------------------
# Metric functions
# --------------------------------------------------------------------------------------------


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """``|ranked[:k] ∩ relevant| / |relevant|`` (0 when nothing is relevant)."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def hit_rate_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """1.0 if any of the first k items is relevant, else 0.0."""
    return 1.0 if set(ranked[:k]) & relevant else 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Binary NDCG: ``sum_{i<=k, ranked[i] in R} 1/log2(i+1)`` over its ideal, which places
    ``min(|R|, k)`` relevant items first. 0 when nothing is relevant."""
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal


def catalogue_coverage(lists: Iterable[Sequence[str]], catalogue_size: int, k: int) -> float:
    """Distinct items among the lists' first k entries, over the catalogue size."""
    if catalogue_size <= 0:
        return 0.0
    seen: set[str] = set()
    for ranked in lists:
        seen.update(ranked[:k])
    return len(seen) / catalogue_size


def user_scores(
    lists: Mapping[str, Sequence[str]],
    relevant: Mapping[str, set[str]],
    ks: Sequence[int] = KS,
) -> dict[tuple[str, int], list[float]]:
    """Recall, NDCG and hit rate at each k of every user of ``sorted(relevant)``, in that
    order (a user without a list scores 0): {(metric, k): values}."""
    users = sorted(relevant)
    out: dict[tuple[str, int], list[float]] = {}
    for k in ks:
        for name, metric in (("recall", recall_at_k), ("ndcg", ndcg_at_k),
                             ("hit_rate", hit_rate_at_k)):
            out[(name, k)] = [metric(lists.get(u, ()), relevant[u], k) for u in users]
    return out


def score_lists(
    lists: Mapping[str, Sequence[str]],
    relevant: Mapping[str, set[str]],
    catalogue_size: int,
    new_items: set[str] | frozenset[str] = frozenset(),
    ks: Sequence[int] = KS,
) -> dict[tuple[str, int | None], float | None]:
    """Every metric of one method over the users in ``relevant`` (a user without a list is a
    miss). Returns {(metric, k): value}; ``("users", None)`` is the number of users and the
    means are None when there are none."""
    users = sorted(relevant)
    n = len(users)
    out: dict[tuple[str, int | None], float | None] = {("users", None): float(n)}
    per_user = user_scores(lists, relevant, ks)
    for k in ks:
        for name in ("recall", "ndcg", "hit_rate"):
            out[(name, k)] = sum(per_user[(name, k)]) / n if n else None
        cold = [(u, relevant[u] & new_items) for u in users]
        cold = [(u, r) for u, r in cold if r]
        out[("new_item_recall", k)] = (
            sum(recall_at_k(lists.get(u, ()), r, k) for u, r in cold) / len(cold) if cold else None
        )
        out[("coverage", k)] = (
            catalogue_coverage((lists.get(u, ()) for u in users), catalogue_size, k)
            if n
            else None
        )
    return out


# --------------------------------------------------------------------------------------------
# Data at a cut-off
# --------------------------------------------------------------------------------------------


def _known_users(con: duckdb.DuckDBPyConnection, as_of: datetime) -> set[str]:
    rows = con.execute(
        "select distinct user_id from user_item_interactions where interval_start < ?",
        [as_of],
    ).fetchall()
    return {row[0] for row in rows}


def _consumed_by(con: duckdb.DuckDBPyConnection, as_of: datetime) -> dict[str, set[str]]:
    rows = con.execute(
        f"""
        select distinct user_id, item_id
        from user_item_interactions
        where interval_start < ? and item_id is not null
            and event_type in {CONSUMED_EVENT_TYPES}
        """,
        [as_of],
    ).fetchall()
    out: dict[str, set[str]] = {}
    for user, item in rows:
        out.setdefault(user, set()).add(item)
    return out


@dataclasses.dataclass(frozen=True)
class _History:
    """What the baselines see at a cut-off."""

    events: list[tuple]  # (user, item, event_at) of positive-weight item events known at T
    pairs: baselines.Interactions  # their (user, item) pairs
    consumed: dict[str, set[str]]
    fingerprint: str  # of pairs and consumed: the peer-fit cache key


def _history(con: duckdb.DuckDBPyConnection, as_of: datetime) -> _History:
    """What the baselines see at ``as_of``; memoized per process (:data:`_HISTORY_CACHE`)
    while the interactions before ``as_of`` are the same."""
    path = database_path(con)
    key = (path, as_of, interactions_digest(con, as_of)) if path is not None else None
    hit = _HISTORY_CACHE.get(key) if key is not None else None
    if hit is not None:
        return hit
    history = _read_history(con, as_of)
    if key is not None:
        _HISTORY_CACHE[key] = history
        while len(_HISTORY_CACHE) > _HISTORY_CACHE_SIZE:
            _HISTORY_CACHE.popitem(last=False)
    return history


def _read_history(con: duckdb.DuckDBPyConnection, as_of: datetime) -> _History:
    events = con.execute(
        """
        select user_id, item_id, event_at
        from user_item_interactions
        where interval_start < ? and item_id is not null and weight > 0
        """,
        [as_of],
    ).fetchall()
    from interest_pipeline import baselines

    pairs = sorted({(user, item) for user, item, _ in events})
    consumed = _consumed_by(con, as_of)
    digest = hashlib.sha256(repr(pairs).encode())
    digest.update(repr(sorted((u, sorted(items)) for u, items in consumed.items())).encode())
    return _History(events, baselines.Interactions.of(pairs), consumed, digest.hexdigest())


# The (user, item) pairs of positive item events in [?, ?) that landed by the second ?.
_LATER_ITEMS_SQL = """
select distinct {columns}
from user_item_interactions
where event_at >= ? and event_at < ? and interval_start < ?
    and item_id is not null and weight > 0
"""


def evaluated_users(
    con: duckdb.DuckDBPyConnection, as_of: datetime, horizon_hours: float
) -> set[str]:
    """The users :func:`evaluate_cutoff` may evaluate at ``as_of``: those with a later
    positive item event (:func:`relevant_items` before the consumed items are taken out, so
    a superset of its users)."""
    end = as_of + timedelta(hours=horizon_hours)
    rows = con.execute(_LATER_ITEMS_SQL.format(columns="user_id"), [as_of, end, end]).fetchall()
    return {row[0] for row in rows}


def relevant_items(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    horizon_hours: float,
    consumed: Mapping[str, set[str]] | None = None,
) -> dict[str, set[str]]:
    """Per user, the items that count as hits for recommendations as of ``as_of``
    (``consumed``: the items consumed by then, if already at hand)."""
    end = as_of + timedelta(hours=horizon_hours)
    rows = con.execute(
        _LATER_ITEMS_SQL.format(columns="user_id, item_id"), [as_of, end, end]
    ).fetchall()
    if consumed is None:
        consumed = _consumed_by(con, as_of)
    out: dict[str, set[str]] = {}
    for user, item in rows:
        if item not in consumed.get(user, ()):
            out.setdefault(user, set()).add(item)
    return out


def interactions_digest(con: duckdb.DuckDBPyConnection, until: datetime) -> str:
    """A digest of the ``user_item_interactions`` rows landed before ``until``: with ``until``
    the cut-off plus the horizon, every row its baselines and relevant items read."""
    # A sum of row hashes: no sort, milliseconds per 100,000 rows; a duplicate row counts.
    ((rows, total),) = con.execute(
        """
        select
            count(*),
            sum(hash(user_id, item_id, event_type, event_at, weight, interval_start)::hugeint)
        from user_item_interactions
        where interval_start < ?
        """,
        [until],
    ).fetchall()
    return f"{rows}:{total}"


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        """
        select count(*) from information_schema.tables
        where table_name = ? and table_schema = current_schema()
            and table_catalog = current_database()
        """,
        [name],
    ).fetchall()
    return rows[0][0] > 0


def new_user_list_in_force(
    con: duckdb.DuckDBPyConnection, as_of: datetime, model_id: str
) -> list[str]:
    """The new-visitor list in force at ``as_of`` (the newest ``new_user_recommendations``
    version with as_of <= T), by rank; empty when there is none or no such table."""
    if not _has_table(con, "new_user_recommendations"):
        return []
    rows = con.execute(
        """
        select item_id
        from new_user_recommendations
        where model_id = ? and as_of = (
            select max(as_of) from new_user_recommendations where model_id = ? and as_of <= ?
        )
        order by rank, item_id
        """,
        [model_id, model_id, as_of],
    ).fetchall()
    return [row[0] for row in rows]


def model_lists(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    model_id: str,
    users: Iterable[str],
    consumed: Mapping[str, set[str]] | None = None,
) -> dict[str, list[str]]:
    """The recommendations in force at ``as_of``: each user's newest version with as_of <= T.
    A user without one gets the new-visitor list (:func:`new_user_list_in_force`) minus the
    items they consumed by T (``consumed``, read when not given)."""
    import pyarrow as pa

    users = sorted(users)
    con.register("_eval_users", pa.table({"user_id": pa.array(users, pa.string())}))
    try:
        rows = con.execute(
            """
            with latest as (
                select user_id, max(as_of) as as_of
                from recommendations
                where model_id = ? and as_of <= ?
                    and user_id in (select user_id from _eval_users)
                group by user_id
            )
            select recommendations.user_id, recommendations.item_id
            from recommendations
            inner join latest
                on recommendations.user_id = latest.user_id
                and recommendations.as_of = latest.as_of
            where recommendations.model_id = ?
            order by recommendations.user_id, recommendations.rank
            """,
            [model_id, as_of, model_id],
        ).fetchall()
    finally:
        con.unregister("_eval_users")
    out: dict[str, list[str]] = {}
    for user, item in rows:
        out.setdefault(user, []).append(item)
    fallback = new_user_list_in_force(con, as_of, model_id)
    if fallback:
        if consumed is None:
            consumed = _consumed_by(con, as_of)
        for user in users:
            if user not in out:
                mine = consumed.get(user, set())
                out[user] = [item for item in fallback if item not in mine]
    return out


def list_ages_hours(
    con: duckdb.DuckDBPyConnection, as_of: datetime, model_id: str, users: Iterable[str]
) -> list[float]:
    """Hours since each user's list in force at ``as_of`` was written (users with a list)."""
    import pyarrow as pa

    con.register("_age_users", pa.table({"user_id": pa.array(sorted(users), pa.string())}))
    try:
        rows = con.execute(
            """
            select date_diff('second', max(as_of), ?) / 3600.0
            from recommendations
            where model_id = ? and as_of <= ? and user_id in (select user_id from _age_users)
            group by user_id
            order by user_id
            """,
            [as_of, model_id, as_of],
        ).fetchall()
    finally:
        con.unregister("_age_users")
    return [r[0] for r in rows]


def _peer_lists(
    method: str,
    params: Mapping[str, Any],
    history: _History,
    users: Iterable[str],
    k: int,
) -> dict[str, list[str]]:
    """A peer baseline's lists, fitted at most once per (data, hyper-parameters, k) in this
    process: the tuning split of cut-off T + h refits exactly the final fit of cut-off T."""
    from interest_pipeline import baselines

    users = frozenset(users)
    key = (method, tuple(sorted(params.items())), k, history.fingerprint)
    hit = _PEER_CACHE.get(key)
    if hit is not None and users <= hit[0]:
        _PEER_CACHE.move_to_end(key)
        return {u: items for u, items in hit[1].items() if u in users}
    fit = {"ease": baselines.ease_lists, "itemknn": baselines.itemknn_lists}[method]
    lists = fit(history.pairs, users, history.consumed, k, **params)
    _PEER_CACHE[key] = (users, lists)
    while len(_PEER_CACHE) > _PEER_CACHE_SIZE:
        _PEER_CACHE.popitem(last=False)
    return dict(lists)


def _baselines(
    history: _History,
    as_of: datetime,
    users: Iterable[str],
    k: int,
    hyperparameters: Mapping[str, Mapping[str, Any]],
    peers: bool = True,
) -> dict[str, dict[str, list[str]]]:
    from interest_pipeline import baselines

    users = sorted(users)
    recent = baselines.popularity_order(history.events, as_of - RECENT_POPULARITY)
    ever = baselines.popularity_order(history.events, None)
    consumed = history.consumed
    out = {
        name: {u: baselines.top_excluding(order, consumed.get(u, set()), k) for u in users}
        for name, order in (("popularity_7d", recent), ("popularity_all", ever))
    }
    out["cooccurrence"] = baselines.cooccurrence_lists(history.pairs, users, consumed, k)
    for method in PEERS if peers else ():
        out[method] = _peer_lists(method, hyperparameters.get(method, {}), history, users, k)
    return out


@dataclasses.dataclass(frozen=True)
class BaselineResults:
    """The baselines' side of a cut-off: every baseline's lists ({method: {user: items}}) and
    the peers' chosen hyper-parameters (:func:`choose_hyperparameters`). They depend only on
    the data and the code of this module and :mod:`interest_pipeline.baselines`, never on the
    model's scoring, so an evaluation may keep them across runs (``evaluate_cutoff(cached=)``).
    """

    lists: dict[str, dict[str, list[str]]]
    hyperparameters: dict[str, dict[str, Any]]


def _baseline_results(
    con: duckdb.DuckDBPyConnection,
    history: _History,
    as_of: datetime,
    horizon_hours: float,
    relevant: Mapping[str, set[str]],
    k: int,
    peers: bool,
) -> BaselineResults:
    hyperparameters = choose_hyperparameters(con, as_of, horizon_hours, k) if peers else {}
    params = {method: chosen["params"] for method, chosen in hyperparameters.items()}
    return BaselineResults(_baselines(history, as_of, relevant, k, params, peers), hyperparameters)


def baseline_lists(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    users: Iterable[str],
    k: int,
    hyperparameters: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Top-k lists of every baseline for ``users``, from the events known at ``as_of``;
    ``hyperparameters`` {method: {name: value}} for the peers (their defaults otherwise)."""
    return _baselines(_history(con, as_of), as_of, users, k, hyperparameters or {})


def choose_hyperparameters(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    horizon_hours: float,
    k: int = max(KS),
) -> dict[str, dict[str, Any]]:
    """Per peer baseline, the grid point of :data:`PEER_GRIDS` with the best NDCG@10 on a time
    split strictly before ``as_of``: fitted on the events known at ``T - h``, scored against
    the relevant items of [T - h, T) of the users known at T - h. Ties, and splits with no
    such user, go to the first grid point.

    Returns {method: {"params", "tuned_as_of", "tuning_users", "tuning_ndcg@10", "grid"}},
    ``grid`` listing every point with its NDCG@10.
    """
    tune_at = as_of - timedelta(hours=horizon_hours)
    history = _history(con, tune_at)
    relevant = relevant_items(con, tune_at, horizon_hours, history.consumed)
    known = _known_users(con, tune_at)
    tuning = {u: r for u, r in relevant.items() if u in known}
    out: dict[str, dict[str, Any]] = {}
    for method in PEERS:
        points = PEER_GRIDS[method]
        scores: list[float | None] = []
        for params in points:
            ndcg = None
            if tuning:
                # Lists for every relevant user, not just the known ones, so that the fit is
                # the one cut-off T - h asks for (a cache hit in a run over many cut-offs).
                lists = _peer_lists(method, params, history, relevant, k)
                ndcg = score_lists(lists, tuning, 0, ks=(10,))[("ndcg", 10)]
            scores.append(ndcg)
        # max keeps the first of equal values: ties go to the earlier grid point.
        best = max(range(len(points)), key=lambda n: scores[n] or 0.0)
        out[method] = {
            "params": dict(points[best]),
            "tuned_as_of": tune_at,
            "tuning_users": len(tuning),
            "tuning_ndcg@10": scores[best],
            "grid": [{**p, "ndcg@10": v} for p, v in zip(points, scores, strict=True)],
        }
        log.info("%s at %s: %s (tuning NDCG@10 %s)", method, as_of, points[best], scores[best])
    return out


# --------------------------------------------------------------------------------------------
# Evaluating a cut-off, storing it
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CutoffEvaluation:
    """Everything measured at one cut-off.

    Attributes:
        as_of: the cut-off T.
        rows: the ``evaluation`` table's rows (see :func:`evaluate_as_of`).
        users: {population: the users evaluated, sorted}.
        per_user: {population: {method: {(metric, k): values}}}, the recall, ndcg and hit_rate
            of each user of ``users[population]``, in that order (0 for a missing list): the
            paired samples of a significance test.
        hyperparameters: the peers' chosen hyper-parameters (:func:`choose_hyperparameters`).
        list_ages: hours since each known user's list in force was written (if measured:
            :func:`list_ages_hours`).
        own_events: {known user: their own events known at T (follows and unfollows not
            counted)}: to report users with little history of their own apart.
        baselines: the baselines' lists and hyper-parameters the rows were computed from (to
            keep for a later run: ``evaluate_cutoff(cached=)``).
    """

    as_of: datetime
    rows: list[dict[str, Any]]
    users: dict[str, list[str]]
    per_user: dict[str, dict[str, dict[tuple[str, int], list[float]]]]
    hyperparameters: dict[str, dict[str, Any]]
    list_ages: tuple[float, ...] = ()
    own_events: dict[str, int] = dataclasses.field(default_factory=dict)
    baselines: BaselineResults | None = None


def evaluate_cutoff(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    horizon_hours: float,
    model_id: str,
    ks: Sequence[int] = KS,
    peers: bool = True,
    cached: BaselineResults | None = None,
) -> CutoffEvaluation:
    """Score the model's recommendations in force at ``as_of`` and every baseline, on the same
    users, against the events of the following ``horizon_hours``; the peers' hyper-parameters
    are chosen first on the split before ``as_of``. ``peers=False`` leaves the peers (EASE^R,
    ItemKNN: seconds per cut-off) out. ``cached``: the baselines' results of an earlier run
    on the same data, code, ``ks`` and ``peers`` (the result's ``baselines``), used as they
    are: only the model's lists and the metrics are computed then."""
    # The history's matrix and digest are for the baselines alone: not built when cached.
    history = _history(con, as_of) if cached is None else None
    consumed = history.consumed if history is not None else _consumed_by(con, as_of)
    relevant = relevant_items(con, as_of, horizon_hours, consumed)
    known_users = _known_users(con, as_of)
    # fetchall, not fetchone: DuckDB keeps a half-fetched result open on the connection.
    ((catalogue,),) = con.execute("select count(*) from item_documents").fetchall()
    seen_items = {
        row[0]
        for row in con.execute(
            "select distinct item_id from user_item_interactions "
            "where interval_start < ? and item_id is not null",
            [as_of],
        ).fetchall()
    }
    new_items = {item for items in relevant.values() for item in items} - seen_items
    k_max = max(ks)
    found = cached if history is None else _baseline_results(
        con, history, as_of, horizon_hours, relevant, k_max, peers
    )
    hyperparameters = found.hyperparameters
    lists = {MODEL: model_lists(con, as_of, model_id, relevant, consumed), **found.lists}
    methods = METHODS if peers else tuple(m for m in METHODS if m not in PEERS)
    rows = []
    users: dict[str, list[str]] = {}
    per_user: dict[str, dict[str, dict[tuple[str, int], list[float]]]] = {}
    for population in POPULATIONS:
        rel = relevant if population == "all" else {
            u: r for u, r in relevant.items() if u in known_users
        }
        users[population] = sorted(rel)
        per_user[population] = {}
        for method in methods:
            per_user[population][method] = user_scores(lists[method], rel, ks)
            scores = score_lists(lists[method], rel, catalogue, new_items, ks)
            for (metric, k), value in scores.items():
                rows.append(
                    {
                        "population": population,
                        "method": method,
                        "metric": metric,
                        "k": k,
                        "value": value,
                        "users_evaluated": len(rel),
                    }
                )
    own_events = dict(con.execute(
        """
        select user_id, count(*) from user_item_interactions
        where interval_start < ? and event_type not in ('follow', 'unfollow')
            and user_id in (select unnest(?::varchar[]))
        group by 1
        """,
        [as_of, users["known"]],
    ).fetchall())
    return CutoffEvaluation(
        as_of, rows, users, per_user, hyperparameters, own_events=own_events, baselines=found
    )


def evaluate_as_of(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    horizon_hours: float,
    model_id: str,
    ks: Sequence[int] = KS,
) -> list[dict[str, Any]]:
    """The rows of :func:`evaluate_cutoff`: one dict per (population, method, metric, k) with
    keys population, method, metric, k, value, users_evaluated (see the module docstring for
    the protocol). The per-user values and hyper-parameters are on ``evaluate_cutoff``'s
    result."""
    return evaluate_cutoff(con, as_of, horizon_hours, model_id, ks).rows


def record_evaluation(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    horizon_hours: float,
    model_id: str,
    rows: Sequence[Mapping[str, Any]],
) -> int:
    """Replace the ``evaluation`` rows of this cut-off, horizon and model by ``rows``."""
    import pyarrow as pa

    con.execute(EVALUATION_DDL)
    evaluated_at = datetime.now(UTC).replace(tzinfo=None)
    with transaction(con):
        con.execute(
            "delete from evaluation where interval_end = ? and horizon_hours = ? and model_id = ?",
            [as_of, horizon_hours, model_id],
        )
        # One Arrow insert: a statement per row (executemany) was a third of a rerun's
        # evaluation.
        insert_arrow(con, "evaluation", pa.table({
            "interval_end": pa.array([as_of] * len(rows), pa.timestamp("us")),
            "horizon_hours": pa.array([horizon_hours] * len(rows), pa.float64()),
            **{
                column: pa.array([r[column] for r in rows], kind)
                for column, kind in (
                    ("population", pa.string()),
                    ("method", pa.string()),
                    ("metric", pa.string()),
                    ("k", pa.int32()),
                    ("value", pa.float64()),
                    ("users_evaluated", pa.int32()),
                )
            },
            "model_id": pa.array([model_id] * len(rows), pa.string()),
            "evaluated_at": pa.array([evaluated_at] * len(rows), pa.timestamp("us")),
        }))
    return len(rows)


def evaluate_interval(
    con: duckdb.DuckDBPyConnection,
    interval_end: datetime,
    horizon_hours: float,
    model_id: str,
) -> dict[str, Any]:
    """The hourly DAG's evaluation: in the run for the interval ending at E, evaluate the
    recommendations as of ``T = E - horizon`` (every event of (T, E] is known by then).

    The peers (EASE^R, ItemKNN, tuned on the day before) cost seconds per cut-off, so the
    hourly task scores them once a day, at the cut-off at midnight UTC; the other hours score
    the model and the cheap baselines. Idempotent: replaces that cut-off's rows. Returns a
    small summary for XCom.
    """
    as_of = interval_end - timedelta(hours=horizon_hours)
    daily = as_of.hour == 0 and as_of.minute == 0
    rows = evaluate_cutoff(con, as_of, horizon_hours, model_id, peers=daily).rows
    record_evaluation(con, as_of, horizon_hours, model_id, rows)
    headline = {
        f"{r['method']}_{r['metric']}@{r['k']}": r["value"]
        for r in rows
        if r["population"] == "known" and r["metric"] in ("ndcg", "recall") and r["k"] == 10
    }
    users = next((r["users_evaluated"] for r in rows if r["population"] == "known"), 0)
    return {"evaluated_as_of": as_of.isoformat(), "users_evaluated": users, **headline}


def weighted_means(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str, Any], Any]:
    """Mean over cut-offs weighted by users evaluated, per (population, method, metric, k);
    ``users`` is summed (user, cut-off pairs). Cut-offs where a metric is undefined (no user,
    or for ``new_item_recall`` no new relevant item) do not count."""
    sums: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["population"], r["method"], r["metric"], r["k"])
        acc = sums.setdefault(key, [0.0, 0.0])
        if r["metric"] == "users":
            acc[0] += r["value"] or 0
            acc[1] = 1.0
        elif r["value"] is not None:
            acc[0] += r["value"] * r["users_evaluated"]
            acc[1] += r["users_evaluated"]
    return {key: (s / w if w else None) for key, (s, w) in sums.items()}

