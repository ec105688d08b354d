"""Catalogue statistics kept as aggregates equal a scan of history, in any processing order."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import numpy as np
import pytest

from interest_pipeline.catalogue_stats import _from_scan, catalogue_stats, invalidate_from
from tests.builders import add_event

H0 = datetime(2024, 3, 1, 10)
HOUR = timedelta(hours=1)
ITEMS = ["a", "b", "c", "d", "e"]
HALF_LIVES = (6.0, 168.0)


def _same(x, y) -> None:
    assert (x.cooccurrence != y.cooccurrence).nnz == 0
    for hl in HALF_LIVES:
        np.testing.assert_array_equal(x.popularity[hl], y.popularity[hl])
    np.testing.assert_array_equal(x.engaged, y.engaged)


def _random_history(con, hours: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    for h in range(hours):
        start = H0 + h * HOUR
        for k in range(12):
            user = f"u{rng.randrange(6)}"
            weight = rng.choice([1.0, 1.0, 0.5, -1.0])  # -1: a cancellation, not engagement
            add_event(con, f"e{h}-{k}", user, "view", start + timedelta(minutes=rng.randrange(60)),
                      start, item_id=rng.choice(ITEMS), weight=weight)


def _watermark(con):
    rows = con.execute("select watermark from catalogue_stats_state").fetchall()
    return rows[0][0] if rows else None


def test_hour_by_hour_equals_a_scan_of_history(con):
    _random_history(con, 8)
    for h in range(8):
        kept = catalogue_stats(con, ITEMS, H0 + h * HOUR, HALF_LIVES)
        _same(kept, _from_scan(con, ITEMS, H0 + h * HOUR, HALF_LIVES))
        assert _watermark(con) == H0 + h * HOUR


def test_skipping_hours_or_asking_for_the_past_gives_the_same_numbers(con):
    _random_history(con, 8)
    catalogue_stats(con, ITEMS, H0 + HOUR, HALF_LIVES)
    # Several hours in one step.
    _same(catalogue_stats(con, ITEMS, H0 + 6 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 6 * HOUR, HALF_LIVES))
    # An earlier interval (a ranker cut-off) is computed from a scan; the state stays at 6 h.
    _same(catalogue_stats(con, ITEMS, H0 + 2 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 2 * HOUR, HALF_LIVES))
    assert _watermark(con) == H0 + 6 * HOUR


def test_a_half_life_asked_for_twice_is_counted_once(con):
    """The recommend stage asks for the prior's and the trending half-life, often the same."""
    _random_history(con, 8)
    catalogue_stats(con, ITEMS, H0 + 6 * HOUR, HALF_LIVES)
    for at in (H0 + 2 * HOUR, H0 + 7 * HOUR):  # from a scan, then from the state
        twice = catalogue_stats(con, ITEMS, at, (168.0, 168.0, 6.0))
        _same(twice, _from_scan(con, ITEMS, at, HALF_LIVES))


def test_late_rows_and_rebuilt_hours_are_noticed(con):
    _random_history(con, 6)
    catalogue_stats(con, ITEMS, H0 + 5 * HOUR, HALF_LIVES)
    # A late event lands in hour 1 behind the state: the row count up to it changed.
    add_event(con, "late", "u9", "view", H0 + HOUR, H0 + HOUR, item_id="a")
    add_event(con, "late2", "u9", "view", H0 + HOUR, H0 + HOUR, item_id="e")
    _same(catalogue_stats(con, ITEMS, H0 + 5 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 5 * HOUR, HALF_LIVES))
    # Hour 2 rebuilt with the same number of rows but other items: dbt's stage says so.
    con.execute("update user_item_interactions set item_id = 'd' where interval_start = ?",
                [H0 + 2 * HOUR])
    invalidate_from(con, H0 + 2 * HOUR)
    assert _watermark(con) is None
    _same(catalogue_stats(con, ITEMS, H0 + 5 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 5 * HOUR, HALF_LIVES))


def test_counts_shared_users_and_decays_each_users_latest_event(con):
    add_event(con, "1", "u1", "view", H0, H0, item_id="a")
    add_event(con, "2", "u1", "view", H0 + timedelta(minutes=30), H0, item_id="b")
    add_event(con, "3", "u2", "view", H0, H0, item_id="a")
    add_event(con, "4", "u2", "view", H0, H0, item_id="b")
    add_event(con, "5", "u2", "view", H0, H0, item_id="c")
    add_event(con, "6", "u3", "view", H0, H0, item_id="d", weight=-1.0)  # not engagement
    catalogue_stats(con, ITEMS, H0, HALF_LIVES)
    # u1 sees a again an hour later: only its latest event counts for a.
    add_event(con, "7", "u1", "view", H0 + HOUR, H0 + HOUR, item_id="a")
    stats = catalogue_stats(con, ITEMS, H0 + HOUR, HALF_LIVES)
    c = stats.cooccurrence.toarray()
    assert c[0, 1] == c[1, 0] == 2  # a and b: u1 and u2
    assert c[0, 2] == c[2, 0] == c[1, 2] == 1  # with c: u2 only
    assert np.diag(c).sum() == 0 and c[3].sum() == 0
    end = H0 + 2 * HOUR
    for hl in HALF_LIVES:
        def term(at: datetime, hl: float = hl) -> float:
            return 2.0 ** (-(end - at).total_seconds() / 3600 / hl)

        expected = [
            term(H0 + HOUR) + term(H0),  # a: u1's later event, u2
            term(H0 + timedelta(minutes=30)) + term(H0),
            term(H0),
            0.0,
            0.0,
        ]
        np.testing.assert_allclose(stats.popularity[hl], expected, rtol=1e-12)
    assert stats.engaged.tolist() == [True, True, True, False, False]


def test_an_event_counts_no_later_than_the_end_of_its_arrival_hour(con):
    add_event(con, "1", "u1", "view", H0 + 5 * HOUR, H0, item_id="a")  # clock ahead
    stats = catalogue_stats(con, ITEMS, H0, HALF_LIVES)
    assert stats.popularity[6.0][0] == pytest.approx(1.0, rel=1e-12)


def test_a_long_history_hour_by_hour_equals_a_scan(con):
    # Beyond the recent intervals searched first: pairs seen again within them, and a user
    # back after 50 hours with an old item (not a first engagement) and a new one.
    _random_history(con, 60, seed=3)
    add_event(con, "old", "u7", "view", H0, H0, item_id="a")
    add_event(con, "back", "u7", "view", H0 + 50 * HOUR, H0 + 50 * HOUR, item_id="a")
    add_event(con, "new", "u7", "view", H0 + 50 * HOUR, H0 + 50 * HOUR, item_id="b")
    for h in range(60):
        kept = catalogue_stats(con, ITEMS, H0 + h * HOUR, HALF_LIVES)
        _same(kept, _from_scan(con, ITEMS, H0 + h * HOUR, HALF_LIVES))


def test_the_copy_kept_in_memory_follows_the_hours_and_only_its_own_generation(
    con, monkeypatch
):
    """The process's copy of the state serves the next hour only while the warehouse holds
    the generation it was kept under: a state another process moved on, or an advance rolled
    back, is read back."""
    from interest_pipeline import catalogue_stats as module

    _random_history(con, 8)
    add_event(con, "unlisted", "u1", "view", H0 + 4 * HOUR, H0 + 4 * HOUR, item_id="zz")
    monkeypatch.setattr(module, "_KEPT", module._Kept())
    catalogue_stats(con, ITEMS, H0 + 2 * HOUR, HALF_LIVES)
    ours = module._KEPT
    # Another process moves the state to hour 5 (its own copy; ours stays at hour 2).
    monkeypatch.setattr(module, "_KEPT", module._Kept())
    catalogue_stats(con, ITEMS, H0 + 5 * HOUR, HALF_LIVES)
    monkeypatch.setattr(module, "_KEPT", ours)
    _same(catalogue_stats(con, ITEMS, H0 + 6 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 6 * HOUR, HALF_LIVES))
    # An advance inside a transaction that rolls back leaves the warehouse at hour 6.
    con.execute("begin transaction")
    catalogue_stats(con, ITEMS, H0 + 7 * HOUR, HALF_LIVES)
    con.execute("rollback")
    assert _watermark(con) == H0 + 6 * HOUR
    _same(catalogue_stats(con, ITEMS, H0 + 6 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 6 * HOUR, HALF_LIVES))
    _same(catalogue_stats(con, ITEMS, H0 + 7 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 7 * HOUR, HALF_LIVES))


def test_a_state_from_before_generations_is_still_used(con):
    _random_history(con, 4)
    catalogue_stats(con, ITEMS, H0 + HOUR, HALF_LIVES)
    con.execute("alter table catalogue_stats_state drop column generation")
    _same(catalogue_stats(con, ITEMS, H0 + 3 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 3 * HOUR, HALF_LIVES))
    assert _watermark(con) == H0 + 3 * HOUR


def test_a_state_kept_before_anyone_engaged_takes_the_first_engagements(con):
    add_event(con, "0", "u1", "view", H0, H0, item_id="a", weight=-1.0)
    catalogue_stats(con, ITEMS, H0, HALF_LIVES)  # kept in memory with no popularity at all
    add_event(con, "1", "u1", "view", H0 + HOUR, H0 + HOUR, item_id="a")
    add_event(con, "2", "u1", "view", H0 + HOUR, H0 + HOUR, item_id="b")
    _same(catalogue_stats(con, ITEMS, H0 + HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + HOUR, HALF_LIVES))


def test_an_advance_that_fails_in_memory_leaves_no_copy_of_the_old_state_behind(
    con, monkeypatch
):
    from interest_pipeline import catalogue_stats as module

    _random_history(con, 6)
    monkeypatch.setattr(module, "_KEPT", module._Kept())
    catalogue_stats(con, ITEMS, H0 + 2 * HOUR, HALF_LIVES)
    moved = module._View.add

    def moved_then_failed(self, *args):
        moved(self, *args)
        raise MemoryError("out of memory")

    monkeypatch.setattr(module._View, "add", moved_then_failed)
    con.execute("begin transaction")
    with pytest.raises(MemoryError):
        catalogue_stats(con, ITEMS, H0 + 4 * HOUR, HALF_LIVES)
    con.execute("rollback")  # the warehouse is back at hour 2
    monkeypatch.setattr(module._View, "add", moved)
    _same(catalogue_stats(con, ITEMS, H0 + 2 * HOUR, HALF_LIVES),
          _from_scan(con, ITEMS, H0 + 2 * HOUR, HALF_LIVES))
