"""Top-N recommendations per changed user, with the evidence behind each item.

Score = cosine(user interest vector, item document embedding); only positive scores qualify.
Items the user already bought or rated are excluded. Evidence for an item = the user's past contributions (item documents or
query/tag texts, decayed and weighted as in the fold) that point most towards it.
"""

from __future__ import annotations

import json
import logging
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


def _evidence_contributions(
    con: duckdb.DuckDBPyConnection, model_id: str, interval_start: datetime, limit: int
) -> pa.Table:
    """The latest ``limit`` contributions, up to this interval, of each user being scored."""
    inner = CONTRIBUTIONS_SQL.format(
        where="interval_start <= $interval_start and user_id in (select user_id from _rec_users)"
    )
    return query_arrow(
        con,
        f"""
        select contributions.*, items.title
        from ({inner}) as contributions
        left join items
            on contributions.text_kind = 'item' and contributions.item_id = items.item_id
        qualify row_number() over (
            partition by contributions.user_id
            order by contributions.event_at desc, contributions.event_id desc,
                contributions.text_kind
        ) <= $limit
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
) -> dict[str, int]:
    """Replace the recommendations ``as_of = interval_end`` for users with a new version."""
    import numpy as np
    import pyarrow as pa

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
        if users_table.num_rows == 0:
            return {"recommendations_written": 0, "users_recommended": 0}
        item_ids, item_vecs = _load_items(con, model_id)
        if len(item_ids) == 0:
            return {"recommendations_written": 0, "users_recommended": 0}

        users = users_table.column("user_id").to_numpy(zero_copy_only=False)
        user_vecs = vectors_to_numpy(users_table.column("vector"))
        con.register("_rec_users", pa.table({"user_id": pa.array(users.tolist(), pa.string())}))
        try:
            consumed = _consumed(con, interval_start)
            evidence_rows = _evidence_contributions(con, model_id, interval_start, evidence_events)
        finally:
            con.unregister("_rec_users")
        item_index = {item: j for j, item in enumerate(item_ids)}

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

        out: dict[str, list] = {k: [] for k in ("user_id", "rank", "item_id", "score", "evidence")}
        n = min(top_n, len(item_ids))
        for block in range(0, len(users), _USER_BLOCK):
            scores = user_vecs[block : block + _USER_BLOCK] @ item_vecs.T
            for i in range(scores.shape[0]):
                user = users[block + i]
                row = scores[i]
                for item in consumed.get(user, ()):
                    j = item_index.get(item)
                    if j is not None:
                        row[j] = -np.inf
                # Stable sort on (-score, item order) keeps ties deterministic across reruns.
                top = np.argsort(-row, kind="stable")[:n]
                # Only items the interest points towards: a user known only from cancellations
                # has a vector pointing away from what they returned, not a taste to match.
                top = top[row[top] > 0]
                lo, hi = ev_bounds.get(user, (0, 0))
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
        rows = pa.table(
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
        insert_arrow(con, "recommendations", rows)
    return {"recommendations_written": count, "users_recommended": len(users)}


def _group_bounds(sorted_keys: np.ndarray, keys: np.ndarray) -> dict[str, tuple[int, int]]:
    """Row ranges of each key in an array sorted by key."""
    import numpy as np

    left = np.searchsorted(sorted_keys, keys, side="left")
    right = np.searchsorted(sorted_keys, keys, side="right")
    return {k: (int(lo), int(hi)) for k, lo, hi in zip(keys, left, right, strict=True)}
