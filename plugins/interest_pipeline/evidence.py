"""The ``evidence`` column of recommendation rows: a JSON list per row, written for an hour's
lists at once.

A row's evidence names the contributions (a user's recent events) that pull the user most
towards the item, strongest first, each as
``{"event_type", "item_id", "text", "event_at", "contribution"}``, after a social entry when
people the user follows engaged with the item. A busy hour writes the evidence of hundreds of
thousands of rows, millions of entries: building each entry in Python cost more than scoring
the users. So the lists only record *which* contributions support each row (positions and
values, with numpy), and :meth:`EvidenceWriter.column` has DuckDB's ``to_json`` write all
rows at once from Arrow columns (the bytes are the ones msgspec writes for the same entries:
same key order, compact, UTF-8 unescaped; checked on a 1M-event hour's 694k lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa

# Contributions shown per recommended item.
EVIDENCE_PER_ITEM = 3
# Why an item of the new-visitor list is there (also for a user with only follows, when none
# of the people they follow engaged with it).
TRENDING_EVIDENCE = {"event_type": "trending", "text": "popular with recent visitors"}

# Compact UTF-8 JSON for the few social entries (msgspec: a small C extension).
encode_json = msgspec.json.Encoder().encode


class EvidenceWriter:
    """Collects, list by list, the contributions supporting each recommended row, and writes
    all rows' evidence at once.

    ``contributions``: the scored users' contributions (one row each, the order positions
    refer to) with columns ``event_type``, ``item_id``, ``text_kind``, ``title``, ``text`` and
    ``event_at``.
    """

    def __init__(self, contributions: pa.Table) -> None:
        self._contributions = contributions
        self._rows: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._social: dict[int, str] = {}
        self.row_count = 0

    def add(
        self,
        cosines: np.ndarray,
        coef: np.ndarray,
        offset: int,
        social: list[dict | None] | None = None,
    ) -> None:
        """The evidence of the next ``cosines.shape[1]`` rows (one user's list, in rank order).

        ``cosines``: the user's contributions x the listed items; ``coef``: each contribution's
        importance (weight x decay); ``offset``: the position of the user's first contribution
        in the contributions table; ``social``: per listed item, its social entry or None.
        """
        import numpy as np

        self.add_lists(
            (cosines * coef[:, None])[None], np.array([offset]),
            np.array([cosines.shape[1]]), [social],
        )

    def add_lists(
        self,
        pull: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        social: Sequence[list[dict | None] | None],
    ) -> None:
        """The evidence of the next lists, several at once (list k: the next ``lengths[k]``
        rows, in rank order).

        ``pull[k, c, i]``: list k's user's contribution c (importance x cosine) towards its
        i-th item, ``-inf`` past the user's contributions or the list's end; ``offsets[k]``:
        the position of that user's first contribution in the contributions table;
        ``social[k]``: per listed item, its social entry or None (or None for the list).
        """
        import numpy as np

        firsts = self.row_count + np.cumsum(lengths) - lengths
        self.row_count += int(np.sum(lengths))
        for first, entries in zip(firsts.tolist(), social, strict=True):
            for i, entry in enumerate(entries or ()):
                if entry is not None:
                    self._social[first + i] = encode_json(entry).decode()
        if pull.size == 0:
            return
        # The strongest contributions of every item at once (stable: ties keep event order;
        # the -inf padding sorts last and is never kept).
        order = np.argsort(-pull, axis=1, kind="stable")[:, :EVIDENCE_PER_ITEM]
        strongest = np.take_along_axis(pull, order, axis=1).transpose(0, 2, 1)
        order = order.transpose(0, 2, 1)  # list, item, then strongest first: the row order
        keep = strongest > 0
        rows = firsts[:, None, None] + np.arange(pull.shape[2])[None, :, None]
        self._rows.append(np.broadcast_to(rows, keep.shape)[keep])
        self._positions.append((order + offsets[:, None, None])[keep])
        self._values.append(strongest[keep])

    def column(self, con: duckdb.DuckDBPyConnection) -> pa.ChunkedArray:
        """Every added row's evidence, a JSON list as a string, in the order rows were added
        (written by DuckDB's ``to_json``, which renders these fields and rounded numbers
        exactly as msgspec does)."""
        import numpy as np
        import pyarrow as pa

        from interest_pipeline.warehouse import query_arrow

        rows = _concat(self._rows, np.int64)
        positions = pa.array(_concat(self._positions, np.int64))
        fields = _field_columns(self._contributions)
        own = pa.StructArray.from_arrays(
            [column.take(positions) for column in fields.values()]
            + [pa.array(_round4(_concat(self._values, np.float64)))],
            names=[*fields, "contribution"],
        )
        # Rows are added in order, so each row's entries are one slice.
        offsets = np.searchsorted(rows, np.arange(self.row_count + 1))
        social = np.full(self.row_count, None, dtype=object)
        if self._social:
            social[list(self._social)] = list(self._social.values())
        con.register("_evidence_rows", pa.table({
            "own": pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), own),
            "social": pa.array(social, pa.string()),
        }))
        try:
            return query_arrow(
                con,
                """
                select case
                    when social is null then to_json(own)::varchar
                    when len(own) = 0 then '[' || social || ']'
                    else '[' || social || ',' || substr(to_json(own)::varchar, 2)
                end as evidence
                from _evidence_rows
                """,
            ).column("evidence")
        finally:
            con.unregister("_evidence_rows")


def _round4(values: np.ndarray) -> np.ndarray:
    """``round(v, 4)`` as Python rounds, for an array: numpy's rounding agrees except where
    v x 10^4 lies within rounding error of a half, and those few are redone by Python."""
    import numpy as np

    out = np.round(values, 4)
    scaled = values * 1e4
    near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    for i in np.flatnonzero(near_half):
        out[i] = round(float(values[i]), 4)
    return out


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    import numpy as np

    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _field_columns(contributions: pa.Table) -> dict[str, pa.Array]:
    """What each shown field holds per contribution: an item's id and title for an item
    event, no item and the query or tag text otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def col(name: str) -> pa.Array:
        return contributions.column(name).combine_chunks()

    is_item = pc.equal(col("text_kind"), "item")
    times = pc.dictionary_encode(col("event_at"))
    return {
        "event_type": col("event_type"),
        "item_id": pc.if_else(is_item, col("item_id"), None),
        "text": pc.if_else(is_item, col("title"), col("text")),
        # Its ISO text with a space, as evidence has always shown it (each distinct time once).
        "event_at": pa.array(
            [v.isoformat(sep=" ") for v in times.dictionary.to_pylist()], pa.string()
        ).take(times.indices),
    }
