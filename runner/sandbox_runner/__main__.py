"""Entry point inside the runner container: ``python3 -m sandbox_runner``.

Reads the spec from /plan/spec.json (read-only mount), the data from /data
(read-only mounts), writes the result or a status to /out, spills to /scratch.
Limits arrive as environment variables set by the Docker executor from Settings.

Nothing is printed: stdout and stderr are pointed at /dev/null before anything else
runs, so not even a crashing library can write a data value to the container log.
Exit code 0 means ``/out/result.arrow`` is there; 1 means ``/out/status.json`` holds
the failure category; 2 means the runner itself could not start; 3 means a warm
runner waited ``RUNNER_WAIT_S`` seconds and no spec came.

Warm mode (``RUNNER_WAIT_S`` set): the executor's libraries are imported and DuckDB
started once, then the runner waits for the host to drop /plan/spec.json (atomically,
by rename) and runs that one job. The container still serves exactly one job.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_CRASHED = 2  # = contract.EXIT_CRASHED: importing even the contract may fail here


def _silence() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def main() -> int:
    _silence()
    try:
        import json

        from sandbox_runner import contract as c
        from sandbox_runner.executor import execute

        env = os.environ
        plan_dir = Path(env.get(c.ENV_PLAN_DIR, c.PLAN_DIR))
        out_dir = Path(env.get(c.ENV_OUT_DIR, c.OUT_DIR))
        data_dir = Path(env.get(c.ENV_DATA_DIR, c.DATA_DIR))
        scratch = Path(env.get(c.ENV_SCRATCH_DIR, c.SCRATCH_DIR))
        spec_path = plan_dir / c.SPEC_FILE
        wait_s = env.get(c.ENV_WAIT_S)
        if wait_s:
            import duckdb

            duckdb.connect(":memory:").close()  # load the engine before the job arrives
            if not _wait_for(spec_path, float(wait_s)):
                return c.EXIT_IDLE
        with open(spec_path, "rb") as fh:
            spec = json.loads(fh.read(c.SPEC_MAX_BYTES))
        max_out = env.get(c.ENV_OUTPUT_MAX_BYTES)
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind == c.PROJECT_KIND:
            from sandbox_runner.project import execute_projection

            execute_projection(spec, data_dir=data_dir, out_dir=out_dir)
            return _exit_code(out_dir)
        if kind == c.ANALYSIS_KIND:
            from sandbox_runner.analysis import execute_analysis

            execute_analysis(
                spec,
                plan_dir=plan_dir,
                data_dir=data_dir,
                out_dir=out_dir,
                scratch=scratch,
                output_max_bytes=int(max_out) if max_out else 8 * 1024 * 1024,
            )
            return _exit_code(out_dir)
        execute(
            spec,
            data_dir,
            out_dir,
            memory_limit=memory_limit(env.get(c.ENV_MEMORY_LIMIT, "1GB")),
            threads=int(env.get(c.ENV_THREADS, "1")),
            temp_dir=scratch,
            max_temp_size=env.get(c.ENV_MAX_TEMP_SIZE),
            output_max_bytes=int(max_out) if max_out else None,
        )
        return _exit_code(out_dir)
    except BaseException:  # noqa: BLE001 - nothing may escape to stderr
        return EXIT_CRASHED


def _exit_code(out_dir: Path) -> int:
    """EXIT_OK if the job's status.json says ok, else EXIT_FAILED."""
    import json

    from sandbox_runner import contract as c

    with open(out_dir / c.STATUS_FILE, "rb") as fh:
        status = json.loads(fh.read(c.STATUS_MAX_BYTES))
    return c.EXIT_OK if status.get("status") == c.STATUS_OK else c.EXIT_FAILED


CGROUP_LIMITS = (
    "/sys/fs/cgroup/memory.max",  # cgroup v2
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
)


def memory_limit(requested: str, files: tuple[str, ...] = CGROUP_LIMITS) -> str:
    """DuckDB's memory limit: the host's (``NNNMB``), but never above 3/4 of this
    container's own memory cgroup, read from the kernel. The host sizes it well below
    (sandbox/executors/budget.py); this only guards against a host that did not."""
    import re

    match = re.fullmatch(r"([0-9]{1,9})MB", requested)
    if match is None:
        return requested
    for name in files:
        try:
            with open(name, encoding="ascii") as fh:
                text = fh.read(64).strip()
        except OSError:
            continue
        if text.isdigit():
            cap = int(text) * 3 // 4 // (1 << 20)
            return f"{max(1, min(int(match[1]), cap))}MB"
    return requested


def _wait_for(path: Path, wait_s: float) -> bool:
    import time

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.003)
    return False


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
