"""The Docker executor: every raw-data job runs in a fresh, locked-down container.

One container per job, from the runner image (``python3 -m sandbox_runner``):

- no network (``network_mode="none"``), read-only root filesystem;
- mounts: the spec read-only at /plan, ONLY the Plan's datasets read-only at
  /data/<dataset>, a fresh output directory at /out; size-capped
  ``noexec,nosuid,nodev`` tmpfs at /scratch (DuckDB spill) and /tmp;
- no capabilities, ``no-new-privileges``, a non-root user;
- memory without swap, CPU, PID, file-size and open-file limits, a wall-clock
  timeout after which the container is killed;
- the Docker daemon keeps no logs (``log_config`` type ``none``), and we never read
  the container's output streams: only /out, without following symlinks and with a
  size cap;
- /out only ever in RAM; a label on every container and a lock on every run
  directory, so the next start removes what a dead process left (its container,
  its exact result), whatever its age, and nothing of a live one's.

Limits come from ``Settings`` only. What comes back is the aggregate table or an
``ExecutionFailed`` category; no text from the container, DuckDB or Docker.

Modules (imports go one way, down this list):

- ``hostfs``: the host side of a run: its run directory and its lock, /out in RAM
  (a size-capped tmpfs of its own, or a private directory on /dev/shm; else the
  executor refuses to start), the claim of runs a dead process left;
- ``containers``: one runner container: its arguments (mounts, limits, lock-down),
  create and start, the wait with the wall-clock kill, removal; labels and ``sweep``;
- ``pool``: ``FairSlots`` (concurrency in arrival order) and ``WarmPool`` (runners
  started ahead);
- ``executor``: ``DockerExecutor``, the ``Executor`` that ties them together.
"""

from __future__ import annotations

from sandbox_runner.contract import RUNNER_UID

from sandbox.executors.docker.containers import HOME_LABEL, JOB_LABEL, LABEL, home_label, sweep
from sandbox.executors.docker.executor import DockerExecutor
from sandbox.executors.docker.pool import FairSlots

__all__ = [
    "HOME_LABEL",
    "JOB_LABEL",
    "LABEL",
    "RUNNER_UID",
    "DockerExecutor",
    "FairSlots",
    "home_label",
    "sweep",
]
