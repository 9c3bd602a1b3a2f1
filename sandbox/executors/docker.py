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
- a label on every container so ``sweep`` removes leftovers after a crash.

Limits come from ``Settings`` only. What comes back is the aggregate table or an
``ExecutionFailed`` category; no text from the container, DuckDB or Docker.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from sandbox_runner import contract
from sandbox_runner.contract import EXIT_IDLE, RUNNER_UID

from sandbox.errors import DockerUnavailable, ExecutionFailed, Refused, SandboxError
from sandbox.executors import ExactResult, runner_spec
from sandbox.executors.output import read_result, read_status, status_category
from sandbox.plan import Plan
from sandbox.settings import Settings

log = logging.getLogger(__name__)

LABEL = "jinyu.sandbox"
JOB_LABEL = "jinyu.job"
HOME_LABEL = "jinyu.home"
TMP_MB = 8
NOFILE = 256
EXIT_KILLED = 137  # 128 + SIGKILL
WARM_IDLE_S = 300  # a warm runner waits this long for its job, then exits
WARM_TAKE_WAIT_S = 5.0  # a job waits this long for a warm runner being started
STOPPED_GRACE_S = 60.0  # the start-up sweep leaves a just-stopped container to its owner

ContainerHook = Callable[[Any, Path], None]


def sweep(client: Any, *, home_label: str | None = None, max_age_s: float | None = None) -> int:
    """Remove leftover runner containers (by label); return how many were removed.

    With ``home_label`` only the containers of that installation are touched, so two
    sandboxes (or two test runs) sharing one Docker engine do not remove each
    other's jobs. With ``max_age_s`` (the start-up sweep) a running container is
    removed only once it has run longer than that, and a stopped one only after a
    grace period, so another executor of the same installation keeps its jobs.
    """
    import docker.errors

    label = [f"{LABEL}=1"] + ([f"{HOME_LABEL}={home_label}"] if home_label else [])
    try:
        leftovers = client.containers.list(all=True, filters={"label": label})
    except _docker_errors() as exc:
        raise DockerUnavailable("The Docker engine did not answer.") from exc
    removed = 0
    for container in leftovers:
        if max_age_s is not None and not _is_stale(container.attrs, max_age_s):
            continue
        try:
            container.remove(force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            continue
        except _docker_errors() as exc:
            log.warning("could not remove a leftover runner container (%s)", type(exc).__name__)
    return removed


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


def home_label(settings: Settings) -> str:
    """A short stable label naming one installation (its home directory)."""
    return hashlib.sha256(str(Path(settings.home).resolve()).encode()).hexdigest()[:16]


class FairSlots:
    """At most ``n`` holders at once; waiters get a slot in arrival order (FIFO)."""

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))
        self._busy = 0
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self._busy >= self.n:
                    self._cond.wait()
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._busy += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()


class DockerExecutor:
    """Run Plans in fresh runner containers. Thread-safe; ``settings.concurrency`` at once."""

    def __init__(self, settings: Settings, client: Any = None, image: str | None = None) -> None:
        self.settings = settings
        self._client = client
        self._image = image or settings.runner_image or None
        self._slots = FairSlots(settings.concurrency)
        self._ready_lock = threading.Lock()
        self._ready = False
        self.home_label = home_label(settings)
        self.runs_dir = Path(settings.home) / "runs"
        self._pool = _Pool(self, settings.warm_runners)

    # -- public -------------------------------------------------------------------

    def run(self, plan: Plan, *, data_root: Path, job_id: str) -> ExactResult:
        """Run the Plan in a fresh container; raise ExecutionFailed(category) on failure."""
        datasets = plan_datasets(plan.tables, Path(data_root))
        for rel in plan.tables.values():
            path = Path(data_root).joinpath(*rel.split("/"))
            if not path.is_file():
                raise ExecutionFailed("data_missing")
            if _is_synthetic(path):
                raise Refused(
                    "The sandbox refuses data marked synthetic.",
                    code="SYNTHETIC_DATA_REFUSED",
                    hint="Synthetic data is for the local executor; install the real data.",
                )
        return self._run_job(runner_spec(plan, self.settings), datasets, job_id=job_id)

    def start(self) -> None:
        """Connect, sweep leftovers of this installation, check the image (once)."""
        with self._ready_lock:
            if self._ready:
                return
            client = self.client
            stale = max(self.settings.job_timeout_s, WARM_IDLE_S) + 60
            sweep(client, home_label=self.home_label, max_age_s=stale)
            self._sweep_runs_dir(stale, live=self._live_workdirs(client))
            self._image = self._resolve_image(client)
            self._ready = True

    def close(self) -> None:
        """Remove the warm runners (if any). Running jobs are not touched."""
        self._pool.close()

    @property
    def pool_size(self) -> int:
        """Warm runners waiting right now."""
        return self._pool.idle_count

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=60)
                self._client.ping()
            except Exception as exc:  # noqa: BLE001 - any failure means no engine
                self._client = None
                raise DockerUnavailable(
                    "No Docker engine answered.",
                    hint="Start Docker (`sandbox dev engine`) or use the local executor.",
                ) from exc
        return self._client

    @property
    def limits(self) -> dict[str, Any]:
        """The limits a runner gets, all from Settings."""
        s = self.settings
        return {
            "memory_mb": s.memory_mb,
            "cpus": s.cpus,
            "pids": s.pids,
            "scratch_mb": s.scratch_mb,
            "file_size_mb": s.file_size_mb,
            "output_max_bytes": s.output_max_bytes,
            "timeout_s": s.job_timeout_s,
        }

    # -- test-only ------------------------------------------------------------------

    def _run_spec(
        self,
        spec: dict[str, Any],
        *,
        data_root: Path,
        job_id: str,
        datasets: list[str] | None = None,
        entrypoint: list[str] | None = None,
        hook: ContainerHook | None = None,
    ) -> ExactResult:
        """TEST ONLY: run a raw spec (hostile SQL) or a raw entrypoint in the container.

        The API and the job runner only ever call ``run`` with a compiler Plan.
        ``hook(container, out_dir)`` is called after the container stopped, before
        anything is removed.
        """
        names = (
            datasets
            if datasets is not None
            else sorted(plan_datasets(spec["tables"], Path(data_root)))
        )
        mounts = {name: Path(data_root) / name for name in names}
        return self._run_job(spec, mounts, job_id=job_id, entrypoint=entrypoint, hook=hook)

    # -- the job ----------------------------------------------------------------------

    def _run_job(
        self,
        spec: dict[str, Any],
        datasets: dict[str, Path],
        *,
        job_id: str,
        entrypoint: list[str] | None = None,
        hook: ContainerHook | None = None,
    ) -> ExactResult:
        self.start()
        queued = time.monotonic()
        with self._slots.slot():
            began = time.monotonic()
            stats: dict[str, Any] = {"queued_s": round(began - queued, 4), "limits": self.limits}
            try:
                table = self._contained(spec, datasets, job_id, entrypoint, hook, stats)
            except ExecutionFailed as exc:
                stats["exit"] = exc.category
                stats["wall_s"] = round(time.monotonic() - began, 4)
                # Stats ride on the exception for the job record, not in its public shape.
                setattr(exc, "stats", stats)  # noqa: B010
                raise
            wall = time.monotonic() - began
            stats["exit"] = "ok"
            stats["wall_s"] = round(wall, 4)
            return ExactResult(table=table, wall_s=wall, stats=stats)

    def _contained(
        self,
        spec: dict[str, Any],
        datasets: dict[str, Path],
        job_id: str,
        entrypoint: list[str] | None,
        hook: ContainerHook | None,
        stats: dict[str, Any],
    ) -> pa.Table:
        import docker.errors
        import requests.exceptions

        runner = None
        if entrypoint is None and hook is None:
            runner = self._pool.take(datasets)
        try:
            if runner is not None:
                runner.feed(spec)
                started = time.monotonic()
                exit_code, timed_out = self._wait(runner.container, started)
                if exit_code == EXIT_IDLE:  # it gave up waiting before the job came
                    _discard(runner)
                    runner = None
                else:
                    stats["warm"] = True
            if runner is None:
                runner = self._launch(datasets, job_id, spec=spec, entrypoint=entrypoint)
                started = time.monotonic()
                exit_code, timed_out = self._wait(runner.container, started)
                stats["warm"] = False
            stats["container_s"] = round(time.monotonic() - started, 4)
            stats["out_capped"] = runner.out_capped
            out_dir = runner.out_dir
            try:
                oom = False
                if not timed_out and exit_code != 0:
                    runner.container.reload()
                    oom = bool(runner.container.attrs.get("State", {}).get("OOMKilled"))
                if hook is not None:
                    hook(runner.container, out_dir)
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise ExecutionFailed("engine_error") from exc
            stats["exit_code"] = exit_code
            stats["oom_killed"] = oom
            if timed_out:
                raise ExecutionFailed("timeout")
            if oom or exit_code == EXIT_KILLED:
                raise ExecutionFailed("memory")
            status = read_status(out_dir)
            if "peak_rss_kb" in status:
                stats["peak_rss_kb"] = status["peak_rss_kb"]
            # for supervisors' diagnostics only: never shown to operators (exact data)
            stats["truncated"] = bool(status.get("truncated"))
            if exit_code != 0:
                raise ExecutionFailed(status_category(status))
            return read_result(
                out_dir,
                columns=list(spec["columns"]),
                max_rows=int(spec["max_rows"]),
                max_bytes=self.settings.output_max_bytes,
            )
        finally:
            if runner is not None:
                _discard(runner)
            if entrypoint is None and hook is None:
                self._pool.refill(datasets)

    def _launch(
        self,
        datasets: dict[str, Path],
        job_label: str,
        *,
        spec: dict[str, Any] | None,
        entrypoint: list[str] | None = None,
    ) -> _Runner:
        """Create and start one runner container: with its spec (cold) or waiting (warm)."""
        import docker.errors
        import requests.exceptions

        workdir = Path(tempfile.mkdtemp(prefix="job-", dir=self._runs_root()))
        runner = _Runner(workdir=workdir, datasets=dict(datasets))
        try:
            _prepare_dirs(runner, 2 * self.settings.output_max_bytes + (1 << 20))
            if spec is not None:
                runner.feed(spec)
            args = self._container_args(runner, job_label, entrypoint, warm=spec is None)
            runner.container = self.client.containers.create(**args)
            runner.container.start()
        except docker.errors.ImageNotFound as exc:
            _discard(runner)
            raise DockerUnavailable(
                "The runner image is missing.", hint="Build it: `sandbox runner build`."
            ) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            _discard(runner)
            raise DockerUnavailable("The Docker engine could not start a runner.") from exc
        except BaseException:
            _discard(runner)
            raise
        return runner

    def _wait(self, container: Any, started: float) -> tuple[int | None, bool]:
        """Wait for the container; kill it at the wall-clock limit. (exit code, timed out)"""
        import docker.errors
        import requests.exceptions

        remaining = max(0.1, self.settings.job_timeout_s - (time.monotonic() - started))
        try:
            result = container.wait(timeout=remaining)
            return int(result.get("StatusCode", -1)), False
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            with contextlib.suppress(docker.errors.DockerException):
                container.kill()
            return None, True

    def _container_args(
        self, runner: _Runner, job_label: str, entrypoint: list[str] | None, *, warm: bool
    ) -> dict[str, Any]:
        from docker.types import LogConfig, Mount, Ulimit

        plan_dir, out_dir, datasets = runner.plan_dir, runner.out_dir, runner.datasets

        s = self.settings
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
            "image": self._image,
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
            "labels": {LABEL: "1", JOB_LABEL: str(job_label), HOME_LABEL: self.home_label},
            "environment": self._runner_env(warm=warm),
            "working_dir": contract.SCRATCH_DIR,
            "hostname": "runner",
            "auto_remove": False,
        }
        if entrypoint is not None:
            args["entrypoint"] = entrypoint
        return args

    def _runner_env(self, *, warm: bool) -> dict[str, str]:
        s = self.settings
        env = {
            # DuckDB gets ~60% of the container's memory, so it fails with its own
            # out-of-memory error before the kernel kills the process.
            contract.ENV_MEMORY_LIMIT: f"{max(64, int(s.memory_mb * 0.6))}MB",
            contract.ENV_THREADS: str(max(1, int(s.cpus))),
            contract.ENV_MAX_TEMP_SIZE: f"{max(1, int(s.scratch_mb * 0.9))}MB",
            contract.ENV_OUTPUT_MAX_BYTES: str(s.output_max_bytes),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/tmp",  # noqa: S108 (in the container)
        }
        if warm:
            env[contract.ENV_WAIT_S] = str(WARM_IDLE_S)
        return env

    def _runs_root(self) -> Path:
        self.runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.runs_dir

    def _sweep_runs_dir(self, max_age_s: float, *, live: set[Path] | None = None) -> None:
        """Remove run directories left by a crash (old enough not to be a live job's).

        A younger directory that no container of this installation mounts (``live``)
        is a crashed job's: its exact result is removed now, whatever its age (the
        directory itself may be another executor's, about to create its container)."""
        if not self.runs_dir.is_dir():
            return
        now = time.time()
        for leftover in self.runs_dir.glob("job-*"):
            try:
                young = now - leftover.stat().st_mtime <= max_age_s
            except OSError:
                continue
            if young:
                if live is not None and leftover.resolve() not in live:
                    out = leftover / "out"
                    result = contract.RESULT_FILE
                    for name in (result, result + contract.PART_SUFFIX):
                        with contextlib.suppress(OSError):
                            (out / name).unlink()
                continue
            _unmount(leftover / "out")
            shutil.rmtree(leftover, ignore_errors=True)

    def _live_workdirs(self, client: Any) -> set[Path] | None:
        """The run directories mounted by this installation's containers (any state);
        None if the engine cannot say (then nothing young is touched)."""
        label = [f"{LABEL}=1", f"{HOME_LABEL}={self.home_label}"]
        try:
            containers = client.containers.list(all=True, filters={"label": label})
        except _docker_errors():
            return None
        live: set[Path] = set()
        for container in containers:
            for mount in container.attrs.get("Mounts", []) or []:
                targets = (contract.OUT_DIR, contract.PLAN_DIR)
                if mount.get("Destination") in targets and mount.get("Source"):
                    live.add(Path(mount["Source"]).parent.resolve())
        return live

    def _resolve_image(self, client: Any) -> str:
        import docker.errors

        tag = self._image
        if tag is None:
            from sandbox.runner_image import image_tag

            tag = image_tag()
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound as exc:
            raise DockerUnavailable(
                "The runner image is missing.", hint="Build it: `sandbox runner build`."
            ) from exc
        except _docker_errors() as exc:
            raise DockerUnavailable("The Docker engine did not answer.") from exc
        return str(tag)


# -- one runner container and the warm pool ------------------------------------------------


@dataclass
class _Runner:
    """One runner container and its host directories; it serves exactly one job."""

    workdir: Path
    datasets: dict[str, Path]
    container: Any = None
    born: float = field(default_factory=time.monotonic)
    out_capped: bool = False

    @property
    def plan_dir(self) -> Path:
        return self.workdir / "plan"

    @property
    def out_dir(self) -> Path:
        return self.workdir / "out"

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return _pool_key(self.datasets)

    def feed(self, spec: dict[str, Any]) -> None:
        """Hand the job to the runner: spec.json appears atomically (rename)."""
        part = self.plan_dir / (contract.SPEC_FILE + contract.PART_SUFFIX)
        part.write_text(json.dumps(spec, sort_keys=True, ensure_ascii=False))
        part.chmod(0o644)
        os.replace(part, self.plan_dir / contract.SPEC_FILE)


def _pool_key(datasets: dict[str, Path]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, str(path)) for name, path in datasets.items()))


def _prepare_dirs(runner: _Runner, out_cap: int) -> None:
    runner.plan_dir.mkdir(mode=0o755)
    runner.out_dir.mkdir(mode=0o700)
    runner.plan_dir.chmod(0o755)
    # /out is a host directory: on its own size-capped tmpfs a runner cannot fill the
    # host's disk through it, whatever it writes (needs root; else a plain directory).
    runner.out_capped = _mount_tmpfs(runner.out_dir, out_cap)
    if not runner.out_capped:
        try:
            os.chown(runner.out_dir, RUNNER_UID, RUNNER_UID)
        except PermissionError:
            # Not root: the directory is private to us on the host; let the runner in.
            runner.out_dir.chmod(0o777)


def _discard(runner: _Runner) -> None:
    if runner.container is not None:
        _remove(runner.container)
        runner.container = None
    _unmount(runner.out_dir)
    shutil.rmtree(runner.workdir, ignore_errors=True)


_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MNT_DETACH = 2, 4, 8, 2


def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount_tmpfs(target: Path, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes owned by the runner's uid at ``target``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    options = f"size={size},mode=0700,uid={RUNNER_UID},gid={RUNNER_UID}".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    try:
        return bool(_libc().mount(b"tmpfs", str(target).encode(), b"tmpfs", flags, options) == 0)
    except OSError:
        return False


def _unmount(target: Path) -> None:
    if os.path.ismount(target):
        with contextlib.suppress(OSError):
            _libc().umount2(str(target).encode(), _MNT_DETACH)


class _Pool:
    """Runner containers started ahead, one dataset set each, waiting for one job.

    A warm runner has its mounts (only that dataset set), its own empty /out and
    /plan, and has already imported DuckDB; it runs the first spec dropped into its
    /plan and exits. It is never reused. Refilled in the background after a job.
    """

    def __init__(self, executor: DockerExecutor, size: int) -> None:
        self.executor = executor
        self.size = max(0, int(size))
        self._idle: list[_Runner] = []
        self._pending: dict[tuple[tuple[str, str], ...], int] = {}
        self._waiting: dict[tuple[tuple[str, str], ...], int] = {}
        self._cond = threading.Condition()
        self._queue: queue.Queue[dict[str, Path] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def idle_count(self) -> int:
        with self._cond:
            return len(self._idle)

    def take(self, datasets: dict[str, Path]) -> _Runner | None:
        if self.size <= 0:
            return None
        key = _pool_key(datasets)
        stale: list[_Runner] = []
        found = None
        deadline = time.monotonic() + WARM_TAKE_WAIT_S
        with self._cond:
            while found is None:
                for runner in list(self._idle):
                    if runner.key != key:
                        continue
                    self._idle.remove(runner)
                    if time.monotonic() - runner.born < WARM_IDLE_S - 30:
                        found = runner
                        break
                    stale.append(runner)
                # One being started for this key is never slower than a new cold one,
                # but each one being started can serve only one waiting job.
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    break
                if self._pending.get(key, 0) <= self._waiting.get(key, 0):
                    break
                self._waiting[key] = self._waiting.get(key, 0) + 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting[key] -= 1
        for runner in stale:
            _discard(runner)
        return found

    def refill(self, datasets: dict[str, Path]) -> None:
        # With jobs queued, a container started ahead only competes with theirs for
        # the CPUs; the last job of a burst refills the pool.
        if self.size <= 0 or self.executor._slots.waiting > 0:
            return
        with self._cond:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="jinyu-warm-runners", daemon=True
                )
                self._thread.start()
                atexit.register(self.close)
        self._queue.put(dict(datasets))

    def _work(self) -> None:
        while True:
            datasets = self._queue.get()
            if datasets is None:
                return
            key = _pool_key(datasets)
            while True:
                with self._cond:
                    have = sum(r.key == key for r in self._idle) + self._pending.get(key, 0)
                    if self._closed or have >= self.size:
                        break
                    self._pending[key] = self._pending.get(key, 0) + 1
                runner = None
                try:
                    runner = self.executor._launch(datasets, "warm", spec=None)
                except SandboxError as exc:
                    log.warning("could not start a warm runner (%s)", exc.code)
                evicted: list[_Runner] = []
                with self._cond:
                    self._pending[key] -= 1
                    if runner is not None:
                        if self._closed:
                            evicted.append(runner)
                        else:
                            self._idle.append(runner)
                            while len(self._idle) > self.size:
                                evicted.append(self._idle.pop(0))
                    self._cond.notify_all()
                for old in evicted:
                    _discard(old)
                if runner is None:
                    break

    def close(self) -> None:
        with self._cond:
            self._closed = True
            thread = self._thread
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        if thread is not None:
            self._queue.put(None)
            thread.join(60)
        with self._cond:
            idle += self._idle
            self._idle = []
        for runner in idle:
            _discard(runner)


# -- mounts ---------------------------------------------------------------------------


def plan_datasets(tables: dict[str, str], data_root: Path) -> dict[str, Path]:
    """The dataset directories a Plan reads (first path component of each table)."""
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


def _is_synthetic(path: Path) -> bool:
    from sandbox.synthetic import is_synthetic

    return is_synthetic(path)


def _docker_errors() -> tuple[type[Exception], ...]:
    """What the Docker SDK raises: its own errors and requests' transport errors."""
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def _remove(container: Any) -> None:
    import docker.errors
    import requests.exceptions

    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        return
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        # The sweep at the next start-up removes it; say so without Docker's text.
        log.warning("could not remove runner container (%s)", type(exc).__name__)
