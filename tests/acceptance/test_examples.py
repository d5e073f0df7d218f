"""Every example runs to completion, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import TIMEOUT, base_env

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"hello.py", "order_workflow.py"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip()
