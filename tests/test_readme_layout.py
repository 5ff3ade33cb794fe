"""The README's Layout section is the map of the tree: every module of engine/, tui/ and themes/
is in it, at its path, and nothing in it is gone from the tree.

The map is an indented tree in the first code block under ``## Layout``: a line whose first
word ends in ``/`` opens a folder, one ending in ``.py`` or ``.tcss`` names a file in the
folder it is indented under. ``__init__.py`` and ``__main__.py`` need not be listed.

The flag table under ``## Running`` is the map of ``soaktop run``'s options the same way: each
option the parser has is named in a row's first cell, and each option a first cell names is
one the parser has.
"""

import argparse
import re
from pathlib import Path

from soaktop.tui.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui", "themes")
ENTRY = re.compile(r"^(\s*)(\S+/|\S+\.py|\S+\.tcss)(\s|$)")


def layout_paths(readme: str) -> set[str]:
    section = readme.split("\n## Layout\n", 1)[1]
    block = section.split("```", 2)[1]
    paths: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, folder)
    for line in block.splitlines():
        match = ENTRY.match(line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([folder for _, folder in stack] + [name.rstrip("/")])
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
        elif path.split("/")[0] in PACKAGES:
            paths.add(path)
    return paths


def tree_paths() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*")
            if p.suffix in (".py", ".tcss") and p.name not in ("__init__.py", "__main__.py")
            and "__pycache__" not in p.parts}


def test_the_layout_names_every_module_at_its_path():
    listed = layout_paths((ROOT / "README.md").read_text())
    actual = tree_paths()
    assert actual - listed == set(), "in the tree, missing from the README's Layout"
    assert listed - actual == set(), "in the README's Layout, gone from the tree"


def test_the_layout_parser_reads_nesting():
    """The check above can fail: a file is placed under the folder it is indented under."""
    readme = ("intro\n## Layout\n\n```\nengine/     the engine\n  events.py  events\n"
              "  load/\n    loops.py  loops\n  session.py  the session\ntui/\n  cli.py\n"
              "tests/\n  test_x.py\n```\n")
    assert layout_paths(readme) == {"engine/events.py", "engine/load/loops.py",
                                    "engine/session.py", "tui/cli.py"}


def _sources() -> list[Path]:
    folders = ("engine", "tui", "themes", "tests", "bench", "docs")
    return [ROOT / "README.md", ROOT / "pyproject.toml"] + [
        p for folder in folders for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".md", ".toml") and "__pycache__" not in p.parts]


def test_every_document_the_code_cites_is_in_the_repository():
    cited = {(p.relative_to(ROOT).as_posix(), name) for p in _sources()
             for name in re.findall(r"[\w./-]*\b[\w-]+\.md\b", p.read_text())}
    missing = sorted((where, name) for where, name in cited
                     if not (ROOT / name).is_file() and not (ROOT / "docs" / name).is_file())
    assert missing == []


NUMBERED = re.compile(r"\b[Ii]ssues? ?#?\d+|(?<![\w/])#\d{1,4}\b")


def test_no_issue_numbers_a_reader_cannot_look_up():
    """Upstream references name their project (``encode/httpcore#1035``); ours would not."""
    found = sorted(f"{p.relative_to(ROOT)}:{n + 1}" for p in _sources()
                   for n, line in enumerate(p.read_text().splitlines())
                   if NUMBERED.search(line))
    assert found == []
    # the pattern can fail: the samples are built here, so this file holds no number itself
    number = 7
    assert NUMBERED.search(f"as issue {number} says") and NUMBERED.search(f"see #{number}")
    assert not NUMBERED.search(f"encode/httpcore#{number}")


def flag_table_options(readme: str) -> set[str]:
    """The options named in the first cell of each row of the table under ``## Running``."""
    section = readme.split("\n## Running\n", 1)[1].split("\n## ", 1)[0]
    named: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `--"):
            first_cell = re.split(r"(?<!\\)\|", line)[1]  # a cell may hold an escaped \|
            named.update(re.findall(r"--[a-z][a-z0-9-]*", first_cell))
    return named


def run_options() -> set[str]:
    subcommands = next(action for action in build_parser()._actions
                       if isinstance(action, argparse._SubParsersAction))
    return {option for action in subcommands.choices["run"]._actions
            for option in action.option_strings if option.startswith("--")} - {"--help"}


def test_the_flag_table_names_every_run_option_and_no_other():
    named = flag_table_options((ROOT / "README.md").read_text())
    options = run_options()
    assert options - named == set(), "soaktop run options without a row in README's flag table"
    assert named - options == set(), "README's flag table names options soaktop run does not have"


def test_the_flag_table_reader_reads_options_past_an_escaped_bar():
    readme = ("\n## Running\n\n| flag | meaning |\n| --- | --- |\n"
              "| `--rate R`, `--arrival a\\|b`, `--max-inflight N` | x `--not-this` |\n\n## Next\n")
    assert flag_table_options(readme) == {"--rate", "--arrival", "--max-inflight"}
