"""Shared fixtures: small DuckDB warehouses and a fake encoder for unit tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from interest_pipeline.warehouse import SCHEMA_DDL, connect

# The marts the Python stages read, with the columns dbt gives them (see dbt_project/models/marts).
MARTS_DDL = """
create table user_item_interactions (
    event_id varchar, user_id varchar, event_type varchar, item_id varchar,
    query_text varchar, target_user_id varchar, value double, event_at timestamp,
    weight double, interval_start timestamp
);
create table items (item_id varchar, title varchar);
create table item_documents (item_id varchar, document varchar, text_hash varchar);
"""


class FakeEncoder:
    """Deterministic bag-of-words hashing encoder: similar words, similar vectors."""

    dim = 32

    def __init__(self) -> None:
        self.calls = 0
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[i, h % self.dim] += 1.0
            out[i] /= max(np.linalg.norm(out[i]), 1e-9)
        return out


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def con(tmp_path: Path) -> Iterator:
    """A warehouse file with the Python-owned tables and hand-made marts."""
    connection = connect(tmp_path / "warehouse.duckdb")
    connection.execute(SCHEMA_DDL)
    connection.execute(MARTS_DDL)
    yield connection
    connection.close()
