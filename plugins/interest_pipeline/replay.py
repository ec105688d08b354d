"""Replay the real sample datasets into the landing zone as hourly partitions.

The shared folder (``../shared/data`` next to the repo, or ``$INTEREST_SHARED_DATA_DIR``) holds
MovieLens "latest-small", Online Retail II 2009-2010 and Gowalla NYC. This module turns a window
of any of them into the landing-zone layout of the pipeline contract (section 1)::

    <landing>/events/date=YYYY-MM-DD/hour=HH/part-00000.jsonl
    <landing>/items/date=YYYY-MM-DD/hour=HH/part-00000.jsonl

An event lands in the partition of the UTC hour of its event time (for a replay, arrival hour
equals event hour); hours without events get no file, which the pipeline reads as an empty
hour. The items a window needs land in the partition of its first hour. ``shift_end_to`` moves
the whole window by a whole number of hours so old data can play as if it were recent.

Partitions are immutable: rewriting one with identical bytes is a no-op and a different one is
never overwritten (:class:`PartitionConflictError`). Everything is planned before the first
write, so a conflict leaves the landing zone as it was.

Command line: ``interest-replay --dataset movielens`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from interest_pipeline import progress
from interest_pipeline.config import REPO_ROOT, get_settings

logger = logging.getLogger(__name__)

DATASETS = ("movielens", "retail", "gowalla")

# Chosen by scanning every hour-aligned 48-hour window of the source data.
# - movielens: no 48-hour window in ml-latest-small has >= 10 distinct users (the maximum is 8,
#   and those windows hold <= 2 tags; none has >= 6 users and >= 20 tags), so this is the
#   compromise: the most events of any window with >= 5 users and tags from >= 2 users.
#   642 events (614 ratings + 28 tags), 5 users (3 of them tagging), largest single-user share
#   57 % (user 509), events in 11 distinct hours.
# - retail: the busiest weekday pair of the year, Wed 10 + Thu 11 Nov 2010 (winter, +00:00):
#   5,589 invoice lines of known customers, 244 customers, 318 invoices of which 72 are
#   cancellations (124 cancelled lines), 1,600 stock codes, events in 22 distinct hours.
# - gowalla: the busiest pair of whole UTC days (whole days, so the daily backfill of `make run`
#   covers exactly the window; the best hour-aligned 48 h, from 2010-09-22 14:00, has 1,571),
#   Fri 8 + Sat 9 Oct 2010: 1,511 check-ins at named venues (430 more at unnamed ones are
#   skipped), 379 users (284 of them with friends), 1,022 venues, events in 46 distinct hours,
#   largest single-user share 16 % (user 111).
DEFAULT_WINDOWS: dict[str, tuple[datetime, datetime]] = {
    "movielens": (
        datetime(2015, 7, 2, 11, tzinfo=UTC),
        datetime(2015, 7, 4, 11, tzinfo=UTC),
    ),
    "retail": (
        datetime(2010, 11, 10, tzinfo=UTC),
        datetime(2010, 11, 12, tzinfo=UTC),
    ),
    "gowalla": (
        datetime(2010, 10, 8, tzinfo=UTC),
        datetime(2010, 10, 10, tzinfo=UTC),
    ),
}

SHARED_DATA_ENV = "INTEREST_SHARED_DATA_DIR"
MOVIELENS_DIR = "movielens-latest-small"
RETAIL_FILE = "online-retail-ii-2009-2010/online_retail_ii_2009_2010.parquet"
GOWALLA_DIR = "gowalla-nyc"
PART_NAME = "part-00000.jsonl"

# Key order of the contract's tables, so lines read the same whichever dataset wrote them.
EVENT_FIELDS = (
    "event_id",
    "event_time",
    "user_id",
    "event_type",
    "item_id",
    "query",
    "value",
    "target_user_id",
)
ITEM_FIELDS = ("item_id", "title", "description", "category", "tags", "price", "updated_at")

# The retail shop's invoice clock is UK local time.
_LONDON = ZoneInfo("Europe/London")
_HOUR = timedelta(hours=1)
_NO_GENRES = "(no genres listed)"
# A check-in is `click`, weight 1 (seed event_weights): a visit is an engagement, not a
# consumption. People go back to venues they like, so a visited venue must stay recommendable,
# whereas the items of `purchase` and `rate` events are excluded from the user's
# recommendations; `view` (0.5, dwell seconds) is weaker than going somewhere in person.
_CHECKIN_EVENT_TYPE = "click"
# Same output as json.dumps(..., ensure_ascii=False), without building an encoder per line.
_JSON = json.JSONEncoder(ensure_ascii=False)


class PartitionConflictError(Exception):
    """A partition already exists with different content; partitions are immutable."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        more = f" (and {len(self.paths) - 1} more)" if len(self.paths) > 1 else ""
        super().__init__(
            f"partition {self.paths[0]} already exists with different content{more}; "
            "partitions are immutable: replay into another landing dir or remove it first"
        )


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay wrote.

    Attributes:
        dataset: "movielens", "retail" or "gowalla".
        start: Window start as written (after any shift), UTC.
        end: Window end as written (after any shift), UTC, exclusive.
        hours: Number of hours in the window.
        event_partitions_written: Event partitions newly written.
        event_partitions_unchanged: Event partitions that already held identical bytes.
        item_partitions_written: Item partitions newly written.
        item_partitions_unchanged: Item partitions that already held identical bytes.
        events: Event lines in the window.
        items: Item lines in the window.
    """

    dataset: str
    start: datetime
    end: datetime
    hours: int
    event_partitions_written: int
    event_partitions_unchanged: int
    item_partitions_written: int
    item_partitions_unchanged: int
    events: int
    items: int


@dataclass(frozen=True)
class _Event:
    """One event line with the UTC instant (after shift) that orders and partitions it."""

    at: datetime
    record: dict[str, Any]


@dataclass(frozen=True)
class _Partition:
    """One planned partition file."""

    kind: str
    path: Path
    content: bytes


def replay(
    dataset: str,
    start: datetime,
    end: datetime,
    landing_dir: Path,
    shift_end_to: datetime | None = None,
    shared_data_dir: Path | None = None,
) -> ReplaySummary:
    """Write one window of a sample dataset into the landing zone as hourly partitions.

    Args:
        dataset: "movielens", "retail" or "gowalla".
        start: Window start in the source data's time, UTC (naive means UTC), on the hour.
        end: Window end (exclusive), same rules; must be after ``start``.
        landing_dir: Root of the landing zone.
        shift_end_to: If given, move every time by whole hours so the window ends at this
            instant rounded down to the hour.
        shared_data_dir: Folder holding the datasets; defaults to ``$INTEREST_SHARED_DATA_DIR``
            or ``<repo>/../shared/data``.

    Returns:
        Counts of what was written and what was already there.

    Raises:
        ValueError: Unknown dataset or a bad window.
        FileNotFoundError: The dataset files are missing.
        PartitionConflictError: A partition exists with different content; nothing is written.
    """
    start, end = check_window(dataset, start, end)
    shift = timedelta(0)
    if shift_end_to is not None:
        shift = _floor_hour(_as_utc(shift_end_to)) - end
    data_dir = Path(shared_data_dir) if shared_data_dir else default_shared_data_dir()
    landing_dir = Path(landing_dir)
    new_start, new_end = start + shift, end + shift
    logger.info(
        "replaying %s [%s, %s) shifted by %+d h into %s",
        dataset,
        _format_utc(start),
        _format_utc(end),
        shift // _HOUR,
        landing_dir,
    )

    loaders = {"movielens": _load_movielens, "retail": _load_retail, "gowalla": _load_gowalla}
    events, items = loaders[dataset](data_dir, start, end, shift)

    event_parts = _plan_events(landing_dir, events)
    item_parts = _plan_items(landing_dir, new_start, items)
    logger.info(
        "planned %d events in %d event partitions and %d items",
        len(events),
        len(event_parts),
        len(items),
    )
    todo, unchanged = _check_existing(event_parts + item_parts)
    _write_all(todo)

    written_kinds = Counter(part.kind for part in todo)
    unchanged_kinds = Counter(part.kind for part in unchanged)
    summary = ReplaySummary(
        dataset=dataset,
        start=new_start,
        end=new_end,
        hours=(end - start) // _HOUR,
        event_partitions_written=written_kinds["events"],
        event_partitions_unchanged=unchanged_kinds["events"],
        item_partitions_written=written_kinds["items"],
        item_partitions_unchanged=unchanged_kinds["items"],
        events=len(events),
        items=len(items),
    )
    logger.info(
        "replay done: %d events, %d items; partitions written %d, unchanged %d",
        summary.events,
        summary.items,
        len(todo),
        len(unchanged),
    )
    return summary


def check_window(dataset: str, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Validate a replay window and return it in UTC.

    Args:
        dataset: Must be one of ``DATASETS``.
        start: Window start; naive means UTC; must be on the hour.
        end: Window end (exclusive); same rules; must be after ``start``.

    Returns:
        ``(start, end)`` as timezone-aware UTC datetimes.

    Raises:
        ValueError: If any rule is broken.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    start, end = _as_utc(start), _as_utc(end)
    for name, value in (("start", start), ("end", end)):
        if value != _floor_hour(value):
            raise ValueError(f"{name} {value.isoformat()} is not on the hour")
    if end <= start:
        raise ValueError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    return start, end


def default_shared_data_dir() -> Path:
    """Folder of the sample datasets: ``$INTEREST_SHARED_DATA_DIR`` or ``<repo>/../shared/data``."""
    value = os.environ.get(SHARED_DATA_ENV)
    if value:
        return Path(value).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"sample data file {path} not found; set {SHARED_DATA_ENV} to the shared data folder"
        )
    return path


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _floor_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _format_utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_movielens(
    data_dir: Path, start: datetime, end: datetime, shift: timedelta
) -> tuple[list[_Event], list[dict[str, Any]]]:
    """Ratings and tags in [start, end) as events; the whole movie catalogue as items."""
    import pandas as pd

    folder = data_dir / MOVIELENS_DIR
    ratings = pd.read_csv(_require(folder / "ratings.csv"))
    # keep_default_na=False: a tag or title such as "NA" or "null" is text, not a missing value.
    text = {"tag": str, "title": str, "genres": str}
    tags = pd.read_csv(_require(folder / "tags.csv"), dtype=text, keep_default_na=False)
    movies = pd.read_csv(_require(folder / "movies.csv"), dtype=text, keep_default_na=False)

    lo, hi = int(start.timestamp()), int(end.timestamp())
    ratings = ratings[(ratings["timestamp"] >= lo) & (ratings["timestamp"] < hi)]
    tags = tags[(tags["timestamp"] >= lo) & (tags["timestamp"] < hi)]

    events: list[_Event] = []
    for user, movie, rating, ts in _rows(ratings, ["userId", "movieId", "rating", "timestamp"]):
        at = datetime.fromtimestamp(int(ts), UTC) + shift
        events.append(
            _Event(
                at,
                {
                    "event_id": f"ml-r-{user}-{movie}",
                    "event_time": _format_utc(at),
                    "user_id": f"ml-u{user}",
                    "event_type": "rate",
                    "item_id": f"ml-m{movie}",
                    "value": float(rating),
                },
            )
        )
    for user, movie, tag, ts in _rows(tags, ["userId", "movieId", "tag", "timestamp"]):
        at = datetime.fromtimestamp(int(ts), UTC) + shift
        digest = hashlib.sha1(tag.encode("utf-8")).hexdigest()[:10]
        events.append(
            _Event(
                at,
                {
                    "event_id": f"ml-t-{user}-{movie}-{digest}",
                    "event_time": _format_utc(at),
                    "user_id": f"ml-u{user}",
                    "event_type": "tag",
                    "item_id": f"ml-m{movie}",
                    "query": tag,
                },
            )
        )

    updated_at = _format_utc(start + shift)
    items = [
        {
            "item_id": f"ml-m{movie}",
            "title": title.strip(),
            "tags": [genre for genre in genres.split("|") if genre and genre != _NO_GENRES],
            "updated_at": updated_at,
        }
        for movie, title, genres in _rows(movies, ["movieId", "title", "genres"])
    ]
    return events, items


def _load_retail(
    data_dir: Path, start: datetime, end: datetime, shift: timedelta
) -> tuple[list[_Event], list[dict[str, Any]]]:
    """Invoice lines of known customers in [start, end) as purchases; their stock codes as items."""
    import pandas as pd

    columns = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price"]
    frame = pd.read_parquet(_require(data_dir / RETAIL_FILE), columns=[*columns, "Customer ID"])
    frame = frame[frame["Customer ID"].notna()]
    # Numbered over the whole file, not the window, so an event keeps its id whatever window
    # (or shift) replays it.
    frame = frame.assign(n=frame.groupby(["Invoice", "StockCode"], sort=False).cumcount() + 1)
    # InvoiceDate is "YYYY-MM-DD HH:MM:SS" local time, which sorts as text: a cheap pre-filter
    # with a day of slack for the UTC offset; the exact cut happens per row below.
    slack = timedelta(days=1)
    lo = (start - slack).strftime("%Y-%m-%d %H:%M:%S")
    hi = (end + slack).strftime("%Y-%m-%d %H:%M:%S")
    frame = frame[(frame["InvoiceDate"] >= lo) & (frame["InvoiceDate"] < hi)]

    events: list[_Event] = []
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    # Many lines share an invoice minute; converting each distinct minute once keeps a
    # full-year replay quick.
    times: dict[str, tuple[datetime, str] | None] = {}
    rows = _rows(frame, [*columns, "Customer ID", "n"])
    for invoice, code, description, quantity, local_time, price, customer, n in rows:
        if local_time not in times:
            times[local_time] = _retail_time(local_time, start, end, shift)
        converted = times[local_time]
        if converted is None:
            continue
        at, event_time = converted
        events.append(
            _Event(
                at,
                {
                    "event_id": f"or-{invoice}-{code}-{n}",
                    "event_time": event_time,
                    "user_id": f"or-c{int(customer)}",
                    "event_type": "purchase",
                    "item_id": f"or-{code}",
                    "value": int(quantity),
                },
            )
        )
        descriptions[code][str(description).strip()] += 1
        prices[code].append(float(price))

    updated_at = _format_utc(start + shift)
    items = [
        {
            "item_id": f"or-{code}",
            "title": min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0],
            "category": None,
            # Rounded so the median of two prices prints as money, not float noise.
            "price": round(statistics.median(prices[code]), 4),
            "updated_at": updated_at,
        }
        for code, counts in descriptions.items()
    ]
    return events, items


def _load_gowalla(
    data_dir: Path, start: datetime, end: datetime, shift: timedelta
) -> tuple[list[_Event], list[dict[str, Any]]]:
    """Check-ins at named venues in [start, end) as clicks, friendships as follows, venues as items.

    A check-in at a venue without a name (one not in ``gowalla_venues.nyc.checkedin.tsv``, about
    a fifth of them) is skipped: its item would have no text to embed. A line that repeats an
    earlier one exactly (same user, second and venue: 6 in the file) is the same check-in and is
    written once. Every friendship arc uid -> fid (the file holds both directions of each mutual
    friendship) whose two users both have a named check-in somewhere in the dataset becomes a
    ``follow`` at the window's first instant, so any window knows the whole graph from its first
    hour; friendships have no timestamps. Items are the whole catalogue of named venues, title =
    the name; the contract has no field for the coordinates.
    """
    import pandas as pd

    folder = data_dir / GOWALLA_DIR
    # Default CSV quoting on purpose: 7 names are quoted (``"Toys ""R"" Us"``), which this
    # undoes; keep_default_na=False keeps a venue named "NA" or "None" as text.
    venues = pd.read_csv(
        _require(folder / "gowalla_venues.nyc.checkedin.tsv"),
        sep="\t",
        usecols=["vid", "name"],
        dtype=str,
        keep_default_na=False,
    )
    names = {vid: name.strip() for vid, name in _rows(venues, ["vid", "name"]) if name.strip()}
    checkins = pd.read_csv(
        _require(folder / "gowalla_events.nyc.tsv.gz"),
        sep="\t",
        header=None,
        usecols=[0, 1, 4],
        names=["uid", "ts", "vid"],
        dtype=str,
        keep_default_na=False,
    )
    is_named = checkins["vid"].isin(list(names))
    active_users = set(checkins.loc[is_named, "uid"].tolist())
    # Timestamps are all "YYYY-MM-DDTHH:MM:SSZ", which sorts as text like the instants it names.
    lo, hi = _format_utc(start), _format_utc(end)
    in_window = (checkins["ts"] >= lo) & (checkins["ts"] < hi)
    window = checkins[in_window & is_named].drop_duplicates()

    events: list[_Event] = []
    for user, timestamp, venue in _rows(window, ["uid", "ts", "vid"]):
        instant = datetime.fromisoformat(timestamp)
        at = instant + shift
        events.append(
            _Event(
                at,
                {
                    "event_id": f"gw-c-{user}-{venue}-{int(instant.timestamp())}",
                    "event_time": _format_utc(at),
                    "user_id": f"gw-u{user}",
                    "event_type": _CHECKIN_EVENT_TYPE,
                    "item_id": f"gw-v{venue}",
                },
            )
        )
    checkin_count = len(events)

    friends = pd.read_csv(_require(folder / "gowalla_friends.nyc.tsv"), sep="\t", dtype=str)
    first = start + shift
    first_time = _format_utc(first)
    for user, friend in _rows(friends, ["uid", "fid"]):
        if user in active_users and friend in active_users:
            events.append(
                _Event(
                    first,
                    {
                        "event_id": f"gw-f-{user}-{friend}",
                        "event_time": first_time,
                        "user_id": f"gw-u{user}",
                        "event_type": "follow",
                        "target_user_id": f"gw-u{friend}",
                    },
                )
            )
    logger.info(
        "gowalla: %d check-ins at named venues, %d at unnamed venues skipped, %d follows",
        checkin_count,
        int((in_window & ~is_named).sum()),
        len(events) - checkin_count,
    )

    items = [
        {"item_id": f"gw-v{vid}", "title": name, "updated_at": first_time}
        for vid, name in names.items()
    ]
    return events, items


def _rows(frame: Any, columns: Sequence[str]) -> Iterable[tuple[Any, ...]]:
    """Rows of a DataFrame as plain Python tuples."""
    # Column-wise tolist() is several times faster than itertuples() on Arrow-backed strings.
    return zip(*(frame[column].tolist() for column in columns), strict=True)


def _retail_time(
    local_time: str, start: datetime, end: datetime, shift: timedelta
) -> tuple[datetime, str] | None:
    """Shifted UTC instant and written event_time of a London wall-clock time, None if outside."""
    # fold=0 resolves the repeated autumn hour to BST; the shop never trades at 1-2 am, so the
    # choice only has to be deterministic.
    instant = datetime.fromisoformat(local_time).replace(tzinfo=_LONDON).astimezone(UTC)
    if not start <= instant < end:
        return None
    at = instant + shift
    # Written in London time with its offset, as the shop recorded it; the pipeline converts
    # to UTC.
    return at, at.astimezone(_LONDON).isoformat(timespec="seconds")


def _encode(records: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> bytes:
    lines = (
        _JSON.encode({key: record[key] for key in fields if key in record}) + "\n"
        for record in records
    )
    return "".join(lines).encode("utf-8")


def _partition_path(landing_dir: Path, kind: str, hour: datetime) -> Path:
    return landing_dir / kind / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}" / PART_NAME


def _plan_events(landing_dir: Path, events: Sequence[_Event]) -> list[_Partition]:
    by_hour: dict[datetime, list[_Event]] = defaultdict(list)
    for event in events:
        by_hour[_floor_hour(event.at)].append(event)
    parts = []
    for hour in sorted(by_hour):
        batch = sorted(by_hour[hour], key=lambda event: (event.at, event.record["event_id"]))
        parts.append(
            _Partition(
                kind="events",
                path=_partition_path(landing_dir, "events", hour),
                content=_encode((event.record for event in batch), EVENT_FIELDS),
            )
        )
    return parts


def _plan_items(
    landing_dir: Path, first_hour: datetime, items: Sequence[dict[str, Any]]
) -> list[_Partition]:
    if not items:
        return []
    ordered = sorted(items, key=lambda item: item["item_id"])
    return [
        _Partition(
            kind="items",
            path=_partition_path(landing_dir, "items", first_hour),
            content=_encode(ordered, ITEM_FIELDS),
        )
    ]


def _check_existing(parts: Sequence[_Partition]) -> tuple[list[_Partition], list[_Partition]]:
    """Split planned partitions into (to write, already identical); raise on any conflict."""
    todo, unchanged, conflicts = [], [], []
    for part in parts:
        if not part.path.exists():
            todo.append(part)
        elif part.path.read_bytes() == part.content:
            unchanged.append(part)
        else:
            conflicts.append(part.path)
    if conflicts:
        raise PartitionConflictError(conflicts)
    return todo, unchanged


def _write_all(parts: Sequence[_Partition]) -> None:
    total = len(parts)
    # Lines only for long replays (a year of retail is thousands of partitions): every 10 %.
    every = math.ceil(total / 10) if total >= 50 else 0
    with progress.track("replay", total, "partitions written", every, logger.info) as bar:
        for part in bar.iterate(parts):
            write_atomic(part.path, part.content)


def write_atomic(path: Path, content: bytes) -> None:
    """Write via a hidden temp file in the same folder, so readers never see half a partition."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The ".tmp" suffix keeps a crashed write out of the pipeline's "*.jsonl" glob.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_time(text: str) -> datetime:
    try:
        return _as_utc(datetime.fromisoformat(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2015-07-02T11:00Z)"
        ) from error


def _parse_shift_target(text: str) -> datetime:
    return datetime.now(UTC) if text == "now" else _parse_time(text)


def _build_parser() -> argparse.ArgumentParser:
    windows = "; ".join(
        f"{name}: {_format_utc(start)} .. {_format_utc(end)}"
        for name, (start, end) in DEFAULT_WINDOWS.items()
    )
    parser = argparse.ArgumentParser(
        prog="interest-replay",
        description=(
            "Replay a window of a real sample dataset (MovieLens, Online Retail II or Gowalla "
            f"NYC, read from ${SHARED_DATA_ENV} or <repo>/../shared/data) into the landing zone "
            "as hourly partitions events/date=YYYY-MM-DD/hour=HH/part-00000.jsonl, plus the "
            "window's items in the items partition of its first hour. Re-running is a no-op; an "
            "existing partition with different content is never overwritten."
        ),
        epilog=(
            f"Default windows (48 h, UTC): {windows}. Times are ISO 8601; without an offset "
            "they mean UTC. Exit status: 0 ok, 1 partition conflict or missing data, "
            "2 bad arguments."
        ),
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset to replay")
    parser.add_argument(
        "--start",
        type=_parse_time,
        help="window start, on the hour, in UTC of the original data times (default: the "
        "dataset's window below)",
    )
    parser.add_argument(
        "--end", type=_parse_time, help="window end, exclusive (required with --start)"
    )
    parser.add_argument(
        "--shift-end-to",
        type=_parse_shift_target,
        metavar="TIME",
        help="shift all times by whole hours so the window ends at TIME (an ISO time or 'now', "
        "rounded down to the hour), to make old data look recent",
    )
    parser.add_argument(
        "--landing-dir",
        type=Path,
        help="landing zone root (default: $INTEREST_LANDING_DIR or <repo>/.local/landing)",
    )
    parser.add_argument(
        "--shared-data-dir",
        type=Path,
        help=f"folder with the datasets (default: ${SHARED_DATA_ENV} or <repo>/../shared/data)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point ``interest-replay``.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 1 on a partition conflict or missing data, 2 on bad arguments.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if (args.start is None) != (args.end is None):
        return _usage_error(parser, "--start and --end go together")
    start, end = (
        (args.start, args.end) if args.start is not None else DEFAULT_WINDOWS[args.dataset]
    )
    try:
        check_window(args.dataset, start, end)
    except ValueError as error:
        return _usage_error(parser, str(error))

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    landing_dir = args.landing_dir or get_settings().landing_dir
    try:
        summary = replay(
            args.dataset,
            start,
            end,
            landing_dir,
            shift_end_to=args.shift_end_to,
            shared_data_dir=args.shared_data_dir,
        )
    except (PartitionConflictError, FileNotFoundError) as error:
        print(f"interest-replay: error: {error}", file=sys.stderr)
        return 1

    shift = summary.start - _as_utc(start)
    shifted = f", shifted by {shift // _HOUR:+d} h" if shift else ""
    print(
        f"Replayed {summary.dataset} into {landing_dir}: window "
        f"[{_format_utc(summary.start)}, {_format_utc(summary.end)}) of {summary.hours} hours"
        f"{shifted}. {summary.events} events in "
        f"{summary.event_partitions_written + summary.event_partitions_unchanged} hourly "
        f"partitions ({summary.event_partitions_written} written, "
        f"{summary.event_partitions_unchanged} unchanged); {summary.items} items in "
        f"{summary.item_partitions_written + summary.item_partitions_unchanged} partition(s) "
        f"({summary.item_partitions_written} written, {summary.item_partitions_unchanged} "
        "unchanged)."
    )
    return 0


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
