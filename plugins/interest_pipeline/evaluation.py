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
- *Baselines*, from the events known at T, excluding each user's consumed items like the model:
  ``popularity_7d`` (distinct users with a positive-weight event on the item in [T - 7 d, T)),
  ``popularity_all`` (same over all known history) and ``cooccurrence`` (item-to-item:
  score(j) = sum over the user's positively engaged items i of the number of users who engaged
  with both i and j; users with no co-occurring item get no list). Ties break by item id.

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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from interest_pipeline.recommendations import CONSUMED_EVENT_TYPES
from interest_pipeline.warehouse import transaction

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

KS = (10, 20)
MODEL = "model"
BASELINES = ("popularity_7d", "popularity_all", "cooccurrence")
METHODS = (MODEL, *BASELINES)
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
    for k in ks:
        rows = [
            (
                recall_at_k(lists.get(u, ()), relevant[u], k),
                ndcg_at_k(lists.get(u, ()), relevant[u], k),
                hit_rate_at_k(lists.get(u, ()), relevant[u], k),
            )
            for u in users
        ]
        for m, name in enumerate(("recall", "ndcg", "hit_rate")):
            out[(name, k)] = sum(r[m] for r in rows) / n if n else None
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


def _known_positive(con: duckdb.DuckDBPyConnection, as_of: datetime) -> list[tuple]:
    """(user, item, event_at) of positive-weight item events known at ``as_of``."""
    return con.execute(
        """
        select user_id, item_id, event_at
        from user_item_interactions
        where interval_start < ? and item_id is not null and weight > 0
        """,
        [as_of],
    ).fetchall()


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


def relevant_items(
    con: duckdb.DuckDBPyConnection, as_of: datetime, horizon_hours: float
) -> dict[str, set[str]]:
    """Per user, the items that count as hits for recommendations as of ``as_of``."""
    end = as_of + timedelta(hours=horizon_hours)
    rows = con.execute(
        """
        select distinct user_id, item_id
        from user_item_interactions
        where event_at >= ? and event_at < ? and interval_start < ?
            and item_id is not null and weight > 0
        """,
        [as_of, end, end],
    ).fetchall()
    consumed = _consumed_by(con, as_of)
    out: dict[str, set[str]] = {}
    for user, item in rows:
        if item not in consumed.get(user, ()):
            out.setdefault(user, set()).add(item)
    return out


def model_lists(
    con: duckdb.DuckDBPyConnection, as_of: datetime, model_id: str, users: Iterable[str]
) -> dict[str, list[str]]:
    """The recommendations in force at ``as_of``: each user's newest version with as_of <= T."""
    import pyarrow as pa

    con.register("_eval_users", pa.table({"user_id": pa.array(sorted(users), pa.string())}))
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
    return out


def _popularity_order(events: Sequence[tuple], since: datetime | None) -> list[str]:
    """Items by distinct users engaging (desc), then item id."""
    users_per_item: dict[str, set[str]] = {}
    for user, item, at in events:
        if since is None or at >= since:
            users_per_item.setdefault(item, set()).add(user)
    return sorted(users_per_item, key=lambda item: (-len(users_per_item[item]), item))


def _top_excluding(order: Sequence[str], exclude: set[str], k: int) -> list[str]:
    out = []
    for item in order:
        if item not in exclude:
            out.append(item)
            if len(out) == k:
                break
    return out


def _cooccurrence_lists(
    events: Sequence[tuple], users: Sequence[str], consumed: Mapping[str, set[str]], k: int
) -> dict[str, list[str]]:
    import numpy as np
    import scipy.sparse as sp

    pairs = sorted({(user, item) for user, item, _ in events})
    if not pairs:
        return {}
    all_users = sorted({u for u, _ in pairs})
    items = np.array(sorted({i for _, i in pairs}), dtype=object)
    u_index = {u: n for n, u in enumerate(all_users)}
    i_index = {i: n for n, i in enumerate(items)}
    x = sp.csr_matrix(
        (
            np.ones(len(pairs)),
            ([u_index[u] for u, _ in pairs], [i_index[i] for _, i in pairs]),
        ),
        shape=(len(all_users), len(items)),
    )
    co = (x.T @ x).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    out: dict[str, list[str]] = {}
    known = [u for u in users if u in u_index]
    for start in range(0, len(known), 512):
        block = known[start : start + 512]
        scores = np.asarray((x[[u_index[u] for u in block]] @ co).todense())
        for row, user in zip(scores, block, strict=True):
            for item in consumed.get(user, ()):
                j = i_index.get(item)
                if j is not None:
                    row[j] = 0.0
            candidates = np.flatnonzero(row > 0)
            # Highest score first, then item id (items are sorted, so index order is id order).
            ranked = candidates[np.lexsort((candidates, -row[candidates]))][:k]
            if len(ranked):
                out[user] = items[ranked].tolist()
    return out


def baseline_lists(
    con: duckdb.DuckDBPyConnection, as_of: datetime, users: Iterable[str], k: int
) -> dict[str, dict[str, list[str]]]:
    """Top-k lists of every baseline for ``users``, from the events known at ``as_of``."""
    users = sorted(users)
    events = _known_positive(con, as_of)
    consumed = _consumed_by(con, as_of)
    recent = _popularity_order(events, as_of - RECENT_POPULARITY)
    ever = _popularity_order(events, None)
    return {
        "popularity_7d": {u: _top_excluding(recent, consumed.get(u, set()), k) for u in users},
        "popularity_all": {u: _top_excluding(ever, consumed.get(u, set()), k) for u in users},
        "cooccurrence": _cooccurrence_lists(events, users, consumed, k),
    }


# --------------------------------------------------------------------------------------------
# Evaluating a cut-off, storing it
# --------------------------------------------------------------------------------------------


def evaluate_as_of(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    horizon_hours: float,
    model_id: str,
    ks: Sequence[int] = KS,
) -> list[dict[str, Any]]:
    """Score the model's recommendations in force at ``as_of`` and every baseline, on the same
    users, against the events of the following ``horizon_hours``.

    Returns one dict per (population, method, metric, k) with keys population, method, metric,
    k, value, users_evaluated (see the module docstring for the protocol).
    """
    relevant = relevant_items(con, as_of, horizon_hours)
    known_users = {
        row[0]
        for row in con.execute(
            "select distinct user_id from user_item_interactions where interval_start < ?",
            [as_of],
        ).fetchall()
    }
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
    lists = {MODEL: model_lists(con, as_of, model_id, relevant)}
    lists.update(baseline_lists(con, as_of, relevant, k_max))
    out = []
    for population in POPULATIONS:
        rel = relevant if population == "all" else {
            u: r for u, r in relevant.items() if u in known_users
        }
        for method in METHODS:
            scores = score_lists(lists[method], rel, catalogue, new_items, ks)
            for (metric, k), value in scores.items():
                out.append(
                    {
                        "population": population,
                        "method": method,
                        "metric": metric,
                        "k": k,
                        "value": value,
                        "users_evaluated": len(rel),
                    }
                )
    return out


def record_evaluation(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    horizon_hours: float,
    model_id: str,
    rows: Sequence[Mapping[str, Any]],
) -> int:
    """Replace the ``evaluation`` rows of this cut-off, horizon and model by ``rows``."""
    con.execute(EVALUATION_DDL)
    evaluated_at = datetime.now(UTC).replace(tzinfo=None)
    with transaction(con):
        con.execute(
            "delete from evaluation where interval_end = ? and horizon_hours = ? and model_id = ?",
            [as_of, horizon_hours, model_id],
        )
        con.executemany(
            "insert into evaluation values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    as_of,
                    horizon_hours,
                    r["population"],
                    r["method"],
                    r["metric"],
                    r["k"],
                    r["value"],
                    r["users_evaluated"],
                    model_id,
                    evaluated_at,
                ]
                for r in rows
            ],
        )
    return len(rows)


def evaluate_interval(
    con: duckdb.DuckDBPyConnection,
    interval_end: datetime,
    horizon_hours: float,
    model_id: str,
) -> dict[str, Any]:
    """The hourly DAG's evaluation: in the run for the interval ending at E, evaluate the
    recommendations as of ``T = E - horizon`` (every event of (T, E] is known by then).

    Idempotent: replaces that cut-off's rows. Returns a small summary for XCom.
    """
    as_of = interval_end - timedelta(hours=horizon_hours)
    rows = evaluate_as_of(con, as_of, horizon_hours, model_id)
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

