"""Progress of long work: plain lines off a terminal, a rich bar on one."""

from __future__ import annotations

import re

from interest_pipeline import progress


def test_off_a_terminal_a_line_every_n_steps_and_at_the_end():
    lines: list[str] = []

    with progress.track("evaluate", 25, "cut-offs", every=10, emit=lines.append) as bar:
        for i in bar.iterate(range(25), note=lambda i: f"#{i}"):
            if i % 2:
                continue  # counted all the same

    assert [re.sub(r"\(\d+s", "(Ns", line) for line in lines] == [
        "evaluate: 10/25 cut-offs (Ns; #9)",
        "evaluate: 20/25 cut-offs (Ns; #19)",
        "evaluate: 25/25 cut-offs (Ns; #24)",
    ]


def test_steps_of_any_size_and_a_line_on_demand(capsys):
    with progress.track("embed", 5000, "new texts") as bar:  # default: stderr
        bar.advance(2048)
        bar.show(2048, "still encoding")
        bar.advance(2952)

    err = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in err] == [
        "embed: 2048/5000 new texts", "embed: 2048/5000 new texts", "embed: 5000/5000 new texts",
    ]
    assert err[1].endswith("; still encoding)")


def test_every_zero_writes_no_lines():
    lines: list[str] = []
    with progress.track("replay", 3, every=0, emit=lines.append) as bar:
        for _ in bar.iterate(range(3)):
            pass
    assert lines == [] and bar.done == 3


def test_on_a_terminal_nested_work_shares_one_bar_display(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_on_terminal", lambda: True)
    lines: list[str] = []

    with progress.track("pipeline", 2, "days", emit=lines.append) as days:
        for _ in days.iterate(range(2)):
            with progress.track("embed", 10, emit=lines.append) as inner:
                inner.advance(10)

    assert lines == []  # the bar, not lines
    assert progress._live is None  # stopped at the end
    assert "pipeline" in capsys.readouterr().err
