"""Analysis jobs in the runner container (issue 18): a script in, ACRO's outputs out.

The same container as a SQL job (``containers.launch``: no network, read-only root,
non-root, every limit from Settings), with these differences:

- each granted table FILE is mounted alone, read-only, at ``/data/<dataset>/<file>``
  (a script is Python, not locked-down DuckDB: it could open any file it can see,
  so it sees only the grant's tables); a table with columns of no declared use is
  mounted as its projection to the usable ones (``projection``), never raw;
- the script's files go read-only into ``/plan/script``;
- what comes back is ``manifest.json`` and ``files/`` (sandbox_runner.analysis),
  read here without trusting any of it: regular files only, capped, the manifest's
  fields checked, every file's SHA-256 compared with the manifest's;
- it takes a slot of the analysis lane (``SANDBOX_ANALYSIS_SLOTS``), never one of the
  SQL jobs' slots.

Never a warm runner: a warm one imports DuckDB for SQL and serves one dataset set.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox_runner import contract

from sandbox.errors import ExecutionFailed, Refused
from sandbox.executors.docker import containers
from sandbox.executors.docker.projection import projected
from sandbox.executors.output import _read_regular, read_status, status_category

if TYPE_CHECKING:
    from sandbox.executors.docker.executor import DockerExecutor

FILE_NAME = re.compile(r"^[0-9]{1,3}_[0-9]{1,4}\.(csv|png)$")
OUTPUT_TYPES = {"table", "regression", "histogram", "pie chart", "survival plot"}
VERDICTS = {"pass", "fail", "review"}


@dataclass
class AnalysisOutput:
    """What an analysis job returned: the checked manifest and its files (bytes)."""

    manifest: dict[str, Any]
    files: dict[str, bytes]
    wall_s: float
    stats: dict[str, Any] = field(default_factory=dict)


def split_tables(tables: dict[str, Any]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """A job's stored tables as (table -> ``dataset/file``, ``dataset/file`` -> columns).

    A stored table is its file (every column usable) or ``{"file", "columns"}`` (only
    those columns may reach the script: ``sandbox.executors.docker.projection``)."""
    files: dict[str, str] = {}
    columns: dict[str, list[str]] = {}
    for name, value in tables.items():
        if isinstance(value, dict):
            files[name] = str(value["file"])
            columns[files[name]] = [str(c) for c in value["columns"]]
        else:
            files[name] = str(value)
    return files, columns


def analysis_spec(*, entry: str, tables: dict[str, str], acro: dict[str, Any]) -> dict[str, Any]:
    """The runner spec of an analysis job (``contract.ANALYSIS_KIND``)."""
    return {
        "version": contract.SPEC_VERSION,
        "kind": contract.ANALYSIS_KIND,
        "entry": entry,
        "tables": dict(tables),
        "acro": dict(acro),
    }


def table_mounts(
    tables: dict[str, str], data_root: Path, *, allow_synthetic: bool = False
) -> dict[str, Path]:
    """``dataset/file`` -> host file, for each table (path rules as for a Plan). Data
    marked synthetic is refused (as for SQL jobs) unless ``allow_synthetic`` (only
    ``sandbox dev run script.py``: the operator's own synthetic data)."""
    from sandbox.synthetic import is_synthetic

    root = data_root.resolve()
    mounts: dict[str, Path] = {}
    for rel in tables.values():
        parts = rel.split("/")
        if len(parts) != 2 or any(p in {"", ".", ".."} or p.startswith(".") for p in parts):
            raise ExecutionFailed("plan_mismatch")
        path = (root / parts[0] / parts[1]).resolve()
        if path.parent.parent != root:
            raise ExecutionFailed("plan_mismatch")
        if not path.is_file():
            raise ExecutionFailed("data_missing")
        if not allow_synthetic and is_synthetic(path):
            raise Refused(
                "The sandbox refuses data marked synthetic.",
                code="SYNTHETIC_DATA_REFUSED",
                hint="Synthetic data is for `sandbox dev run`; install the real data.",
            )
        mounts[rel] = path
    return mounts


def run_analysis(
    executor: DockerExecutor,
    spec: dict[str, Any],
    files: dict[str, bytes],
    *,
    data_root: Path,
    job_id: str,
    allow_synthetic: bool = False,
    columns: dict[str, list[str]] | None = None,
) -> AnalysisOutput:
    """Run one analysis spec in a fresh container; raise ExecutionFailed(category).

    ``columns`` (``dataset/file`` -> usable columns): tables the script sees only
    projected to those columns (``projection``: a runner container cuts them first)."""
    mounts = table_mounts(spec["tables"], Path(data_root), allow_synthetic=allow_synthetic)
    executor.start()
    settings = executor.settings
    # the analysis lane's slots, not the SQL jobs' (SANDBOX_ANALYSIS_SLOTS)
    with (
        executor._analysis_slots.slot(),  # noqa: SLF001 - the executor's own fair slots
        projected(executor, mounts, columns or {}, job_id=job_id) as mounts,
    ):
        began = time.monotonic()
        stats: dict[str, Any] = {"limits": executor.limits, "kind": contract.ANALYSIS_KIND}
        runner = containers.launch(
            executor.client,
            settings,
            mounts,
            image=executor._image,  # noqa: SLF001
            home=executor.home_label,
            runs_dir=executor.runs_dir,
            backing=_backing(executor),
            job_label=job_id,
            spec=spec,
            files=files,
        )
        try:
            exit_code, timed_out = containers.wait(
                runner.container, timeout_s=settings.job_timeout_s, started=time.monotonic()
            )
            stats["wall_s"] = round(time.monotonic() - began, 4)
            if timed_out:
                raise ExecutionFailed("timeout")
            if exit_code != 0:
                runner.container.reload()
                if runner.container.attrs.get("State", {}).get("OOMKilled"):
                    raise ExecutionFailed("memory")
                if exit_code == containers.EXIT_KILLED:
                    raise ExecutionFailed("memory")
                raise ExecutionFailed(status_category(read_status(runner.out_dir)))
            manifest, data = read_outputs(runner.out_dir, max_bytes=settings.output_max_bytes)
        finally:
            containers.discard(runner)
    return AnalysisOutput(manifest=manifest, files=data, wall_s=stats["wall_s"], stats=stats)


def _backing(executor: DockerExecutor) -> Any:
    if executor.backing is None:
        raise ExecutionFailed("engine_error")
    return executor.backing


def read_outputs(out_dir: Path, *, max_bytes: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """manifest.json and files/ from /out, checked again on the host."""
    if read_status(out_dir).get("status") != contract.STATUS_OK:
        raise ExecutionFailed("output_invalid")
    try:
        raw = json.loads(_read_regular(out_dir / contract.ANALYSIS_MANIFEST, 1 << 20))
    except ValueError as exc:
        raise ExecutionFailed("output_invalid") from exc
    manifest = check_manifest(raw)
    files: dict[str, bytes] = {}
    budget = max_bytes
    for output in manifest["outputs"]:
        for item in output["files"]:
            data = _read_regular(out_dir / contract.ANALYSIS_FILES_DIR / item["name"], budget)
            budget -= len(data)
            if hashlib.sha256(data).hexdigest() != item["sha256"] or len(data) != item["bytes"]:
                raise ExecutionFailed("output_invalid")
            files[item["name"]] = data
    return manifest, files


def check_manifest(raw: Any) -> dict[str, Any]:
    """Only the manifest's known fields, each of its type; anything else: output_invalid."""
    if not isinstance(raw, dict) or not isinstance(raw.get("outputs"), list):
        raise ExecutionFailed("output_invalid")
    outputs = []
    seen: set[str] = set()
    for out in raw["outputs"][: contract.ANALYSIS_MAX_OUTPUTS + 1]:
        if not isinstance(out, dict) or out.get("type") not in OUTPUT_TYPES:
            raise ExecutionFailed("output_invalid")
        files = []
        for item in out.get("files") or []:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not FILE_NAME.match(name) or name in seen:
                raise ExecutionFailed("output_invalid")
            seen.add(name)
            digest, size = item.get("sha256"), item.get("bytes")
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ExecutionFailed("output_invalid")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ExecutionFailed("output_invalid")
            files.append(
                {
                    "name": name,
                    "format": name.rsplit(".", 1)[1],
                    "bytes": size,
                    "sha256": digest,
                    "sdc": item.get("sdc") if isinstance(item.get("sdc"), dict) else {},
                }
            )
        if not files:
            raise ExecutionFailed("output_invalid")
        checks = out.get("checks")
        if not isinstance(checks, dict):
            checks = {}
        outputs.append(
            {
                "uid": _text(out.get("uid"), 100),
                "type": out["type"],
                "method": _text(out.get("method"), 40),
                "status": out.get("status") if out.get("status") in VERDICTS else "review",
                "summary": _text(out.get("summary"), 4000),
                "command": _text(out.get("command"), 4000),
                "exception": _text(out.get("exception"), 4000),
                "comments": [_text(c, 4000) for c in (out.get("comments") or [])[:20]],
                "checks": {
                    _text(k, 80): v
                    for k, v in checks.items()
                    if v in VERDICTS and isinstance(k, str)
                },
                "files": files,
            }
        )
    if len(outputs) > contract.ANALYSIS_MAX_OUTPUTS:
        raise ExecutionFailed("output_too_large")
    refused = [
        {"uid": _text(r.get("uid"), 100), "type": _text(r.get("type"), 40), "reason": "custom"}
        for r in (raw.get("refused") or [])[:100]
        if isinstance(r, dict)
    ]
    return {
        "outputs": outputs,
        "refused": refused,
        "acro_version": _text(raw.get("acro_version"), 40),
    }


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""
