"""``sandbox dev init``: a local project folder from policy files or from a server, and
its synthetic data."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from sandbox.catalog import Catalog, Use, load_catalog
from sandbox.dev.context import DEFAULT_UNITS, PROJECT_FILE, read_project
from sandbox.errors import BadInput, Refused, SystemFailure
from sandbox.grants import Grants, load_grants

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
    if policies is not None and (Path(policies) / "review.yaml").is_file():
        # the output-review rules `dev run` applies, as the server does
        shutil.copyfile(Path(policies) / "review.yaml", pol / "review.yaml")
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
    meta = read_project(project)
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
