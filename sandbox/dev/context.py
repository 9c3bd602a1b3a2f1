"""The local project and the context a dev command runs in: query-file headers, the
project folder, the catalogue and grants it holds, the operator and scenario in play."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.catalog import Catalog, load_catalog
from sandbox.errors import BadInput
from sandbox.grants import Grants, load_grants
from sandbox.settings import Settings

PROJECT_FILE = "jinyu-project.json"
DEFAULT_UNITS = 10_000
ADHOC_UNITS = 5_000  # synthetic units for a `dev run` outside a project
_HEADER = re.compile(
    r"^\s*--\s*@?(operator|scenario|epsilon|delta)\s*[:=]?\s*(\S+)\s*$", re.IGNORECASE
)


def parse_header(sql: str) -> dict[str, str]:
    """``-- key: value`` lines in the leading comment block (operator, scenario, ε, δ)."""
    found: dict[str, str] = {}
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        m = _HEADER.match(stripped)
        if m and m.group(1).lower() not in found:
            found[m.group(1).lower()] = m.group(2)
    return found


def read_query(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BadInput(f"{path}: no such query file", code="NOT_FOUND") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read the query file (UTF-8 text expected)") from exc


@dataclass(frozen=True)
class DevContext:
    """Where the catalogue, the grants and the synthetic data come from."""

    catalog: Catalog
    grants: Grants
    policies: Path
    data_root: Path | None  # None: generate synthetic data on the fly
    operator: str | None  # the project's operator, if any
    project: Path | None


def find_project(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding a project file."""
    here = Path(start).resolve()
    if here.is_file():
        here = here.parent
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    return None


def load_context(settings: Settings, *, project: Path | None = None,
                 near: Path | None = None) -> DevContext:  # fmt: skip
    """A project's context (given, or found above ``near`` or the working directory);
    without one, the settings' policies and on-the-fly synthetic data."""
    root = project or find_project(near or Path.cwd()) or find_project(Path.cwd())
    if project is not None and not (project / PROJECT_FILE).is_file():
        raise BadInput(
            f"{project} is not a local project folder (no {PROJECT_FILE})",
            hint="Create one with `sandbox dev init`.",
        )
    if root is not None:
        meta = read_project(root)
        policies = root / "policies"
        catalog = load_catalog(policies)
        return DevContext(
            catalog=catalog,
            grants=load_grants(policies, catalog),
            policies=policies,
            data_root=root / "data",
            operator=meta.get("operator"),
            project=root,
        )
    catalog = load_catalog(settings.policies)
    return DevContext(
        catalog=catalog,
        grants=load_grants(settings.policies, catalog),
        policies=settings.policies,
        data_root=None,
        operator=None,
        project=None,
    )


def read_project(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / PROJECT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{root / PROJECT_FILE} is not readable JSON") from exc
    return data if isinstance(data, dict) else {}


def resolve_target(
    ctx: DevContext, header: dict[str, str], *, operator: str | None, scenario: str | None
) -> tuple[str, str]:
    """The operator and scenario: options, then the query header, then the project."""
    op = operator or header.get("operator") or ctx.operator
    sc = scenario or header.get("scenario")
    if not op:
        raise BadInput(
            "No operator given.", hint="Pass --operator, or add `-- operator: ID` to the query."
        )
    if not sc:
        known = sorted({g.scenario.id for g in ctx.grants.for_operator(op)})
        raise BadInput(
            "No scenario given.",
            hint="Pass --scenario, or add `-- scenario: ID` to the query. "
            f"Scenarios granted to {op}: {', '.join(known) or 'none'}.",
        )
    return op, sc
