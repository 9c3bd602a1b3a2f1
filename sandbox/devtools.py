"""Local development against synthetic data: ``sandbox dev init|run|check``.

An operator's developer has no raw data and often no Docker. These tools give them
the sandbox's own compiler (same code, same error codes), the local executor over
synthetic data generated from the catalogue alone, and the DP layer with the ε they
ask for, so a query that works locally works in the sandbox. Nothing here spends
budget, writes audit events or talks to a server (except ``dev init --server``,
which only fetches the catalogue and grants the token may see).

A local project folder (``dev init``) holds::

    jinyu-project.json   operator, where the catalogue came from, synthetic size/seed
    README.md            what to do next
    policies/            the granted part of the catalogue, the operator's grants,
                         the public key sets (the same files the server reads)
    queries/example.sql  a first query, with its header
    data/                synthetic Parquet (marked jinyu.synthetic = true)

A query file may start with a header naming its operator and scenario (and
optionally ε and δ); command-line options win over the header::

    -- operator: op-jinshu
    -- scenario: employment-income
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from sandbox.catalog import Catalog, Dataset, Use, load_catalog
from sandbox.errors import BadInput, Refused, SystemFailure
from sandbox.grants import Grant, Grants, find_grant, load_grants
from sandbox.settings import Settings

PROJECT_FILE = "jinyu-project.json"
DEFAULT_UNITS = 10_000
ADHOC_UNITS = 5_000  # synthetic units for a `dev run` outside a project
_HEADER = re.compile(
    r"^\s*--\s*@?(operator|scenario|epsilon|delta)\s*[:=]?\s*(\S+)\s*$", re.IGNORECASE
)


# ------------------------------------------------------------------ query files


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


# ------------------------------------------------------------------ the context


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
        meta = _read_project(root)
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


def _read_project(root: Path) -> dict[str, Any]:
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


# ------------------------------------------------------------------ dev check


def _all_datasets_grant(catalog: Catalog, operator: str) -> Grant:
    """A grant of every grantable dataset, for checking a query with no scenario: it
    finds syntax and catalogue errors, not grant errors."""
    return Grant.model_validate(
        {
            "id": "dev-check",
            "operator": operator,
            "scenario": {"id": "dev-check", "purpose": "local syntax and catalogue check"},
            "datasets": [d.id for d in catalog.datasets if d.grantable],
            "budget": {"epsilon": 1.0, "delta": 0.0, "max_epsilon_per_query": 1.0},
            "valid_from": "2000-01-01T00:00:00Z",
            "valid_until": "2999-01-01T00:00:00Z",
        }
    )


def check_query(
    sql: str,
    ctx: DevContext,
    *,
    operator: str | None = None,
    scenario: str | None = None,
) -> dict[str, Any]:
    """Compile as the server would; return a summary. Raises the compiler's refusal.

    Without a scenario (and none in the header) the query is checked against every
    grantable dataset: syntax and catalogue errors are found, grant errors are not.
    """
    from sandbox.compiler import compile_query

    header = parse_header(sql)
    sc = scenario or header.get("scenario")
    if sc:
        op, sc = resolve_target(ctx, header, operator=operator, scenario=sc)
        grant = find_grant(ctx.grants, op, sc)
    else:
        op = operator or header.get("operator") or ctx.operator or "dev"
        grant = _all_datasets_grant(ctx.catalog, op)
    plan = compile_query(sql, catalog=ctx.catalog, grant=grant)
    return {
        "ok": True,
        "operator": op,
        "scenario": sc,
        "grant": grant.id if sc else None,
        "dataset": plan.dataset,
        "plan_digest": plan.digest(),
        "outputs": [{"name": o.name, "kind": o.kind} for o in plan.outputs],
        "private_keys": plan.private_keys,
        "notes": list(plan.notes),
    }


def diagnostic(path: str, exc: BaseException) -> dict[str, Any]:
    """One error as a diagnostic: file, line, column, code, message, hint."""
    from sandbox.errors import public_error

    err = public_error(exc)
    line = getattr(exc, "line", None) or 1
    col = getattr(exc, "col", None) or 1
    return {
        "file": path,
        "line": int(line),
        "col": int(col),
        "code": err.code,
        "message": err.message,
        "hint": err.hint,
        "severity": "error",
    }


def format_diagnostic(d: dict[str, Any], fmt: str) -> str:
    """``text``: ``file:line:col: CODE message``; ``gcc``: ``file:line:col: error: message
    [CODE]`` (what editors' and CI problem matchers parse)."""
    loc = f"{d['file']}:{d['line']}:{d['col']}"
    message = " ".join(str(d["message"]).split())
    if fmt == "gcc":
        return f"{loc}: error: {message} [{d['code']}]"
    return f"{loc}: {d['code']} {message}"


# ------------------------------------------------------------------ dev run


def run_query(
    sql: str,
    ctx: DevContext,
    settings: Settings,
    *,
    operator: str | None = None,
    scenario: str | None = None,
    epsilon: float | None = None,
    delta: float | None = None,
    units: int = ADHOC_UNITS,
    seed: int = 0,
) -> dict[str, Any]:
    """Compile, run on synthetic data with the local executor, add DP noise.

    Returns the released rows, each cell's accuracy, the mechanisms and what the
    query would cost in the real sandbox. No budget is spent, nothing is recorded.
    """
    from sandbox import privacy
    from sandbox.compiler import compile_query
    from sandbox.executors.local import LocalExecutor

    header = parse_header(sql)
    op, sc = resolve_target(ctx, header, operator=operator, scenario=scenario)
    grant = find_grant(ctx.grants, op, sc)
    plan = compile_query(sql, catalog=ctx.catalog, grant=grant)
    dataset = ctx.catalog.dataset(plan.dataset)
    if dataset is None:
        raise SystemFailure("The plan names a dataset outside the catalogue.", code="INTERNAL")
    eps = epsilon if epsilon is not None else _header_float(header, "epsilon")
    dlt = delta if delta is not None else _header_float(header, "delta")
    eps = eps if eps is not None else grant.budget.max_epsilon_per_query
    if dlt is None:
        dlt = default_delta(plan.private_keys, dataset, grant)
    cost = privacy.plan_cost(plan, epsilon=eps, delta=dlt, dataset=dataset, grant=grant)
    executor = LocalExecutor(settings)
    with tempfile.TemporaryDirectory(prefix="jinyu-dev-") as tmp:
        data_root = ctx.data_root
        if data_root is None or not _has_files(data_root, plan.tables):
            data_root = Path(tmp)
            _synthesise_for(plan.tables, ctx, data_root, units=units, seed=seed)
        exact = executor.run(plan, data_root=data_root, job_id="dev-local")
    noisy = privacy.release(plan, exact.table, cost)
    del exact  # the exact aggregates of synthetic data; still, never kept
    return {
        "synthetic": True,
        "operator": op,
        "scenario": sc,
        "grant": grant.id,
        "dataset": plan.dataset,
        "plan_digest": plan.digest(),
        "columns": noisy.table.column_names,
        "rows": noisy.to_json_rows(),
        "accuracy": noisy.accuracy,
        "mechanisms": noisy.mechanisms,
        "explain": privacy.explain(plan, cost),
        "cost": cost.to_dict(),
        "would_cost": {
            "epsilon": cost.epsilon,
            "delta": cost.delta,
            "rho": cost.rho,
            "definition": cost.definition,
            "grant_total_epsilon": grant.budget.epsilon,
            "grant_total_delta": grant.budget.delta,
            "max_epsilon_per_query": grant.budget.max_epsilon_per_query,
        },
        "budget_spent": 0.0,
        "notes": list(plan.notes),
    }


def default_delta(private_keys: bool, dataset: Dataset, grant: Grant) -> float:
    """δ when none is asked: the grant's δ when the query needs one (private group
    keys, or a zCDP dataset whose guarantee is stated with δ > 0), else 0."""
    if not dataset.privacy.delta_allowed:
        return 0.0
    if private_keys or dataset.privacy.definition == "zcdp":
        return grant.budget.delta
    return 0.0


def _header_float(header: dict[str, str], key: str) -> float | None:
    if key not in header:
        return None
    try:
        return float(header[key])
    except ValueError as exc:
        raise BadInput(f"The query header's {key} is not a number.") from exc


def _has_files(root: Path, tables: dict[str, str]) -> bool:
    return all((root / rel).is_file() for rel in tables.values())


def _synthesise_for(
    tables: dict[str, str], ctx: DevContext, out: Path, *, units: int, seed: int
) -> None:
    from sandbox.synthetic import generate_synthetic

    wanted = []
    for name in tables:
        found = ctx.catalog.find_table(name)
        if found is not None and found[0].id not in wanted:
            wanted.append(found[0].id)
    generate_synthetic(out, ctx.catalog, wanted, units=units, seed=seed, policies=ctx.policies)


# ------------------------------------------------------------------ dev init


def init_project(
    dest: Path,
    *,
    operator: str | None,
    policies: Path | None = None,
    server: str | None = None,
    token: str | None = None,
    units: int = DEFAULT_UNITS,
    seed: int = 0,
    client: Any = None,
) -> dict[str, Any]:
    """Write a local project folder for one operator; return a summary.

    From a policies directory (the bureau's files: only the operator's grants and the
    datasets they name are copied) or from a server (``GET /v1/catalog`` and
    ``GET /v1/grants`` with the operator's token).
    """
    if (policies is None) == (server is None):
        raise BadInput("Give either a policies directory or a server URL.")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not (dest / PROJECT_FILE).is_file():
        raise BadInput(
            f"{dest} exists and is not a local project folder",
            hint="Choose an empty or new folder with --dir.",
        )
    if policies is not None:
        if not operator:
            raise BadInput("Give the operator (--operator).")
        catalog_doc, grants_doc, key_files = _from_policies(Path(policies), operator)
        source = {"kind": "policies", "path": str(Path(policies).resolve())}
    else:
        assert server is not None
        catalog_doc, grants_doc, operator = _from_server(server, token or "", operator, client)
        key_files = {}
        source = {"kind": "server", "url": server.rstrip("/")}
    # write the policies, then load them back: what we wrote must validate
    pol = dest / "policies"
    if pol.exists():
        shutil.rmtree(pol)
    pol.mkdir(parents=True)
    for rel, src in key_files.items():
        (pol / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, pol / rel)
    _write_yaml(
        pol / "catalog.yaml", catalog_doc, "The part of the catalogue granted to " + operator
    )
    _write_yaml(pol / "grants.yaml", grants_doc, "The grants of " + operator)
    catalog = load_catalog(pol)
    grants = load_grants(pol, catalog)
    datasets = [d.id for d in catalog.datasets]

    from sandbox.synthetic import generate_synthetic

    data = dest / "data"
    if data.exists():
        shutil.rmtree(data)
    synth = generate_synthetic(data, catalog, datasets, units=units, seed=seed, policies=pol)

    queries = dest / "queries"
    queries.mkdir(exist_ok=True)
    example = example_query(catalog, grants, operator)
    example_path = queries / "example.sql"
    if example is not None and not example_path.exists():
        example_path.write_text(example, encoding="utf-8")
    meta = {
        "operator": operator,
        "source": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "synthetic": {"units": units, "seed": seed},
        "datasets": datasets,
        "scenarios": sorted({g.scenario.id for g in grants.for_operator(operator)}),
    }
    (dest / PROJECT_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")  # fmt: skip
    (dest / "README.md").write_text(_readme(meta, grants, operator), encoding="utf-8")
    return {
        "dir": str(dest),
        **meta,
        "tables": synth["tables"],
        "example": str(example_path) if example_path.exists() else None,
    }


def _from_policies(
    policies: Path, operator: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Path]]:
    catalog = load_catalog(policies)
    grants = load_grants(policies, catalog)
    op = grants.operator(operator)
    if op is None:
        raise Refused(f"Unknown operator {operator!r}.", code="UNKNOWN_OPERATOR")
    mine = grants.for_operator(operator)
    if not mine:
        raise Refused(f"Operator {operator!r} has no grants.", code="NO_GRANT")
    wanted = {d for g in mine for d in g.datasets}
    raw_catalog = _load_yaml(policies / "catalog.yaml")
    raw_grants = _load_yaml(policies / "grants.yaml")
    datasets = [d for d in raw_catalog.get("datasets", []) if d.get("id") in wanted]
    used = {
        c.keys
        for d in catalog.datasets
        if d.id in wanted
        for t in d.tables
        for c in t.columns
        if c.keys is not None
    }
    key_sets = {k: v for k, v in (raw_catalog.get("key_sets") or {}).items() if k in used}
    key_files: dict[str, Path] = {}
    for ks in key_sets.values():
        if isinstance(ks, dict) and ks.get("file"):
            key_files[str(ks["file"])] = policies / str(ks["file"])
    catalog_doc = {"key_sets": key_sets, "datasets": datasets}
    grants_doc = {
        "operators": [o for o in raw_grants.get("operators", []) if o.get("id") == operator],
        "grants": [g for g in raw_grants.get("grants", []) if g.get("operator") == operator],
    }
    return catalog_doc, grants_doc, key_files


def _from_server(
    url: str, token: str, operator: str | None, client: Any = None
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Fetch the granted catalogue and the token's grants from a sandbox server.

    ``client`` is an httpx.Client to use (tests pass the app's in-process client).
    """
    import httpx

    if not token:
        raise BadInput("A server needs a token (--token or SANDBOX_TOKEN).", code="UNAUTHENTICATED")
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        if client is not None:
            cat = _get_json(client, f"{base}/v1/catalog", headers)
            grants = _get_json(client, f"{base}/v1/grants", headers)
        else:
            with httpx.Client(timeout=30) as c:
                cat = _get_json(c, f"{base}/v1/catalog", headers)
                grants = _get_json(c, f"{base}/v1/grants", headers)
    except httpx.HTTPError as exc:
        raise SystemFailure(
            f"Could not reach the sandbox server at {base}.", code="INTERNAL",
            hint="Check the URL, or use --policies DIR to work offline.",
        ) from exc  # fmt: skip
    grant_list = grants.get("grants", []) if isinstance(grants, dict) else grants
    if not isinstance(grant_list, list) or not grant_list:
        raise Refused("The server lists no grants for this token.", code="NO_GRANT")
    ops = sorted({str(g.get("operator")) for g in grant_list})
    if operator is None:
        if len(ops) != 1:
            raise BadInput("The token sees several operators; pass --operator.")
        operator = ops[0]
    mine = [g for g in grant_list if g.get("operator") == operator]
    if not mine:
        raise Refused(f"The server lists no grants for {operator!r}.", code="NO_GRANT")
    catalog_doc = _catalog_doc_from_view(cat)
    # the server shows only the datasets of grants valid now: a grant that names another
    # (an expired one) cannot be used there, nor kept here against this catalogue
    shown = {d["id"] for d in catalog_doc["datasets"]}
    usable = [g for g in mine if set(g.get("datasets") or ()) <= shown]
    if not usable:
        raise Refused(f"No grant of {operator!r} is valid now.", code="GRANT_EXPIRED")
    grants_doc = {
        "operators": [{"id": operator, "name": operator}],
        "grants": [_grant_doc_from_view(g) for g in usable],
    }
    return catalog_doc, grants_doc, operator


def _get_json(client: Any, url: str, headers: dict[str, str]) -> Any:
    from sandbox.errors import AuthError, Forbidden

    r = client.get(url, headers=headers)
    path = url.split("/v1/", 1)[-1]
    if r.status_code == 401:
        raise AuthError("The server refused the token.", hint="Check --token.")
    if r.status_code == 403:
        raise Forbidden(f"The token may not read /v1/{path}.")
    if r.status_code != 200:
        raise SystemFailure(
            f"The server answered {r.status_code} to GET /v1/{path}.", code="INTERNAL"
        )
    try:
        return r.json()
    except ValueError as exc:
        raise SystemFailure(f"The server's answer to GET /v1/{path} is not JSON.") from exc


_DATASET_FIELDS = {"id", "title", "owner", "description", "version", "grade", "sharing",
                   "privacy_unit", "privacy", "tables"}  # fmt: skip
_TABLE_FIELDS = {"name", "description", "file", "rows_per_unit", "lookup_key", "columns"}
_COLUMN_FIELDS = {"name", "type", "description", "uses", "bounds", "keys", "null_rate",
                  "synthetic"}  # fmt: skip


def _catalog_doc_from_view(view: Any) -> dict[str, Any]:
    """The server's catalogue view as catalog.yaml (inline key sets; a table without a
    ``file`` gets the sandbox's layout ``<dataset>/<table>.parquet``)."""
    if not isinstance(view, dict) or not isinstance(view.get("datasets"), list):
        raise SystemFailure("The server's catalogue has an unexpected shape.", code="INTERNAL")
    datasets = []
    for d in view["datasets"]:
        doc = {k: v for k, v in d.items() if k in _DATASET_FIELDS and v is not None}
        tables = []
        for t in d.get("tables", []):
            tdoc = {k: v for k, v in t.items() if k in _TABLE_FIELDS and v is not None}
            tdoc.setdefault("file", f"{d['id']}/{t['name']}.parquet")
            tdoc["columns"] = [
                {k: v for k, v in c.items() if k in _COLUMN_FIELDS and v is not None}
                for c in t.get("columns", [])
            ]
            tables.append(tdoc)
        doc["tables"] = tables
        datasets.append(doc)
    key_sets = {
        name: {"values": list(values)} for name, values in (view.get("key_sets") or {}).items()
    }
    return {"key_sets": key_sets, "datasets": datasets}


def _grant_doc_from_view(g: dict[str, Any]) -> dict[str, Any]:
    fields = ("id", "operator", "scenario", "datasets", "columns", "budget", "valid_from",
              "valid_until")  # fmt: skip
    return {k: g[k] for k in fields if k in g and g[k] is not None}


def _load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return data if isinstance(data, dict) else {}


def _write_yaml(path: Path, doc: dict[str, Any], title: str) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, default_flow_style=False)
    path.write_text(f"# {title}. Written by `sandbox dev init`; schema and policy only.\n"
                    + text, encoding="utf-8")  # fmt: skip


def example_query(catalog: Catalog, grants: Grants, operator: str) -> str | None:
    """A first query for the operator's first grant: a count and a mean by a public key."""
    for g in grants.for_operator(operator):
        for ds_id in g.datasets:
            ds = catalog.dataset(ds_id)
            if ds is None or ds.is_public:
                continue
            for t in ds.tables:
                group = next(
                    (c for c in t.columns if Use.GROUP in g.column_uses(c.uses, ds.id, t.name,
                     c.name) and c.keys is not None), None,
                )  # fmt: skip
                agg = next(
                    (c for c in t.columns if Use.AGGREGATE in g.column_uses(c.uses, ds.id,
                     t.name, c.name) and c.bounds is not None), None,
                )  # fmt: skip
                if group is None:
                    continue
                measures = ["COUNT(*) AS n"]
                if agg is not None:
                    measures.append(f"AVG({agg.name}) AS mean_{agg.name}")
                return (
                    f"-- operator: {operator}\n"
                    f"-- scenario: {g.scenario.id}\n"
                    f"-- {ds.title}: rows per {group.name}"
                    + (f", and the mean {agg.name}" if agg is not None else "") + ".\n"
                    f"SELECT {group.name}, {', '.join(measures)}\n"
                    f"FROM {t.name}\n"
                    f"GROUP BY {group.name}\n"
                )  # fmt: skip
    return None


def _readme(meta: dict[str, Any], grants: Grants, operator: str) -> str:
    lines = [
        f"# Local Jinyu project for {operator}",
        "",
        "Everything in `data/` is SYNTHETIC: generated from the public catalogue alone,",
        "never from the bureau's data. Results here show the shape and the noise of a",
        "query's answer, not real values. Nothing you run here spends privacy budget.",
        "",
        "## Your scenarios",
        "",
    ]
    for g in grants.for_operator(operator):
        lines.append(
            f"- `{g.scenario.id}` (grant `{g.id}`): datasets {', '.join(g.datasets)}; "
            f"ε ≤ {g.budget.max_epsilon_per_query:g} per query, {g.budget.epsilon:g} in total; "
            f"valid until {g.valid_until.date().isoformat()}"
        )
    lines += [
        "",
        "## Next",
        "",
        "```",
        "sandbox dev check queries/example.sql            # compile only, like the server",
        "sandbox dev run queries/example.sql              # synthetic data + DP noise",
        "sandbox dev run queries/example.sql --epsilon 0.5 --json",
        "sandbox dev synthetic --units 50000              # more synthetic rows",
        "```",
        "",
        "The catalogue and your grants are in `policies/`. See docs/local-development.md.",
        "",
    ]
    return "\n".join(lines)


def regenerate_synthetic(project: Path, *, units: int, seed: int) -> dict[str, Any]:
    """Rewrite a project's synthetic data with another size or seed."""
    from sandbox.synthetic import generate_synthetic

    if not (project / PROJECT_FILE).is_file():
        raise BadInput(f"{project} is not a local project folder", hint="Run `sandbox dev init`.")
    meta = _read_project(project)
    policies = project / "policies"
    catalog = load_catalog(policies)
    data = project / "data"
    if data.exists():
        shutil.rmtree(data)
    summary = generate_synthetic(
        data, catalog, [d.id for d in catalog.datasets], units=units, seed=seed, policies=policies
    )
    meta["synthetic"] = {"units": units, "seed": seed}
    (project / PROJECT_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")  # fmt: skip
    return summary


__all__ = [
    "DevContext",
    "PROJECT_FILE",
    "check_query",
    "diagnostic",
    "example_query",
    "find_project",
    "format_diagnostic",
    "init_project",
    "load_context",
    "parse_header",
    "regenerate_synthetic",
    "resolve_target",
    "run_query",
]
