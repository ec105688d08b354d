"""The read API (``interest serve``) on a small real warehouse, and its snapshot reader.

The slow fixture replays three consecutive busy hours of the retail default window and runs the
real stages in-process for each (as tests/interest_pipeline/test_cli.py does), publishing a
snapshot after the second hour (kept aside) and after the third. The endpoints are called
through FastAPI's TestClient; the snapshot swap under a running server uses a real
``interest serve`` process. The reader's own tests use tiny DuckDB files (fast).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient

from interest_pipeline import cli, snapshot, stages
from interest_pipeline.api import WarehouseReader, create_app
from interest_pipeline.config import DEFAULT_MODEL_ID, get_settings
from interest_pipeline.replay import replay
from interest_pipeline.warehouse import connect
from tests.builders import user_with_most_versions
from tests.integration.test_end_to_end import _busy_hours
from tests.interest_pipeline.test_cli import _query
from tests.interest_pipeline.test_snapshot import _make_warehouse, hold_write_lock

HOURS = 3
HOUR = timedelta(hours=1)
slow = pytest.mark.slow


@dataclass(frozen=True)
class Warehouse:
    path: Path
    hours: list[datetime]
    user: str  # the user with the most versions and a list
    versions: list[datetime]  # that user's as_of values, oldest first
    after_second_hour: Path  # the snapshot (and sidecar, + ".json") published after hour 2


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    tmp = tmp_path_factory.mktemp("api")
    first = _busy_hours(tmp / "scratch", HOURS)
    settings = dataclasses.replace(
        get_settings(), data_dir=tmp, warehouse_path=tmp / "w.duckdb", landing_dir=tmp / "landing"
    )
    replay("retail", first, first + HOURS * HOUR, settings.landing_dir)
    hours = [first + i * HOUR for i in range(HOURS)]
    path = settings.warehouse_path
    kept = tmp / "after-second-hour.duckdb"
    for i, start in enumerate(hours):
        stages.run_interval(start, start + HOUR, settings)
        stages.publish_snapshot(start, start + HOUR, settings)
        if i == 1:
            shutil.copyfile(snapshot.snapshot_path(path), kept)
            shutil.copyfile(snapshot.sidecar_path(path), f"{kept}.json")
    user, versions = user_with_most_versions(path)
    assert len(versions) >= 2, "the fixture needs a user with two versions for time travel"
    return Warehouse(path, hours, user, versions, kept)


@pytest.fixture(scope="module")
def client(warehouse: Warehouse) -> Iterator[TestClient]:
    with TestClient(create_app(warehouse.path)) as test_client:
        yield test_client


def _cli_json(capsys: pytest.CaptureFixture, path: Path, *args: str) -> Any:
    code = cli.main(["--warehouse", str(path), "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _ok(client: TestClient, url: str) -> Any:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


# --- the endpoints -------------------------------------------------------------------------


@slow
def test_recommendations_are_the_clis_with_their_evidence(capsys, warehouse, client):
    expected = _cli_json(capsys, warehouse.path, "recs", warehouse.user, "-n", "5")

    data = _ok(client, f"/users/{warehouse.user}/recommendations?n=5")

    assert data == {**expected, "known_user": True}
    assert data["new_user"] is False and data["as_of"] == warehouse.versions[-1].isoformat()
    assert len(data["recommendations"]) == 5
    assert all(rec["evidence"] for rec in data["recommendations"])
    assert data["recommendations"][0]["evidence"][0]["event_type"]


@slow
def test_time_travel_picks_the_version_in_force(warehouse, client):
    earlier, latest = warehouse.versions[-2], warehouse.versions[-1]
    for version in (earlier, latest):
        between = version + timedelta(minutes=30)
        # The same instant with an offset: +01:00 is an hour ahead of UTC.
        with_offset = quote((between + HOUR).isoformat() + "+01:00")
        for as_of in (between.isoformat(), between.isoformat() + "Z", with_offset):
            interest = _ok(client, f"/users/{warehouse.user}/interest?as_of={as_of}&n=3")
            assert interest["as_of"] == version.isoformat(), as_of

    # The latest version's list (an earlier version may have none: a user first seen through
    # a cancellation has no taste to match yet).
    at = quote((latest + timedelta(minutes=30)).isoformat() + "Z")
    recs = _ok(client, f"/users/{warehouse.user}/recommendations?as_of={at}&n=3")
    assert recs["as_of"] == latest.isoformat()
    assert [r["rank"] for r in recs["recommendations"]] == [1, 2, 3]
    assert _ok(client, f"/users/{warehouse.user}/interest")["as_of"] == latest.isoformat()


@slow
def test_a_time_before_the_first_version_is_404_with_a_detail(warehouse, client):
    before = (warehouse.versions[0] - timedelta(minutes=1)).isoformat()

    for endpoint in ("recommendations", "interest"):
        response = client.get(f"/users/{warehouse.user}/{endpoint}?as_of={before}")
        assert response.status_code == 404
        assert "the first is as of" in response.json()["detail"]


@slow
def test_an_unknown_user_gets_the_new_visitor_list_marked_as_such(warehouse, client):
    (latest,) = _query(
        warehouse.path,
        "select max(as_of) from new_user_recommendations where model_id = ?",
        [DEFAULT_MODEL_ID],
    )[0]
    top = [r[0] for r in _query(
        warehouse.path,
        "select item_id from new_user_recommendations where as_of = ? order by rank limit 5",
        [latest],
    )]

    data = _ok(client, "/users/no-such-user/recommendations?n=5")

    assert data["new_user"] is True and data["known_user"] is False
    assert data["user_id"] == "no-such-user" and data["as_of"] is None
    assert data["list_as_of"] == latest.isoformat()
    assert [r["item_id"] for r in data["recommendations"]] == top
    assert data["recommendations"][0]["evidence"][0]["event_type"] == "trending"
    # A known user may ask for the same list.
    known = _ok(client, f"/users/{warehouse.user}/recommendations?n=5&new_visitor=true")
    assert known["new_user"] is True and known["known_user"] is True
    assert [r["item_id"] for r in known["recommendations"]] == top
    # Time travel applies to the new-visitor list too.
    at = warehouse.hours[-1].isoformat()
    assert _ok(client, f"/users/nobody/recommendations?as_of={at}")["list_as_of"] <= at


@slow
def test_interest_is_the_clis_profile_and_can_carry_the_vector(capsys, warehouse, client):
    as_of = warehouse.versions[0].isoformat()
    expected = _cli_json(capsys, warehouse.path, "profile", warehouse.user, "--as-of", as_of,
                         "-n", "4")

    data = _ok(client, f"/users/{warehouse.user}/interest?as_of={as_of}&n=4&vector=true")

    vector = data.pop("vector")
    assert data == expected
    (stored,) = _query(
        warehouse.path,
        "select vector from user_interest_vectors where user_id = ? and as_of = ?",
        [warehouse.user, warehouse.versions[0]],
    )[0]
    stored = np.asarray(stored, dtype=np.float64)
    assert len(vector) == len(stored)
    assert float(np.dot(vector, stored) / np.linalg.norm(stored)) == pytest.approx(1, abs=1e-5)
    assert _ok(client, f"/users/{warehouse.user}/interest")["vector"] is None


@slow
def test_similar_items_are_the_nearest_documents_without_the_item(warehouse, client):
    rows = _query(
        warehouse.path,
        """
        select d.item_id, e.embedding from item_documents as d
        join text_embeddings as e on e.text_hash = d.text_hash and e.model_id = ?
        order by d.item_id
        """,
        [DEFAULT_MODEL_ID],
    )
    ids = [r[0] for r in rows]
    matrix = np.asarray([r[1] for r in rows], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    item = ids[len(ids) // 2]
    sims = matrix @ matrix[ids.index(item)]
    sims[ids.index(item)] = -np.inf
    expected = [ids[j] for j in np.argsort(-sims, kind="stable")[:5]]

    data = _ok(client, f"/items/{item}/similar?n=5")

    assert data["item_id"] == item and data["model_id"] == DEFAULT_MODEL_ID
    assert [r["item_id"] for r in data["similar"]] == expected
    assert [r["rank"] for r in data["similar"]] == [1, 2, 3, 4, 5]
    assert data["similar"][0]["similarity"] == pytest.approx(np.max(sims), abs=1e-5)
    response = client.get("/items/no-such-item/similar")
    assert response.status_code == 404 and response.json() == {
        "detail": "unknown item 'no-such-item'"
    }


@slow
def test_health_names_the_snapshot_the_last_run_and_the_model(warehouse, client):
    data = _ok(client, "/health")

    last = warehouse.hours[-1]
    assert data["status"] == "ok" and data["source"] == "snapshot" and data["note"] is None
    assert data["snapshot"]["path"] == str(snapshot.snapshot_path(warehouse.path))
    assert data["snapshot"]["interval_end"] == (last + HOUR).isoformat()
    assert 0 <= data["snapshot"]["age_seconds"] < 3600
    assert data["warehouse"] == str(warehouse.path)
    assert data["last_run"]["interval_start"] == last.isoformat()
    assert data["last_run"]["model_id"] == data["model_id"] == DEFAULT_MODEL_ID


@slow
def test_openapi_docs_list_every_endpoint(client):
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/users/{user_id}/recommendations", "/users/{user_id}/interest",
            "/items/{item_id}/similar", "/health"} <= set(paths)


@slow
def test_bad_parameters_are_422_with_a_detail(warehouse, client):
    user = warehouse.user
    for url in (
        f"/users/{user}/recommendations?as_of=yesterday",
        f"/users/{user}/recommendations?n=0",
        f"/users/{user}/recommendations?n=1000",
        f"/users/{user}/interest?n=ten",
        "/items/or-1/similar?n=-1",
        "/users/" + "u" * 1000 + "/recommendations",
    ):
        response = client.get(url)
        assert response.status_code == 422, url
        assert response.json()["detail"], url


# --- nothing gets out or in through a parameter ----------------------------------------------


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir()) if p.is_file()
    }


@slow
def test_sql_and_paths_in_any_parameter_are_only_data(warehouse, client, tmp_path):
    before = _digests(warehouse.path.parent)
    (items,) = _query(warehouse.path, "select count(*) from items")[0]
    outside = tmp_path / "evil.duckdb"
    drop = "x'; drop table items; --"
    attach = f"x'; attach '{outside}' as evil; create table evil.t as select 1; --"

    recs = _ok(client, f"/users/{quote(drop)}/recommendations")
    assert recs["user_id"] == drop and recs["new_user"] is True and recs["known_user"] is False
    for url, status in (
        (f"/users/{quote(drop)}/interest", 404),
        (f"/items/{quote(drop)}/similar", 404),
        (f"/users/{warehouse.user}/recommendations?model_id={quote(attach)}", 404),
        (f"/users/{warehouse.user}/interest?model_id={quote(attach)}", 404),
        (f"/items/or-1/similar?model_id={quote(attach)}", 404),
        (f"/users/{warehouse.user}/recommendations?as_of={quote(drop)}", 422),
        (f"/users/{warehouse.user}/recommendations?n={quote('1; drop table items')}", 422),
        # Path traversal: an encoded slash never reaches the handlers; dots are only an id.
        (f"/users/{quote('../../w.duckdb', safe='')}/recommendations", 404),
        (f"/items/{quote('../w.duckdb.snapshot', safe='')}/similar", 404),
        (f"/items/{quote('..', safe='')}/similar", 404),
        ("/users/%2e%2e/interest", 404),
    ):
        response = client.get(url)
        assert response.status_code == status, (url, response.text)
        assert response.json()["detail"], url

    assert _query(warehouse.path, "select count(*) from items")[0] == (items,)
    assert _digests(warehouse.path.parent) == before
    assert not outside.exists()


# --- no warehouse, no snapshot --------------------------------------------------------------


def test_no_warehouse_is_503_with_a_detail(tmp_path):
    with TestClient(create_app(tmp_path / "none.duckdb", DEFAULT_MODEL_ID)) as client:
        for url in ("/health", "/users/u/recommendations", "/items/i/similar"):
            response = client.get(url)
            assert response.status_code == 503, url
            assert "no warehouse at" in response.json()["detail"]


@slow
def test_without_a_snapshot_it_reads_the_live_file_and_lets_writers_in(warehouse, tmp_path):
    path = tmp_path / "w.duckdb"
    shutil.copyfile(snapshot.snapshot_path(warehouse.path), path)

    with TestClient(create_app(path)) as client:
        health = _ok(client, "/health")
        assert health["source"] == "live" and "no snapshot published yet" in health["note"]
        assert health["snapshot"] is None
        _ok(client, f"/users/{warehouse.user}/recommendations?n=1")
        # Between requests the live file is not held: a pipeline writer gets the lock.
        writer = connect(path, wait_seconds=0)
        writer.close()
        with hold_write_lock(path):
            response = client.get("/health")
        assert response.status_code == 503
        assert "locked by a running pipeline task" in response.json()["detail"]
        assert response.headers["retry-after"]


# --- a new snapshot under a running server ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def _replace_atomically(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.restore")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


@slow
def test_a_new_snapshot_is_served_without_a_restart(warehouse):
    path = warehouse.path
    # The server starts on the snapshot of the first two hours (as if hour 3 were running).
    _replace_atomically(warehouse.after_second_hour, snapshot.snapshot_path(path))
    _replace_atomically(Path(f"{warehouse.after_second_hour}.json"), snapshot.sidecar_path(path))
    second_end = warehouse.hours[1] + HOUR
    old_version = max(v for v in warehouse.versions if v <= second_end)
    assert old_version < warehouse.versions[-1], "the user needs a version from hour 3"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "interest_pipeline.cli", "serve", "--warehouse", str(path),
         "--port", str(port), "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    seen: list[Any] = []  # the version each answer came from, or the error status
    stop = threading.Event()

    def keep_asking() -> None:
        url = f"/users/{quote(warehouse.user)}/interest?n=1"
        while not stop.is_set():
            try:
                seen.append(_get(port, url)["as_of"])
            except urllib.error.HTTPError as exc:
                seen.append(exc.code)

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = _get(port, "/health")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.2)
        assert health["last_run"]["interval_start"] == warehouse.hours[1].isoformat()
        interest = _get(port, f"/users/{warehouse.user}/interest?n=1")
        assert interest["as_of"] == old_version.isoformat()
        asker = threading.Thread(target=keep_asking)
        asker.start()
        time.sleep(0.5)

        snapshot.publish_snapshot(path, warehouse.hours[2], warehouse.hours[2] + HOUR)
        time.sleep(0.5)
        stop.set()
        asker.join()

        health = _get(port, "/health")
        assert health["last_run"]["interval_start"] == warehouse.hours[2].isoformat()
        assert health["snapshot"]["interval_start"] == warehouse.hours[2].isoformat()
        interest = _get(port, f"/users/{warehouse.user}/interest?n=1")
        assert interest["as_of"] == warehouse.versions[-1].isoformat()
        # Every answer during the publish came whole from one snapshot, the old then the new.
        old, new = old_version.isoformat(), warehouse.versions[-1].isoformat()
        assert seen[0] == old and seen[-1] == new, seen
        assert seen == sorted(seen) and set(seen) == {old, new}, seen
        assert server.poll() is None  # the same process throughout
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()


# --- the snapshot reader on tiny files -------------------------------------------------------


def _values(reader: WarehouseReader) -> list[int]:
    with reader.cursor() as (con, _):
        return [x for (x,) in con.execute("select x from t order by x").fetchall()]


def test_the_reader_follows_each_published_snapshot(tmp_path):
    path = tmp_path / "w.duckdb"
    _make_warehouse(path, [1])
    snapshot.publish_snapshot(path)
    reader = WarehouseReader(path)
    try:
        assert _values(reader) == [1]
        _make_warehouse(path, [1, 2])
        assert _values(reader) == [1]  # the live file changed; nothing published yet
        snapshot.publish_snapshot(path)
        assert _values(reader) == [1, 2]
        assert reader.reopened == 2
        assert _values(reader) == [1, 2] and reader.reopened == 2  # no reopen without a publish
    finally:
        reader.close()


def test_a_reader_in_flight_keeps_its_snapshot_and_the_next_waits_for_it(tmp_path):
    path = tmp_path / "w.duckdb"
    _make_warehouse(path, [1])
    snapshot.publish_snapshot(path)
    reader = WarehouseReader(path)
    seen: list[list[int]] = []
    try:
        with reader.cursor() as (con, _):
            _make_warehouse(path, [1, 2])
            snapshot.publish_snapshot(path)
            later = threading.Thread(target=lambda: seen.append(_values(reader)))
            later.start()
            time.sleep(0.3)
            assert seen == []  # waiting for this reader to finish with the old snapshot
            assert [x for (x,) in con.execute("select x from t").fetchall()] == [1]
        later.join(timeout=10)
        assert seen == [[1, 2]]
    finally:
        reader.close()


def test_the_reader_never_holds_the_live_file_between_requests(tmp_path):
    path = tmp_path / "w.duckdb"
    _make_warehouse(path, [1])
    reader = WarehouseReader(path)
    try:
        assert _values(reader) == [1]
        _make_warehouse(path, [1, 2])  # a writer gets the file at once
        assert _values(reader) == [1, 2]
        snapshot.publish_snapshot(path)
        with reader.cursor() as (_, gen):
            assert gen.source == "snapshot"
    finally:
        reader.close()
