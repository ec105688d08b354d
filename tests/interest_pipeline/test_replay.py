"""Tests for the landing-zone replay of the real sample datasets (contract section 1)."""

from __future__ import annotations

import csv
import gzip
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
GOWALLA = SHARED / "gowalla-nyc"

pytestmark = pytest.mark.skipif(
    not (
        RETAIL_PARQUET.is_file()
        and RATINGS_CSV.is_file()
        and (GOWALLA / "gowalla_events.nyc.tsv.gz").is_file()
    ),
    reason=f"shared sample data not found in {SHARED}",
)

EVENT_TYPES = {"view", "search", "click", "add_to_cart", "purchase", "rate", "tag", "follow"}
ITEM_EVENT_TYPES = {"view", "click", "add_to_cart", "purchase", "rate", "tag"}
# Small windows beside the defaults: a summer day (BST, +01:00) with cancellations, and the
# spring DST change of 2010 (Sunday 28 March, 01:00 UTC), when the written offset flips.
SUMMER = (datetime(2010, 6, 3, 9, tzinfo=UTC), datetime(2010, 6, 3, 20, tzinfo=UTC))
DST_CHANGE = (datetime(2010, 3, 26, tzinfo=UTC), datetime(2010, 3, 30, tzinfo=UTC))
# Six Gowalla hours holding check-ins at unnamed venues and one source line that repeats
# exactly (user 74049 at venue 249921, 02:51:31).
GOWALLA_SMALL = (datetime(2010, 9, 25, tzinfo=UTC), datetime(2010, 9, 25, 6, tzinfo=UTC))

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


@pytest.mark.parametrize("dataset", ["movielens", "retail", "gowalla"])
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


@pytest.mark.parametrize("dataset", ["movielens", "retail", "gowalla"])
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
    [
        ("movielens", None),
        ("retail", None),
        ("retail", SUMMER),
        ("retail", DST_CHANGE),
        ("gowalla", None),
        ("gowalla", GOWALLA_SMALL),
    ],
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
        if event["event_type"] == "follow":
            assert event["target_user_id"] and "item_id" not in event
    assert len({event["event_id"] for _, event in events}) == len(events)
    for item in items.values():
        assert list(item) == [key for key in ITEM_FIELDS if key in item], "key order"
        assert item["title"] and item["title"] == item["title"].strip()
        assert datetime.fromisoformat(item["updated_at"]) == summary.start
        if dataset == "movielens":
            assert "(no genres listed)" not in item["tags"]
        elif dataset == "retail":
            assert item["category"] is None and item["price"] >= 0
        else:
            assert list(item) == ["item_id", "title", "updated_at"], "no coordinates field"


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


def _gowalla_source(
    start: datetime, end: datetime
) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]], set[tuple[str, str]]]:
    """From the TSVs, independently of the replay code: the window's distinct check-ins
    (user, venue, time) at named and at unnamed venues, and the arcs between users who have
    a named check-in anywhere."""
    with (GOWALLA / "gowalla_venues.nyc.checkedin.tsv").open(encoding="utf-8", newline="") as f:
        named_venues = {row[0] for row in list(csv.reader(f, delimiter="\t"))[1:]}
    lo, hi = start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")
    named, unnamed, active = set(), set(), set()
    with gzip.open(GOWALLA / "gowalla_events.nyc.tsv.gz", "rt", encoding="utf-8") as f:
        for line in f:
            user, ts, _, _, venue = line.rstrip("\n").split("\t")
            if venue in named_venues:
                active.add(user)
            if lo <= ts < hi:
                (named if venue in named_venues else unnamed).add((user, venue, ts))
    with (GOWALLA / "gowalla_friends.nyc.tsv").open(encoding="utf-8") as f:
        arcs = {tuple(line.split()) for line in list(f)[1:]}
    return named, unnamed, {(u, v) for u, v in arcs if u in active and v in active}


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
    assert len(_gowalla_source(*DEFAULT_WINDOWS["gowalla"])[0]) == 1511


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
    needles = ("--dataset", "--shift-end-to", "--landing-dir", "hour=HH", "2015-07-02", "gowalla")
    for needle in needles:
        assert needle in out


@pytest.mark.parametrize("window", [None, GOWALLA_SMALL])
def test_gowalla_named_checkins_are_clicks_as_in_the_tsv(
    window: Window | None, replayed: Replayed
) -> None:
    landing, summary = replayed("gowalla", window)
    start, end = window or DEFAULT_WINDOWS["gowalla"]
    named, _, arcs = _gowalla_source(start, end)
    events = [event for _, event in _lines(landing, "events")]
    clicks = [e for e in events if e["event_type"] != "follow"]

    assert {e["event_type"] for e in clicks} == {"click"}
    assert summary.events == len(events) == len(named) + len(arcs)
    written = {
        (
            e["user_id"].removeprefix("gw-u"),
            e["item_id"].removeprefix("gw-v"),
            datetime.fromisoformat(e["event_time"]).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        for e in clicks
    }
    assert len(clicks) == len(named) == len(written) and written == named
    for event in clicks:
        assert "value" not in event, "a visit has no quantity, rating or dwell time"
        assert event["event_time"].endswith("Z")
        epoch = int(datetime.fromisoformat(event["event_time"]).timestamp())
        assert event["event_id"] == f"gw-c-{event['user_id'][4:]}-{event['item_id'][4:]}-{epoch}"


def test_gowalla_repeated_source_line_is_one_event(replayed: Replayed) -> None:
    landing, _ = replayed("gowalla", GOWALLA_SMALL)
    with gzip.open(GOWALLA / "gowalla_events.nyc.tsv.gz", "rt", encoding="utf-8") as f:
        copies = [line for line in f if line.startswith("74049\t2010-09-25T02:51:31Z\t")]
    ids = [event["event_id"] for _, event in _lines(landing, "events")]

    assert len(copies) == 2 and copies[0] == copies[1]
    assert ids.count("gw-c-74049-249921-1285383091") == 1


def test_gowalla_follows_land_in_the_first_hour_both_ways(replayed: Replayed) -> None:
    landing, summary = replayed("gowalla", GOWALLA_SMALL)
    _, _, arcs = _gowalla_source(*GOWALLA_SMALL)
    follows = [(p, e) for p, e in _lines(landing, "events") if e["event_type"] == "follow"]
    pairs = {
        (e["user_id"].removeprefix("gw-u"), e["target_user_id"].removeprefix("gw-u"))
        for _, e in follows
    }

    assert len(arcs) == 30042, "every arc of the file joins two users with named check-ins"
    assert len(follows) == len(pairs) and pairs == arcs
    assert all((friend, user) in pairs for user, friend in pairs)
    for path, event in follows:
        assert _partition_hour(path) == summary.start
        assert datetime.fromisoformat(event["event_time"]) == summary.start
        user, friend = event["user_id"][4:], event["target_user_id"][4:]
        assert event["event_id"] == f"gw-f-{user}-{friend}"


def test_gowalla_unnamed_venues_are_skipped_and_items_are_named_venues(
    replayed: Replayed,
) -> None:
    landing, _ = replayed("gowalla", GOWALLA_SMALL)
    _, unnamed, _ = _gowalla_source(*GOWALLA_SMALL)
    items = {item["item_id"]: item["title"] for _, item in _lines(landing, "items")}
    item_ids = {e.get("item_id") for _, e in _lines(landing, "events")}

    assert unnamed, "the window should hold check-ins at unnamed venues"
    assert not {f"gw-v{venue}" for _, venue, _ in unnamed} & (item_ids | items.keys())
    assert len(items) == 17291, "the whole catalogue of named venues"
    # The venue file CSV-quotes 7 names; the title is the name, not its quoting.
    assert items["gw-v48518"] == 'Toys "R" Us'
