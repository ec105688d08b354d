"""Model change = rebuild: every processed hour recomputed under the new model, one switch.

Two fake models plug in through ``embeddings.load_encoder``: ``fake`` (the conftest's hashing
encoder, 32 dimensions) and ``fake2`` (another hash seed, 24 dimensions). The reference for a
rebuild to ``fake2`` is a second warehouse with the same events processed hour by hour under
``fake2`` from the start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from interest_pipeline import cli, embeddings, rebuild, recommendations, snapshot, stages
from interest_pipeline.config import get_settings
from interest_pipeline.warehouse import SCHEMA_DDL, connect
from tests.builders import add_event, add_follow, add_item
from tests.conftest import MARTS_DDL, FakeEncoder

HOUR = timedelta(hours=1)
# 20 hours across midnight: the daily refresh and a ranker fit (every 6 hours here) happen.
H = [datetime(2024, 3, 1, 14) + k * HOUR for k in range(20)]
OUTPUTS = ("user_interest_vectors", "user_social_vectors", "recommendations",
           "new_user_recommendations", "rankers", "text_embeddings")


class OtherFakeEncoder(FakeEncoder):
    """A second model: another hash seed and dimension, so its vectors differ everywhere."""

    dim = 24

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int(hashlib.sha1(b"seed2:" + word.encode()).hexdigest(), 16)
                out[i, h % self.dim] += 1.0 + (h % 3)
            out[i] /= max(np.linalg.norm(out[i]), 1e-9)
        return out


# The encoders load_encoder hands out; fresh ones per test (see ``encoders``).
_ENCODERS: dict[str, FakeEncoder] = {}


def _load_fake(model: str, batch_size: int, data_dir: Any = None, backend: Any = None):
    if model not in _ENCODERS:
        raise OSError(f"{model} is not a local folder\nand not a model on the hub")
    return _ENCODERS[model]


@pytest.fixture(scope="module", autouse=True)
def _fake_models() -> Iterator[None]:
    """Both fake models behind ``load_encoder``; any other name fails like a missing path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embeddings, "load_encoder", _load_fake)
        mp.delenv("INTEREST_EMBEDDING_BACKEND", raising=False)  # no model_id suffix
        mp.setenv("INTEREST_MODEL", "fake")  # what the CLI and API are configured with
        mp.setenv("INTEREST_RANKER_EVERY_HOURS", "6")
        mp.setenv("INTEREST_RANKER_CUTOFF_EVERY_HOURS", "6")
        _ENCODERS.update(fake=FakeEncoder(), fake2=OtherFakeEncoder())
        yield
        _ENCODERS.clear()


@pytest.fixture
def encoders() -> dict[str, FakeEncoder]:
    """This test's encoders, with nothing encoded yet."""
    _ENCODERS.update(fake=FakeEncoder(), fake2=OtherFakeEncoder())
    return _ENCODERS


def _warehouse(path: Path) -> None:
    """Items, searches, rates and follows over the hours of H (the marts dbt would build)."""
    con = connect(path)
    con.execute(SCHEMA_DDL)
    con.execute(MARTS_DDL)
    for item, title in [("a", "space robots"), ("b", "space aliens"), ("c", "romantic paris"),
                        ("d", "romantic drama"), ("e", "robots war"), ("f", "paris cooking")]:
        add_item(con, item, title)
    # describe_profile reads these columns of the items mart too.
    con.execute("alter table items add column category varchar default 'films'")
    con.execute("alter table items add column tags varchar[] default ['x']")
    rates = [(0, "u1", "a"), (0, "u2", "c"), (1, "u1", "e"), (2, "u2", "d"), (3, "u3", "b"),
             (5, "u3", "e"), (9, "u2", "f"), (11, "u1", "b"), (14, "u4", "a"), (17, "u3", "c")]
    for i, (h, user, item) in enumerate(rates):
        add_event(con, f"r{i}", user, "rate", H[h] + timedelta(minutes=10), H[h], item_id=item)
    searches = [(1, "u2", "paris food"), (4, "u1", "robot uprising"), (12, "u4", "aliens")]
    for i, (h, user, text) in enumerate(searches):
        add_event(con, f"s{i}", user, "search", H[h] + timedelta(minutes=20), H[h],
                  query_text=text, weight=0.5)
    add_follow(con, "f0", "u4", "u1", H[2] + timedelta(minutes=5), H[2])
    add_follow(con, "f1", "u3", "u2", H[6] + timedelta(minutes=5), H[6])
    con.close()


def _process(settings, hour: datetime, stages_to_run: tuple[str, ...] = (
        "embed", "fold", "train", "recommend")) -> None:
    """One hour as a DAG run does it, then the run-stats row the rebuild reads."""
    end = hour + HOUR
    steps: dict[str, Callable[..., Any]] = {
        "embed": stages.embed_new_texts, "fold": stages.update_user_vectors,
        "train": stages.train_ranker, "recommend": stages.write_recommendations,
    }
    for name in stages_to_run:
        steps[name](hour, end, settings)
    if stages_to_run[-1] != "recommend":
        return  # an hour still in flight: no run stats yet
    con = connect(settings.warehouse_path)
    _, model_id = rebuild.serving_model(con, settings)
    con.execute("delete from pipeline_runs where interval_start = ?", [hour])
    con.execute(
        "insert into pipeline_runs (interval_start, interval_end, event_lines_landed, "
        "item_lines_landed, events_in, duplicates, quarantined, items_upserted, texts_embedded, "
        "users_updated, recommendations_written, model_id, code_version, recorded_at) "
        "values (?, ?, 0, 0, 0, 0, 0, 0, 0, 0, 0, ?, 'test', now()::timestamp)",
        [hour, end, model_id],
    )
    con.close()


def _settings(path: Path, model: str = "fake"):
    return dataclasses.replace(get_settings(), warehouse_path=path, model=model,
                               data_dir=path.parent, top_n=3)


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    wal = source.with_name(source.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, target.with_name(target.name + ".wal"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Warehouse files processed once for the module (tests work on copies):

    ``reference``: every hour of H processed under fake2 from the start; ``old``: the same
    under fake; ``old_19``: all but the last hour; ``in_flight``: 17 hours, then the 18th's
    embed and fold only; ``empty``: nothing processed.
    """
    folder = tmp_path_factory.mktemp("built")
    files = {name: folder / f"{name}.duckdb"
             for name in ("reference", "old", "old_19", "in_flight", "empty")}
    for name in ("reference", "old", "empty"):
        _warehouse(files[name])
    for hour in H:
        _process(_settings(files["reference"], "fake2"), hour)
    old = _settings(files["old"])
    for k, hour in enumerate(H):
        if k == 17:
            _copy(files["old"], files["in_flight"])
            _process(_settings(files["in_flight"]), hour, ("embed", "fold"))
        if k == 19:
            _copy(files["old"], files["old_19"])
        _process(old, hour)
    return files


@pytest.fixture
def make(built, tmp_path, encoders):
    """make(name): settings on a private copy of a built warehouse (model: fake)."""

    def copy(name: str):
        path = tmp_path / f"{name}.duckdb"
        _copy(built[name], path)
        return _settings(path)

    return copy


def _rows(path: Path, model_id: str) -> dict[str, list[tuple]]:
    """Every output row of a model, sorted (the ranker's fitted_at is a wall-clock time)."""
    con = connect(path, read_only=True)
    try:
        out = {}
        for table in OUTPUTS:
            cursor = con.execute(f"select * from {table} where model_id = ?", [model_id])
            names = [d[0] for d in cursor.description]
            out[table] = sorted(
                (tuple(v for n, v in zip(names, row, strict=True) if n != "fitted_at")
                 for row in cursor.fetchall()),
                key=repr,
            )
        return out
    finally:
        con.close()


def _serving(path: Path) -> dict[str, Any] | None:
    con = connect(path, read_only=True)
    try:
        return rebuild.registry(con)
    finally:
        con.close()


def _cli_json(capsys, path: Path, *args: str) -> dict[str, Any]:
    assert cli.main([*args, "--json", "--warehouse", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_rebuild_equals_processing_the_history_from_scratch_under_the_new_model(
    make, built
):
    settings = make("old")
    old_before = _rows(settings.warehouse_path, "fake")

    result = rebuild.rebuild_model(settings, "fake2")

    reference = built["reference"]
    rebuilt = _rows(settings.warehouse_path, "fake2")
    assert rebuilt == _rows(reference, "fake2")
    assert all(rebuilt[t] for t in OUTPUTS), "every output has rows under the new model"
    # The old model's rows are all kept (time travel on it keeps working).
    assert _rows(settings.warehouse_path, "fake") == old_before
    assert result["status"] == "switched"
    assert (result["model_id"], result["previous_model_id"]) == ("fake2", "fake")
    assert result["intervals_recomputed"] == len(H) and result["intervals_caught_up"] == 0
    assert result["versions_written"] == len(rebuilt["user_interest_vectors"])
    assert result["rankers_fitted"] == len(rebuilt["rankers"]) >= 3
    assert result["texts_embedded"] == len(rebuilt["text_embeddings"])
    row = _serving(settings.warehouse_path)
    assert (row["model"], row["model_id"], row["previous_model_id"]) == ("fake2", "fake2", "fake")


def test_after_the_switch_the_hourly_runs_use_the_new_model_without_a_setting(make, built):
    settings = make("old_19")
    rebuild.rebuild_model(settings, "fake2")
    _process(settings, H[-1])  # settings.model is still "fake"

    reference = built["reference"]
    assert _rows(settings.warehouse_path, "fake2") == _rows(reference, "fake2")
    con = connect(settings.warehouse_path, read_only=True)
    try:
        assert con.execute("select count(*) from user_interest_vectors where model_id = 'fake' "
                           "and as_of = ?", [H[-1] + HOUR]).fetchall() == [(0,)]
        assert con.execute("select model_id from pipeline_runs where interval_start = ?",
                           [H[-1]]).fetchall() == [("fake2",)]
    finally:
        con.close()


def test_readers_see_the_old_model_until_the_switch_and_the_new_one_after(
    make, capsys, monkeypatch
):
    settings = make("old")
    path = settings.warehouse_path
    snapshot.publish_snapshot(path, H[-1], H[-1] + HOUR)
    before = _cli_json(capsys, path, "recs", "u3")
    assert before["model_id"] == "fake"
    assert _cli_json(capsys, path, "profile", "u1")["model_id"] == "fake"

    seen: dict[str, Any] = {}
    real_switch = rebuild._switch

    def switch(con, *args):
        # What readers get while the rebuild holds the lock: the snapshot (the registry in it
        # and on the live connection still names the old model).
        snap = connect(snapshot.snapshot_path(path), read_only=True)
        try:
            model = cli._resolve_model_id(snap)
            seen["snapshot"] = cli.get_recommendations(snap, "u3", model)
        finally:
            snap.close()
        seen["live_before"] = cli._resolve_model_id(con)
        real_switch(con, *args)
        seen["live_after"] = cli._resolve_model_id(con)

    monkeypatch.setattr(rebuild, "_switch", switch)
    rebuild.rebuild_model(settings, "fake2")

    assert seen["snapshot"]["model_id"] == "fake"
    assert seen["snapshot"]["recommendations"] == before["recommendations"]
    assert (seen["live_before"], seen["live_after"]) == ("fake", "fake2")
    after = _cli_json(capsys, path, "recs", "u3")
    assert after["model_id"] == "fake2" and after["list_as_of"] == before["list_as_of"]
    assert _cli_json(capsys, path, "profile", "u1")["model_id"] == "fake2"
    # The republished snapshot serves the new model too.
    snap = connect(snapshot.snapshot_path(path), read_only=True)
    try:
        assert cli._resolve_model_id(snap) == "fake2"
    finally:
        snap.close()
    # The old model stays readable by name.
    old = _cli_json(capsys, path, "recs", "u3", "--model-id", "fake")
    assert old["recommendations"] == before["recommendations"]


def test_the_api_serves_the_model_the_snapshot_serves(make):
    from fastapi.testclient import TestClient

    from interest_pipeline.api import create_app

    settings = make("old")
    path = settings.warehouse_path
    snapshot.publish_snapshot(path, H[-1], H[-1] + HOUR)
    with TestClient(create_app(path)) as client:
        assert client.get("/health").json()["model_id"] == "fake"
        assert client.get("/users/u3/recommendations").json()["model_id"] == "fake"
        rebuild.rebuild_model(settings, "fake2")  # republishes the snapshot
        assert client.get("/health").json()["model_id"] == "fake2"
        assert client.get("/users/u3/recommendations").json()["model_id"] == "fake2"
        assert client.get("/users/u1/interest?model_id=fake").json()["model_id"] == "fake"


def test_an_interrupted_rebuild_keeps_the_old_model_serving_and_a_rerun_completes_it(
    make, built, encoders, capsys, monkeypatch
):
    settings = make("old")
    path = settings.warehouse_path
    calls = {"n": 0}
    real = recommendations.write_recommendations

    def crash_half_way(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == len(H) // 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(recommendations, "write_recommendations", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        rebuild.rebuild_model(settings, "fake2")
    monkeypatch.setattr(recommendations, "write_recommendations", real)

    assert _serving(path) is None
    assert _cli_json(capsys, path, "recs", "u3")["model_id"] == "fake"
    partial = _rows(path, "fake2")
    assert partial["user_interest_vectors"] and partial["text_embeddings"]

    encoded = len(encoders["fake2"].texts)
    result = rebuild.rebuild_model(settings, "fake2")
    assert result["texts_embedded"] == 0  # resumed: nothing embedded twice
    assert len(encoders["fake2"].texts) == encoded + 1  # only the load check's probe
    reference = built["reference"]
    assert _rows(path, "fake2") == _rows(reference, "fake2")
    assert _cli_json(capsys, path, "recs", "u3")["model_id"] == "fake2"


def test_an_hour_in_flight_is_rebuilt_and_the_rest_of_its_run_uses_the_new_model(
    make, built
):
    """The rebuild task can run between a DAG run's fold and its later tasks (the pool
    serialises tasks, not runs): that hour is found through the served model's versions."""
    settings = make("in_flight")  # the rest of the 18th hour's run comes after the switch
    result = rebuild.rebuild_model(settings, "fake2")
    assert result["intervals_recomputed"] == 18
    _process(settings, H[17], ("train", "recommend"))
    for hour in H[18:]:
        _process(settings, hour)

    reference = built["reference"]
    assert _rows(settings.warehouse_path, "fake2") == _rows(reference, "fake2")


def test_hours_processed_during_the_rebuild_are_caught_up_before_the_switch(
    make, built, monkeypatch
):
    settings = make("old_19")
    real = rebuild._recompute
    landed: list[datetime] = []

    def recompute(con, model_id, hours, s):
        real(con, model_id, hours, s)
        if not landed:
            # Another writer processes the last hour under the served model meanwhile.
            landed.append(H[-1])
            con.execute("insert into pipeline_runs (interval_start, interval_end, "
                        "event_lines_landed, item_lines_landed, events_in, duplicates, "
                        "quarantined, items_upserted, texts_embedded, users_updated, "
                        "recommendations_written, model_id, code_version, recorded_at) values "
                        "(?, ?, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'fake', 'test', now()::timestamp)",
                        [H[-1], H[-1] + HOUR])

    monkeypatch.setattr(rebuild, "_recompute", recompute)
    result = rebuild.rebuild_model(settings, "fake2")
    assert (result["intervals_recomputed"], result["intervals_caught_up"]) == (len(H), 1)
    reference = built["reference"]
    assert _rows(settings.warehouse_path, "fake2") == _rows(reference, "fake2")


def _everything(path: Path) -> dict[str, list[tuple]]:
    con = connect(path, read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "select table_schema || '.' || table_name from information_schema.tables"
        ).fetchall()]
        return {t: sorted(con.execute(f"select * from {t}").fetchall(), key=repr)
                for t in tables}
    finally:
        con.close()


def test_a_model_that_cannot_be_loaded_is_refused_and_nothing_is_written(make, capsys):
    settings = make("old")
    before = _everything(settings.warehouse_path)
    with pytest.raises(rebuild.RebuildError, match="cannot load model 'no/such-model'"):
        rebuild.rebuild_model(settings, "no/such-model")
    code = rebuild.main(["--model", "no/such-model", "--warehouse", str(settings.warehouse_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("interest rebuild: error: cannot load model 'no/such-model': ")
    assert _everything(settings.warehouse_path) == before


def test_the_model_being_served_is_nothing_to_do(make, capsys):
    settings = make("old")
    before = _everything(settings.warehouse_path)
    assert rebuild.rebuild_model(settings, "fake")["status"] == "unchanged"
    assert cli.main(["rebuild", "--model", "fake", "--warehouse",
                     str(settings.warehouse_path)]) == 0
    assert "already the model being served: nothing to do" in capsys.readouterr().out
    assert _everything(settings.warehouse_path) == before
    rebuild.rebuild_model(settings, "fake2")
    assert rebuild.rebuild_model(settings, "fake2")["status"] == "unchanged"


def test_a_warehouse_with_nothing_processed_or_no_warehouse_is_refused(make, tmp_path, capsys):
    settings = make("empty")
    with pytest.raises(rebuild.RebuildError, match="no processed intervals") as error:
        rebuild.rebuild_model(settings, "fake2")
    assert error.value.exit_code == 1
    assert _serving(settings.warehouse_path) is None
    missing = tmp_path / "missing.duckdb"
    assert cli.main(["rebuild", "--model", "fake2", "--warehouse", str(missing)]) == 3
    assert "no warehouse at" in capsys.readouterr().err
    assert not missing.exists()


def test_the_cli_prints_the_result_as_json(make, capsys):
    settings = make("old")
    assert cli.main(["rebuild", "--model", "fake2", "--warehouse",
                     str(settings.warehouse_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "switched" and data["intervals_recomputed"] == len(H)
    assert {"seconds", "seconds_per_interval", "texts_embedded", "versions_written"} <= set(data)


def test_embedding_shards_after_the_switch_use_the_new_model_on_a_worker(make, encoders):
    """A shard worker never opens the warehouse: the model comes with the shard."""
    settings = make("old_19")
    rebuild.rebuild_model(settings, "fake2")
    con = connect(settings.warehouse_path)
    add_event(con, "late-search", "u5", "search", H[-1] + timedelta(minutes=1), H[-1],
              query_text="brand new words")
    con.close()
    shards = stages.plan_embedding_shards(H[-1], H[-1] + HOUR, settings)
    assert len(shards) == 1
    encoded = len(encoders["fake2"].texts)
    result = stages.embed_text_shard(shards[0], settings)  # settings.model is still "fake"
    assert result["texts"] == 1 and encoders["fake2"].texts[encoded:] == ["brand new words"]


def test_a_stage_refuses_to_write_the_served_model_under_another_backends_id(
    make, monkeypatch
):
    """After a switch the registry pins the model_id; a backend that gives the model another
    id (onnx-int8) must not store its vectors under the pinned one."""
    settings = make("old_19")
    rebuild.rebuild_model(settings, "fake2")
    monkeypatch.setenv("INTEREST_EMBEDDING_BACKEND", "onnx-int8")
    with pytest.raises(RuntimeError, match="the warehouse serves fake2 .* fake2#onnx-int8"):
        stages.embed_new_texts(H[-1], H[-1] + HOUR, settings)
