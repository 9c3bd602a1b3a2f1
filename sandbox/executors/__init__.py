"""Executors run a Plan's SQL over the data and return the exact aggregate table.

Two kinds, one interface:

- ``docker.DockerExecutor``: the real isolation; the only path that reads raw data
  (the ``docker`` package: containers, warm pool, host filesystem).
- ``local.LocalExecutor``: the same executor code in-process, for synthetic data on
  an operator's own machine; it refuses anything not marked synthetic.

The exact table lives in memory only: it is handed to the privacy layer and never
stored or logged. A failure raises ``ExecutionFailed`` with a category, never an
engine message. ``output`` reads what a runner left in /out, trusting none of it;
what runner and host agree on is ``sandbox_runner.contract``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from sandbox.errors import ExecutionFailed
from sandbox.plan import Plan
from sandbox.settings import Settings


@dataclass
class ExactResult:
    """The runner's aggregate table (exact; memory only) and how the run went."""

    table: pa.Table
    wall_s: float
    stats: dict[str, Any] = field(default_factory=dict)  # limits, resource use; no data


class Executor(Protocol):
    """What runs a Plan: ``LocalExecutor`` and ``DockerExecutor`` (mypy checks both)."""

    def run(self, plan: Plan, *, data_root: Path, job_id: str) -> ExactResult:
        """Run the Plan; raise ExecutionFailed(category) on failure."""
        ...


def plan_datasets(tables: dict[str, str], data_root: Path) -> dict[str, Path]:
    """The dataset directories a Plan reads (first path component of each table).

    Both executors apply these path rules; the Docker executor mounts exactly these."""
    root = data_root.resolve()
    datasets: dict[str, Path] = {}
    for rel in tables.values():
        parts = rel.split("/")
        if len(parts) < 2 or any(p in {"", ".", ".."} or p.startswith(".") for p in parts):
            raise ExecutionFailed("plan_mismatch")
        path = (root / parts[0]).resolve()
        if path.parent != root:
            raise ExecutionFailed("plan_mismatch")
        if not path.is_dir():
            raise ExecutionFailed("data_missing")
        datasets[parts[0]] = path
    return datasets


def runner_spec(plan: Plan, settings: Settings) -> dict[str, Any]:
    """The spec a runner gets: the Plan's, with the row ceiling from Settings.

    The ceiling is never the Plan's ``max_groups`` (10,000 for private keys): a job that
    failed when the EXACT result had more groups would tell the operator one bit about
    the exact data (issue 20). The runner cuts at this ceiling instead of failing, and
    the privacy layer applies ``max_groups`` to noisy counts after partition selection.
    """
    spec = plan.runner_spec()
    spec["max_rows"] = max(int(settings.runner_max_rows), int(plan.max_groups))
    return spec
