"""The social dimension: whom a user follows, as of any time, and what those people engage with.

The follow graph is a state that changes: ``follow`` and ``unfollow`` events (both carry
``target_user_id``) are kept in ``user_item_interactions`` like every event, and the graph as of
an interval is, per (user, followee), the newest of those events known by then: an edge exists
when it is a ``follow``. Time travel therefore comes for free: the list as of T uses the graph
as of T.

The social signal of item j for user u (the ``social`` feature of the ranker) is the number of
people u follows who engaged positively with j, each counted with the decay of their latest such
event (``2 ** (-age / half_life)``, the fold's half-life), scaled to [0, 1] by u's best item. Its
weight is fitted with the other features' (zero until a fit adopts it), and it shows in the
evidence as "N people you follow engaged with it".
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb
    import numpy as np

SOCIAL_EVENT_TYPES = ("follow", "unfollow")


def follows_sql(only: str = "true") -> str:
    """SQL of the follow graph known at the interval starting at ``$interval_start``:
    (user_id, followee) rows. ``only`` is a condition on the follow events' ``user_id`` /
    ``target_user_id`` applied before the newest event per edge is picked (both are part of
    the edge, so the result is the same as filtering after), so that the cost follows the
    edges asked for, not the graph."""
    return f"""
select user_id, target_user_id as followee
from (
    select
        user_id,
        target_user_id,
        event_type,
        row_number() over (
            partition by user_id, target_user_id
            order by event_at desc, interval_start desc, event_id desc
        ) as newest
    from user_item_interactions
    where event_type in ('follow', 'unfollow')
        and interval_start <= $interval_start
        and user_id <> target_user_id
        and ({only})
)
where newest = 1 and event_type = 'follow'
"""


def follows_as_of(
    con: duckdb.DuckDBPyConnection, interval_start: datetime, user_id: str | None = None
) -> list[tuple[str, str]]:
    """The edges (user, followee) of the graph known at the interval starting then (of one
    user, if given)."""
    if user_id is None:
        return con.execute(
            follows_sql() + " order by 1, 2", {"interval_start": interval_start}
        ).fetchall()
    return con.execute(
        follows_sql("user_id = $user") + " order by 1, 2",
        {"interval_start": interval_start, "user": user_id},
    ).fetchall()


def social_signal(
    con: duckdb.DuckDBPyConnection,
    interval_start: datetime,
    interval_end: datetime,
    half_life_hours: float,
    n_items: int,
) -> tuple[dict[str, np.ndarray], dict[str, dict[int, int]]]:
    """Per scored user: the social feature over the catalogue, and per item how many of the
    people they follow engaged with it (for the evidence).

    Reads ``_rec_users`` (the scored users) and ``_rec_engaged`` (everyone's positive
    (user, item position j, latest event) pairs) that the recommend stage prepared.
    """
    import numpy as np

    rows = con.execute(
        f"""
        with follows as ({follows_sql("user_id in (select user_id from _rec_users)")})
        select
            follows.user_id,
            engaged.j,
            count(*) as people,
            sum(pow(2.0, -greatest(date_diff('second', engaged.last_event_at, $end), 0)
                / 3600.0 / $half_life)) as signal
        from follows
        inner join _rec_engaged as engaged on engaged.user_id = follows.followee
        group by 1, 2
        order by 1, 2
        """,
        {"interval_start": interval_start, "end": interval_end, "half_life": half_life_hours},
    ).fetchall()
    scores: dict[str, np.ndarray] = {}
    people: dict[str, dict[int, int]] = {}
    for user, j, count, signal in rows:
        if user not in scores:
            scores[user] = np.zeros(n_items, dtype=np.float64)
            people[user] = {}
        scores[user][j] = signal
        people[user][j] = count
    for row in scores.values():
        top = row.max()
        if top > 0:
            row /= top
    return scores, people


def social_evidence(people: int, score: float) -> dict:
    """The evidence entry for an item that ``people`` followees engaged with."""
    noun = "person" if people == 1 else "people"
    return {
        "event_type": "social",
        "item_id": None,
        "text": f"{people} {noun} you follow engaged with it",
        "people": people,
        "contribution": round(float(score), 4),
    }
