"""Builders for unit tests: hand-made marts and rows with the columns dbt gives them."""

from __future__ import annotations

from datetime import datetime


def add_item(con, item_id: str, title: str) -> None:
    con.execute("insert into items values (?, ?)", [item_id, title])
    con.execute(
        "insert into item_documents values (?, ?, sha256(?))", [item_id, title, title]
    )


def add_event(
    con,
    event_id: str,
    user_id: str,
    event_type: str,
    event_at: datetime,
    interval_start: datetime,
    item_id: str | None = None,
    query_text: str | None = None,
    weight: float = 1.0,
) -> None:
    con.execute(
        "insert into user_item_interactions values (?, ?, ?, ?, ?, null, null, ?, ?, ?)",
        [event_id, user_id, event_type, item_id, query_text, event_at, weight, interval_start],
    )


def table_contents(con, table: str) -> list[tuple]:
    """Every row of a table, sorted, for before/after comparisons."""
    return sorted(con.execute(f"select * from {table}").fetchall(), key=repr)


def add_follow(
    con,
    event_id: str,
    user_id: str,
    target_user_id: str,
    event_at: datetime,
    interval_start: datetime,
    event_type: str = "follow",
) -> None:
    """A follow (or unfollow) event as user_item_interactions holds it (weight of the seed)."""
    con.execute(
        "insert into user_item_interactions values (?, ?, ?, null, null, ?, null, ?, ?, ?)",
        [event_id, user_id, event_type, target_user_id, event_at,
         1.0 if event_type == "follow" else 0.0, interval_start],
    )


def user_with_most_versions(path) -> tuple[str, list[datetime]]:
    """The recommended user with the most interest versions in a warehouse file, and the
    as_of of each version, oldest first (what the CLI and API fixtures time-travel over)."""
    from interest_pipeline.warehouse import connect

    con = connect(path, read_only=True)
    try:
        ((user,),) = con.execute(
            """
            select user_id from user_interest_vectors
            where user_id in (select user_id from recommendations)
            group by user_id order by count(*) desc, max(event_count) desc, user_id limit 1
            """
        ).fetchall()
        versions = [r[0] for r in con.execute(
            "select as_of from user_interest_vectors where user_id = ? order by 1", [user]
        ).fetchall()]
    finally:
        con.close()
    return user, versions
