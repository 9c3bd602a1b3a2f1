"""An analysis job's tables cut down to their usable columns, in a runner container.

A script could read every byte of a file it can see, so a table holding a column with
no declared use (a name, an ID number) is never mounted raw for it. Such a table is
first projected: a runner container (``sandbox_runner.project``, the same lock-down
and limits as every runner, the raw table files mounted read-only) writes each
table's usable columns to Parquet files in its ``/out``, which lives in RAM like an
exact result (``hostfs``). Those files are then mounted, read-only, in the analysis
container at the raw files' places; the host never opens them, and they are removed
with the run directory when the analysis container is done.

The projection's failures are the analysis job's (``timeout``, ``memory``,
``resource_limit``, ``data_missing``, ...): categories only.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_runner import contract

from sandbox.errors import ExecutionFailed
from sandbox.executors.docker import containers
from sandbox.executors.docker.hostfs import Backing
from sandbox.executors.output import read_status, status_category

if TYPE_CHECKING:
    from sandbox.executors.docker.executor import DockerExecutor

OUT_SLACK = 16 << 20  # Parquet metadata and a different compression than the raw file's


def projection_spec(columns: dict[str, list[str]]) -> dict[str, object]:
    """The runner spec of a projection: ``dataset/file`` -> the columns to keep."""
    return {
        "version": contract.SPEC_VERSION,
        "kind": contract.PROJECT_KIND,
        "tables": {rel: list(cols) for rel, cols in columns.items()},
    }


@contextlib.contextmanager
def projected(
    executor: DockerExecutor,
    mounts: dict[str, Path],
    columns: dict[str, list[str]],
    *,
    job_id: str,
) -> Iterator[dict[str, Path]]:
    """``mounts`` with each table of ``columns`` replaced by its projection (while open).

    ``mounts``: ``dataset/file`` -> raw host file (``analysis.table_mounts``);
    ``columns``: ``dataset/file`` -> the usable columns, for the tables to cut down.
    With no table to cut, ``mounts`` as it is and no container."""
    todo = {rel: cols for rel, cols in columns.items() if rel in mounts}
    if not todo:
        yield mounts
        return
    settings = executor.settings
    raw = {rel: mounts[rel] for rel in todo}
    cap = 2 * sum(path.stat().st_size for path in raw.values()) + OUT_SLACK
    runner = containers.launch(
        executor.client,
        settings,
        raw,
        image=executor._image,  # noqa: SLF001 - the executor's own image
        home=executor.home_label,
        runs_dir=executor.runs_dir,
        backing=_backing(executor),
        job_label=job_id,
        spec=projection_spec(todo),
        out_cap=cap,
    )
    try:
        exit_code, timed_out = containers.wait(
            runner.container, timeout_s=settings.job_timeout_s, started=time.monotonic()
        )
        if timed_out:
            raise ExecutionFailed("timeout")
        if exit_code != 0:
            if exit_code == containers.EXIT_KILLED:
                raise ExecutionFailed("memory")
            raise ExecutionFailed(status_category(read_status(runner.out_dir)))
        if read_status(runner.out_dir).get("status") != contract.STATUS_OK:
            raise ExecutionFailed("output_invalid")
        containers.remove(runner.container)  # the files stay, in RAM, until we are done
        runner.container = None
        folder = runner.out_dir / contract.PROJECT_DIR
        out = dict(mounts)
        for n, rel in enumerate(todo):
            out[rel] = _regular(folder / f"{n}.parquet")
        yield out
    finally:
        containers.discard(runner)


def _regular(path: Path) -> Path:
    """``path`` if it is a regular file (not a link), else ``output_invalid``."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ExecutionFailed("output_invalid") from exc
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise ExecutionFailed("output_invalid")
    return path


def _backing(executor: DockerExecutor) -> Backing:
    if executor.backing is None:
        raise ExecutionFailed("engine_error")
    return executor.backing
