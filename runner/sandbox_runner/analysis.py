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
   environment (one BLAS thread, matplotlib's Agg backend, its cache in /tmp). The
   script's ``jinyu.acro`` RECORDS its ACRO calls into a call log on scratch;
3. when the child ends, kills every process left (``kill(-1, SIGKILL)``: a script's
   daemon cannot keep writing), removes everything of the script's on scratch but
   the call log, then starts the *checker* (``sandbox_runner.analysis_checker``,
   ``python -I -B``) with a cwd, HOME, TMPDIR and MPLCONFIGDIR made only now: it
   replays the log into a fresh ACRO session with the bureau's thresholds and
   finalises into a fresh results directory;
4. empties /out of anything the script put there and collects ONLY what the
   checker's ACRO listed in its ``results.json``: tables and regressions as the CSV
   files ACRO wrote (``<uid>_<n>.csv``), figures as PNG files (checked by their
   signature). ``custom`` outputs (a file the script names with
   ``acro.custom_output``) are refused: listed as refused, never copied. Each file
   is read without following links, capped, hashed, and copied to
   /out/files/<n>.<ext>; /out/manifest.json is written by this module from the
   fields it checked, never copied from the script's side.

What comes out: ``status.json`` (``{"status": "ok"}`` or ``{"status": "failed",
"category": C}``), ``manifest.json`` and ``files/``. A script that raises, or exits
non-zero, fails with ``script_error`` and nothing else comes out: not its traceback,
not its exit code (either could carry data). A call log the recorder could not have
written (the script edited it) is ``output_invalid``.

The script's own ACRO session, its files and its results are never read: a verdict
is computed in a process the script never ran in, so the script cannot forge it. It
still chooses the inputs ACRO is given (docs/analysis-jobs.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox_runner.analysis_collect import MANIFEST_MAX_BYTES, AnalysisFailure, collect
from sandbox_runner.contract import (
    ANALYSIS_KIND,
    ANALYSIS_MANIFEST,
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
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


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
        calls_dir = _run_child(
            entry, tables, acro, plan_dir=plan_dir, scratch=scratch, timeout_s=timeout_s
        )
        results_dir = _run_checker(calls_dir, acro, scratch=scratch, timeout_s=timeout_s)
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
    """Run the script in the child; return the directory of its call log."""
    work = scratch / "work"
    calls = scratch / "calls"
    for old in (work, calls):
        shutil.rmtree(old, ignore_errors=True)
        old.mkdir(mode=0o700, parents=True)
    config = {
        "entry": str(entry),
        "script_dir": str(plan_dir / ANALYSIS_SCRIPT_DIR),
        "tables": tables,
        "acro": acro,
        "calls": str(calls),
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
        **_QUIET_ENV,
    }
    code = _wait(
        [sys.executable, "-m", "sandbox_runner.analysis_child", str(config_path)],
        cwd=work,
        env=env,
        timeout_s=timeout_s,
    )
    if code != 0:
        raise AnalysisFailure("script_error")
    return calls


_QUIET_ENV = {
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
CHECKER_CODES = {10: "output_invalid", 11: "output_too_large", 12: "memory"}


def _run_checker(
    calls: Path, acro: dict[str, Any], *, scratch: Path, timeout_s: float | None
) -> Path:
    """Replay the call log in the checker; return the directory it finalised into.

    Runs after ``_kill_stragglers``: no process of the script is left, so what is
    made here (the checker's cwd, HOME, TMPDIR, MPLCONFIGDIR, results directory)
    is fresh; the script could have planted files anywhere writable, not in these.
    """
    try:
        info = os.lstat(calls)
    except OSError as exc:
        raise AnalysisFailure("output_invalid") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise AnalysisFailure("output_invalid")  # replaced by a link or a file
    for entry in list(scratch.iterdir()):  # the script's leftovers: free the space
        if entry.name != calls.name:
            _remove(entry)
    try:
        base = Path(tempfile.mkdtemp(prefix="check-", dir=scratch))
        for name in ("work", "home", "tmp", "custom"):
            (base / name).mkdir(mode=0o700)
        config = {
            "calls": str(calls),
            "acro": acro,
            "results": str(base / "results"),
            "custom": str(base / "custom"),
        }
        (base / "config.json").write_text(json.dumps(config))
    except OSError as exc:
        raise AnalysisFailure("resource_limit") from exc
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(base / "home"),
        "TMPDIR": str(base / "tmp"),
        "MPLCONFIGDIR": str(base / "tmp"),
        **_QUIET_ENV,
    }
    lib = str(Path(__file__).resolve().parent.parent)  # /opt/runner/lib, read-only
    bootstrap = (
        f"import sys; sys.path.insert(0, {lib!r}); "
        "from sandbox_runner.analysis_checker import run; run()"
    )
    code = _wait(
        [sys.executable, "-I", "-B", "-c", bootstrap, str(base / "config.json")],
        cwd=base / "work",
        env=env,
        timeout_s=timeout_s,
    )
    if code != 0:
        raise AnalysisFailure(CHECKER_CODES.get(code, "output_invalid"))
    return base / "results"


def _wait(args: list[str], *, cwd: Path, env: dict[str, str], timeout_s: float | None) -> int:
    """Run one process in its own session, silent; its exit code, every straggler killed."""
    try:
        proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module, fixed args
            args,
            cwd=cwd,
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
    return code


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
        _remove(entry)


def _remove(entry: Path) -> None:
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


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + PART_SUFFIX)
    tmp.write_text(json.dumps(value, sort_keys=True, ensure_ascii=False))
    os.replace(tmp, path)
