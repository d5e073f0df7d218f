"""No import statement runs inside a function on the hot path.

An ``import`` inside a function runs the import machinery on every call: with a
``fromlist`` it looks ``__path__`` up on the module, which raises and drops a formatted
``AttributeError`` (~13k instructions a call, measured with callgrind in session 14,
when two of them ran once per workflow). Module-level imports cost nothing per call.
Only functions that run once, or off the hot path, may import lazily: each is listed
here with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import perdure

PACKAGE = Path(perdure.__file__).parent

ALLOWED = {
    ("_cli.py", "_require_database"),  # the command line: once per command
    ("_cli.py", "demo"),
    ("_telemetry.py", "__init__"),  # once per Telemetry; OpenTelemetry is an optional extra
    ("_errors.py", "_jsonable_details"),  # building an error (and _converter imports _errors)
    ("_schedules.py", "create_schedule"),  # once per schedule created (_app imports _schedules)
    ("_store/__init__.py", "open_store"),  # once per app; the drivers are optional extras
}


def _imports_in_functions(path: Path) -> list[tuple[str, int, str]]:
    found: list[tuple[str, int, str]] = []

    def walk(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                walk(child, function or child.name)
            elif isinstance(child, ast.Import | ast.ImportFrom) and function is not None:
                found.append((function, child.lineno, ast.unparse(child)))
            else:
                walk(child, function)

    walk(ast.parse(path.read_text()), None)
    return found


def test_functions_import_nothing_outside_the_listed_cold_paths() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        for function, line, statement in _imports_in_functions(path):
            if (module, function) not in ALLOWED:
                offenders.append(f"{module}:{line} in {function}(): {statement}")
    assert offenders == [], "move these imports to the top of their module:\n" + "\n".join(
        offenders
    )


def test_the_check_finds_an_import_in_a_function(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from json import dumps\n    return dumps\n")
    assert _imports_in_functions(source) == [("f", 4, "from json import dumps")]
