"""Executors run a Plan's SQL over the data and return the exact aggregate table.

Two kinds, one interface:

- ``docker.DockerExecutor``: the real isolation; the only path that reads raw data.
- ``local.LocalExecutor``: the same executor code in-process, for synthetic data on
  an operator's own machine; it refuses anything not marked synthetic.

The exact table lives in memory only: it is handed to the privacy layer and never
stored or logged. A failure raises ``ExecutionFailed`` with a category, never an
engine message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from sandbox.plan import Plan


@dataclass
class ExactResult:
    """The runner's aggregate table (exact; memory only) and how the run went."""

    table: pa.Table
    wall_s: float
    stats: dict[str, Any] = field(default_factory=dict)  # limits, resource use; no data


class Executor(Protocol):
    def run(self, plan: Plan, *, data_root: Path, job_id: str) -> ExactResult:
        """Run the Plan; raise ExecutionFailed(category) on failure."""
        ...
