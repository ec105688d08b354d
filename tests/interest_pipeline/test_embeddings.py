from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from interest_pipeline.config import DEFAULT_MODEL_ID
from interest_pipeline.embeddings import (
    embed_new_texts,
    embed_text_shard,
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
