"""The README's CLI and HTTP API examples print what the README shows.

Each marked example (see scripts/readme_examples.py) runs against the warehouse `make run`
builds, built in-process once for the module (slow: real dbt, the real model); its output must
equal the README's block, durations and wall-clock times aside. A failure means the code and
the README drifted apart: `make readme-examples` rewrites the blocks (then read the diff).
The example of every command's `--help` must run there too.
"""

from __future__ import annotations

import re

import pytest

from interest_pipeline import cli
from scripts import readme_examples

COMMANDS = cli._COMMANDS  # (name, summary, the example of `interest NAME --help`, arguments)
README = readme_examples.README.read_text()
EXAMPLES = readme_examples.find_examples(README)
SECTIONS = ("## The `interest` CLI", "## HTTP API")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    with readme_examples.default_settings():
        warehouse = readme_examples.build_warehouse(tmp_path_factory.mktemp("readme"))
        with readme_examples.Runner(warehouse) as runner:
            yield runner


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.command for e in EXAMPLES])
def test_the_example_prints_what_the_readme_shows(runner, example):
    got = runner.run(example.command)

    assert readme_examples.normalise(example.command, got) == readme_examples.normalise(
        example.command, example.body
    ), "the README's example no longer matches: run `make readme-examples`"


def _section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n## ", start + len(title) + 2)
    return README[start : end if end > 0 else len(README)]


@pytest.mark.parametrize("title", SECTIONS)
def test_every_example_of_the_section_is_checked(title):
    section = _section(title)
    checked = "".join(e.body for e in EXAMPLES if e.body in section)
    shown = re.findall(r"^\$ (?:interest|curl) .*$", section, re.M)

    assert shown, f"no examples in {title!r}"
    assert all(line in checked for line in shown)
    for example in EXAMPLES:
        assert example.body.startswith(f"$ {example.command}"), example.command


@pytest.mark.slow
@pytest.mark.parametrize("name, example", [(name, example) for name, _, example, _ in COMMANDS])
def test_every_help_example_runs_on_the_make_run_warehouse(runner, name, example):
    block = runner.run(example)

    # The sample has no rejected lines: `interest quarantine` finds none (exit 1), correctly.
    allowed = ("", f"  # exit status {cli.EXIT_NOT_FOUND}") if name == "quarantine" else ("",)
    assert block.split("\n", 1)[0] in {f"$ {example}{status}" for status in allowed}, block
