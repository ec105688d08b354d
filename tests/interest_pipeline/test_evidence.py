"""The evidence column written for many lists at once equals, byte for byte, each entry encoded
as a dict (the format the contract documents), on awkward texts and numbers."""

from __future__ import annotations

import json
from datetime import datetime

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pytest

from interest_pipeline.evidence import EVIDENCE_PER_ITEM, EvidenceWriter

CONTRIBUTIONS = [
    # event_type, item_id, text_kind, title, text, event_at
    ("purchase", "i1", "item", 'Mug "Paris" \\ café', "ignored", datetime(2024, 1, 1, 10, 0)),
    ("view", "i2", "item", None, "no title", datetime(2024, 1, 1, 10, 0, 0, 250000)),
    ("search", None, "query", None, "line\nbreak \u2028 \x01 ✓", datetime(2024, 1, 1, 9, 59)),
    ("view", "i3", "item", "Plain", "x", datetime(2024, 1, 1, 9, 0)),
]


def _contributions() -> pa.Table:
    names = ["event_type", "item_id", "text_kind", "title", "text", "event_at"]
    return pa.table({
        name: pa.array([row[k] for row in CONTRIBUTIONS],
                       pa.timestamp("us") if name == "event_at" else pa.string())
        for k, name in enumerate(names)
    })


def _expected(cosines, coef, offset, social) -> list[str]:
    """Each row's evidence built entry by entry from dicts, as the format is documented."""
    out = []
    for col in range(cosines.shape[1]):
        pull = cosines[:, col] * coef
        entries = [] if social is None or social[col] is None else [social[col]]
        for k in sorted(range(len(coef)), key=lambda k: -pull[k])[:EVIDENCE_PER_ITEM]:
            if pull[k] <= 0:
                continue
            event_type, item_id, kind, title, text, at = CONTRIBUTIONS[offset + k]
            entries.append({
                "event_type": event_type,
                "item_id": item_id if kind == "item" else None,
                "text": title if kind == "item" else text,
                "event_at": at.isoformat(sep=" "),
                "contribution": round(float(pull[k]), 4),
            })
        out.append(msgspec.json.encode(entries).decode())
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_equals_entries_encoded_one_by_one(seed):
    rng = np.random.default_rng(seed)
    writer = EvidenceWriter(_contributions())
    expected = []
    lists = [
        # (first contribution, how many, listed items, with social entries)
        (0, 4, 5, False),
        (1, 2, 3, True),
        (0, 0, 2, True),  # no contributions: only the social entry, or []
        (3, 1, 2, False),
    ]
    for offset, count, items, social in lists:
        cosines = rng.uniform(-0.5, 1.0, (count, items))
        # A value that numpy rounds to the other neighbour than Python does, and an exact one.
        cosines.flat[: min(2, cosines.size)] = [0.00035, 0.5][: min(2, cosines.size)]
        coef = rng.uniform(0.5, 2.0, count)
        coef[:1] = 1.0
        entries = [
            {"event_type": "social", "item_id": None, "text": "2 people you follow engaged",
             "people": 2, "contribution": 0.5} if social and j % 2 == 0 else None
            for j in range(items)
        ] if social else None
        writer.add(cosines, coef, offset, entries)
        expected += _expected(cosines, coef, offset, entries)
    with duckdb.connect() as con:
        column = writer.column(con).to_pylist()
    assert column == expected
    for text in column:
        json.loads(text)  # each is one valid JSON list


def test_no_lists_give_an_empty_column():
    with duckdb.connect() as con:
        assert EvidenceWriter(_contributions()).column(con).to_pylist() == []


def test_lists_added_together_equal_lists_added_one_by_one():
    """Several lists at once (their pulls padded with -inf to a common shape) give the rows
    adding each list alone gives, in the same order."""
    rng = np.random.default_rng(7)
    lists = [(0, 4, 5), (1, 2, 3), (0, 0, 2), (3, 1, 1), (2, 2, 0)]  # offset, contributions, items
    alone = EvidenceWriter(_contributions())
    pull = np.full((len(lists), 4, 5), -np.inf)
    for k, (offset, count, items) in enumerate(lists):
        cosines = rng.uniform(-0.5, 1.0, (count, items))
        coef = rng.uniform(0.5, 2.0, count)
        alone.add(cosines, coef, offset)
        pull[k, :count, :items] = cosines * coef[:, None]
    together = EvidenceWriter(_contributions())
    together.add_lists(pull, np.array([o for o, _, _ in lists]),
                       np.array([n for _, _, n in lists]), [None] * len(lists))
    with duckdb.connect() as con:
        assert together.column(con).to_pylist() == alone.column(con).to_pylist()
        assert together.row_count == alone.row_count == 11
