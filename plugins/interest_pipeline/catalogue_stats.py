"""Catalogue-wide behaviour statistics (popularity and co-occurrence), kept as exact aggregates.

Both statistics are over everyone's positive (user, item) pairs known at an interval: the
recommend stage needs them every hour, and recomputing them from every pair of history costs
seconds per hour after a year. So the warehouse keeps them, as of a watermark interval W, in

- ``item_cooccurrence`` (item_i, item_j, users): users who engaged positively with both items,
  i <> j (the off-diagonal of X^T X, X the binary user x item matrix);
- ``item_popularity`` (half_life_hours, item_id, forward_sum): per item the forward-decayed sum
  ``S_j = sum over its users of 2 ** ((L_uj - epoch) / half_life)`` (``L_uj``: the user's latest
  positive event on j, see below), as an exact integer in units of 2 ** -50;
- ``catalogue_stats_state``: W, the epoch, the half-lives kept and the number of interaction
  rows up to W (a cheap check that nothing below W changed since).

Popularity at time T is then ``P_j = S_j * 2 ** (-(T - epoch) / half_life)``: exponential decay
factors out of the sum, so a new hour only adds terms. Each term is the integer
``round(2 ** frac * 2 ** 50) << floor`` of its exponent, so sums are exact in any order: the
tables after hours processed one by one, in several steps, or rebuilt from a scan are
identical, and :func:`catalogue_stats` computes the same numbers from a scan for any past
interval (the ranker's training cut-offs) without touching the state.

An event's time counts at most up to the end of its arrival hour (``L_uj`` is the latest
``least(event_at, interval_start + 1 hour)``): a clock running ahead cannot make an item look
more recent than the hour it arrived in, and every term has a non-negative age at any later
interval end.

How the state follows the pipeline: an interval after W adds the pairs of the intervals
(W, T] (the new pairs and the changed latest events of the users active then: the cost follows
those hours, plus one filtered read of those users' earlier pairs); an interval before W (a
rerun, or ranker training) is computed from a scan and leaves the state alone; a state that no
longer matches the interactions (a dbt rebuild of an hour at or before W, an erasure, rows
written by hand) is rebuilt from a scan at the interval asked for.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from interest_pipeline.config import min_event_time
from interest_pipeline.warehouse import atomic, query_arrow

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import duckdb
    import numpy as np
    import pyarrow as pa
    import scipy.sparse as sp

log = logging.getLogger(__name__)

# Units of each popularity term: 2 ** -50 (the precision of the old fixed-point sum).
_MANTISSA_BITS = 50
# Recent intervals (hours) searched first for a pair's earlier events (a speed-up only).
_RECENT_HOURS = 24
# Exponents are combined in SQL per block of 32 (term < 2 ** 82, so a HUGEINT sum of up to
# 2 ** 45 terms cannot overflow) and the blocks in Python, where integers have no limit.
_BLOCK_BITS = 32

STATE_DDL = """
create table if not exists catalogue_stats_state (
    watermark timestamp not null,
    epoch timestamp not null,
    half_lives double[] not null,
    interaction_rows bigint not null
);
create table if not exists item_cooccurrence (
    item_i varchar not null,
    item_j varchar not null,
    users bigint not null
);
create table if not exists item_popularity (
    half_life_hours double not null,
    item_id varchar not null,
    forward_sum blob not null
);
"""

# Positive (user, item) pairs with their latest event, counted up to its arrival hour's end.
_PAIRS_SQL = """
select user_id, item_id,
    max(least(event_at, interval_start + interval 1 hour)) as last_at
from user_item_interactions
where weight > 0 and item_id is not null and {where}
group by user_id, item_id
"""

# Each pair's popularity term per half-life, summed per (half-life, item, exponent block):
# the exponent x = (L - epoch) / half_life splits into floor e and fraction; the term is
# round(2 ** frac * 2 ** 50) << (e mod 32), in block e // 32. ``sign`` lets a delta subtract.
_TERMS_SQL = """
with exponents as (
    -- Exponent (L - epoch) / half_life in integer microseconds: whole part exact, fraction
    -- to double precision however far L is from the epoch.
    select item_id, sign, hl,
        greatest(epoch_us(last_at) - epoch_us($epoch), 0) as us,
        cast(round(hl * 3.6e9) as bigint) as period
    from ({pairs}), unnest($half_lives) as h(hl)
),
parts as (
    select item_id, sign, hl, us // period as e,
        cast(round(pow(2.0, (us % period) / period) * pow(2.0, {bits})) as hugeint) as m
    from exponents
)
select hl, item_id, e // {block} as block,
    sum(sign * (m << cast(e % {block} as integer))) as total
from parts
group by all
"""


def popularity_epoch() -> datetime:
    """The time forward decay counts from: the earliest event time the pipeline accepts
    (INTEREST_MIN_EVENT_TIME; dbt quarantines older events)."""
    return min_event_time()


@dataclass
class CatalogueStats:
    """The statistics at one interval over a given item list (positions j).

    Attributes:
        cooccurrence: items x items CSR matrix of C(i, j), zero diagonal.
        popularity: per half-life, P_j at the interval end (0 for an item nobody engaged with).
        engaged: True for the items someone engaged with positively.
    """

    cooccurrence: sp.csr_matrix
    popularity: dict[float, np.ndarray]
    engaged: np.ndarray


def catalogue_stats(
    con: duckdb.DuckDBPyConnection,
    item_ids: Sequence[str],
    interval_start: datetime,
    half_lives: Sequence[float],
    cooccurrence: bool = True,
) -> CatalogueStats:
    """Popularity (for each of ``half_lives``) and co-occurrence over ``item_ids`` from the
    events of every interval up to the one starting at ``interval_start``, as of its end
    (``cooccurrence=False``: popularity only, the co-occurrence matrix left empty).

    Uses (and moves forward) the warehouse's aggregates when the interval is at or after their
    watermark, else computes the same numbers from a scan (module docstring). Needs a write
    connection; call it inside the caller's transaction or alone."""
    # A half-life asked for twice is one (a scan would otherwise count its terms twice).
    half_lives = tuple(dict.fromkeys(float(h) for h in half_lives))
    wanted = sorted(set(half_lives) | set(_kept_half_lives()))
    con.execute(STATE_DDL)
    state = _valid_state(con, wanted)
    if state is not None and interval_start < state:
        log.info("statistics for %s from a scan (state at %s)", interval_start, state)
        return _from_scan(con, item_ids, interval_start, half_lives, cooccurrence)
    if state is None:
        log.info("statistics state rebuilt from a scan at %s", interval_start)
        _rebuild(con, interval_start, wanted)
    elif interval_start > state:
        _advance(con, state, interval_start, wanted)
    return _from_state(con, item_ids, interval_start, half_lives, cooccurrence)


def _kept_half_lives() -> tuple[float, ...]:
    """Half-lives the state keeps: the ranker's trending candidates and the prior's."""
    from interest_pipeline.ranker import TRENDING_HALF_LIVES
    from interest_pipeline.recommendations import scoring_config

    return (*TRENDING_HALF_LIVES, scoring_config().popularity_half_life_hours)


def _valid_state(con: duckdb.DuckDBPyConnection, half_lives: list[float]) -> datetime | None:
    """The state's watermark, or None when there is none or it no longer describes the
    interactions (other half-lives or epoch, or rows up to the watermark changed)."""
    row = con.execute(
        "select watermark, epoch, half_lives, interaction_rows from catalogue_stats_state"
    ).fetchall()
    if len(row) != 1:
        return None
    watermark, epoch, kept, rows = row[0]
    if epoch != popularity_epoch() or not set(half_lives) <= set(kept):
        return None
    ((now,),) = con.execute(
        "select count(*) from user_item_interactions where interval_start <= ?", [watermark]
    ).fetchall()
    return watermark if now == rows else None


def invalidate_from(con: duckdb.DuckDBPyConnection, interval_start: datetime) -> None:
    """Forget the state if it covers ``interval_start`` (that interval's rows were rebuilt):
    the next interval at or after it rebuilds the state from a scan."""
    con.execute(STATE_DDL)
    con.execute("delete from catalogue_stats_state where watermark >= ?", [interval_start])


def _rebuild(
    con: duckdb.DuckDBPyConnection, interval_start: datetime, half_lives: list[float]
) -> None:
    """The state at ``interval_start`` from a scan of every pair."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    pairs = _PAIRS_SQL.format(where="interval_start <= $start")
    params = {"start": interval_start}
    table = query_arrow(con, f"select user_id, item_id from ({pairs})", params)
    items = pc.dictionary_encode(table.column("item_id").combine_chunks())
    counts = _cooccurrence_counts(table.column("user_id"), items.indices, len(items.dictionary))
    names = items.dictionary
    cooc = pa.table({
        "item_i": names.take(pa.array(counts.row, pa.int64())),
        "item_j": names.take(pa.array(counts.col, pa.int64())),
        "users": pa.array(counts.data.astype(np.int64), pa.int64()),
    })
    sums = _forward_sums(con, f"select *, 1 as sign from ({pairs})", params, half_lives)
    with atomic(con):
        con.execute("delete from item_cooccurrence")
        con.register("_cooc", cooc)
        con.execute("insert into item_cooccurrence select item_i, item_j, users from _cooc")
        con.unregister("_cooc")
        con.execute("delete from item_popularity")
        _write_sums(con, sums)
        _write_state(con, interval_start, half_lives)


def _advance(
    con: duckdb.DuckDBPyConnection,
    watermark: datetime,
    interval_start: datetime,
    half_lives: list[float],
) -> None:
    """Move the state from ``watermark`` to ``interval_start``: add the pairs of the intervals
    in between (new pairs to co-occurrence; new and re-engaged pairs to popularity)."""
    import pyarrow as pa

    params = {"w": watermark, "start": interval_start}
    with atomic(con):
        con.execute(
            "create or replace temp table _stats_new_pairs as "
            + _PAIRS_SQL.format(where="interval_start > $w and interval_start <= $start"),
            params,
        )
        _old_pairs(con, watermark)
        con.register("_stats_cooc_delta", _cooccurrence_delta(con))
        con.execute(
            """
            update item_cooccurrence
            set users = item_cooccurrence.users + delta.users
            from _stats_cooc_delta as delta
            where item_cooccurrence.item_i = delta.item_i
                and item_cooccurrence.item_j = delta.item_j
            """
        )
        con.execute(
            """
            insert into item_cooccurrence
            select delta.* from _stats_cooc_delta as delta
            anti join item_cooccurrence using (item_i, item_j)
            """
        )
        # Popularity: a pair's term moves from its old latest event (if any) to its new one.
        delta_sql = """
            select new.item_id, greatest(new.last_at, old.last_at) as last_at, 1 as sign
            from _stats_new_pairs as new
            left join _stats_old_pairs as old using (user_id, item_id)
            where old.last_at is null or new.last_at > old.last_at
            union all
            select old.item_id, old.last_at, -1 as sign
            from _stats_new_pairs as new
            inner join _stats_old_pairs as old using (user_id, item_id)
            where new.last_at > old.last_at
        """
        delta = _forward_sums(con, delta_sql, {}, half_lives)
        if delta:
            con.register(
                "_changed",
                pa.table({
                    "half_life_hours": pa.array([h for h, _ in delta], pa.float64()),
                    "item_id": pa.array([i for _, i in delta], pa.string()),
                }),
            )
            current = con.execute(
                """
                select p.half_life_hours, p.item_id, p.forward_sum
                from item_popularity as p
                semi join _changed as c using (half_life_hours, item_id)
                """
            ).fetchall()
            for hl, item, blob in current:
                delta[hl, item] += int.from_bytes(blob, "little")
            con.execute(
                "delete from item_popularity as p "
                "where exists (select 1 from _changed as c "
                "where c.half_life_hours = p.half_life_hours and c.item_id = p.item_id)"
            )
            con.unregister("_changed")
            _write_sums(con, delta)
        con.unregister("_stats_cooc_delta")
        for temp in ("_stats_new_pairs", "_stats_old_pairs"):
            con.execute(f"drop table if exists {temp}")
        _write_state(con, interval_start, half_lives)


def _cooccurrence_delta(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """What the pairs of ``_stats_new_pairs`` engaged for the first time add to co-occurrence:
    (item_i, item_j, users).

    Per user, with N their first-engaged items and O their earlier ones, the counts grow by
    every ordered pair of distinct items of N x (N + O) and of O x N: as sparse products,
    N^T (N + O) + O^T N off the diagonal (the first term's diagonal is a new item with
    itself; the second has none, as N and O are disjoint). Computed with scipy rather than
    a self-join in SQL: a busy hour's new users give tens of millions of item pairs.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import scipy.sparse as sp

    table = query_arrow(
        con,
        """
        select user_id, item_id, true as is_new from _stats_new_pairs
        anti join _stats_old_pairs using (user_id, item_id)
        union all
        select user_id, item_id, false as is_new from _stats_old_pairs
        """,
    )
    users = pc.dictionary_encode(table.column("user_id").combine_chunks())
    items = pc.dictionary_encode(table.column("item_id").combine_chunks())
    rows, cols = users.indices.to_numpy(), items.indices.to_numpy()
    new = table.column("is_new").to_numpy()
    shape = (len(users.dictionary), len(items.dictionary))

    def pairs(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(int(mask.sum())), (rows[mask], cols[mask])), shape=shape)

    first, earlier = pairs(new), pairs(~new)
    delta = (first.T @ (first + earlier) + earlier.T @ first).tocoo()
    off = delta.row != delta.col
    return pa.table({
        "item_i": items.dictionary.take(pa.array(delta.row[off], pa.int64())),
        "item_j": items.dictionary.take(pa.array(delta.col[off], pa.int64())),
        "users": pa.array(np.rint(delta.data[off]).astype(np.int64), pa.int64()),
    })


def _old_pairs(con: duckdb.DuckDBPyConnection, watermark: datetime) -> None:
    """``_stats_old_pairs``: what :func:`_advance` needs of the pairs up to the watermark, for
    the users of ``_stats_new_pairs``: each new pair's earlier latest event, and every earlier
    pair of a user with a pair engaged for the first time.

    A pair seen again in the recent intervals, later than the end of every older interval
    (an event counts up to its arrival hour's end), has its earlier latest event there; a
    user whose new pairs all are is done without reading their older history. The others
    (new users, new items) have every earlier pair read.
    """
    window = watermark - timedelta(hours=_RECENT_HOURS - 1)
    params = {"w": watermark, "window": window}
    con.execute(
        "create or replace temp table _stats_recent as select * from ("
        + _PAIRS_SQL.format(
            where="interval_start >= $window and interval_start <= $w "
            "and user_id in (select user_id from _stats_new_pairs)"
        )
        + ") semi join _stats_new_pairs using (user_id, item_id)",
        params,
    )
    con.execute(
        """
        create or replace temp table _stats_full_users as
        select distinct new.user_id
        from _stats_new_pairs as new
        left join _stats_recent as recent using (user_id, item_id)
        where recent.last_at is null or recent.last_at <= $window
        """,
        {"window": window},
    )
    con.execute(
        "create or replace temp table _stats_old_pairs as "
        "select * from _stats_recent "
        "where user_id not in (select user_id from _stats_full_users) "
        "union all "
        + _PAIRS_SQL.format(
            where="interval_start <= $w and user_id in (select user_id from _stats_full_users)"
        ),
        {"w": watermark},
    )
    con.execute("drop table _stats_recent")
    con.execute("drop table _stats_full_users")


def _forward_sums(
    con: duckdb.DuckDBPyConnection,
    terms_sql: str,
    params: dict,
    half_lives: Sequence[float],
) -> dict[tuple[float, str], int]:
    """Per (half-life, item) the exact sum of the popularity terms of ``terms_sql``'s rows
    (item_id, last_at, sign)."""
    rows = con.execute(
        _TERMS_SQL.format(pairs=terms_sql, bits=_MANTISSA_BITS, block=_BLOCK_BITS),
        {**params, "epoch": popularity_epoch(), "half_lives": [float(h) for h in half_lives]},
    ).fetchall()
    sums: dict[tuple[float, str], int] = {}
    for hl, item, block, total in rows:
        key = (float(hl), item)
        sums[key] = sums.get(key, 0) + (int(total) << (_BLOCK_BITS * int(block)))
    return sums


def _write_sums(con: duckdb.DuckDBPyConnection, sums: dict[tuple[float, str], int]) -> None:
    """Append (half-life, item, S_j) rows; sums of zero (no user left) are not stored."""
    import pyarrow as pa

    kept = [(key, s) for key, s in sums.items() if s != 0]
    if not kept:
        return
    table = pa.table({
        "half_life_hours": pa.array([k[0] for k, _ in kept], pa.float64()),
        "item_id": pa.array([k[1] for k, _ in kept], pa.string()),
        "forward_sum": pa.array(
            [s.to_bytes((s.bit_length() + 8) // 8, "little") for _, s in kept], pa.binary()
        ),
    })
    con.register("_sums", table)
    con.execute("insert into item_popularity select * from _sums")
    con.unregister("_sums")


def _write_state(
    con: duckdb.DuckDBPyConnection, watermark: datetime, half_lives: list[float]
) -> None:
    ((rows,),) = con.execute(
        "select count(*) from user_item_interactions where interval_start <= ?", [watermark]
    ).fetchall()
    con.execute("delete from catalogue_stats_state")
    con.execute(
        "insert into catalogue_stats_state values (?, ?, ?, ?)",
        [watermark, popularity_epoch(), half_lives, rows],
    )


@contextmanager
def _items_registered(con: duckdb.DuckDBPyConnection, item_ids: Sequence[str]) -> Iterator[None]:
    """``_stats_items`` (item_id, j: position in ``item_ids``) registered while inside."""
    import pyarrow as pa

    con.register("_stats_items", pa.table({
        "item_id": pa.array(list(item_ids), pa.string()),
        "j": pa.array(range(len(item_ids)), pa.int64()),
    }))
    try:
        yield
    finally:
        con.unregister("_stats_items")


def _from_state(
    con: duckdb.DuckDBPyConnection,
    item_ids: Sequence[str],
    interval_start: datetime,
    half_lives: Sequence[float],
    cooccurrence: bool = True,
) -> CatalogueStats:
    import numpy as np
    import scipy.sparse as sp

    with _items_registered(con, item_ids):
        cooc = query_arrow(
            con,
            """
            select a.j as i, b.j as j, c.users
            from item_cooccurrence as c
            inner join _stats_items as a on c.item_i = a.item_id
            inner join _stats_items as b on c.item_j = b.item_id
            where $wanted
            order by i, j
            """,
            {"wanted": cooccurrence},
        )
        rows = con.execute(
            """
            select p.half_life_hours, items.j, p.forward_sum
            from item_popularity as p inner join _stats_items as items using (item_id)
            where list_contains(?, p.half_life_hours)
            """,
            [[float(h) for h in half_lives]],
        ).fetchall()
    sums = {(float(hl), int(j)): int.from_bytes(blob, "little") for hl, j, blob in rows}
    # One row per pair, in (i, j) order: the CSR arrays directly, nothing to sort or sum.
    rows_i = cooc.column("i").to_numpy()
    matrix = sp.csr_matrix(
        (
            cooc.column("users").to_numpy().astype(np.float64),
            cooc.column("j").to_numpy(),
            np.concatenate([[0], np.cumsum(np.bincount(rows_i, minlength=len(item_ids)))]),
        ),
        shape=(len(item_ids), len(item_ids)),
    )
    return _assemble(matrix, sums, len(item_ids), interval_start, half_lives)


def _from_scan(
    con: duckdb.DuckDBPyConnection,
    item_ids: Sequence[str],
    interval_start: datetime,
    half_lives: Sequence[float],
    cooccurrence: bool = True,
) -> CatalogueStats:
    import scipy.sparse as sp

    with _items_registered(con, item_ids):
        pairs = (
            "select * from ("
            + _PAIRS_SQL.format(where="interval_start <= $start")
            + ") semi join _stats_items using (item_id)"
        )
        params = {"start": interval_start}
        matrix = sp.csr_matrix((len(item_ids), len(item_ids)))
        if cooccurrence:
            table = query_arrow(
                con,
                f"""
                select pairs.user_id, items.j
                from ({pairs}) as pairs inner join _stats_items as items using (item_id)
                """,
                params,
            )
            matrix = _cooccurrence_counts(
                table.column("user_id"), table.column("j"), len(item_ids)
            ).tocsr()
        by_item = _forward_sums(con, f"select *, 1 as sign from ({pairs})", params, half_lives)
    index = {item: j for j, item in enumerate(item_ids)}
    sums = {(hl, index[item]): s for (hl, item), s in by_item.items()}
    return _assemble(matrix, sums, len(item_ids), interval_start, half_lives)


def _assemble(
    matrix: sp.csr_matrix,
    sums: dict[tuple[float, int], int],
    n_items: int,
    interval_start: datetime,
    half_lives: Sequence[float],
) -> CatalogueStats:
    import numpy as np

    end = interval_start + timedelta(hours=1)
    elapsed_us = (end - popularity_epoch()) // timedelta(microseconds=1)
    popularity = {}
    engaged = np.zeros(n_items, dtype=bool)
    for hl in half_lives:
        values = np.zeros(n_items, dtype=np.float64)
        for j in range(n_items):
            s = sums.get((float(hl), j), 0)
            if s > 0:
                values[j] = _decayed(s, elapsed_us, round(float(hl) * 3.6e9))
                engaged[j] = True
        popularity[float(hl)] = values
    return CatalogueStats(matrix, popularity, engaged)


def _decayed(forward_sum: int, elapsed_us: int, period_us: int) -> float:
    """``forward_sum * 2 ** -(elapsed / period + 50)`` as a float, from the integer's top 64
    bits (the same integer split of the exponent as the terms')."""
    shift = max(forward_sum.bit_length() - 64, 0)
    whole, rest = divmod(elapsed_us, period_us)
    value = math.ldexp(float(forward_sum >> shift), shift - whole - _MANTISSA_BITS)
    return value * 2.0 ** -(rest / period_us)


def _cooccurrence_counts(users: object, items: object, n_items: int) -> sp.coo_matrix:
    """Off-diagonal X^T X of the binary (user, item) pairs given as two columns (user ids,
    item codes below ``n_items``), as a COO matrix of counts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import scipy.sparse as sp

    def whole(column: object) -> pa.Array:
        return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column

    users = pc.dictionary_encode(whole(users))
    codes = whole(items).to_numpy(zero_copy_only=False).astype(np.int64)
    x = sp.csr_matrix(
        (np.ones(len(codes)), (users.indices.to_numpy(), codes)),
        shape=(len(users.dictionary), n_items),
    )
    co = (x.T @ x).tocoo()
    off = co.row != co.col
    return sp.coo_matrix((co.data[off], (co.row[off], co.col[off])), shape=(n_items, n_items))
