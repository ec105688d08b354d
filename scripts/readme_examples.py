"""Run the README's CLI and HTTP examples and write their real output into it.

``make readme-examples`` (this script) rewrites every example block of README.md;
``--check`` only compares and exits 1 with a diff when a block no longer matches, as
tests/test_readme_examples.py does. An example is a fenced block after a marker comment
naming the command::

    <!-- example: interest recs or-c17894 -n 3 -->
    ```text
    $ interest recs or-c17894 -n 3
    user or-c17894, version as of …
    ```

The block is the command line (with ``# exit status N`` when it fails), then what it prints,
stderr first (the CLI's notes and errors come before any output). ``interest …`` runs
``interest_pipeline.cli.main`` on the warehouse; ``curl -s 'http://127.0.0.1:8000/PATH'``
asks the read API (``interest serve``'s app, through FastAPI's TestClient) for PATH, and a
trailing ``| python3 -m json.tool`` indents the JSON as that tool does.

The warehouse is the one ``make run`` builds: the retail sample's default window, replayed
and run a UTC day at a time through the daily DAG's stages, in this process
(``stages.run_interval`` per day, then the snapshot; the same tables as the daily DAG under
the scheduler, which tests/integration/test_daily_backfill.py checks). It takes a minute or
two (real dbt, the real model). ``--warehouse PATH`` reads an existing one instead, e.g.
``.local/warehouse.duckdb`` after ``make run``. The environment's ``INTEREST_*`` settings
are ignored (the README documents the defaults), except where the sample data lives.

What changes from run to run is left out of the comparison: the durations of
``interest runs``, the wall-clock times and ages of ``/health``, and digits of a number beyond
the sixth decimal (the JSON's full doubles). Paths under the warehouse's folder print as
``.local/``, where ``make run`` keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
API_BASE = "http://127.0.0.1:8000"
JSON_TOOL = "python3 -m json.tool"
# Settings the examples may see from the environment: where the sample data is.
KEPT_ENV = ("INTEREST_SHARED_DATA_DIR",)

_MARKER = re.compile(
    r"^<!-- example: (?P<command>.+?) -->\n(?P<fence>```[a-z]*\n)(?P<body>.*?)^```$",
    re.M | re.S,
)
# Values that differ between two runs over the same data (see the module docstring).
_VOLATILE_JSON = re.compile(
    r'("(?:published_at|warehouse_modified_at|opened_at|checked_at|\w*_seconds)":\s*)[^,\n}]+'
)
_DURATION = re.compile(r"\b\d+\.\d{3}\b")
# A double's last digits: DuckDB's parallel sums add in no fixed order, so a score's 16th
# digit may differ between two builds of the same warehouse. Compared to 6 decimals.
_LAST_DIGITS = re.compile(r"(\d\.\d{6})\d+")


@dataclasses.dataclass(frozen=True)
class Example:
    command: str
    body: str  # the block's text as the README has it
    start: int  # the body's span in the README
    end: int


def find_examples(text: str) -> list[Example]:
    """The marked example blocks of a README, in order."""
    return [
        Example(m["command"], m["body"], m.start("body"), m.end("body"))
        for m in _MARKER.finditer(text)
    ]


def build_warehouse(folder: Path) -> Path:
    """Build the ``make run`` warehouse under ``folder``; returns its path (see the docstring)."""
    from interest_pipeline import stages
    from interest_pipeline.config import get_settings
    from interest_pipeline.replay import DEFAULT_WINDOWS, replay

    settings = dataclasses.replace(
        get_settings(),
        data_dir=folder,
        warehouse_path=folder / "warehouse.duckdb",
        landing_dir=folder / "landing",
    )
    start, end = DEFAULT_WINDOWS["retail"]
    replay("retail", start, end, settings.landing_dir)
    day = start.replace(tzinfo=None)
    while day < end.replace(tzinfo=None):
        stages.run_interval(day, day + timedelta(days=1), settings)
        stages.publish_snapshot(day, day + timedelta(days=1), settings)
        day += timedelta(days=1)
    return settings.warehouse_path


@contextlib.contextmanager
def default_settings() -> Iterator[None]:
    """The environment without ``INTEREST_*`` overrides (but ``KEPT_ENV``), restored after."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith("INTEREST_") and key not in KEPT_ENV:
            del os.environ[key]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Runner(contextlib.ExitStack):
    """Runs example commands against one warehouse; the API app lives until the exit."""

    def __init__(self, warehouse: Path) -> None:
        super().__init__()
        self.warehouse = warehouse
        self._client = None

    def run(self, command: str) -> str:
        """The block an example's command produces (command line, stderr, stdout)."""
        if command.startswith("interest "):
            code, out = self._interest(shlex.split(command)[1:])
        elif command.startswith("curl "):
            code, out = 0, self._curl(command)
        else:
            raise ValueError(f"unknown kind of example: {command!r}")
        status = f"  # exit status {code}" if code else ""
        text = f"$ {command}{status}\n{out}"
        return text.replace(str(self.warehouse.parent), ".local")

    def _interest(self, argv: list[str]) -> tuple[int, str]:
        from interest_pipeline import cli

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["--warehouse", str(self.warehouse), *argv])
        return code, err.getvalue() + out.getvalue()

    def _curl(self, command: str) -> str:
        request, _, pipe = command.partition("|")
        args = shlex.split(request)
        url = urlsplit(args[-1])
        if args[:-1] != ["curl", "-s"] or not args[-1].startswith(API_BASE):
            raise ValueError(f"examples call `curl -s '{API_BASE}/…'`, not {command!r}")
        if pipe.strip() not in ("", JSON_TOOL):
            raise ValueError(f"the one pipe an example may use is `| {JSON_TOOL}`")
        body = self._api().get(url.path + (f"?{url.query}" if url.query else "")).text
        if pipe:
            # python3 -m json.tool's defaults: four spaces, ASCII escapes, keys in order.
            return json.dumps(json.loads(body), indent=4) + "\n"
        return body + "\n"

    def _api(self):  # -> fastapi.testclient.TestClient
        if self._client is None:
            from fastapi.testclient import TestClient

            from interest_pipeline.api import create_app

            self._client = self.enter_context(TestClient(create_app(self.warehouse)))
        return self._client


def normalise(command: str, text: str) -> str:
    """What of an example's output must stay the same: volatile values masked."""
    text = _LAST_DIGITS.sub(r"\1", _VOLATILE_JSON.sub(r"\1…", text))
    if command.startswith("interest runs") and "--json" not in command:
        # Durations change the columns' widths too: compare the cells, not the spacing.
        text = re.sub(r" +", " ", re.sub("─+", "─", _DURATION.sub("…", text)))
    return text


def check(readme: str, runner: Runner) -> tuple[str, list[str]]:
    """Run every example; returns the README with updated blocks and the diffs of the
    blocks that no longer match (a block that still matches is kept as it is)."""
    updated, diffs, offset = readme, [], 0
    for example in find_examples(readme):
        got = runner.run(example.command)
        if normalise(example.command, got) == normalise(example.command, example.body):
            continue
        diffs.append("".join(difflib.unified_diff(
            example.body.splitlines(keepends=True), got.splitlines(keepends=True),
            f"README.md: {example.command}", "its output now",
        )))
        updated = updated[: example.start + offset] + got + updated[example.end + offset :]
        offset += len(got) - (example.end - example.start)
    return updated, diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the README's marked examples and write their output into it."
    )
    parser.add_argument("--check", action="store_true",
                        help="only compare: exit 1 with a diff if a block differs")
    parser.add_argument("--warehouse", type=Path, metavar="PATH",
                        help="read this warehouse instead of building the `make run` one")
    parser.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    args = parser.parse_args(argv)
    readme = args.readme.read_text()
    if not find_examples(readme):
        parser.error(f"no `<!-- example: … -->` blocks in {args.readme}")
    with default_settings(), tempfile.TemporaryDirectory(prefix="readme-examples-") as tmp:
        if args.warehouse:
            warehouse = args.warehouse.resolve()
        else:
            print("building the `make run` warehouse (retail, default window) …",
                  file=sys.stderr)
            warehouse = build_warehouse(Path(tmp))
        with Runner(warehouse) as runner:
            updated, diffs = check(readme, runner)
    for diff in diffs:
        print(diff, file=sys.stderr)
    if args.check:
        print(f"{len(diffs)} example(s) differ from the README", file=sys.stderr)
        return 1 if diffs else 0
    if diffs:
        args.readme.write_text(updated)
    print(f"{len(find_examples(readme))} examples, {len(diffs)} rewritten in {args.readme}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
