"""The project's rule that every function in src/latteclip reads in one screen: under 60 lines, `def` to last line."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "latteclip"
MAX_LINES = 59


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length in lines) of every function and method in `source`, nested ones too."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_the_measure_counts_from_def_to_the_last_line_nested_functions_included():
    source = "class A:\n    def f(self):\n        def g():\n            return 1\n\n        return g\n"
    assert function_lengths(source) == [("A.f", 2, 5), ("A.f.g", 3, 2)]


def test_every_function_in_src_is_under_60_lines():
    too_long = [
        f"{path.relative_to(SOURCE.parent)}:{line} {name} ({length} lines)"
        for path in sorted(SOURCE.rglob("*.py"))
        for name, line, length in function_lengths(path.read_text(encoding="utf-8"))
        if length > MAX_LINES
    ]
    assert not too_long, "functions of 60 lines or more (split them):\n" + "\n".join(too_long)
