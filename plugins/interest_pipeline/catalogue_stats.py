"""Catalogue-wide behaviour statistics (popularity and co-occurrence), kept as exact aggregates.

Both statistics are over everyone's positive (user, item) pairs known at an interval: the
recommend stage needs them every hour, and recomputing them from every pair of history costs
seconds per hour after a year. So the warehouse keeps them, as of a watermark interval W, in

- ``item_cooccurrence`` (item_i, item_j, users): users who engaged positively with both items,
  i <> j (the off-diagonal of X^T X, X the binary user x item matrix);
- ``item_popularity`` (half_life_hours, item_id, forward_sum): per item the forward-decayed sum
  ``S_j = sum over its users of 2 ** ((L_uj - epoch) / half_life)`` (``L_uj``: the user's latest
  positive event on j, see below), as an exact integer in units of 2 ** -50;
- ``catalogue_stats_state``: W, the epoch, the half-lives kept, the number of interaction
  rows up to W (a cheap check that nothing below W changed since) and a generation: a new
  random id each time the state is written.

A process keeps the state it last read or wrote in memory (:class:`_Kept`), in the positions
of the item list asked for, under that generation: while the warehouse holds the same
generation nobody changed the state, so the next hour reads nothing back and applies its own
delta in memory (an evaluation scores hundreds of hours in one process; reading the
co-occurrence pairs back each hour was a quarter of its time).

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
import uuid
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
    interaction_rows bigint not null,
    generation varchar
);
-- A state written before generations existed has none: it is never served from memory.
alter table catalogue_stats_state add column if not exists generation varchar;
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

    @classmethod
    def nothing(cls, n_items: int, half_lives: Sequence[float]) -> CatalogueStats:
        """Statistics that say nothing (zeros) over ``n_items``: for a caller that reads
        none of them."""
        import numpy as np
        import scipy.sparse as sp

        return cls(
            sp.csr_matrix((n_items, n_items)),
            {float(h): np.zeros(n_items) for h in half_lives},
            np.zeros(n_items, dtype=bool),
        )


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
    if state is not None and interval_start < state.watermark:
        log.info("statistics for %s from a scan (state at %s)", interval_start, state.watermark)
        return _from_scan(con, item_ids, interval_start, half_lives, cooccurrence)
    if state is None:
        log.info("statistics state rebuilt from a scan at %s", interval_start)
        generation = _rebuild(con, interval_start, wanted)
    elif interval_start > state.watermark:
        generation = _advance(con, state, interval_start, wanted)
    else:
        generation = state.generation
    return _from_state(
        con, item_ids, interval_start, half_lives, cooccurrence, generation, wanted
    )


@dataclass(frozen=True)
class _State:
    watermark: datetime
    generation: str | None


class _Kept:
    """The state of one generation in this process, per item list asked for (module
    docstring): each view is what :func:`_from_state` would read back, the co-occurrence
    matrix over the list's positions and the forward sums of every kept half-life."""

    _MAX_VIEWS = 2  # the recommend stage's catalogue and the trending order's (usually one)

    def __init__(self) -> None:
        self.generation: str | None = None
        self.views: dict[tuple[str, ...], _View] = {}

    def view(self, generation: str | None, item_ids: Sequence[str]) -> _View | None:
        if generation is None or generation != self.generation:
            return None
        return self.views.get(tuple(item_ids))

    def keep(self, generation: str | None, item_ids: Sequence[str], view: _View) -> None:
        if generation != self.generation:
            self.generation, self.views = generation, {}
        if generation is None:
            return
        self.views[tuple(item_ids)] = view
        while len(self.views) > self._MAX_VIEWS:
            del self.views[next(iter(self.views))]

    def advance(
        self,
        old: str | None,
        new: str,
        cooc_delta: pa.Table,
        sums: dict[tuple[float, str], int],
    ) -> None:
        """Move the views of generation ``old`` to ``new`` by an advance's delta: co-occurrence
        counts to add (item names) and the new forward sums of the (half-life, item) changed."""
        if old is None or old != self.generation:
            self.generation, self.views = None, {}
            return
        self.generation = None  # no generation's copy while the views are half moved
        for view in self.views.values():
            view.add(cooc_delta, sums)
        self.generation = new


@dataclass
class _View:
    items: pa.Array  # the item list, positions j
    cooccurrence: sp.csr_matrix
    mantissas: dict[float, _Mantissas]  # every kept half-life

    def add(self, cooc_delta: pa.Table, sums: dict[tuple[float, str], int]) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import scipy.sparse as sp

        i = pc.index_in(cooc_delta.column("item_i"), value_set=self.items)
        j = pc.index_in(cooc_delta.column("item_j"), value_set=self.items)
        listed = pc.and_(pc.is_valid(i), pc.is_valid(j))
        n = len(self.items)
        delta = sp.csr_matrix(
            (
                pc.filter(cooc_delta.column("users"), listed).to_numpy().astype(np.float64),
                (pc.filter(i, listed).to_numpy(), pc.filter(j, listed).to_numpy()),
            ),
            shape=(n, n),
        )
        # Whole counts: the sum is the matrix read back, with its canonical (sorted) layout.
        self.cooccurrence = (self.cooccurrence + delta).tocsr()
        names = list(dict.fromkeys(item for _, item in sums))
        where = pc.index_in(pa.array(names, pa.string()), value_set=self.items).to_pylist()
        position = dict(zip(names, where, strict=True))
        for (hl, item), total in sums.items():
            if position[item] is not None and hl in self.mantissas:
                self.mantissas[hl].set(position[item], total)


@dataclass
class _Mantissas:
    """Forward sums over the item positions of one half-life, as what :func:`_assemble`
    needs of each: its top 64 bits as a float and the shift that drops the rest (0 and 0:
    no sum)."""

    top: np.ndarray  # float64
    shift: np.ndarray  # int64

    @classmethod
    def of(cls, sums: dict[tuple[float, int], int], half_life: float, n_items: int) -> _Mantissas:
        import numpy as np

        out = cls(np.zeros(n_items, dtype=np.float64), np.zeros(n_items, dtype=np.int64))
        for (hl, j), total in sums.items():
            if hl == half_life:
                out.set(j, total)
        return out

    def set(self, j: int, total: int) -> None:
        shift = max(total.bit_length() - 64, 0) if total > 0 else 0
        self.top[j] = float(total >> shift) if total > 0 else 0.0
        self.shift[j] = shift


_KEPT = _Kept()


def _kept_half_lives() -> tuple[float, ...]:
    """Half-lives the state keeps: the ranker's trending candidates and the prior's."""
    from interest_pipeline.ranker import TRENDING_HALF_LIVES
    from interest_pipeline.recommendations import scoring_config

    return (*TRENDING_HALF_LIVES, scoring_config().popularity_half_life_hours)


def _valid_state(con: duckdb.DuckDBPyConnection, half_lives: list[float]) -> _State | None:
    """The state's watermark and generation, or None when there is none or it no longer
    describes the interactions (other half-lives or epoch, or rows up to the watermark
    changed)."""
    row = con.execute(
        "select watermark, epoch, half_lives, interaction_rows, generation "
        "from catalogue_stats_state"
    ).fetchall()
    if len(row) != 1:
        return None
    watermark, epoch, kept, rows, generation = row[0]
    if epoch != popularity_epoch() or not set(half_lives) <= set(kept):
        return None
    ((now,),) = con.execute(
        "select count(*) from user_item_interactions where interval_start <= ?", [watermark]
    ).fetchall()
    return _State(watermark, generation) if now == rows else None


def invalidate_from(con: duckdb.DuckDBPyConnection, interval_start: datetime) -> None:
    """Forget the state if it covers ``interval_start`` (that interval's rows were rebuilt):
    the next interval at or after it rebuilds the state from a scan."""
    con.execute(STATE_DDL)
    con.execute("delete from catalogue_stats_state where watermark >= ?", [interval_start])


def _rebuild(
    con: duckdb.DuckDBPyConnection, interval_start: datetime, half_lives: list[float]
) -> str:
    """The state at ``interval_start`` from a scan of every pair; returns its generation."""
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
        return _write_state(con, interval_start, half_lives)


def _advance(
    con: duckdb.DuckDBPyConnection,
    state: _State,
    interval_start: datetime,
    half_lives: list[float],
) -> str:
    """Move the state from its watermark to ``interval_start``: add the pairs of the intervals
    in between (new pairs to co-occurrence; new and re-engaged pairs to popularity), in the
    warehouse and in this process's copy (:data:`_KEPT`). Returns the new generation."""
    import pyarrow as pa

    watermark = state.watermark
    params = {"w": watermark, "start": interval_start}
    with atomic(con):
        con.execute(
            "create or replace temp table _stats_new_pairs as "
            + _PAIRS_SQL.format(where="interval_start > $w and interval_start <= $start"),
            params,
        )
        _old_pairs(con, watermark)
        cooc_delta = _cooccurrence_delta(con)
        con.register("_stats_cooc_delta", cooc_delta)
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
        generation = _write_state(con, interval_start, half_lives)
    # delta now holds each changed (half-life, item)'s new sum (0: no user left).
    _KEPT.advance(state.generation, generation, cooc_delta, delta)
    return generation


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
) -> str:
    """Record the state at ``watermark`` under a new generation, which it returns."""
    ((rows,),) = con.execute(
        "select count(*) from user_item_interactions where interval_start <= ?", [watermark]
    ).fetchall()
    generation = uuid.uuid4().hex
    con.execute("delete from catalogue_stats_state")
    con.execute(
        "insert into catalogue_stats_state "
        "(watermark, epoch, half_lives, interaction_rows, generation) values (?, ?, ?, ?, ?)",
        [watermark, popularity_epoch(), half_lives, rows, generation],
    )
    return generation


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
    generation: str | None = None,
    kept: Sequence[float] = (),
) -> CatalogueStats:
    """The statistics from the state (of ``generation``, keeping the half-lives ``kept``):
    from this process's copy when it has one for ``item_ids``, else read back (and kept,
    when the co-occurrence is read)."""
    import scipy.sparse as sp

    view = _KEPT.view(generation, item_ids)
    if view is None:
        view = _read_view(con, item_ids, cooccurrence, (*half_lives, *kept))
        if cooccurrence:
            _KEPT.keep(generation, item_ids, view)
    n = len(item_ids)
    matrix = view.cooccurrence if cooccurrence else sp.csr_matrix((n, n))
    return _assemble(matrix, view.mantissas, n, interval_start, half_lives)


def _read_view(
    con: duckdb.DuckDBPyConnection,
    item_ids: Sequence[str],
    cooccurrence: bool,
    half_lives: Sequence[float],
) -> _View:
    """The state over ``item_ids``: co-occurrence (when asked for; else empty) and the
    forward sums of ``half_lives``."""
    import numpy as np
    import pyarrow as pa
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
    n = len(item_ids)
    matrix = sp.csr_matrix(
        (
            cooc.column("users").to_numpy().astype(np.float64),
            cooc.column("j").to_numpy(),
            np.concatenate([[0], np.cumsum(np.bincount(rows_i, minlength=n))]),
        ),
        shape=(n, n),
    )
    mantissas = {float(hl): _Mantissas.of(sums, float(hl), n) for hl in half_lives}
    return _View(pa.array(list(item_ids), pa.string()), matrix, mantissas)


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
    n = len(item_ids)
    mantissas = {float(hl): _Mantissas.of(sums, float(hl), n) for hl in half_lives}
    return _assemble(matrix, mantissas, n, interval_start, half_lives)


def _assemble(
    matrix: sp.csr_matrix,
    mantissas: dict[float, _Mantissas],
    n_items: int,
    interval_start: datetime,
    half_lives: Sequence[float],
) -> CatalogueStats:
    """Popularity at the interval's end from the forward sums: ``S_j * 2 ** -(elapsed /
    period + 50)``, from each sum's top 64 bits and the same integer split of the exponent as
    the terms' (a half-life with no sums gives zeros)."""
    import numpy as np

    end = interval_start + timedelta(hours=1)
    elapsed_us = (end - popularity_epoch()) // timedelta(microseconds=1)
    popularity = {}
    engaged = np.zeros(n_items, dtype=bool)
    for hl in (float(h) for h in half_lives):
        found = mantissas.get(hl)
        if found is None:
            popularity[hl] = np.zeros(n_items, dtype=np.float64)
            continue
        whole, rest = divmod(elapsed_us, round(hl * 3.6e9))
        scaled = np.ldexp(found.top, found.shift - (whole + _MANTISSA_BITS))
        popularity[hl] = scaled * 2.0 ** -(rest / round(hl * 3.6e9))
        engaged |= found.top > 0
    return CatalogueStats(matrix, popularity, engaged)


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
