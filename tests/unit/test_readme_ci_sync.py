"""The README's test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"pip install -e '([^']+)' && python -m pytest -q", readme)
    assert match, "the README lost its test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"pip install -q -e '{match.group(1)}' && python -m pytest -q" in ci
