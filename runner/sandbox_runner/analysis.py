"""Analysis jobs (issue 18): an operator's Python script, outputs only through ACRO.

This module runs INSIDE the runner container, as the runner's first process. It is
the *supervisor*: standard library only, it never imports the script's libraries
and never runs operator code in its own interpreter. It

1. checks the spec (``kind: "analysis"``): the script's files (in /plan/script, read
   only), the grant's tables (each one file, mounted alone under /data), ACRO's
   thresholds;
2. starts the *child* (``sandbox_runner.analysis_child``) in a new session, cwd a
   fresh directory on the /scratch tmpfs, stdin/stdout/stderr on /dev/null (what the
   script prints goes nowhere: not to the operator, not to a log), with a clean
   environment (one BLAS thread, matplotlib's Agg backend, its cache in /tmp);
3. when the child ends, kills every process left (``kill(-1, SIGKILL)``: a script's
   daemon cannot keep writing), then empties /out of anything the script put there;
4. collects ONLY what ACRO's ``finalise`` listed in its ``results.json``: tables and
   regressions as the CSV files ACRO wrote (``<uid>_<n>.csv``), figures as PNG files
   (checked by their signature). ``custom`` outputs (a file the script names with
   ``acro.custom_output``) are refused: listed as refused, never copied. Each file
   is read without following links, capped, hashed, and copied to
   /out/files/<n>.<ext>; /out/manifest.json is written by this module from the
   fields it checked, never copied from the script's side.

What comes out: ``status.json`` (``{"status": "ok"}`` or ``{"status": "failed",
"category": C}``), ``manifest.json`` and ``files/``. A script that raises, or exits
non-zero, fails with ``script_error`` and nothing else comes out: not its traceback,
not its exit code (either could carry data).

The child runs with the same uid as this module, so it could write a forged
``results.json``: ACRO's verdicts are an aid for the reviewer, never a release
decision. Every analysis output waits for human review (docs/analysis-jobs.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox_runner.contract import (
    ANALYSIS_FILES_DIR,
    ANALYSIS_KIND,
    ANALYSIS_MANIFEST,
    ANALYSIS_MAX_OUTPUTS,
    ANALYSIS_SCRIPT_DIR,
    PART_SUFFIX,
    SPEC_VERSION,
    STATUS_FAILED,
    STATUS_FILE,
    STATUS_OK,
)

ACRO_KEYS = {
    "safe_threshold": int,
    "safe_dof_threshold": int,
    "safe_nk_n": int,
    "safe_nk_k": float,
    "safe_pratio_p": float,
    "check_missing_values": bool,
    "zeros_are_disclosive": bool,
    "survival_safe_threshold": int,
    "safe_round_base": int,
}
# ACRO output types collected, and the one file kind each may carry.
COLLECTED = {
    "table": "csv",
    "regression": "csv",
    "histogram": "png",
    "pie chart": "png",
    "survival plot": "png",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_MAX = 4000  # characters kept of ACRO's summary, command, comment, exception
RESULTS_MAX_BYTES = 4 * 1024 * 1024
MANIFEST_MAX_BYTES = 1024 * 1024
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_UID = re.compile(r"^[A-Za-z0-9_.\- ]{1,100}$")


class AnalysisFailure(Exception):
    def __init__(self, category: str) -> None:
        super().__init__(category)
        self.category = category


def execute_analysis(
    spec: dict[str, Any],
    *,
    plan_dir: Path,
    data_dir: Path,
    out_dir: Path,
    scratch: Path,
    output_max_bytes: int,
    timeout_s: float | None = None,
) -> None:
    """Run the script of ``spec``; write status.json (and, on success, the outputs)."""
    try:
        entry, tables, acro = check_spec(spec, plan_dir, data_dir)
        results_dir = _run_child(
            entry, tables, acro, plan_dir=plan_dir, scratch=scratch, timeout_s=timeout_s
        )
        wipe(out_dir)
        manifest = collect(results_dir, out_dir, output_max_bytes)
        if len(json.dumps(manifest)) > MANIFEST_MAX_BYTES:
            raise AnalysisFailure("output_too_large")
        _write_json(out_dir / ANALYSIS_MANIFEST, manifest)
        _write_json(out_dir / STATUS_FILE, {"status": STATUS_OK})
    except AnalysisFailure as exc:
        wipe(out_dir)
        _write_json(out_dir / STATUS_FILE, {"status": STATUS_FAILED, "category": exc.category})


def check_spec(
    spec: Any, plan_dir: Path, data_dir: Path
) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """(entry script path, table name -> file path, ACRO thresholds); else plan_mismatch."""
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise AnalysisFailure("plan_mismatch")
    if spec.get("kind") != ANALYSIS_KIND:
        raise AnalysisFailure("plan_mismatch")
    entry_name = spec.get("entry")
    if not isinstance(entry_name, str) or not _PATH_PART.match(entry_name):
        raise AnalysisFailure("plan_mismatch")
    entry = plan_dir / ANALYSIS_SCRIPT_DIR / entry_name
    if not entry.is_file() or entry.is_symlink() or not entry_name.endswith(".py"):
        raise AnalysisFailure("plan_mismatch")
    raw_tables = spec.get("tables")
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise AnalysisFailure("plan_mismatch")
    tables: dict[str, str] = {}
    for name, rel in raw_tables.items():
        if not isinstance(name, str) or not _TABLE_NAME.match(name) or not isinstance(rel, str):
            raise AnalysisFailure("plan_mismatch")
        parts = rel.split("/")
        if len(parts) < 2 or not all(_PATH_PART.match(p) for p in parts):
            raise AnalysisFailure("plan_mismatch")
        path = data_dir.joinpath(*parts)
        if not path.is_file():
            raise AnalysisFailure("data_missing")
        tables[name] = str(path)
    raw_acro = spec.get("acro")
    if not isinstance(raw_acro, dict) or set(raw_acro) - set(ACRO_KEYS):
        raise AnalysisFailure("plan_mismatch")
    acro: dict[str, Any] = {}
    for key, value in raw_acro.items():
        kind = ACRO_KEYS[key]
        if kind is bool and not isinstance(value, bool):
            raise AnalysisFailure("plan_mismatch")
        if kind is not bool and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise AnalysisFailure("plan_mismatch")
        acro[key] = kind(value)
    return entry, tables, acro


def _run_child(
    entry: Path,
    tables: dict[str, str],
    acro: dict[str, Any],
    *,
    plan_dir: Path,
    scratch: Path,
    timeout_s: float | None,
) -> Path:
    """Run the script in the child; return the directory ACRO finalised into."""
    work = scratch / "work"
    results = scratch / "acro-results"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(results, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    config = {
        "entry": str(entry),
        "script_dir": str(plan_dir / ANALYSIS_SCRIPT_DIR),
        "tables": tables,
        "acro": acro,
        "results": str(results),
    }
    config_path = scratch / "analysis-config.json"
    config_path.write_text(json.dumps(config))
    tmp = os.environ.get("TMPDIR", "/tmp")  # noqa: S108 (the container's tmpfs)
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(work),
        "TMPDIR": tmp,
        "MPLCONFIGDIR": tmp,
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    try:
        proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module, fixed args
            [sys.executable, "-m", "sandbox_runner.analysis_child", str(config_path)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise AnalysisFailure("resource_limit") from exc
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise AnalysisFailure("timeout") from exc
    finally:
        _kill_stragglers(proc.pid)
    if code < 0 and -code == signal.SIGKILL:
        raise AnalysisFailure("memory")  # the kernel's OOM killer (or the pid limit's)
    if code != 0:
        raise AnalysisFailure("script_error")
    return results


def _kill_stragglers(child: int) -> None:
    """Kill every process the script left (its daemons, forks, a new session's)."""
    if os.getpid() == 1:  # in the container: every process we may signal but ourselves
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
    else:  # in-process tests on a host: only the child's session
        with contextlib.suppress(OSError):
            os.killpg(child, signal.SIGKILL)
    time.sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        while os.waitpid(-1, os.WNOHANG) != (0, 0):
            pass


def wipe(out_dir: Path) -> None:
    """Remove everything in out_dir (whatever the script may have written there)."""
    for entry in list(out_dir.iterdir()):
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                for root, dirs, _files in os.walk(entry):
                    for name in dirs:
                        with contextlib.suppress(OSError):
                            os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
                os.chmod(entry, 0o700)
                shutil.rmtree(entry)
            else:
                entry.unlink()


def collect(results_dir: Path, out_dir: Path, output_max_bytes: int) -> dict[str, Any]:
    """ACRO's checked outputs → /out/files and the manifest (only fields checked here)."""
    files_dir = out_dir / ANALYSIS_FILES_DIR
    files_dir.mkdir(mode=0o755)
    outputs: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    manifest: dict[str, Any] = {"outputs": outputs, "refused": refused, "acro_version": ""}
    results_file = results_dir / "results.json"
    if not os.path.lexists(results_file):
        return manifest  # no ACRO output at all (the script made none)
    try:
        results = json.loads(_read_regular(results_file, RESULTS_MAX_BYTES))
    except ValueError as exc:
        raise AnalysisFailure("output_invalid") from exc
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
        raise AnalysisFailure("output_invalid")
    manifest["acro_version"] = _text(results.get("version"), 40)
    budget = output_max_bytes
    for uid, record in results["results"].items():
        if not isinstance(record, dict) or not isinstance(uid, str) or not _UID.match(uid):
            raise AnalysisFailure("output_invalid")
        kind = record.get("type")
        if kind not in COLLECTED:
            refused.append({"uid": uid, "type": _text(kind, 40), "reason": "custom"})
            continue
        if len(outputs) >= ANALYSIS_MAX_OUTPUTS:
            raise AnalysisFailure("output_too_large")
        files: list[dict[str, Any]] = []
        for item in record.get("files") or []:
            name = item.get("name") if isinstance(item, dict) else None
            data = _output_file(results_dir, name, COLLECTED[kind], uid)
            budget -= len(data)
            if budget < 0:
                raise AnalysisFailure("output_too_large")
            stored = f"{len(outputs)}_{len(files)}.{COLLECTED[kind]}"
            (files_dir / stored).write_bytes(data)
            files.append(
                {
                    "name": stored,
                    "format": COLLECTED[kind],
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "sdc": _sdc(item.get("sdc")),
                }
            )
        if not files:
            raise AnalysisFailure("output_invalid")
        properties = record.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        outputs.append(
            {
                "uid": uid,
                "type": kind,
                "method": _text(properties.get("method"), 40),
                "status": record.get("status")
                if record.get("status") in {"pass", "fail", "review"}
                else "review",
                "summary": _text(record.get("summary"), TEXT_MAX),
                "command": _text(record.get("command"), TEXT_MAX),
                "exception": _text(record.get("exception"), TEXT_MAX),
                "comments": [_text(c, TEXT_MAX) for c in (record.get("comments") or [])[:20]],
                "checks": _checks(record.get("fair")),
                "files": files,
            }
        )
    return manifest


def _output_file(results_dir: Path, name: Any, fmt: str, uid: str) -> bytes:
    if not isinstance(name, str) or not _PATH_PART.match(name) or not name.endswith("." + fmt):
        raise AnalysisFailure("output_invalid")
    if fmt == "csv" and not re.fullmatch(re.escape(uid) + r"_[0-9]{1,4}\.csv", name):
        raise AnalysisFailure("output_invalid")  # ACRO names its tables <uid>_<n>.csv
    data = _read_regular(results_dir / name, 64 * 1024 * 1024)
    if fmt == "png" and not data.startswith(PNG_SIGNATURE):
        raise AnalysisFailure("output_invalid")
    if fmt == "csv":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnalysisFailure("output_invalid") from exc
    return data


def _checks(fair: Any) -> dict[str, str]:
    status = fair.get("check_status") if isinstance(fair, dict) else None
    if not isinstance(status, dict):
        return {}
    return {
        _text(k, 80): v
        for k, v in list(status.items())[:50]
        if isinstance(k, str) and v in {"pass", "fail", "review"}
    }


def _sdc(sdc: Any) -> dict[str, Any]:
    """ACRO's per-check counts (and failing cells' positions) for a file."""
    if not isinstance(sdc, dict):
        return {}
    clean: dict[str, Any] = {}
    summary = sdc.get("summary")
    if isinstance(summary, dict):
        clean["summary"] = {
            _text(k, 80): v
            for k, v in list(summary.items())[:50]
            if isinstance(v, int) and not isinstance(v, bool)
        }
    cells = sdc.get("cells")
    if isinstance(cells, dict):
        kept: dict[str, list[list[int]]] = {}
        for check, positions in list(cells.items())[:50]:
            if isinstance(positions, list):
                kept[_text(check, 80)] = [
                    [int(x) for x in pos[:2]]
                    for pos in positions[:10000]
                    if isinstance(pos, list)
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in pos[:2])
                ]
        clean["cells"] = kept
    return clean


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _read_regular(path: Path, max_bytes: int) -> bytes:
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise AnalysisFailure("output_invalid") from exc
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise AnalysisFailure("output_invalid")
    if info.st_size > max_bytes:
        raise AnalysisFailure("output_too_large")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise AnalysisFailure("output_invalid") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise AnalysisFailure("output_invalid")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AnalysisFailure("output_too_large")
    return data


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + PART_SUFFIX)
    tmp.write_text(json.dumps(value, sort_keys=True, ensure_ascii=False))
    os.replace(tmp, path)
