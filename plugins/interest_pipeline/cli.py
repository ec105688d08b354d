"""``interest``: the common questions about the warehouse, from the command line.

Subcommands: ``recs`` (a user's recommendations as of a time), ``profile`` (what a user's
interest vector points at), ``diff`` (what changed between two versions), ``runs`` (pipeline
health per interval), ``quarantine`` (rejected lines) and ``sql`` (read-only SQL).

Each command is a function that takes a read-only connection and returns plain data (dicts
and lists); printing is separate, as ``rich`` tables (plain text, the same bytes for the same
data, unless stdout is a terminal: see :func:`render`) or, with ``--json``, the same data as
JSON. Arguments stay with argparse: one-line usage errors, global options before or after the
subcommand.
The warehouse is opened through :func:`interest_pipeline.snapshot.open_for_reading`, so a
command run while the pipeline writes reads the last published snapshot and says so on stderr.
The embedding model is never loaded: only its id is resolved, from the warehouse's registry of
the model being served (:func:`interest_pipeline.rebuild.serving_model`; INTEREST_MODEL on a
warehouse never rebuilt), read on the same connection as the data, so a command shows the
model that the warehouse or snapshot it reads serves. ``interest rebuild`` (the second command
that writes) recomputes everything under another model and switches to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    from rich.console import RenderableType

log = logging.getLogger(__name__)

PROG = "interest"
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SQL = 4

# The profile's categories and tags are read off this many nearest items.
THEME_ITEMS = 50
DIFF_NEAREST = 10

EXIT_CODES_HELP = """\
exit status:
  0  ok
  1  not found: unknown user, a time before the user's first version, no rows
  2  usage error
  3  no warehouse yet, or it is busy and no snapshot has been published
  4  SQL error in `interest sql`

Times are ISO 8601 ("2010-11-10T12:00", "2010-11-10 12:00", "2010-11-10T12:00Z",
"2010-11-10T13:00+01:00"); without an offset they mean UTC."""


class CliError(Exception):
    """An error reported as one line on stderr, with the exit status to return."""

    exit_code = EXIT_NOT_FOUND

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NotFoundError(CliError):
    """The user, version or rows asked for do not exist (exit status 1)."""


# ---------------------------------------------------------------------------------------------
# Commands: a read-only connection in, plain data out.
# ---------------------------------------------------------------------------------------------


def get_recommendations(
    con: duckdb.DuckDBPyConnection,
    user_id: str,
    model_id: str,
    as_of: datetime | None = None,
    n: int = 10,
    new_visitor: bool = False,
) -> dict[str, Any]:
    """The user's list in force at ``as_of`` (default: the latest): written with the user's
    newest version or by a later daily refresh. ``new_visitor``: the list served to users
    with no history instead.

    Raises:
        NotFoundError: Unknown user (a new visitor: the message says how to see their list),
            no version by then, or no list (no item scored positive).
    """
    if new_visitor:
        return get_new_visitor_list(con, user_id, model_id, as_of, n)
    try:
        version = _version(con, user_id, model_id, as_of)
    except NotFoundError as error:
        if str(error).startswith("unknown user"):
            raise NotFoundError(
                f"unknown user {user_id!r}: a new visitor, with no history yet; "
                "--new-visitor shows the list served to new visitors"
            ) from error
        raise
    version.pop("vector")
    rows = con.execute(
        """
        with list as (
            select max(as_of) as as_of from recommendations
            where user_id = $user and model_id = $model and as_of >= $version
                and as_of <= coalesce($at, 'infinity'::timestamp)
        )
        select
            recommendations.rank,
            recommendations.item_id,
            items.title,
            recommendations.score,
            recommendations.evidence,
            recommendations.as_of,
            recommendations.ranker_version
        from recommendations
        inner join list on recommendations.as_of = list.as_of
        left join items on recommendations.item_id = items.item_id
        where recommendations.user_id = $user
            and recommendations.model_id = $model
        order by recommendations.rank
        limit $n
        """,
        {"user": user_id, "model": model_id, "version": version["as_of"], "at": as_of, "n": n},
    ).fetchall()
    if not rows:
        raise NotFoundError(
            f"no recommendations for user {user_id!r} as of {version['as_of']}: "
            "no item scored positive"
        )
    recs = [
        {"rank": rank, "item_id": item, "title": title, "score": score,
         "evidence": json.loads(evidence)}
        for rank, item, title, score, evidence, _, _ in rows
    ]
    return {
        "user_id": user_id, "model_id": model_id, "new_user": False, **version,
        "list_as_of": rows[0][5], "ranker_version": rows[0][6], "recommendations": recs,
    }


def get_new_visitor_list(
    con: duckdb.DuckDBPyConnection,
    user_id: str,
    model_id: str,
    as_of: datetime | None = None,
    n: int = 10,
) -> dict[str, Any]:
    """The list served to visitors with no history, in force at ``as_of``: trending now."""
    from interest_pipeline.evidence import TRENDING_EVIDENCE
    from interest_pipeline.warehouse import table_exists

    if not table_exists(con, "new_user_recommendations"):
        raise NotFoundError("no new-visitor list yet: no run has written one")
    rows = con.execute(
        """
        with list as (
            select max(as_of) as as_of from new_user_recommendations
            where model_id = $model and as_of <= coalesce($at, 'infinity'::timestamp)
        )
        select lists.rank, lists.item_id, items.title, lists.score, lists.as_of,
            lists.ranker_version
        from new_user_recommendations as lists
        inner join list on lists.as_of = list.as_of
        left join items on lists.item_id = items.item_id
        where lists.model_id = $model
        order by lists.rank
        limit $n
        """,
        {"model": model_id, "at": as_of, "n": n},
    ).fetchall()
    if not rows:
        raise NotFoundError(f"no new-visitor list as of {as_of}")
    ((seen,),) = con.execute(
        "select count(*) from user_item_interactions where user_id = ?", [user_id]
    ).fetchall()
    recs = [
        {"rank": rank, "item_id": item, "title": title, "score": score,
         "evidence": [TRENDING_EVIDENCE]}
        for rank, item, title, score, _, _ in rows
    ]
    return {
        "user_id": user_id, "model_id": model_id, "new_user": True, "known_user": bool(seen),
        "list_as_of": rows[0][4], "ranker_version": rows[0][5], "recommendations": recs,
    }


def describe_profile(
    con: duckdb.DuckDBPyConnection,
    user_id: str,
    model_id: str,
    as_of: datetime | None = None,
    n: int = 10,
) -> dict[str, Any]:
    """What the user's version in force at ``as_of`` points at.

    Returns the version's counts plus: the ``n`` nearest items (cosine with the item
    documents), the categories and tags of the ``THEME_ITEMS`` nearest items weighted by
    similarity, and the ``n`` nearest of the user's own texts (query/tag texts and documents
    of items they interacted with) up to that version.
    """
    from interest_pipeline.social import follows_as_of

    version = _version(con, user_id, model_id, as_of)
    vector = _unit(version.pop("vector"))
    items, matrix = _item_matrix(con, model_id)
    sims = matrix @ vector
    return {
        "user_id": user_id,
        "model_id": model_id,
        **version,
        "nearest_items": _nearest(items, sims, n),
        "themes": _themes(items, sims, n),
        "nearest_texts": _nearest_texts(con, user_id, model_id, version["as_of"], vector, n),
        # The social dimension: whom the user follows in the graph as of the version, and
        # what the social component (their followees' interest) points at.
        "follows": [
            followee
            for _, followee in follows_as_of(con, version["as_of"] - timedelta(hours=1), user_id)
        ],
        "social": _social_side(con, user_id, model_id, version["as_of"], items, matrix, n),
    }


def _social_side(
    con: duckdb.DuckDBPyConnection,
    user_id: str,
    model_id: str,
    as_of: datetime,
    items: list[dict[str, Any]],
    matrix: np.ndarray,
    n: int,
) -> dict[str, Any] | None:
    """The social version in force at ``as_of`` (followees counted, nearest items), if any."""
    import pyarrow as pa

    from interest_pipeline.social import social_vectors_as_of

    con.register("_profile_user", pa.table({"user_id": [user_id]}))
    try:
        found = social_vectors_as_of(con, model_id, as_of, "_profile_user").get(user_id)
    finally:
        con.unregister("_profile_user")
    if found is None:
        return None
    vector, followees = found
    return {"followees": followees, "nearest_items": _nearest(items, matrix @ vector, n)}


def diff_versions(
    con: duckdb.DuckDBPyConnection,
    user_id: str,
    model_id: str,
    t1: datetime,
    t2: datetime,
) -> dict[str, Any]:
    """Compare the user's versions in force at ``t1`` and ``t2``.

    Returns both versions' counts, their cosine similarity, the items that entered or left
    the nearest ``DIFF_NEAREST``, and the user's events with ``event_at`` in
    ``(as_of1, as_of2]`` summarised by type.

    Raises:
        CliError: ``t1`` is after ``t2`` (usage error).
        NotFoundError: Unknown user or no version by ``t1``.
    """
    if t1 > t2:
        raise CliError(f"T1 ({t1}) is after T2 ({t2})", EXIT_USAGE)
    first = _version(con, user_id, model_id, t1)
    second = _version(con, user_id, model_id, t2)
    a = _unit(first.pop("vector"))
    b = _unit(second.pop("vector"))
    items, matrix = _item_matrix(con, model_id)
    before = _nearest(items, matrix @ a, DIFF_NEAREST)
    after = _nearest(items, matrix @ b, DIFF_NEAREST)
    ids_before = {row["item_id"] for row in before}
    ids_after = {row["item_id"] for row in after}
    events = con.execute(
        """
        select
            event_type,
            count(*) as events,
            count(distinct item_id) as items,
            sum(weight) as total_weight,
            min(event_at) as first_event_at,
            max(event_at) as last_event_at
        from user_item_interactions
        where user_id = ? and event_at > ? and event_at <= ?
        group by event_type
        order by events desc, event_type
        """,
        [user_id, first["as_of"], second["as_of"]],
    )
    return {
        "user_id": user_id,
        "model_id": model_id,
        "from": first,
        "to": second,
        "cosine_similarity": round(float(a @ b), 6),
        "event_count_change": second["event_count"] - first["event_count"],
        "entered_nearest": [row for row in after if row["item_id"] not in ids_before],
        "left_nearest": [row for row in before if row["item_id"] not in ids_after],
        "events_between": _dicts(events),
    }


RUN_COLUMNS = (
    ("interval_start", "interval_start"),
    ("events_in", "events"),
    ("duplicates", "dups"),
    ("quarantined", "quar"),
    ("users_updated", "users"),
    ("recommendations_written", "recs"),
    ("texts_embedded", "texts"),
    ("ingest_seconds", "ingest_s"),
    ("dbt_seconds", "dbt_s"),
    ("embed_seconds", "embed_s"),
    ("fold_seconds", "fold_s"),
    ("recommend_seconds", "rec_s"),
    ("model_id", "model_id"),
)


def list_runs(con: duckdb.DuckDBPyConnection, last: int = 24) -> list[dict[str, Any]]:
    """The ``last`` recorded intervals of ``pipeline_runs``, newest first.

    Raises:
        NotFoundError: No run has been recorded.
    """
    columns = ", ".join(key for key, _ in RUN_COLUMNS)
    rows = _dicts(
        con.execute(
            f"select {columns} from pipeline_runs order by interval_start desc limit ?", [last]
        )
    )
    if not rows:
        raise NotFoundError("no pipeline runs recorded yet")
    return rows


def list_quarantine(
    con: duckdb.DuckDBPyConnection, interval: datetime | None = None, last: int = 50
) -> list[dict[str, Any]]:
    """The ``last`` newest rejected lines and damaged files (line 0), optionally only of the
    interval containing a time.

    Raises:
        NotFoundError: No rejected lines (in that interval).
    """
    where = "where interval_start <= $at and $at < interval_end" if interval else ""
    params: dict[str, Any] = {"last": last}
    if interval:
        params["at"] = interval
    rows = _dicts(
        con.execute(
            f"""
            select interval_start, interval_end, source_kind, source_file, line_number,
                reason, raw_line
            from quarantine
            {where}
            order by interval_start desc, source_file, line_number
            limit $last
            """,
            params,
        )
    )
    if not rows:
        scope = f" in the interval containing {interval}" if interval else ""
        raise NotFoundError(f"no quarantined lines{scope}")
    return rows


def run_sql(con: duckdb.DuckDBPyConnection, query: str) -> list[dict[str, Any]]:
    """Run SQL on the read-only connection; the rows of its (last) result as dicts.

    Raises:
        CliError: DuckDB rejected the query, including any write (exit status 4).
    """
    import duckdb

    try:
        return _dicts(con.execute(query))
    except duckdb.Error as exc:
        raise CliError(_one_line(str(exc)), EXIT_SQL) from None


# ---------------------------------------------------------------------------------------------
# Helpers of the commands
# ---------------------------------------------------------------------------------------------


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    if cursor.description is None:
        return []
    names: list[str] = []
    seen: dict[str, int] = {}
    for name, *_ in cursor.description:
        # Duplicate output names (``select 1 as a, 2 as a``) would collide as dict keys.
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _version(
    con: duckdb.DuckDBPyConnection, user_id: str, model_id: str, at: datetime | None
) -> dict[str, Any]:
    """The newest version of the user with ``as_of <= at`` (any if ``at`` is None)."""
    bound = "and as_of <= $at" if at else ""
    params: dict[str, Any] = {"user": user_id, "model": model_id}
    if at:
        params["at"] = at
    rows = _dicts(
        con.execute(
            f"""
            select as_of, events_in_interval, event_count, last_event_at, vector
            from user_interest_vectors
            where user_id = $user and model_id = $model {bound}
            order by as_of desc
            limit 1
            """,
            params,
        )
    )
    if rows:
        return rows[0]
    # Aggregates return one row; fetchall, since a half-fetched result blocks the connection.
    ((first,),) = con.execute(
        "select min(as_of) from user_interest_vectors where user_id = ? and model_id = ?",
        [user_id, model_id],
    ).fetchall()
    if first is not None:
        raise NotFoundError(
            f"user {user_id!r} has no version as of {at}: the first is as of {first}"
        )
    ((seen,),) = con.execute(
        "select count(*) from user_item_interactions where user_id = ?", [user_id]
    ).fetchall()
    if seen:
        raise NotFoundError(f"user {user_id!r} has no interest vector for model {model_id!r}")
    raise NotFoundError(f"unknown user {user_id!r}")


def _unit(vectors: Any) -> np.ndarray:
    """Rows (or one vector) scaled to unit length, so dot products are cosines."""
    import numpy as np

    arr = np.asarray(vectors, dtype=np.float32)
    return arr / np.maximum(np.linalg.norm(arr, axis=-1, keepdims=True), 1e-12)


def _item_matrix(
    con: duckdb.DuckDBPyConnection, model_id: str
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Every item with an embedding for the model: its metadata and unit document vectors."""
    from interest_pipeline.warehouse import query_arrow, vectors_to_numpy

    table = query_arrow(
        con,
        """
        select item_documents.item_id, items.title, items.category, items.tags,
            text_embeddings.embedding
        from item_documents
        inner join text_embeddings
            on item_documents.text_hash = text_embeddings.text_hash
            and text_embeddings.model_id = ?
        left join items on item_documents.item_id = items.item_id
        order by item_documents.item_id
        """,
        [model_id],
    )
    meta = table.select(["item_id", "title", "category", "tags"]).to_pylist()
    return meta, _unit(vectors_to_numpy(table.column("embedding")))


def _nearest(items: list[dict[str, Any]], sims: np.ndarray, n: int) -> list[dict[str, Any]]:
    import numpy as np

    order = np.argsort(-sims, kind="stable")[:n]
    return [
        {"rank": rank, "item_id": items[j]["item_id"], "title": items[j]["title"],
         "similarity": round(float(sims[j]), 6)}
        for rank, j in enumerate(order, start=1)
    ]


def _themes(items: list[dict[str, Any]], sims: np.ndarray, n: int) -> list[dict[str, Any]]:
    """Categories and tags of the nearest items, each weighted by the summed similarity."""
    import numpy as np

    weights: dict[tuple[str, str], list[float]] = {}
    for j in np.argsort(-sims, kind="stable")[:THEME_ITEMS]:
        sim = float(sims[j])
        if sim <= 0:
            break
        labels = [("category", items[j]["category"])]
        labels += [("tag", tag) for tag in items[j]["tags"] or ()]
        for label in labels:
            if label[1]:
                entry = weights.setdefault(label, [0.0, 0])
                entry[0] += sim
                entry[1] += 1
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
    return [
        {"kind": kind, "name": name, "weight": round(weight, 6), "items": int(count)}
        for (kind, name), (weight, count) in ranked
    ]


def _nearest_texts(
    con: duckdb.DuckDBPyConnection,
    user_id: str,
    model_id: str,
    as_of: datetime,
    vector: np.ndarray,
    n: int,
) -> list[dict[str, Any]]:
    """The user's own texts folded into the version, by cosine with it."""
    import numpy as np

    from interest_pipeline.warehouse import query_arrow, vectors_to_numpy

    # interval_start < as_of: exactly the events the version ``as_of`` was folded from
    # (a late event lands in a later interval, so event_at would be the wrong cut).
    table = query_arrow(
        con,
        """
        with events as (
            select event_type, item_id, query_text
            from user_item_interactions
            where user_id = $user and interval_start < $as_of
        ),
        texts as (
            select
                'query' as source,
                null::varchar as item_id,
                events.query_text as text,
                sha256(events.query_text) as text_hash,
                events.event_type
            from events
            where events.query_text is not null
            union all
            select
                'item' as source,
                events.item_id,
                coalesce(items.title, item_documents.document) as text,
                item_documents.text_hash,
                events.event_type
            from events
            inner join item_documents on events.item_id = item_documents.item_id
            left join items on events.item_id = items.item_id
        )
        select
            texts.source,
            texts.item_id,
            texts.text,
            count(*) as events,
            list(distinct texts.event_type order by texts.event_type) as event_types,
            any_value(text_embeddings.embedding) as embedding
        from texts
        inner join text_embeddings
            on texts.text_hash = text_embeddings.text_hash
            and text_embeddings.model_id = $model
        group by texts.source, texts.item_id, texts.text
        order by texts.source, texts.item_id, texts.text
        """,
        {"user": user_id, "as_of": as_of, "model": model_id},
    )
    if table.num_rows == 0:
        return []
    sims = _unit(vectors_to_numpy(table.column("embedding"))) @ vector
    meta = table.drop_columns(["embedding"]).to_pylist()
    return [
        {**meta[j], "similarity": round(float(sims[j]), 6)}
        for j in np.argsort(-sims, kind="stable")[:n]
    ]


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]] | None = None,
    max_width: int = 60,
    float_format: str = ".3f",
    null: str = "-",
) -> RenderableType:
    """Rows as a rich table: header, rule, one line per row, numeric columns right-aligned.

    Args:
        rows: The rows; missing keys print as ``null``.
        columns: (key, header) pairs to show, in order; default: every key of the first row.
        max_width: Longer cells are cut to this width, ending in "…".
        float_format: Format spec for floats.
        null: What None prints as.

    Returns:
        The table, or the text "(no rows)" if there are none; print it with :func:`render`.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not rows:
        return Text("(no rows)")
    columns = columns or [(key, key) for key in rows[0]]
    # Text cells, never markup: a raw line or title may hold "[...]".
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for key, header in columns:
        numeric = all(_is_number(row.get(key)) or row.get(key) is None for row in rows)
        out.add_column(header, justify="right" if numeric else "left", max_width=max_width,
                       no_wrap=True, overflow="ellipsis")
    for row in rows:
        out.add_row(*(Text(_cell(row.get(key), float_format, null)) for key, _ in columns))
    return out


def render(renderable: RenderableType) -> str:
    """A table (or any rich renderable) as the text to print, without trailing spaces.

    Colour on a terminal only; a pipe, a file or a test capturing stdout gets plain text. Always
    at the table's own width, not the terminal's: rich would fit a wide table to a narrow
    terminal by cutting every column, numbers too. So a row stays one line with each number
    whole, and the same data prints as the same bytes everywhere (the README's examples).
    """
    from rich.console import Console
    from rich.measure import Measurement

    plain = {} if sys.stdout.isatty() else {"force_terminal": False, "color_system": None}
    console = Console(markup=False, emoji=False, highlight=False, **plain)
    console.width = Measurement.get(
        console, console.options.update_width(1_000_000), renderable
    ).maximum
    with console.capture() as captured:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in captured.get().rstrip("\n").split("\n"))


def _print_table(rows: Sequence[dict[str, Any]], *args: Any, **kwargs: Any) -> None:
    """Print :func:`table` of the rows (same arguments) to stdout."""
    print(render(table(rows, *args, **kwargs)))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _cell(value: Any, float_format: str, null: str) -> str:
    if value is None:
        text = null
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = format(value, float_format)
    elif isinstance(value, datetime):
        text = value.isoformat(sep=" ")
    elif isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=_json_default, ensure_ascii=False)
    else:
        text = str(value)
    # Raw lines may hold tabs and newlines; escaped, one row stays one line.
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def _json_default(value: Any) -> Any:
    """JSON for what DuckDB returns beyond JSON's types (times, decimals, blobs, numpy)."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)


def to_json(data: Any) -> str:
    """Data as indented JSON; times become ISO strings and decimals numbers."""
    return json.dumps(data, indent=2, default=_json_default, ensure_ascii=False)


def _because(evidence: list[dict[str, Any]]) -> str:
    return "; ".join(
        e["text"] if e["event_type"] == "social" else f"{e['event_type']} '{e['text']}'"
        for e in evidence
    )


def _version_line(data: dict[str, Any]) -> str:
    return (
        f"as of {data['as_of']}: event_count {data['event_count']} "
        f"({data['events_in_interval']} in that hour), last at {data['last_event_at']}"
    )


def print_recommendations(data: dict[str, Any]) -> None:
    """Human output of ``recs``."""
    if data["new_user"]:
        known = "known, but shown" if data["known_user"] else "new (no history):"
        print(f"user {data['user_id']} is {known} the list served to new visitors, "
              f"as of {data['list_as_of']}")
    else:
        print(f"user {data['user_id']}, version {_version_line(data)}")
        if data["list_as_of"] != data["as_of"]:
            print(f"list re-scored as of {data['list_as_of']}")
    print(f"model {data['model_id']}, ranker {data['ranker_version'] or 'default'}\n")
    rows = [{**rec, "because": _because(rec["evidence"])} for rec in data["recommendations"]]
    columns = [("rank", "rank"), ("score", "score"), ("item_id", "item_id"),
               ("title", "title"), ("because", "because")]
    _print_table(rows, columns, max_width=90)


_NEAREST_COLUMNS = [("rank", "rank"), ("similarity", "similarity"), ("item_id", "item_id"),
                    ("title", "title")]


def print_profile(data: dict[str, Any]) -> None:
    """Human output of ``profile``."""
    print(f"user {data['user_id']}, version {_version_line(data)}")
    print(f"model {data['model_id']}\n")
    print("nearest items")
    _print_table(data["nearest_items"], _NEAREST_COLUMNS)
    print(f"\ncategories and tags of the {THEME_ITEMS} nearest items, weighted by similarity")
    if data["themes"]:
        _print_table(data["themes"])
    else:
        print("(none: the nearest items carry no category or tags)")
    print("\nnearest of the user's own texts (queries, tags, items interacted with)")
    rows = [{**row, "event_types": ",".join(row["event_types"])} for row in data["nearest_texts"]]
    columns = [("similarity", "similarity"), ("source", "source"), ("item_id", "item_id"),
               ("text", "text"), ("events", "events"), ("event_types", "event_types")]
    _print_table(rows, columns)
    if data.get("follows"):
        shown = ", ".join(data["follows"][:10])
        more = f" and {len(data['follows']) - 10} more" if len(data["follows"]) > 10 else ""
        noun = "person" if len(data["follows"]) == 1 else "people"
        print(f"\nfollows {len(data['follows'])} {noun}: {shown}{more}")
    if data.get("social"):
        people = data["social"]["followees"]
        noun = "person" if people == 1 else "people"
        print(f"\nwhat the {people} {noun} followed are into (the social side of the interest)")
        _print_table(data["social"]["nearest_items"][:5], _NEAREST_COLUMNS)


def print_diff(data: dict[str, Any]) -> None:
    """Human output of ``diff``."""
    a, b = data["from"], data["to"]
    print(f"user {data['user_id']}, model {data['model_id']}")
    print(f"  from version {_version_line(a)}")
    print(f"  to   version {_version_line(b)}")
    print(f"cosine similarity: {data['cosine_similarity']:.4f}")
    print(
        f"event_count: {a['event_count']} -> {b['event_count']} "
        f"({data['event_count_change']:+d})\n"
    )
    print(f"entered the nearest {DIFF_NEAREST} items (rank as of {b['as_of']})")
    _print_table(data["entered_nearest"], _NEAREST_COLUMNS)
    print(f"\nleft the nearest {DIFF_NEAREST} items (rank as of {a['as_of']})")
    _print_table(data["left_nearest"], _NEAREST_COLUMNS)
    print(f"\nevents with event_at in ({a['as_of']}, {b['as_of']}]")
    _print_table(data["events_between"])


def print_runs(rows: list[dict[str, Any]]) -> None:
    """Human output of ``runs``."""
    _print_table(rows, RUN_COLUMNS)


def print_quarantine(rows: list[dict[str, Any]]) -> None:
    """Human output of ``quarantine``: raw lines cut to fit; ``--json`` has them whole.

    A file-level row (line 0: a part file that could not be read whole) shows as
    ``file (whole file)`` with no raw line.
    """
    shown = [
        {
            **row,
            "where": f"{row['source_file']}:{row['line_number']}"
            if row["line_number"]
            else f"{row['source_file']} (whole file)",
            "raw_line": row["raw_line"] or "",
        }
        for row in rows
    ]
    columns = [("interval_start", "interval_start"), ("where", "file:line"),
               ("reason", "reason"), ("raw_line", "raw_line")]
    _print_table(shown, columns, max_width=70)


def print_sql(rows: list[dict[str, Any]]) -> None:
    """Human output of ``sql``."""
    _print_table(rows, float_format=".6g", null="NULL")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as naive UTC (the warehouse's convention); no offset means UTC."""
    from interest_pipeline.stages import to_utc_naive

    try:
        return to_utc_naive(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO time: {text!r} (e.g. 2010-11-10T12:00 or '2010-11-10 12:00Z')"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after the subcommand.

    On the subcommands their defaults are SUPPRESS, so an option given before the subcommand
    is not reset by the subcommand's parser.
    """
    from interest_pipeline.config import get_settings

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--warehouse",
        type=Path,
        metavar="PATH",
        default=default(None),
        help=f"DuckDB warehouse to read (default: {get_settings().warehouse_path})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the same data as JSON (for scripts)",
    )
    parser.add_argument(
        "--model-id",
        metavar="ID",
        default=default(None),
        help="model whose vectors to read (default: the model being served: the last "
        "`interest rebuild`'s, else INTEREST_MODEL's id)",
    )


def _recs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="user_id, e.g. or-c17894")
    parser.add_argument("--as-of", type=parse_time, metavar="T",
                        help="use the version in force at T (default: the latest)")
    parser.add_argument("-n", type=_positive_int, default=10, help="how many (default: 10)")
    parser.add_argument("--new-visitor", action="store_true",
                        help="show the list served to users with no history (trending now)")
    parser.set_defaults(
        needs_model=True,
        fetch=lambda con, a: get_recommendations(
            con, a.user, a.model_id, a.as_of, a.n, a.new_visitor
        ),
        render=print_recommendations,
    )


def _profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="user_id, e.g. or-c17894")
    parser.add_argument("--as-of", type=parse_time, metavar="T",
                        help="use the version in force at T (default: the latest)")
    parser.add_argument("-n", type=_positive_int, default=10,
                        help="rows per section (default: 10)")
    parser.set_defaults(
        needs_model=True,
        fetch=lambda con, a: describe_profile(con, a.user, a.model_id, a.as_of, a.n),
        render=print_profile,
    )


def _diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="user_id, e.g. or-c17894")
    parser.add_argument("t1", type=parse_time, metavar="T1", help="the earlier time")
    parser.add_argument("t2", type=parse_time, metavar="T2", help="the later time")
    parser.set_defaults(
        needs_model=True,
        fetch=lambda con, a: diff_versions(con, a.user, a.model_id, a.t1, a.t2),
        render=print_diff,
    )


def _runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--last", type=_positive_int, default=24, metavar="N",
                        help="how many intervals (default: 24)")
    parser.set_defaults(fetch=lambda con, a: list_runs(con, a.last), render=print_runs)


def _quarantine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=parse_time, metavar="T",
                        help="only the hourly interval containing T")
    parser.add_argument("--last", type=_positive_int, default=50, metavar="N",
                        help="at most the N newest lines (default: 50)")
    parser.set_defaults(
        fetch=lambda con, a: list_quarantine(con, a.interval, a.last), render=print_quarantine
    )


def _sql_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", metavar="QUERY", help="SQL; the connection is read-only")
    parser.set_defaults(fetch=lambda con, a: run_sql(con, a.query), render=print_sql)


def _erasures_arguments(parser: argparse.ArgumentParser) -> None:
    from interest_pipeline.erasure import list_erasures

    parser.set_defaults(fetch=lambda con, a: list_erasures(con), render=print_erasures)


def print_erasures(rows: list[dict[str, Any]]) -> None:
    """Human output of ``erasures``: the registry, newest first (hashes, never ids)."""
    if not rows:
        print("no erasures recorded")
        return
    shown = [
        {**row, "rows": sum(json.loads(row["rows_deleted"]).values()),
         "user": row["user_hash"][:16] + "…"}
        for row in rows
    ]
    columns = [("completed_at", "completed_at"), ("user", "user (salted sha256)"),
               ("rows", "rows deleted"), ("landing_lines_purged", "landing purged"),
               ("reason", "reason")]
    _print_table(shown, columns, null="-")


# (name, one-line summary, example, function adding its arguments)
_COMMANDS: tuple[tuple[str, str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("recs", "a user's recommendations (rank, item, score, evidence) as of a time",
     "interest recs or-c17894 --as-of '2010-11-10 12:00' -n 5",
     _recs_arguments),
    ("profile", "what a user is into: nearest items, categories/tags, nearest own texts",
     "interest profile or-c17894 --as-of 2010-11-10T11:00Z",
     _profile_arguments),
    ("diff", "what changed between the versions in force at T1 and T2",
     "interest diff or-c14911 '2010-11-10 16:00' '2010-11-11 12:00'",
     _diff_arguments),
    ("runs", "pipeline health per interval, newest first",
     "interest runs --last 5",
     _runs_arguments),
    ("quarantine", "rejected input lines with file:line, reason and the raw line",
     "interest quarantine --interval '2010-11-10 10:30' --json",
     _quarantine_arguments),
    ("sql", "run read-only SQL on the warehouse alone (writes, files, attach, set: exit 4)",
     "interest sql \"select user_id, count(*) from user_interest_vectors group by 1\"",
     _sql_arguments),
    ("erasures", "users forgotten (`interest forget USER…`): when, why, rows deleted",
     "interest erasures --json",
     _erasures_arguments),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``interest`` argument parser with its subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter
    examples = "\n".join(f"  {example}" for _, _, example, _ in _COMMANDS)
    parser = _Parser(
        prog=PROG,
        description="Query the interest-pipeline warehouse (read-only).\nWhile the pipeline "
        "writes, commands read the snapshot published by its last run and say so on stderr.\n"
        "`interest eval --help`: offline evaluation of the model against baselines.\n"
        "`interest serve --help`: the same reads over HTTP (FastAPI), from the snapshot.\n"
        "`interest forget --help`: erase users everywhere (a command that writes).\n"
        "`interest rebuild --help`: recompute everything under another model, then switch.",
        epilog=f"examples:\n{examples}\n\n{EXIT_CODES_HELP}",
        formatter_class=formatter,
    )
    _add_global_options(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary, example, add_arguments in _COMMANDS:
        sub = subparsers.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"example:\n  {example}\n\n{EXIT_CODES_HELP}",
            formatter_class=formatter,
        )
        sub.set_defaults(needs_model=False)
        add_arguments(sub)
        _add_global_options(sub, suppress=True)
    return parser


def _resolve_model_id(con: duckdb.DuckDBPyConnection) -> str:
    """The id of the model being served by the warehouse (or snapshot) ``con`` reads."""
    from interest_pipeline.config import get_settings
    from interest_pipeline.rebuild import serving_model

    try:
        return serving_model(con, get_settings())[1]
    except RuntimeError as exc:
        raise CliError(f"{_one_line(str(exc))} (or pass --model-id)", EXIT_USAGE) from None


def _fetch(args: argparse.Namespace) -> Any:
    """Open the warehouse for reading and run the command's query function."""
    import duckdb

    from interest_pipeline.config import get_settings
    from interest_pipeline.snapshot import open_for_reading

    path = args.warehouse or get_settings().warehouse_path
    try:
        con, note = open_for_reading(path)
    except duckdb.Error as exc:
        raise CliError(f"cannot open {path}: {_one_line(str(exc))}", EXIT_UNAVAILABLE) from None
    if note:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    try:
        if args.needs_model and not args.model_id:
            args.model_id = _resolve_model_id(con)
        return args.fetch(con, args)
    except duckdb.Error as exc:
        # A half-built warehouse (first run still in dbt) lacks tables the commands read.
        raise CliError(
            f"cannot read {path}: {_one_line(str(exc))}", EXIT_UNAVAILABLE
        ) from None
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``interest``.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status (see ``interest --help``).
    """
    from interest_pipeline.snapshot import WarehouseUnavailableError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        # Offline evaluation builds its own scratch warehouse; it has its own options.
        from interest_pipeline import eval_cli

        return eval_cli.main(argv[1:])
    if argv[:1] == ["forget"]:
        # The one write command: erase users (interest_pipeline.erasure), its own options.
        from interest_pipeline import erasure

        return erasure.main(argv[1:])
    if argv[:1] == ["rebuild"]:
        # The other write command: a model change (interest_pipeline.rebuild), its own options.
        from interest_pipeline import rebuild

        return rebuild.main(argv[1:])
    if argv[:1] == ["serve"]:
        # The HTTP API (interest_pipeline.api): a long-running server with its own options.
        from interest_pipeline import api

        return api.main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        data = _fetch(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except WarehouseUnavailableError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        if args.json:
            print(to_json(data))
        else:
            args.render(data)
        sys.stdout.flush()
    except BrokenPipeError:
        # `interest sql … | head`: the reader left; exit quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
