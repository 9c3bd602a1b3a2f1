"""The layout a newcomer reads (issue 14): small modules, imports one way, tests that
mirror the source tree.

Import cycles are looked for among the imports a module runs when it is imported
(top-level ``import`` / ``from … import``, not those under ``if TYPE_CHECKING:`` nor
inside functions, which run later and are how a lower layer calls up, lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "sandbox", ROOT / "runner" / "sandbox_runner"]
MAX_LINES = 520  # "~500": a module past this owns two things


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for src in SOURCES:
        for path in sorted(src.rglob("*.py")):
            rel = path.relative_to(src.parent).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports while being imported."""
    tree = ast.parse(path.read_text("utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)

    visit(tree.body)
    return {m for m in found if m in known and m != name}


def test_no_module_is_over_about_500_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules().values()
        if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles in the import graph. An edge from a package to its own submodule is not
    one (importing sandbox.x.y runs sandbox.x first, which may import its children)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif state.get(nxt) is None:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if state.get(name) is None:
            walk(name, [])
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"p": {"p.x"}, "p.x": {"q"}, "q": set()}) == []
    edges = _import_time_imports(
        "sandbox.jobs.pipeline", ROOT / "sandbox/jobs/pipeline.py", set(_modules())
    )
    assert {"sandbox.catalog", "sandbox.jobs.records"} <= edges


def test_no_import_cycle_at_import_time() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _import_time_imports(name, path, known) for name, path in modules.items()}
    assert find_cycles(graph) == []


def test_tests_mirror_the_packages() -> None:
    # every sub-package of sandbox/ has a test folder of the same name
    packages = {p.name for p in (ROOT / "sandbox").iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
    assert packages - folders == set()
