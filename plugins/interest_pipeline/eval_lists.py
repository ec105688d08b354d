"""A rescore that writes only the lists an evaluation reads.

An evaluation reads, at each cut-off T, the list in force of each user it evaluates: that
user's newest list with ``as_of <= T`` (:func:`interest_pipeline.evaluation.model_lists`),
and the newest new-visitor list for the users without one. After a scoring change, an
``interest eval`` over four weeks of retail re-wrote about 15,000 lists in 274 hours to be
read through 788 of them in 70 hours. :func:`rescore_for_cutoffs` writes only those:

1. remove the window's lists, so no list of the old scoring is left to be read;
2. per cut-off T and user u it may evaluate (:func:`~interest_pipeline.evaluation.
   evaluated_users`): the last hour ending by T at which u is due a list
   (:func:`~interest_pipeline.recommendations.users_due`); those lists are written, hour by
   hour in order, with the new-visitor list of the last scored hour ending by each T, and
   the rankers trained at every hour they are due, as in a full rescore (the caller folds
   the hours first when the vectors change);
3. a user can be due a list and get none (e.g. their latest events are all cancellations):
   then the list in force at T is their newest non-empty one before it, so a second pass
   writes their lists of every earlier hour due at once (one hour at a time took eleven
   passes on retail: such a user's earlier lists are mostly empty too).

A user's list depends only on the data, the vectors, the ranker in force and the catalogue
statistics of its hour, never on who else is scored then (:class:`~interest_pipeline.
recommendations._Context` sums each user's several interests in the same order either way),
so every list read is the one a full rescore writes, and the report is the same.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from interest_pipeline import progress
from interest_pipeline.config import Settings

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)


def rescore_for_cutoffs(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    hours: Sequence[datetime],
    cutoffs: Sequence[datetime],
    horizon_hours: float,
    train: bool = True,
) -> dict[str, int]:
    """Rescore ``hours`` (the starts of the hours a full rescore scores, in order, already
    folded) writing only the lists read at ``cutoffs`` (module docstring); ``train=False``:
    the rankers in the warehouse are already the ones a fit would write. Returns the lists
    written and the passes it took."""
    from interest_pipeline import embeddings, stages
    from interest_pipeline.catalogue_stats import invalidate_from
    from interest_pipeline.evaluation import evaluated_users
    from interest_pipeline.recommendations import NEW_USER_DDL

    if not hours:
        return {"lists_written": 0, "list_passes": 0}
    model_id, _ = embeddings.resolve_model(settings.model)
    ends = [hour + _HOUR for hour in hours]
    con.execute(NEW_USER_DDL)
    for table in ("recommendations", "new_user_recommendations"):
        con.execute(f"delete from {table} where model_id = ? and as_of >= ?", [model_id, ends[0]])
    due = _due_hours(con, model_id, ends)
    # The new-visitor list read at T: the newest one ending by T.
    new_user = {ends[i - 1] for t in cutoffs if (i := bisect.bisect_right(ends, t))}
    # Per (user, T), the hour end whose list is read, until written and found non-empty.
    pending = {
        (user, t): end
        for t in cutoffs
        for user in evaluated_users(con, t, horizon_hours)
        if (end := _last_due(due.get(user, ()), t)) is not None
    }
    written: set[tuple[str, datetime]] = set()  # (user, hour end) lists written
    lists = passes = 0
    while pending or new_user:
        targets: dict[datetime, set[str]] = defaultdict(set)
        for (user, _), end in pending.items():
            # After the first pass, every earlier hour of the user at once: a user whose list
            # came out empty mostly has empty lists before it too (e.g. only cancellations),
            # and a pass costs the statistics of its hours, whatever their users.
            earlier = due[user][: bisect.bisect_right(due[user], end)] if passes else [end]
            for hour_end in earlier:
                if (user, hour_end) not in written:
                    targets[hour_end].add(user)
        writes = set(targets) | new_user
        log.info(
            "lists pass %d: %d lists in %d hours", passes + 1,
            sum(len(users) for users in targets.values()), len(writes),
        )
        # The statistics are rebuilt at the pass's first hour and advanced from there (the
        # pass before left them later: each hour would be a scan).
        invalidate_from(con, min(ends if not passes else writes) - _HOUR)
        # The first pass goes through every hour: the rankers are trained where due, in
        # order, before the lists of their hour (as in a full rescore).
        hour_ends = ends if not passes else sorted(writes)
        with progress.track(f"  lists, pass {passes + 1}", len(hour_ends), "hours",
                            every=100) as bar:
            for end in bar.iterate(hour_ends, note=lambda e: f"{e:%Y-%m-%d %H:%M}"):
                if train and not passes:
                    stages.train_ranker(end - _HOUR, end, settings, con=con)
                if end not in writes:
                    continue
                users = targets.get(end, set())
                result = stages.write_recommendations(
                    end - _HOUR, end, settings, con=con, users=users, new_user=end in new_user
                )
                lists += result["users_recommended"]
                written |= {(user, end) for user in users}
        new_user = set()
        passes += 1
        pending = _unresolved(con, model_id, pending, due, written)
    return {"lists_written": lists, "list_passes": passes}


def _due_hours(
    con: duckdb.DuckDBPyConnection, model_id: str, ends: Sequence[datetime]
) -> dict[str, list[datetime]]:
    """Per user, the hour ends (of ``ends``, in order) at which they are due a list."""
    from interest_pipeline.recommendations import users_due

    out: dict[str, list[datetime]] = defaultdict(list)
    for end in ends:
        for user in users_due(con, model_id, end, vectors=False).column("user_id").to_pylist():
            out[user].append(end)
    return out


def _last_due(ends: Sequence[datetime], t: datetime) -> datetime | None:
    """The last of ``ends`` (in order) at or before ``t``."""
    i = bisect.bisect_right(ends, t)
    return ends[i - 1] if i else None


def _unresolved(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    pending: dict[tuple[str, datetime], datetime],
    due: dict[str, list[datetime]],
    written: set[tuple[str, datetime]],
) -> dict[tuple[str, datetime], datetime]:
    """The (user, T) whose list at their hour came out empty, each moved to the user's
    previous hour due whose list is not yet known to be empty (none left: dropped; the
    new-visitor list applies)."""
    import pyarrow as pa

    if not pending:
        return {}
    users = sorted({user for user, _ in pending})
    con.register("_eval_list_users", pa.table({"user_id": pa.array(users, pa.string())}))
    try:
        rows = con.execute(
            """
            select distinct user_id, as_of from recommendations
            where model_id = ? and user_id in (select user_id from _eval_list_users)
            """,
            [model_id],
        ).fetchall()
    finally:
        con.unregister("_eval_list_users")
    listed = set(rows)
    out = {}
    for (user, t), end in pending.items():
        ends = due[user]
        i = bisect.bisect_left(ends, end)
        while i >= 0 and (user, ends[i]) in written and (user, ends[i]) not in listed:
            i -= 1
        if i >= 0 and (user, ends[i]) not in written:
            out[(user, t)] = ends[i]
    return out
