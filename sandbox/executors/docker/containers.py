"""One runner container: its arguments, creation, the wait, removal, and the sweep.

A container gets no network, a read-only root, only the Plan's datasets (read-only),
capped ``noexec,nosuid,nodev`` tmpfs at /scratch and /tmp, no capabilities,
``no-new-privileges``, the runner's non-root uid, memory without swap, CPU, PID,
file-size and open-file limits, and no logs (``log_config`` type ``none``): its
output streams are never read. Every container carries labels (``LABEL``,
``JOB_LABEL``, ``HOME_LABEL``) so ``sweep_orphans`` removes a dead process's
containers at the next start (``sweep``: all of an installation's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox_runner import contract
from sandbox_runner.contract import RUNNER_UID

from sandbox.errors import DockerUnavailable
from sandbox.executors.budget import runner_budget
from sandbox.executors.docker import hostfs
from sandbox.executors.docker.hostfs import Backing, RunDir
from sandbox.settings import Settings

log = logging.getLogger("sandbox.executors.docker")  # one logger name for the package

LABEL = "jinyu.sandbox"
JOB_LABEL = "jinyu.job"
HOME_LABEL = "jinyu.home"
TMP_MB = 8
NOFILE = 256
EXIT_KILLED = 137  # 128 + SIGKILL
WARM_IDLE_S = 300  # a warm runner waits this long for its job, then exits
STOPPED_GRACE_S = 60.0  # the start-up sweep leaves a just-stopped container to its owner

ContainerHook = Callable[[Any, Path], None]


@dataclass
class Runner:
    """One runner container and its host directories; it serves exactly one job."""

    run: RunDir
    datasets: dict[str, Path]
    container: Any = None
    born: float = field(default_factory=time.monotonic)

    @property
    def workdir(self) -> Path:
        return self.run.path

    @property
    def plan_dir(self) -> Path:
        return self.run.plan

    @property
    def out_dir(self) -> Path:
        """Where the exact result is: always on a RAM filesystem (``out_in``)."""
        return self.run.out

    @property
    def out_in(self) -> str:
        """``tmpfs`` (a size-capped mount of its own) or ``shm`` (the RAM fallback)."""
        return self.run.kind

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return pool_key(self.datasets)

    def feed(self, spec: dict[str, Any]) -> None:
        """Hand the job to the runner: spec.json appears atomically (rename)."""
        part = self.plan_dir / (contract.SPEC_FILE + contract.PART_SUFFIX)
        part.write_text(json.dumps(spec, sort_keys=True, ensure_ascii=False))
        part.chmod(0o644)
        os.replace(part, self.plan_dir / contract.SPEC_FILE)


def pool_key(datasets: dict[str, Path]) -> tuple[tuple[str, str], ...]:
    """The dataset set a runner mounts, as a key (a warm runner serves only its own)."""
    return tuple(sorted((name, str(path)) for name, path in datasets.items()))


def launch(
    client: Any,
    settings: Settings,
    datasets: dict[str, Path],
    *,
    image: str | None,
    home: str,
    runs_dir: Path,
    backing: Backing,
    job_label: str,
    spec: dict[str, Any] | None,
    entrypoint: list[str] | None = None,
    files: dict[str, bytes] | None = None,
    out_cap: int | None = None,
) -> Runner:
    """Create and start one runner container: with its spec (cold) or waiting (warm).

    ``files`` (an analysis job's script: relative name -> bytes) go, read-only, into
    ``/plan/<contract.ANALYSIS_SCRIPT_DIR>/`` before the spec. ``out_cap``: the size of
    ``/out`` (default 2 × ``output_max_bytes`` + 1 MiB)."""
    import docker.errors
    import requests.exceptions

    if out_cap is None:
        out_cap = 2 * settings.output_max_bytes + (1 << 20)
    runner = Runner(run=hostfs.new_run(runs_dir, backing, out_cap), datasets=dict(datasets))
    try:
        if files:
            write_plan_files(runner.plan_dir, files)
        if spec is not None:
            runner.feed(spec)
        args = container_args(
            settings,
            runner,
            image=image,
            home=home,
            job_label=job_label,
            entrypoint=entrypoint,
            warm=spec is None,
        )
        runner.container = client.containers.create(**args)
        runner.container.start()
    except docker.errors.ImageNotFound as exc:
        discard(runner)
        raise DockerUnavailable(
            "The runner image is missing.", hint="Build it: `sandbox runner build`."
        ) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        discard(runner)
        raise DockerUnavailable("The Docker engine could not start a runner.") from exc
    except BaseException:
        discard(runner)
        raise
    return runner


def write_plan_files(plan_dir: Path, files: dict[str, bytes]) -> None:
    """An analysis job's script files under /plan/script (names checked by the caller)."""
    folder = plan_dir / contract.ANALYSIS_SCRIPT_DIR
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    for name, data in files.items():
        target = folder / name
        if target.parent != folder:
            raise ValueError("a script file name must be a plain name")
        target.write_bytes(data)
        target.chmod(0o644)


def wait(container: Any, *, timeout_s: float, started: float) -> tuple[int | None, bool]:
    """Wait for the container; kill it at the wall-clock limit. (exit code, timed out)"""
    import docker.errors
    import requests.exceptions

    remaining = max(0.1, timeout_s - (time.monotonic() - started))
    try:
        result = container.wait(timeout=remaining)
        return int(result.get("StatusCode", -1)), False
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        with contextlib.suppress(docker.errors.DockerException):
            container.kill()
        return None, True


def wait_done(
    container: Any, out_dir: Path, *, timeout_s: float, started: float, poll_s: float = 0.002
) -> tuple[int | None, bool]:
    """Like ``wait``, but done as soon as the runner's status.json is there: the runner
    renames its result into place before it writes its status (atomically, by rename),
    so it has nothing left to write. That saves the engine's report of the exit, 40-80 ms
    measured; the caller removes the container (still exiting) as always. A runner
    that dies without a status is seen by ``wait`` (exit code, OOM kill, time limit).
    Returns the exit code the runner is exiting with (0 for ok, 1 for failed)."""
    import threading

    from sandbox.executors.output import read_status

    done: dict[str, tuple[int | None, bool]] = {}

    def waiter() -> None:
        with contextlib.suppress(Exception):  # removed under it once the status is read
            done["wait"] = wait(container, timeout_s=timeout_s, started=started)

    thread = threading.Thread(target=waiter, name="jinyu-runner-wait", daemon=True)
    thread.start()
    status_path = out_dir / contract.STATUS_FILE
    while thread.is_alive():
        if status_path.exists():
            status = read_status(out_dir).get("status")
            if status == contract.STATUS_OK:
                return contract.EXIT_OK, False
            if status == contract.STATUS_FAILED:
                return contract.EXIT_FAILED, False
        thread.join(poll_s)
    return done.get("wait", (None, False))


def container_args(
    settings: Settings,
    runner: Runner,
    *,
    image: str | None,
    home: str,
    job_label: str,
    entrypoint: list[str] | None,
    warm: bool,
) -> dict[str, Any]:
    """The ``containers.create`` arguments of one runner: mounts, limits, lock-down."""
    from docker.types import LogConfig, Mount, Ulimit

    plan_dir, out_dir, datasets = runner.plan_dir, runner.out_dir, runner.datasets

    s = settings
    mem = f"{s.memory_mb}m"
    fsize = s.file_size_mb * 1024 * 1024
    ids = f"uid={RUNNER_UID},gid={RUNNER_UID}"
    mounts = [
        Mount(contract.PLAN_DIR, str(plan_dir), type="bind", read_only=True),
        Mount(contract.OUT_DIR, str(out_dir), type="bind", read_only=False),
    ]
    for name, path in sorted(datasets.items()):
        target = f"{contract.DATA_DIR}/{name}"
        mounts.append(Mount(target, str(path), type="bind", read_only=True))
    args: dict[str, Any] = {
        "image": image,
        "detach": True,
        "user": f"{RUNNER_UID}:{RUNNER_UID}",
        "network_mode": "none",
        "read_only": True,
        "mounts": mounts,
        "tmpfs": {
            contract.SCRATCH_DIR: f"size={s.scratch_mb}m,mode=0700,{ids},noexec,nosuid,nodev",
            "/tmp": f"size={TMP_MB}m,mode=0700,{ids},noexec,nosuid,nodev",  # noqa: S108 (in the container)
        },
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "ipc_mode": "private",
        "mem_limit": mem,
        "memswap_limit": mem,
        "nano_cpus": int(s.cpus * 1e9),
        "pids_limit": s.pids,
        "ulimits": [
            Ulimit(name="fsize", soft=fsize, hard=fsize),
            Ulimit(name="nofile", soft=NOFILE, hard=NOFILE),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "log_config": LogConfig(type="none"),
        "labels": {LABEL: "1", JOB_LABEL: str(job_label), HOME_LABEL: home},
        "environment": runner_env(settings, warm=warm),
        "working_dir": contract.SCRATCH_DIR,
        "hostname": "runner",
        "auto_remove": False,
    }
    if entrypoint is not None:
        args["entrypoint"] = entrypoint
    return args


def runner_env(settings: Settings, *, warm: bool) -> dict[str, str]:
    """The environment of a runner: its limits (from Settings), warm or not."""
    s = settings
    # DuckDB's pool and spill, sized so that they, the interpreter and the result stay
    # under the container's memory cgroup (the scratch tmpfs is charged to it too):
    # a query that does not fit fails with DuckDB's own error, not an OOM kill.
    budget = runner_budget(s)
    env = {
        contract.ENV_MEMORY_LIMIT: budget.memory_limit,
        contract.ENV_THREADS: str(budget.threads),
        contract.ENV_MAX_TEMP_SIZE: budget.max_temp_size,
        contract.ENV_OUTPUT_MAX_BYTES: str(s.output_max_bytes),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",  # noqa: S108 (in the container)
    }
    if warm:
        env[contract.ENV_WAIT_S] = str(WARM_IDLE_S)
    return env


def discard(runner: Runner) -> None:
    """Remove a runner's container and its run directory (it never serves again)."""
    if runner.container is not None:
        remove(runner.container)
        runner.container = None
    hostfs.remove_run(runner.run)


def remove(container: Any) -> None:
    import docker.errors
    import requests.exceptions

    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        return
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        # The sweep at the next start-up removes it; say so without Docker's text.
        log.warning("could not remove runner container (%s)", type(exc).__name__)


def docker_errors() -> tuple[type[Exception], ...]:
    """What the Docker SDK raises: its own errors and requests' transport errors."""
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def resolve_image(client: Any, tag: str | None) -> str:
    """The runner image's tag (``tag``, else the content-hashed one), checked present."""
    import docker.errors

    if tag is None:
        from sandbox.ops.runner_image import image_tag

        tag = image_tag()
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound as exc:
        raise DockerUnavailable(
            "The runner image is missing.", hint="Build it: `sandbox runner build`."
        ) from exc
    except docker_errors() as exc:
        raise DockerUnavailable("The Docker engine did not answer.") from exc
    return str(tag)


# -- labels: one installation's containers, and the sweep of leftovers ---------------------


def home_label(settings: Settings) -> str:
    """A short stable label naming one installation (its home directory)."""
    return hashlib.sha256(str(Path(settings.home).resolve()).encode()).hexdigest()[:16]


def sweep(client: Any, *, home_label: str | None = None, max_age_s: float | None = None) -> int:
    """Remove leftover runner containers (by label); return how many were removed.

    With ``home_label`` only the containers of that installation are touched, so two
    sandboxes (or two test runs) sharing one Docker engine do not remove each
    other's jobs. With ``max_age_s`` a running container is removed only once it has
    run longer than that, and a stopped one only after a grace period. (The start-up
    sweep is ``sweep_orphans``: it tells a dead owner's containers by their run
    directory's lock, not by age.)
    """
    import docker.errors

    label = [f"{LABEL}=1"] + ([f"{HOME_LABEL}={home_label}"] if home_label else [])
    try:
        leftovers = client.containers.list(all=True, sparse=True, filters={"label": label})
    except docker_errors() as exc:
        raise DockerUnavailable("The Docker engine did not answer.") from exc
    removed = 0
    for container in leftovers:
        try:
            if max_age_s is not None:
                container.reload()  # the full record, for its times
                if not _is_stale(container.attrs, max_age_s):
                    continue
            container.remove(force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            continue
        except docker_errors() as exc:
            log.warning("could not remove a leftover runner container (%s)", type(exc).__name__)
    return removed


def sweep_orphans(
    client: Any, *, home_label: str, runs_dir: Path, dead: set[Path], max_age_s: float
) -> int:
    """The start-up sweep: remove this installation's containers whose owner is dead.

    A container's run directory (the source of its /plan mount) tells: one in ``dead``
    (claimed from a dead process) or gone goes; one a live process holds stays, however
    long it has run (its owner kills it at its timeout). A container whose run
    directory cannot be read from its mounts goes by age (``_is_stale``)."""
    import docker.errors

    label = [f"{LABEL}=1", f"{HOME_LABEL}={home_label}"]
    try:
        # sparse: the list's own answer (with the mounts), no lookup per container that
        # would race another executor removing its runner
        found = client.containers.list(all=True, sparse=True, filters={"label": label})
    except docker_errors() as exc:
        raise DockerUnavailable("The Docker engine did not answer.") from exc
    runs = runs_dir.resolve()
    removed = 0
    for container in found:
        workdir = _workdir(container.attrs)
        try:
            if workdir is None or workdir.parent != runs:
                container.reload()  # the full record, for its times
                if not _is_stale(container.attrs, max_age_s):
                    continue
            elif workdir not in dead and hostfs.is_live(workdir):
                continue
            container.remove(force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            continue
        except docker_errors() as exc:
            log.warning("could not remove an orphaned runner container (%s)", type(exc).__name__)
    return removed


def _workdir(attrs: dict[str, Any]) -> Path | None:
    """The run directory of a container: the parent of its /plan mount's source."""
    for mount in attrs.get("Mounts", []) or []:
        if mount.get("Destination") == contract.PLAN_DIR and mount.get("Source"):
            return Path(mount["Source"]).parent.resolve()
    return None


def _is_stale(attrs: dict[str, Any], max_age_s: float) -> bool:
    state = attrs.get("State", {})
    status = state.get("Status")
    if status == "running":
        since, limit = state.get("StartedAt"), max_age_s
    elif status in {"exited", "dead"}:
        since, limit = state.get("FinishedAt"), STOPPED_GRACE_S
    else:
        since, limit = attrs.get("Created"), STOPPED_GRACE_S
    age = _age_s(since)
    return age is None or age > limit


def _age_s(stamp: Any) -> float | None:
    """Seconds since a Docker timestamp (RFC 3339 with nanoseconds), None if unreadable."""
    import datetime as dt

    if not isinstance(stamp, str) or stamp.startswith("0001-"):
        return None
    head, _, rest = stamp.rstrip("Z").partition(".")
    try:
        when = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return (dt.datetime.now(dt.UTC) - when).total_seconds()
