"""Progress of long work: a ``rich`` bar on a terminal, plain lines in logs.

The same call serves a person at a terminal and an Airflow task log::

    with progress.track("replay", len(parts), "partitions written", every=10) as bar:
        for part in bar.iterate(parts):
            write(part)

When stderr is a terminal it draws a bar per piece of work (work started inside another's,
such as the embedding backlog of an evaluation day, adds its bar under the outer one: rich
shows one live display at a time). Otherwise it writes a line every ``every`` steps and at the
end, ``<description>: <done>/<total> <unit> (<seconds>s[; <note>])``, through ``emit``
(default: stderr; a module passes its logger's ``info`` to put the lines in the task log).
rich is imported only on a terminal.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

T = TypeVar("T")

# The live bars on screen; nested work adds its bar to the same display.
_live: Progress | None = None


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Tracker:
    """Counts the steps done of one piece of work; made by :func:`track`."""

    def __init__(
        self,
        description: str,
        total: int,
        unit: str,
        every: int,
        emit: Callable[[str], None],
        bar: tuple[Progress, TaskID] | None,
    ) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self._unit = f" {unit}" if unit else ""
        self._every = every
        self._emit = emit
        self._bar = bar
        self._began = time.perf_counter()

    def advance(self, steps: int = 1, note: str = "") -> None:
        """Count ``steps`` more done; ``note`` (e.g. the day just finished) goes on the line."""
        before = self.done
        self.done += steps
        if self._bar or (
            self._every
            and (self.done >= self.total or self.done // self._every > before // self._every)
        ):
            self.show(self.done, note)

    def show(self, done: int, note: str = "") -> None:
        """Set the count to ``done`` and report it now: a plain line, or the bar redrawn.

        For work that decides itself when to report, e.g. on every change and as a
        heartbeat while one step takes long.
        """
        self.done = done
        if self._bar:
            progress, task = self._bar
            progress.update(task, completed=done, description=f"{self.description} {note}".rstrip())
            return
        seconds = f"{time.perf_counter() - self._began:.0f}s" + (f"; {note}" if note else "")
        self._emit(f"{self.description}: {done}/{self.total}{self._unit} ({seconds})")

    def iterate(self, items: Iterable[T], note: Callable[[T], str] | None = None) -> Iterator[T]:
        """Yield each item and count it done when the loop body has run (also on ``continue``)."""
        for item in items:
            yield item
            self.advance(note=note(item) if note else "")


@contextmanager
def track(
    description: str,
    total: int,
    unit: str = "",
    every: int = 1,
    emit: Callable[[str], None] = _print_stderr,
) -> Iterator[Tracker]:
    """Report the progress of ``total`` steps of work.

    Args:
        description: What is being done, e.g. ``"evaluate"``.
        total: Steps the work takes.
        unit: What a step is, after the count: ``"cut-offs"``.
        every: Off a terminal, write a line every this many steps (and at the end); 0: none.
        emit: Where plain lines go (default: stderr), e.g. a logger's ``info``.

    Yields:
        The tracker to :meth:`Tracker.advance` (or :meth:`Tracker.iterate` with).
    """
    global _live
    if not _on_terminal():
        yield Tracker(description, total, unit, every, emit, None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    outer = _live is None
    if outer:
        _live = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        _live.start()
    progress = _live
    task = progress.add_task(description, total=total)
    try:
        yield Tracker(description, total, unit, every, emit, (progress, task))
    finally:
        if outer:
            progress.stop()  # the finished bars stay on screen
            _live = None
        else:
            progress.remove_task(task)


def _on_terminal() -> bool:
    """Whether stderr is a terminal that can redraw a bar (a TTY, TERM not dumb: rich's test).

    Decided on the TTY alone, not on rich's FORCE_COLOR/TTY_COMPATIBLE overrides, so a log
    collector that forces colour still gets plain lines.
    """
    return sys.stderr.isatty() and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")
