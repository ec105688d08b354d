"""Tests for the landing-zone replay of the real sample datasets (contract section 1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from interest_pipeline.replay import (
    DEFAULT_WINDOWS,
    EVENT_FIELDS,
    ITEM_FIELDS,
    PartitionConflictError,
    ReplaySummary,
    default_shared_data_dir,
    main,
    replay,
)

SHARED = default_shared_data_dir()
RETAIL_PARQUET = SHARED / "online-retail-ii-2009-2010" / "online_retail_ii_2009_2010.parquet"
RATINGS_CSV = SHARED / "movielens-latest-small" / "ratings.csv"

pytestmark = pytest.mark.skipif(
    not (RETAIL_PARQUET.is_file() and RATINGS_CSV.is_file()),
    reason=f"shared sample data not found in {SHARED}",
)

EVENT_TYPES = {"view", "search", "click", "add_to_cart", "purchase", "rate", "tag", "follow"}
ITEM_EVENT_TYPES = {"view", "click", "add_to_cart", "purchase", "rate", "tag"}
# Small windows beside the defaults: a summer day (BST, +01:00) with cancellations, and the
# spring DST change of 2010 (Sunday 28 March, 01:00 UTC), when the written offset flips.
SUMMER = (datetime(2010, 6, 3, 9, tzinfo=UTC), datetime(2010, 6, 3, 20, tzinfo=UTC))
DST_CHANGE = (datetime(2010, 3, 26, tzinfo=UTC), datetime(2010, 3, 30, tzinfo=UTC))

Window = tuple[datetime, datetime]
Replayed = Callable[..., tuple[Path, ReplaySummary]]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    """Replay a window once per module; for tests that only read the landing zone."""
    cache: dict[tuple[str, Window], tuple[Path, ReplaySummary]] = {}

    def get(dataset: str, window: Window | None = None) -> tuple[Path, ReplaySummary]:
        window = window or DEFAULT_WINDOWS[dataset]
        if (dataset, window) not in cache:
            landing = tmp_path_factory.mktemp(f"landing-{dataset}")
            cache[dataset, window] = (landing, replay(dataset, *window, landing))
        return cache[dataset, window]

    return get


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _lines(root: Path, kind: str) -> list[tuple[Path, dict]]:
    return [
        (path, json.loads(line))
        for path in sorted((root / kind).rglob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def _partition_hour(path: Path) -> datetime:
    date = path.parent.parent.name.removeprefix("date=")
    hour = path.parent.name.removeprefix("hour=")
    return datetime.fromisoformat(f"{date}T{hour}:00+00:00")


def _source_event_count(dataset: str, start: datetime, end: datetime) -> int:
    """Count the source rows in [start, end) independently of the replay code."""
    import pandas as pd

    if dataset == "movielens":
        lo, hi = start.timestamp(), end.timestamp()
        frames = [pd.read_csv(RATINGS_CSV), pd.read_csv(RATINGS_CSV.with_name("tags.csv"))]
        return sum(int(((f.timestamp >= lo) & (f.timestamp < hi)).sum()) for f in frames)
    frame = pd.read_parquet(RETAIL_PARQUET, columns=["InvoiceDate", "Customer ID"])
    frame = frame[frame["Customer ID"].notna()]
    utc = (
        pd.to_datetime(frame["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")
        .dt.tz_localize("Europe/London")
        .dt.tz_convert("UTC")
    )
    return int(((utc >= pd.Timestamp(start)) & (utc < pd.Timestamp(end))).sum())


@pytest.mark.parametrize("dataset", ["movielens", "retail"])
def test_two_replays_write_identical_bytes(dataset: str, tmp_path: Path) -> None:
    start, end = DEFAULT_WINDOWS[dataset]
    first = replay(dataset, start, end, tmp_path / "a")
    second = replay(dataset, start, end, tmp_path / "b")

    assert first == second
    tree = _tree(tmp_path / "a")
    assert tree == _tree(tmp_path / "b")
    assert len(tree) == first.event_partitions_written + first.item_partitions_written
    assert first.hours == 48 and first.events > 0 and first.items > 0


def test_rerun_into_same_dir_changes_nothing(tmp_path: Path) -> None:
    start, end = DEFAULT_WINDOWS["movielens"]
    first = replay("movielens", start, end, tmp_path)
    before = _tree(tmp_path)
    again = replay("movielens", start, end, tmp_path)

    assert again.event_partitions_written == again.item_partitions_written == 0
    assert again.event_partitions_unchanged == first.event_partitions_written
    assert again.item_partitions_unchanged == first.item_partitions_written == 1
    assert _tree(tmp_path) == before
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "temp file left"


def test_conflict_raises_and_writes_nothing(tmp_path: Path) -> None:
    start, end = DEFAULT_WINDOWS["movielens"]
    replay("movielens", start, end, tmp_path)
    parts = sorted((tmp_path / "events").rglob("*.jsonl"))
    tampered, removed = parts[0], parts[-1]
    tampered.write_bytes(tampered.read_bytes() + b'{"event_id": "extra"}\n')
    tampered_bytes = tampered.read_bytes()
    removed.unlink()

    with pytest.raises(PartitionConflictError) as caught:
        replay("movielens", start, end, tmp_path)

    assert str(tampered) in str(caught.value)
    assert caught.value.paths == [tampered]
    assert tampered.read_bytes() == tampered_bytes
    assert not removed.exists(), "a conflicting replay must not write any partition"


@pytest.mark.parametrize("dataset", ["movielens", "retail"])
def test_shift_ends_window_at_given_hour(dataset: str, tmp_path: Path, replayed: Replayed) -> None:
    original_dir, original = replayed(dataset)
    start, end = DEFAULT_WINDOWS[dataset]
    # Mid-July: a winter retail window shifted into summer must be written with +01:00.
    target = datetime(2030, 7, 15, 9, 41, 27, tzinfo=UTC)

    summary = replay(dataset, start, end, tmp_path, shift_end_to=target)

    new_end = datetime(2030, 7, 15, 9, tzinfo=UTC)
    assert (summary.start, summary.end) == (new_end - timedelta(hours=48), new_end)
    assert summary.events == original.events and summary.items == original.items
    shift = new_end - end
    events = _lines(tmp_path, "events")
    for path, event in events:
        at = datetime.fromisoformat(event["event_time"])
        assert summary.start <= at < summary.end
        assert _partition_hour(path) == at.astimezone(UTC).replace(minute=0, second=0)
    if dataset == "retail":
        assert all(event["event_time"].endswith("+01:00") for _, event in events)
    item_parts = sorted((tmp_path / "items").rglob("*.jsonl"))
    assert [_partition_hour(p) for p in item_parts] == [summary.start]
    # Same events, just moved: ids unchanged, every time moved by exactly the shift.
    before = {e["event_id"]: e["event_time"] for _, e in _lines(original_dir, "events")}
    after = {e["event_id"]: e["event_time"] for _, e in events}
    assert before.keys() == after.keys()
    for event_id, written in after.items():
        moved = datetime.fromisoformat(written) - datetime.fromisoformat(before[event_id])
        assert moved == shift


@pytest.mark.parametrize(
    ("dataset", "window"),
    [("movielens", None), ("retail", None), ("retail", SUMMER), ("retail", DST_CHANGE)],
)
def test_lines_follow_the_contract(dataset: str, window: Window | None, replayed: Replayed) -> None:
    landing, summary = replayed(dataset, window)
    events = _lines(landing, "events")
    items = {item["item_id"]: item for _, item in _lines(landing, "items")}

    assert len(events) == summary.events > 0
    assert len(items) == summary.items > 0
    for path in (landing / "events").rglob("*.jsonl"):
        assert path.name == "part-00000.jsonl" and path.read_bytes().endswith(b"\n")
    for path, event in events:
        assert list(event) == [key for key in EVENT_FIELDS if key in event], "key order"
        for key in ("event_id", "event_time", "user_id", "event_type"):
            assert isinstance(event[key], str) and event[key], key
        assert event["event_type"] in EVENT_TYPES
        at = datetime.fromisoformat(event["event_time"])
        assert at.tzinfo is not None, event["event_time"]
        assert summary.start <= at < summary.end
        assert _partition_hour(path) == at.astimezone(UTC).replace(minute=0, second=0)
        if event["event_type"] in ITEM_EVENT_TYPES:
            assert event["item_id"] in items
        if event["event_type"] == "tag":
            assert event["query"]
        if event["event_type"] == "rate":
            assert 0.5 <= event["value"] <= 5
    assert len({event["event_id"] for _, event in events}) == len(events)
    for item in items.values():
        assert list(item) == [key for key in ITEM_FIELDS if key in item], "key order"
        assert item["title"] and item["title"] == item["title"].strip()
        assert datetime.fromisoformat(item["updated_at"]) == summary.start
        if dataset == "movielens":
            assert "(no genres listed)" not in item["tags"]
        else:
            assert item["category"] is None and item["price"] >= 0


def test_events_in_an_hour_are_sorted(replayed: Replayed) -> None:
    landing, _ = replayed("retail")
    by_file: dict[Path, list[tuple[datetime, str]]] = {}
    for path, event in _lines(landing, "events"):
        at = datetime.fromisoformat(event["event_time"])
        by_file.setdefault(path, []).append((at, event["event_id"]))
    for keys in by_file.values():
        assert keys == sorted(keys)


def test_movielens_tag_ids_hash_the_tag_text(replayed: Replayed) -> None:
    landing, _ = replayed("movielens")
    tags = [event for _, event in _lines(landing, "events") if event["event_type"] == "tag"]

    assert len(tags) == 28
    for event in tags:
        user = event["user_id"].removeprefix("ml-u")
        movie = event["item_id"].removeprefix("ml-m")
        digest = hashlib.sha1(event["query"].encode("utf-8")).hexdigest()[:10]
        assert event["event_id"] == f"ml-t-{user}-{movie}-{digest}"


def test_retail_cancellations_are_negative_and_times_carry_london_offset(
    replayed: Replayed,
) -> None:
    for window, offset in ((SUMMER, "+01:00"), (None, "+00:00")):
        landing, _ = replayed("retail", window)
        events = [event for _, event in _lines(landing, "events")]
        cancelled = [e for e in events if e["event_id"].startswith("or-C")]

        assert cancelled, "window should hold cancellations"
        assert all(e["value"] < 0 for e in cancelled)
        assert all(e["value"] > 0 for e in events if not e["event_id"].startswith("or-C"))
        assert all(e["event_time"].endswith(offset) for e in events)

    landing, _ = replayed("retail", DST_CHANGE)
    offsets = {event["event_time"][-6:] for _, event in _lines(landing, "events")}
    assert offsets == {"+00:00", "+01:00"}


@pytest.mark.parametrize(
    ("dataset", "window"), [("movielens", None), ("retail", None), ("retail", DST_CHANGE)]
)
def test_event_count_equals_source_rows(
    dataset: str, window: Window | None, replayed: Replayed
) -> None:
    landing, summary = replayed(dataset, window)
    start, end = window or DEFAULT_WINDOWS[dataset]

    assert summary.events == _source_event_count(dataset, start, end)
    assert len(_lines(landing, "events")) == summary.events


def test_default_window_counts() -> None:
    for dataset, (start, end) in DEFAULT_WINDOWS.items():
        assert end - start == timedelta(hours=48), dataset
    assert _source_event_count("movielens", *DEFAULT_WINDOWS["movielens"]) == 642
    assert _source_event_count("retail", *DEFAULT_WINDOWS["retail"]) == 5589


@pytest.mark.parametrize(
    ("dataset", "start", "end"),
    [
        ("netflix", datetime(2015, 7, 2, tzinfo=UTC), datetime(2015, 7, 3, tzinfo=UTC)),
        ("movielens", datetime(2015, 7, 2, 0, 30, tzinfo=UTC), datetime(2015, 7, 3, tzinfo=UTC)),
        ("movielens", datetime(2015, 7, 3, tzinfo=UTC), datetime(2015, 7, 3, tzinfo=UTC)),
    ],
)
def test_bad_window_is_rejected(
    dataset: str, start: datetime, end: datetime, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        replay(dataset, start, end, tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_shared_data_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INTEREST_SHARED_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="INTEREST_SHARED_DATA_DIR"):
        replay("retail", *DEFAULT_WINDOWS["retail"], tmp_path / "landing")

    assert main(["--dataset", "retail", "--landing-dir", str(tmp_path / "landing")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_cli_replays_default_window_then_reports_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dataset", "movielens", "--landing-dir", str(tmp_path)]

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "642 events" in out and "11 written" in out and "2015-07-02T11:00:00Z" in out

    assert main(args) == 0
    assert "0 written" in capsys.readouterr().out

    part = next((tmp_path / "events").rglob("*.jsonl"))
    part.write_text("changed\n")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(part) in err


def test_cli_shift_and_explicit_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--dataset",
            "retail",
            "--start",
            "2010-06-03T09:00Z",
            "--end",
            "2010-06-03T20:00Z",
            "--shift-end-to",
            "2031-01-01T00:59:59+00:00",
            "--landing-dir",
            str(tmp_path),
        ]
    )

    assert code == 0
    assert "[2030-12-31T13:00:00Z, 2031-01-01T00:00:00Z) of 11 hours" in capsys.readouterr().out
    assert (tmp_path / "items" / "date=2030-12-31" / "hour=13" / "part-00000.jsonl").is_file()


def test_cli_shift_to_now_ends_at_the_current_hour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dataset", "movielens", "--shift-end-to", "now", "--landing-dir", str(tmp_path)]
    before = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    assert main(args) == 0

    after = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert any(f"{end:%Y-%m-%dT%H}:00:00Z)" in capsys.readouterr().out for end in {before, after})


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--dataset", "netflix"],
        ["--dataset", "movielens", "--start", "2015-07-02T11:00Z"],
        ["--dataset", "movielens", "--start", "yesterday", "--end", "2015-07-03"],
        ["--dataset", "movielens", "--start", "2015-07-02T11:30Z", "--end", "2015-07-03"],
        ["--dataset", "movielens", "--start", "2015-07-03", "--end", "2015-07-02"],
    ],
)
def test_cli_bad_arguments_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--landing-dir", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for needle in ("--dataset", "--shift-end-to", "--landing-dir", "hour=HH", "2015-07-02"):
        assert needle in out
