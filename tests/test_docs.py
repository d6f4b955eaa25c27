"""Every ```python block of README.md and docs/*.md runs as written.

Each block runs in a fresh namespace in a temporary directory (blocks write nothing to the
checkout). A line ``print(expr)  # literal`` also checks that ``expr`` equals the literal
the reader is shown, so the comments cannot drift from what the code prints.
"""

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SHOWN = re.compile(r"^print\((.*)\)\s+#\s+(.*)$")


def _blocks():
    for page in PAGES:
        for i, match in enumerate(FENCE.finditer(page.read_text())):
            line = page.read_text()[: match.start()].count("\n") + 2
            yield pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}:{line}:{i}")


def _shown_values(code):
    """``(expression, literal)`` for each ``print(expr)  # literal`` line whose comment is a
    Python literal."""
    for line in code.splitlines():
        match = SHOWN.match(line.strip())
        if match:
            with contextlib.suppress(ValueError, SyntaxError):
                yield match.group(1), ast.literal_eval(match.group(2))


@pytest.mark.parametrize("code", list(_blocks()))
def test_code_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__docs__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<docs>", "exec"), namespace)
    for expression, literal in _shown_values(code):
        value = eval(expression, namespace)
        if isinstance(literal, float):
            # a rounded number: equal to the digits shown
            digits = len(repr(literal).split(".")[1])
            assert round(float(value), digits) == literal, (expression, value, literal)
        else:
            assert value == literal, (expression, value, literal)


def test_no_python_block_is_missed():
    """The fence pattern finds every ``python`` fence (an indented or unterminated one
    would otherwise go untested)."""
    for page in PAGES:
        text = page.read_text()
        assert len(FENCE.findall(text)) == text.count("```python"), page.name
    assert len(list(_blocks())) >= 6
