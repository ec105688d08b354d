"""Cold start on real sample data with the real model (slow): a user known only from a text, and
an item nobody has touched yet, both get recommended from text alone, and the evaluation
measures it (``new_item_recall``)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from interest_pipeline import evaluation
from interest_pipeline.embeddings import embed_new_texts, load_encoder, resolve_model
from interest_pipeline.recommendations import ScoringConfig, write_recommendations
from interest_pipeline.replay import MOVIELENS_DIR, default_shared_data_dir
from interest_pipeline.user_vectors import update_user_vectors
from tests.builders import add_event

pytestmark = pytest.mark.slow

H0 = datetime(2016, 5, 1, 10)
H1 = H0 + timedelta(hours=1)
# Real MovieLens movies: the Godfather films and a slice of the catalogue around them.
GODFATHER, GODFATHER_2, GODFATHER_3 = "ml-m858", "ml-m1221", "ml-m2023"


@pytest.fixture(scope="module")
def catalogue():
    import pandas as pd

    movies = pd.read_csv(
        default_shared_data_dir() / MOVIELENS_DIR / "movies.csv",
        dtype=str,
        keep_default_na=False,
    )
    movies = movies[movies["movieId"].astype(int) <= 2100].head(400)
    keep = {"858", "1221", "2023", "1", "3114"}
    extra = pd.read_csv(
        default_shared_data_dir() / MOVIELENS_DIR / "movies.csv", dtype=str, keep_default_na=False
    )
    movies = pd.concat([movies, extra[extra["movieId"].isin(keep)]]).drop_duplicates("movieId")
    # The document dbt builds for a movie: title, then its genres as tags.
    return [
        (f"ml-m{m}", title, f"{title}. Tags: {', '.join(g.split('|'))}")
        for m, title, g in zip(movies["movieId"], movies["title"], movies["genres"], strict=True)
    ]


def _load(con, catalogue):
    for item_id, title, document in catalogue:
        con.execute("insert into items values (?, ?)", [item_id, title])
        con.execute(
            "insert into item_documents values (?, ?, sha256(?))", [item_id, document, document]
        )


def _pipeline_hour(con, model_id):
    embed_new_texts(con, model_id, lambda: load_encoder("default", 64), H0)
    update_user_vectors(con, model_id, H0, H1, 168.0)
    write_recommendations(con, model_id, H0, H1, 20, 168.0, 100, ScoringConfig())


def test_text_only_user_and_untouched_item_are_recommended_from_text(con, catalogue):
    model_id, _ = resolve_model("default")
    _load(con, catalogue)
    # Real tag text from MovieLens tags.csv ("mafia", user 18); this user has nothing else.
    add_event(con, "s1", "text-only", "search", H0, H0, query_text="mafia", weight=1.0)
    # Someone rated The Godfather; nobody has touched its sequels yet.
    add_event(con, "r1", "fan", "rate", H0, H0, item_id=GODFATHER, weight=3.0)
    _pipeline_hour(con, model_id)

    recs = con.execute(
        "select item_id, evidence from recommendations where user_id = 'text-only' order by rank"
    ).fetchall()
    assert recs, "a user known only from a search text gets recommendations"
    assert {GODFATHER, GODFATHER_2, GODFATHER_3} & {item for item, _ in recs[:10]}
    evidence = json.loads(recs[0][1])
    assert evidence[0]["text"] == "mafia" and evidence[0]["event_type"] == "search"

    fan = [r[0] for r in con.execute(
        "select item_id from recommendations where user_id = 'fan' order by rank"
    ).fetchall()]
    assert GODFATHER not in fan  # rated: excluded
    assert fan[:2] == [GODFATHER_2, GODFATHER_3] or set(fan[:3]) >= {GODFATHER_2, GODFATHER_3}

    # Measured: the fan rates Part II the next day; only the model can reach an untouched item.
    add_event(con, "r2", "fan", "rate", H1 + timedelta(hours=20), H1 + timedelta(hours=20),
              item_id=GODFATHER_2, weight=3.0)
    rows = evaluation.evaluate_as_of(con, H1, 24.0, model_id)
    scores = {
        (r["method"], r["metric"], r["k"]): r["value"] for r in rows if r["population"] == "known"
    }
    assert scores[("model", "new_item_recall", 10)] == 1.0
    assert scores[("popularity_all", "new_item_recall", 10)] == 0.0
    assert scores[("cooccurrence", "new_item_recall", 10)] == 0.0
