"""The package's shape: every module says what it is for, and no two modules
import each other (directly or around a loop) at import time."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "services" / "letskencrypt"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "v1" in path.relative_to(PACKAGE).parts:
            continue  # generated stubs
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("letskencrypt", *parts)).removesuffix(".__init__")
        found[name] = path
    return found


def imported_at_the_top(path: Path) -> set[str]:
    """letskencrypt modules imported by module-level statements (a function's
    own imports, for an optional dependency, do not make a cycle at import)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "letskencrypt":
                names |= {f"letskencrypt.{alias.name}" for alias in node.names}
            elif node.module.startswith("letskencrypt."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("letskencrypt.")}
    return names


def test_every_module_opens_with_a_docstring() -> None:
    for name, path in modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring) > 20, f"{name} says nothing of what it is for"


def test_no_import_cycles() -> None:
    graph = {name: imported_at_the_top(path) & set(modules()) for name, path in modules().items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(name):], name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
