from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from interest_pipeline import onnx_encoder
from interest_pipeline.config import DEFAULT_MODEL_ID
from interest_pipeline.embeddings import (
    SentenceTransformerEncoder,
    embed_new_texts,
    embed_text_shard,
    length_sorted_batches,
    load_encoder,
    merge_text_shards,
    resolve_model,
    write_text_shards,
)
from interest_pipeline.warehouse import SCHEMA_DDL, connect, query_arrow, vectors_to_numpy
from tests.builders import add_event, add_item
from tests.conftest import MARTS_DDL

H0 = datetime(2024, 3, 1, 10)
H1 = datetime(2024, 3, 1, 11)


def _setup(con):
    add_item(con, "i1", "Toy Story")
    add_item(con, "i2", "Heat")
    add_event(con, "e1", "u1", "search", H0, H0, query_text="pixar films")
    add_event(con, "e2", "u2", "search", H1, H1, query_text="crime")
    add_event(con, "e3", "u3", "search", H1, H1, query_text="pixar films")


def test_embeds_catalogue_and_interval_queries_once(con, fake_encoder):
    _setup(con)
    n = embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    assert n == 3  # two item documents + the hour's one query; the next hour's are not needed yet
    rows = con.execute("select text, text_hash from text_embeddings order by text").fetchall()
    assert [r[0] for r in rows] == ["Heat", "Toy Story", "pixar films"]
    assert all(h == hashlib.sha256(t.encode()).hexdigest() for t, h in rows)

    # "crime"; "pixar films" is cached
    assert embed_new_texts(con, "fake", lambda: fake_encoder, H1) == 1
    assert sorted(fake_encoder.texts) == ["Heat", "Toy Story", "crime", "pixar films"]


def test_rerun_embeds_nothing_and_never_loads_the_model(con, fake_encoder):
    _setup(con)
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)

    def must_not_load():
        raise AssertionError("the model was loaded with nothing new to embed")

    assert embed_new_texts(con, "fake", must_not_load, H0) == 0


def test_each_model_has_its_own_vectors(con, fake_encoder):
    _setup(con)
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    assert embed_new_texts(con, "other-model", lambda: fake_encoder, H0) == 3
    assert con.execute("select count(*) from text_embeddings").fetchone() == (6,)


def test_vectors_are_stored_unit_length(con, fake_encoder):
    _setup(con)
    embed_new_texts(con, "fake", lambda: fake_encoder, H0)
    vectors = vectors_to_numpy(query_arrow(con, "select embedding from text_embeddings").column(0))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_default_model_resolves_to_the_packaged_folder():
    model_id, path = resolve_model("default")
    assert model_id == DEFAULT_MODEL_ID
    assert (Path(path) / "config.json").exists()
    assert resolve_model("/models/custom") == ("/models/custom", "/models/custom")


# The fan-out: plan shards (reader), encode each shard (no warehouse), merge (single writer).


def _fan_out(con, model_id, encoder_factory, interval_start, shard_dir):
    shards = write_text_shards(con, model_id, interval_start, shard_dir)
    vectors = [embed_text_shard(p, model_id, encoder_factory)[0] for p in shards]
    return shards, merge_text_shards(con, vectors)


def _cache(con):
    return con.execute(
        "select model_id, text_hash, text, embedding from text_embeddings order by all"
    ).fetchall()


def test_below_the_shard_size_one_shard(con, fake_encoder, tmp_path):
    _setup(con)
    shards, n = _fan_out(con, "fake", lambda: fake_encoder, H0, tmp_path / "shards")
    assert [p.name for p in shards] == ["texts-00000.parquet"]
    assert n == 3
    assert fake_encoder.calls == 1


def test_fan_out_equals_the_in_process_embedding(con, fake_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("INTEREST_EMBED_SHARD_SIZE", "2")
    _setup(con)
    shards, n = _fan_out(con, "fake", lambda: fake_encoder, H0, tmp_path / "shards")
    assert len(shards) == 2 and n == 3
    assert _fan_out(con, "fake", lambda: fake_encoder, H1, tmp_path / "shards")[1] == 1

    reference = connect(tmp_path / "reference.duckdb")
    reference.execute(SCHEMA_DDL)
    reference.execute(MARTS_DDL)
    _setup(reference)
    embed_new_texts(reference, "fake", lambda: fake_encoder, H0)
    embed_new_texts(reference, "fake", lambda: fake_encoder, H1)
    assert _cache(con) == _cache(reference)
    reference.close()


def test_nothing_pending_plans_no_shard_and_never_loads_the_model(con, fake_encoder, tmp_path):
    _setup(con)
    _fan_out(con, "fake", lambda: fake_encoder, H0, tmp_path / "shards")

    def must_not_load():
        raise AssertionError("the model was loaded with nothing new to embed")

    shards, n = _fan_out(con, "fake", must_not_load, H0, tmp_path / "shards")
    assert shards == [] and n == 0
    assert not (tmp_path / "shards").exists()


def test_a_retried_merge_inserts_nothing_twice(con, fake_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("INTEREST_EMBED_SHARD_SIZE", "2")
    _setup(con)
    shards = write_text_shards(con, "fake", H0, tmp_path / "shards")
    vectors = [embed_text_shard(p, "fake", lambda: fake_encoder)[0] for p in shards]
    assert merge_text_shards(con, vectors[:1]) == 2  # the merge died after its first shard
    assert merge_text_shards(con, vectors) == 1
    counts = con.execute("select count(*), count(distinct text_hash) from text_embeddings")
    assert counts.fetchall() == [(3, 3)]


def test_a_shard_is_encoded_only_with_the_model_it_was_planned_for(con, fake_encoder, tmp_path):
    _setup(con)
    (shard,) = write_text_shards(con, "fake", H0, tmp_path / "shards")
    with pytest.raises(ValueError, match="same INTEREST_MODEL"):
        embed_text_shard(shard, "other-model", lambda: fake_encoder)
    assert not list((tmp_path / "shards").glob("vectors-*"))


# Backends: torch (SentenceTransformer.encode), onnx (ONNX Runtime float32), onnx-int8.


def test_an_unknown_backend_fails_naming_the_allowed_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("INTEREST_EMBEDDING_BACKEND", "bogus")
    with pytest.raises(ValueError, match="must be one of torch, onnx, onnx-int8, not 'bogus'"):
        load_encoder("default", 64, tmp_path)
    with pytest.raises(ValueError, match="INTEREST_EMBEDDING_BACKEND"):
        resolve_model("default")


def test_int8_vectors_have_a_model_id_of_their_own(monkeypatch):
    assert resolve_model("default", "onnx")[0] == resolve_model("default", "torch")[0]
    assert resolve_model("default", "onnx-int8")[0] == DEFAULT_MODEL_ID + "#onnx-int8"
    assert resolve_model("/models/custom", "onnx-int8") == (
        "/models/custom#onnx-int8", "/models/custom"
    )
    monkeypatch.setenv("INTEREST_EMBEDDING_BACKEND", "onnx-int8")
    assert resolve_model("default")[0] == DEFAULT_MODEL_ID + "#onnx-int8"


class _WordTokenizer:
    """Tokens = words + 2 special tokens, like a BERT tokenizer's count."""

    def __call__(self, texts, truncation, add_special_tokens):
        return {"input_ids": [[0] * (len(t.split()) + 2) for t in texts]}


def test_length_sorted_batches_cover_every_text_once_longest_first():
    texts = ["a", "a b c", "", "a b", "a b c", "a b c d e", "b"]
    batches = length_sorted_batches(_WordTokenizer(), texts, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    order = np.concatenate(batches).tolist()
    assert sorted(order) == list(range(len(texts)))
    lengths = [len(texts[i].split()) for i in order]
    assert lengths == sorted(lengths, reverse=True)
    assert order[1:3] == [1, 4]  # equal lengths keep input order: the same texts, same batches
    assert length_sorted_batches(_WordTokenizer(), [], 3) == []


def test_a_failed_write_leaves_no_file_under_the_cache_name(tmp_path):
    target = tmp_path / "cache" / "model.onnx"

    def killed_half_way(tmp):
        tmp.write_bytes(b"half a graph")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        onnx_encoder._write_atomically(target, killed_half_way)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []

    onnx_encoder._write_atomically(target, lambda tmp: tmp.write_bytes(b"graph"))
    assert target.read_bytes() == b"graph"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]


# The real model (slow): one export per session, in a shared cache folder.

_WORDS = "the quick brown fox jumps over a lazy dog while pixar films and crime novels sell".split()


def _varied_texts():
    rng = np.random.default_rng(7)
    texts = ["", " ", "a", "?", "Heat", "Toy Story", "pixar films", "WHITE HANGING HEART T-LIGHT",
             "crème brûlée, 12 €", "日本語のテキスト", "\n\ttabs and newlines\n"]
    texts += [" ".join(rng.choice(_WORDS, size=n)) for n in (3, 8, 15, 30, 60, 120, 200)]
    texts += [" ".join(rng.choice(_WORDS, size=256)), " ".join(rng.choice(_WORDS, size=400))]
    texts += [f"item {i}: " + " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 40))))
              for i in range(20)]
    return texts


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A cache folder holding the default model's export, made once for these tests."""
    folder = tmp_path_factory.mktemp("onnx") / "models" / "onnx"
    model_id, path = resolve_model("default", "onnx")
    encoder = onnx_encoder.OnnxEncoder(model_id, path, 16, folder)
    return folder, encoder


@pytest.fixture(scope="module")
def torch_encoder():
    return SentenceTransformerEncoder(resolve_model("default", "torch")[1], 16)


class _BareEncode:
    """SentenceTransformer.encode as it comes: the reference every backend must reproduce."""

    def __init__(self, model):
        self.model = model

    def encode(self, texts):
        return self.model.encode(list(texts), batch_size=16, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)


@pytest.fixture(scope="module")
def reference_encoder(torch_encoder):
    return _BareEncode(torch_encoder.model)


@pytest.mark.slow
def test_torch_length_buckets_keep_sentence_transformers_vectors(torch_encoder, reference_encoder):
    texts = _varied_texts()
    vectors = torch_encoder.encode(texts)
    reference = reference_encoder.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert np.abs(vectors - reference).max() < 1e-5  # float32 level: another batching only
    np.testing.assert_allclose(torch_encoder.encode(texts[::-1])[::-1], vectors, atol=1e-5)
    assert torch_encoder.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_onnx_vectors_equal_sentence_transformers(onnx_cache, reference_encoder):
    _, encoder = onnx_cache
    texts = _varied_texts()
    vectors = encoder.encode(texts)
    reference = reference_encoder.encode(texts)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.sum(vectors * reference, axis=1).min() >= 0.9999
    # In input order: every row is its own text's vector, whatever the batching.
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert np.sum(vectors * alone, axis=1).min() >= 0.9999
    reversed_vectors = encoder.encode(texts[::-1])
    np.testing.assert_allclose(reversed_vectors[::-1], vectors, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_the_export_is_cached_for_later_encoders(onnx_cache, monkeypatch):
    folder, first = onnx_cache
    (cached,) = folder.glob("*.onnx")
    assert first.path == cached
    mtime = cached.stat().st_mtime_ns

    def must_not_export(model, path):
        raise AssertionError("exported again although the cache holds the graph")

    monkeypatch.setattr(onnx_encoder, "export_onnx", must_not_export)
    model_id, path = resolve_model("default", "onnx")
    second = onnx_encoder.OnnxEncoder(model_id, path, 16, folder)
    assert second.path == cached and cached.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.encode(["Toy Story"]), first.encode(["Toy Story"]))


@pytest.mark.slow
def test_a_half_written_temp_file_is_never_loaded(onnx_cache, tmp_path, monkeypatch):
    good_folder, first = onnx_cache
    folder = tmp_path / "models" / "onnx"
    folder.mkdir(parents=True)
    # What a process killed during its export leaves: a temp file named after the graph.
    stale = folder / f".{first.path.name}.k1ll3d.partial"
    stale.write_bytes(b"\x08\x07half a graph")
    exports = []

    def copy_export(model, path):
        exports.append(path)
        path.write_bytes(first.path.read_bytes())

    monkeypatch.setattr(onnx_encoder, "export_onnx", copy_export)
    model_id, path = resolve_model("default", "onnx")
    encoder = onnx_encoder.OnnxEncoder(model_id, path, 16, folder)
    assert len(exports) == 1 and exports[0].parent == folder and exports[0] != stale
    assert encoder.path == folder / first.path.name
    np.testing.assert_array_equal(encoder.encode(["Heat"]), first.encode(["Heat"]))
    assert stale.read_bytes() == b"\x08\x07half a graph"  # another process's file: left alone


@pytest.mark.slow
def test_the_backend_setting_selects_the_encoder(onnx_cache, monkeypatch):
    folder, _ = onnx_cache
    data_dir = folder.parent.parent
    monkeypatch.setenv("INTEREST_EMBEDDING_BACKEND", "onnx")
    encoder = load_encoder("default", 16, data_dir)
    assert isinstance(encoder, onnx_encoder.OnnxEncoder)
    assert encoder.path.parent == folder
    monkeypatch.setenv("INTEREST_EMBEDDING_BACKEND", "torch")
    assert isinstance(load_encoder("default", 16, data_dir), SentenceTransformerEncoder)


@pytest.mark.slow
def test_int8_is_quantised_beside_the_float32_export(onnx_cache, reference_encoder):
    folder, first = onnx_cache
    model_id, path = resolve_model("default", "onnx")
    int8 = onnx_encoder.OnnxEncoder(model_id, path, 16, folder, quantized=True)
    assert int8.path.parent == folder and int8.path != first.path
    assert int8.path.name.startswith(first.path.stem + "-int8-")
    assert int8.path.stat().st_size < first.path.stat().st_size  # int8 weights (not the vocab)
    texts = _varied_texts()
    vectors = int8.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Close to float32, not equal: why its vectors get a model_id of their own.
    assert np.sum(vectors * reference_encoder.encode(texts), axis=1).mean() >= 0.9
