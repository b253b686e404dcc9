"""The documentation runs and points where it should.

* Every ```python block of README.md and docs/quickstart.md is executed. The blocks of one
  file run in order in one shared namespace (a later block may use names from an earlier
  one), from a temporary working directory, with the Agg backend of matplotlib. The
  snippets use budgets of a few seconds, so this runs in the default (not slow) run.
* README.md is short and starts with the demo and test commands.
* No document or module refers to the files that were renamed (the old upper-case design and
  benchmark pages, and the old benchmark notes).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DEMO_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[bench]" '
    "&& python -m numpyro_hjb demo"
)
TEST_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" '
    "&& python -m pytest -q"
)
STALE_NAMES = ("DESIGN.md", "BENCHMARKS.md", "benchmarks_notes")
#: the largest time_budget= a snippet may use (the snippets must stay fast)
MAX_SNIPPET_BUDGET = 10.0

_FENCE = re.compile(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a markdown file, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(path.read_text(encoding="utf-8"))]


def python_blocks(path: Path) -> list[str]:
    return [code for lang, code in code_blocks(path) if lang == "python"]


@pytest.mark.parametrize("name", ["README.md", "docs/quickstart.md"])
def test_python_blocks_run(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)  # snippets may write files (save_fit)
    blocks = python_blocks(ROOT / name)
    assert blocks, f"{name} has no python blocks"
    namespace: dict = {"__name__": "__docs__"}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{name} (python block {i + 1})", "exec"), namespace)
    finally:
        plt.close("all")


@pytest.mark.parametrize("name", ["README.md", "docs/quickstart.md"])
def test_snippets_use_small_budgets(name):
    for code in python_blocks(ROOT / name):
        for value in re.findall(r"time_budget\s*=\s*([0-9.]+)", code):
            assert float(value) <= MAX_SNIPPET_BUDGET, (name, value)


def test_readme_is_short_and_starts_with_the_two_commands():
    path = ROOT / "README.md"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 120
    blocks = code_blocks(path)
    assert len(blocks) >= 2
    assert [code.strip() for _, code in blocks[:2]] == [DEMO_COMMAND, TEST_COMMAND]


def _documents_and_modules() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "numpyro_hjb").rglob("*.py"))
    return files


def test_no_references_to_renamed_files():
    found = []
    for path in _documents_and_modules():
        text = path.read_text(encoding="utf-8")
        for stale in STALE_NAMES:
            if stale in text:
                found.append(f"{path.relative_to(ROOT)}: {stale}")
    assert not found, found
