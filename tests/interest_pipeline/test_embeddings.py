from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import numpy as np

from interest_pipeline.config import DEFAULT_MODEL_ID
from interest_pipeline.embeddings import embed_new_texts, resolve_model
from interest_pipeline.warehouse import vectors_to_numpy, query_arrow
from tests.builders import add_event, add_item

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

    assert embed_new_texts(con, "fake", lambda: fake_encoder, H1) == 1  # "crime"; "pixar films" cached
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
