"""How a runner's memory limit is split: DuckDB, its spill, and everything else.

A runner container has one memory cgroup of ``memory_mb`` and no swap. Everything the
runner holds is charged to it, and one overrun is an OOM kill (category ``memory``
from outside, not DuckDB's own clean failure):

- the interpreter, DuckDB and pyarrow themselves: about 100 MB resident, measured in
  the runner image (``RESERVE_MB`` keeps 128 MB);
- the result: the Arrow table in the runner's memory, then its IPC file in /out, a
  tmpfs whose pages are charged to the writer's cgroup: twice the output cap;
- DuckDB's spill in /scratch: also a tmpfs, so a spilled page is still charged to the
  same cgroup (checked: writing 300 MB into a 512 MB tmpfs of a 256 MB container is an
  OOM kill). Spilling buys room only because a spilled block is more compact than the
  operator state it replaces (a spilled hash-aggregate partition took a third of the
  memory of the same data in the hash table, measured); so the spill gets at most half
  of what is left, and never more than the scratch tmpfs or the file-size limit;
- DuckDB's buffer pool (``memory_limit``): 85 % of the rest, as DuckDB allocates some
  memory outside its buffer manager.

For the product default (2,048 MB, 256 MB scratch, 16 MB output cap) this gives DuckDB
1,409 MB and the spill 230 MB, leaving 377 MB for the interpreter (~100 MB) and
DuckDB's overshoot. Threads follow the CPU limit (whole CPUs: a thread beyond the CFS
quota only makes the others wait). The local executor uses the same split so that an
in-process run fails where the container would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sandbox.settings import Settings

RESERVE_MB = 128  # interpreter + duckdb + pyarrow resident (~100 MB measured) and slack
SPILL_SHARE = 0.5  # the spill gets at most this share of what the reserve leaves
DUCKDB_SHARE = 0.85  # of the rest: DuckDB allocates some memory outside its pool
MIN_DUCKDB_MB = 64


@dataclass(frozen=True)
class RunnerBudget:
    """DuckDB's settings for one runner, from its limits."""

    memory_mb: int  # DuckDB memory_limit
    temp_mb: int  # DuckDB max_temp_directory_size (in the scratch tmpfs)
    threads: int

    @property
    def memory_limit(self) -> str:
        return f"{self.memory_mb}MB"

    @property
    def max_temp_size(self) -> str:
        return f"{self.temp_mb}MB"


def runner_budget(settings: Settings) -> RunnerBudget:
    """The split of ``settings.memory_mb`` (see the module docstring)."""
    s = settings
    result_mb = math.ceil(2 * s.output_max_bytes / 2**20)
    pool = max(0, s.memory_mb - RESERVE_MB - result_mb)
    temp = int(min(0.9 * s.scratch_mb, 0.9 * s.file_size_mb, SPILL_SHARE * pool))
    memory = max(MIN_DUCKDB_MB, int(DUCKDB_SHARE * (pool - temp)))
    return RunnerBudget(memory_mb=memory, temp_mb=max(1, temp), threads=max(1, int(s.cpus)))
