"""``sandbox dev run script.py``: an analysis script on synthetic data, in the runner
image, with the same ACRO checks as in the sandbox (issue 18).

The host has no pandas or ACRO, so the script runs exactly as an analysis job does:
the Docker executor's analysis path (``executors.docker.analysis.run_analysis``: the
same hardened container, the same supervisor, the same collection of ACRO's outputs
only), on the grant's tables (only those whose every column has a use), with ACRO's
thresholds from the local ``review.yaml`` for the strictest grade. The data is the
project's synthetic data (``sandbox dev init``), or made on the fly. Nothing is
recorded, no budget is involved; the outputs (of synthetic data) may be written to a
folder to look at.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sandbox.dev.context import ADHOC_UNITS, DevContext, resolve_target
from sandbox.errors import BadInput, Refused
from sandbox.grants import find_grant
from sandbox.settings import Settings


def read_script(path: Path, entry: str | None = None) -> tuple[dict[str, str], str]:
    """A .py file (run as itself) or a folder of .py files (``entry``, default main.py)."""
    if path.is_file():
        return {path.name: path.read_text(encoding="utf-8")}, path.name
    if path.is_dir():
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(path.glob("*.py"))}
        if not files:
            raise BadInput(f"The folder {str(path)!r} holds no .py file.")
        return files, entry or "main.py"
    raise BadInput(f"No file {str(path)!r}.", hint="Pass a .py file or a folder of them.")


def run_script(
    files: dict[str, str],
    entry: str,
    ctx: DevContext,
    settings: Settings,
    *,
    operator: str | None = None,
    scenario: str | None = None,
    units: int = ADHOC_UNITS,
    seed: int = 0,
    out_dir: Path | None = None,
    executor: Any = None,
) -> dict[str, Any]:
    """Run the script in the runner container on synthetic data; ACRO's outputs, their
    verdicts and checks, what review would need. ``out_dir``: write the output files."""
    from sandbox.executors.docker.analysis import analysis_spec, run_analysis, split_tables
    from sandbox.jobs import analysis
    from sandbox.review import load_rules

    op, sc = resolve_target(ctx, {}, operator=operator, scenario=scenario)
    grant = find_grant(ctx.grants, op, sc)
    if not grant.analysis_jobs:
        raise Refused(
            f"The grant {grant.id!r} does not allow analysis jobs.",
            code="ANALYSIS_NOT_GRANTED",
            hint="Ask the bureau for a grant with analysis_jobs, or write SQL.",
        )
    data = analysis.check_script(files, entry)
    given, grades = analysis.analysis_tables(ctx.catalog, grant)
    tables, columns = split_tables(given)
    if not tables:
        raise Refused(f"The grant {grant.id!r} has no table a script may read.",
                      code="ANALYSIS_NOT_GRANTED")  # fmt: skip
    acro, approvals = analysis.acro_thresholds(load_rules(ctx.policies), grades)
    own = executor is None
    if own:
        from sandbox.executors.docker import DockerExecutor

        executor = DockerExecutor(settings.replace(warm_runners=0))
    try:
        with tempfile.TemporaryDirectory(prefix="jinyu-dev-") as tmp:
            root = ctx.data_root
            if root is None or not all((root / rel).is_file() for rel in tables.values()):
                root = Path(tmp)
                _synthesise(tables, ctx, root, units=units, seed=seed)
            out = run_analysis(
                executor,
                analysis_spec(entry=entry, tables=tables, acro=acro),
                data,
                data_root=root,
                job_id="dev-analysis",
                allow_synthetic=True,
                columns=columns,
            )
    finally:
        if own:
            executor.close()
    written = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in sorted(out.files.items()):
            (out_dir / name).write_bytes(content)
            written.append(str(out_dir / name))
    return {
        "synthetic": True,
        "operator": op,
        "scenario": sc,
        "grant": grant.id,
        "entry": entry,
        "script_sha256": analysis.script_sha256(data),
        "tables": sorted(tables),
        "acro": acro,
        "acro_version": out.manifest["acro_version"],
        "required_approvals": approvals,
        "outputs": out.manifest["outputs"],
        "refused": out.manifest["refused"],
        "written": written,
        "budget_spent": 0.0,
    }


def _synthesise(
    tables: dict[str, str], ctx: DevContext, out: Path, *, units: int, seed: int
) -> None:
    from sandbox.synthetic import generate_synthetic

    wanted: list[str] = []
    for name in tables:
        found = ctx.catalog.find_table(name)
        if found is not None and found[0].id not in wanted:
            wanted.append(found[0].id)
    generate_synthetic(out, ctx.catalog, wanted, units=units, seed=seed, policies=ctx.policies)
