"""Every third-party import is a declared dependency.

A fresh ``pip install -e .`` gets only what pyproject.toml declares. A module under
``sandbox/`` that imports a distribution that is merely present (pulled in by a test extra,
say) works in CI and fails on an operator's machine: numpy once did exactly that, and every
job failed. The runner runs in its own image, which installs duckdb and pyarrow only
(runner/Dockerfile), so ``runner/`` is checked against that list.

An optional extra may serve one module that only a setting loads: psycopg (the
``postgres`` extra) is imported by ``sandbox/store/postgres.py`` alone, and that module
only inside a function, when ``SANDBOX_DATABASE_URL`` is a postgresql:// URL, so a plain
install never imports it (``OPTIONAL`` below; the tests check both halves).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = {"sandbox", "sandbox_runner"}
# module imported -> (the extra that declares it, the one file that may import it,
# the dotted module of that file, which nothing may import at module level)
OPTIONAL = {"psycopg": ("postgres", "sandbox/store/postgres.py", "sandbox.store.postgres")}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("PyYAML>=6" -> "pyyaml")."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared_runtime() -> set[str]:
    return {_name(r) for r in _pyproject()["project"]["dependencies"]}


def declared_test() -> set[str]:
    return {_name(r) for r in _pyproject()["project"]["optional-dependencies"]["test"]}


def declared_extra(extra: str) -> set[str]:
    return {_name(r) for r in _pyproject()["project"]["optional-dependencies"][extra]}


def runner_image_packages() -> set[str]:
    """The distributions runner/Dockerfile pip-installs into the runner image."""
    text = (ROOT / "runner" / "Dockerfile").read_text(encoding="utf-8")
    found = {_name(m) for m in re.findall(r'"([A-Za-z0-9._-]+)==\$\{', text)}
    assert found, "no pinned pip install found in runner/Dockerfile"
    return found


def analysis_image_packages() -> set[str]:
    """The analysis libraries runner/build/analysis-requirements.txt bakes into the image."""
    text = (ROOT / "runner" / "build" / "analysis-requirements.txt").read_text(encoding="utf-8")
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    pins = [line for line in lines if line]
    assert all("==" in pin for pin in pins), "every analysis library is pinned"
    return {_name(pin) for pin in pins}


# What the analysis processes (and only they) import of those, by module name.
ANALYSIS_MODULES = {"acro", "matplotlib", "pandas", "numpy"}
# The processes of an analysis job that import the analysis libraries: the script's
# (the recorder) and the checker's, and the call log both use. Never the supervisor.
ANALYSIS_FILES = {"analysis_child.py", "analysis_calls.py", "analysis_checker.py"}


def imported_modules(
    root: Path, *, skip: frozenset[str] | set[str] = frozenset()
) -> dict[str, list[str]]:
    """Top-level third-party module names imported anywhere under root -> where (file:line)."""
    found: dict[str, list[str]] = {}
    # Helper modules beside the code (tests' api_helpers.py, say) are not distributions.
    local = {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}
    local.add(root.name)
    for path in sorted(root.rglob("*.py")):
        if path.name in skip:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OWN or top in local:
                    continue
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                found.setdefault(top, []).append(where)
    return found


def undeclared(root: Path, declared: set[str]) -> list[str]:
    """'module (dists) at file:line' for each import no declared distribution provides."""
    return undeclared_in(root, declared)


def undeclared_in(
    root: Path, declared: set[str], *, skip: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    providers = packages_distributions()
    problems = []
    for module, where in sorted(imported_modules(root, skip=skip).items()):
        dists = {_name(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module}: no installed distribution provides it (at {where[0]})")
        elif not dists & declared:
            problems.append(f"{module} (from {', '.join(sorted(dists))}) at {', '.join(where)}")
    return problems


def test_the_checks_see_the_imports() -> None:
    # The walk finds the imports it is meant to judge (a check that sees nothing passes).
    assert {"duckdb", "pyarrow", "fastapi", "numpy"} <= set(imported_modules(ROOT / "sandbox"))
    assert {"duckdb", "pyarrow"} <= set(imported_modules(ROOT / "runner" / "sandbox_runner"))


def test_the_check_catches_an_undeclared_import(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("def f():\n    import numpy\n", encoding="utf-8")
    assert undeclared(tmp_path, {"duckdb"}) != []
    assert undeclared(tmp_path, {"numpy"}) == []


def test_sandbox_imports_only_declared_runtime_dependencies() -> None:
    problems = undeclared(ROOT / "sandbox", declared_runtime())
    allowed = []
    for module, (extra, path, _) in OPTIONAL.items():
        assert declared_extra(extra) & {_name(module)}, f"{module} is not in the {extra} extra"
        for p in problems:
            places = p.rsplit(" at ", 1)[-1].split(", ")
            if p.startswith(f"{module} ") and all(w.startswith(f"{path}:") for w in places):
                allowed.append(p)
    # an optional import anywhere else is a runtime import, and must be declared
    assert [p for p in problems if p not in allowed] == []


def test_optional_modules_are_only_imported_lazily() -> None:
    """Nothing under sandbox/ imports an optional extra's module at module level (a plain
    install would fail at import); only a function may, when its setting asks for it."""
    for module, (_, path, dotted) in OPTIONAL.items():
        for file in sorted((ROOT / "sandbox").rglob("*.py")):
            tree = ast.parse(file.read_text(encoding="utf-8"))
            for node in tree.body:  # module level only
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                hits = [n for n in names if n.split(".")[0] == module or n == dotted]
                assert not hits, f"{file.relative_to(ROOT)} imports {hits} at module level"
        assert (ROOT / path).is_file()


def test_runner_imports_only_what_its_image_installs() -> None:
    assert runner_image_packages() == {"duckdb", "pyarrow"}
    runner = ROOT / "runner" / "sandbox_runner"
    assert undeclared_in(runner, runner_image_packages(), skip=ANALYSIS_FILES) == []
    # The analysis child and checker import the analysis libraries, which the host
    # need not have: they are in the image, pinned in runner/build/analysis-requirements.txt.
    child = {
        module
        for module, where in imported_modules(runner).items()
        if any(name.removesuffix(".py") in w for w in where for name in ANALYSIS_FILES)
    }
    assert child <= ANALYSIS_MODULES | {"pyarrow"}
    assert {"acro", "pandas", "statsmodels", "numpy"} | ANALYSIS_MODULES <= (
        analysis_image_packages()
    )


def test_runner_image_packages_are_runtime_dependencies() -> None:
    # The image pins the host's versions of these, so the host must have them.
    assert runner_image_packages() <= declared_runtime()


def test_tests_import_only_declared_dependencies() -> None:
    assert undeclared(ROOT / "tests", declared_runtime() | declared_test()) == []


def test_every_package_is_in_the_distribution() -> None:
    # setuptools ships only the packages listed: a package left out works in an
    # editable install and is missing from a wheel.
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "sandbox").rglob("__init__.py")
    } | {"sandbox_runner"}
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "these listed packages do not exist"
