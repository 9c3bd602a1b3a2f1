"""``DockerExecutor``: a Plan in, the exact table or a failure category out.

It checks the Plan's datasets, takes a fair slot (``settings.concurrency`` at once),
runs the job in a warm runner if one waits for the same datasets, else in a fresh
container, kills it at the wall-clock limit, and reads /out without trusting it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from sandbox_runner.contract import EXIT_IDLE

from sandbox.errors import DockerUnavailable, ExecutionFailed, Refused, SystemFailure
from sandbox.executors import ExactResult, Executor, plan_datasets, runner_spec
from sandbox.executors.docker import containers, hostfs
from sandbox.executors.docker.containers import (
    EXIT_KILLED,
    WARM_IDLE_S,
    ContainerHook,
    Runner,
    discard,
    home_label,
)
from sandbox.executors.docker.pool import FairSlots, WarmPool
from sandbox.executors.output import read_result, read_status, status_category
from sandbox.plan import Plan
from sandbox.settings import Settings


class DockerExecutor:
    """Run Plans in fresh runner containers. Thread-safe; ``settings.concurrency`` at once."""

    def __init__(
        self,
        settings: Settings,
        client: Any = None,
        image: str | None = None,
        *,
        mount_ok: bool | None = None,
    ) -> None:
        """``mount_ok=False`` (tests only) takes the RAM fallback as if mount(2) were
        refused; None: try mount(2) at start."""
        self.settings = settings
        self._client = client
        self._image = image or settings.runner_image or None
        self._slots = FairSlots(settings.concurrency)
        # analysis jobs' own lane (executors/docker/analysis.py): a script that runs
        # long never holds a SQL job's slot
        self._analysis_slots = FairSlots(max(1, settings.analysis_slots))
        self._ready_lock = threading.Lock()
        self._ready = False
        self._mount_ok = mount_ok
        self.backing: hostfs.Backing | None = None
        self.home_label = home_label(settings)
        self.runs_dir = Path(settings.home) / "runs"
        self._pool = WarmPool(
            lambda datasets: self._launch(datasets, "warm", spec=None),
            self._slots,
            settings.warm_runners,
        )

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
        """Before any job: choose where exact results live (RAM only, or refuse with
        ``OUT_NOT_IN_RAM``) and remove every run a dead process left, its container
        first; then connect and check the image. The host part runs even when Docker
        does not answer (then ``DockerUnavailable`` is raised after it, and the next
        call retries the rest). Once."""
        with self._ready_lock:
            if self._ready:
                return
            if self.backing is None:
                backing = hostfs.choose_backing(
                    self.runs_dir, self.home_label, mount_ok=self._mount_ok
                )
                self._remove_dead_runs(backing)
                self.backing = backing
            client = self.client
            # containers of dead runs removed while Docker did not answer, and any
            # whose run directory cannot be told from its mounts (then by age)
            self._sweep_orphans(client, dead=set())
            self._image = containers.resolve_image(client, self._image)
            self._ready = True

    def _remove_dead_runs(self, backing: hostfs.Backing) -> None:
        dead = hostfs.claim_dead(self.runs_dir, backing)
        try:
            if dead:
                try:
                    client = self.client
                except DockerUnavailable:
                    client = None  # their runs go now; their containers at the next start()
                if client is not None:
                    # first the containers: a runner still working writes nothing after
                    self._sweep_orphans(client, dead={run.path.resolve() for run in dead})
        finally:
            for run in dead:
                hostfs.remove_run(run)
            hostfs.sweep_shm(backing, self.runs_dir)

    def _sweep_orphans(self, client: Any, *, dead: set[Path]) -> None:
        stale = max(self.settings.job_timeout_s, WARM_IDLE_S) + 60
        containers.sweep_orphans(
            client, home_label=self.home_label, runs_dir=self.runs_dir, dead=dead, max_age_s=stale
        )

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
        early = None  # done at the runner's status: only on the product path (no hook)
        if entrypoint is None and hook is None:
            runner = self._pool.take(datasets)
            early = runner.out_dir if runner is not None else None
        try:
            if runner is not None:
                runner.feed(spec)
                started = time.monotonic()
                exit_code, timed_out = self._wait(runner.container, started, early)
                if exit_code == EXIT_IDLE:  # it gave up waiting before the job came
                    discard(runner)
                    runner = None
                else:
                    stats["warm"] = True
            if runner is None:
                runner = self._launch(datasets, job_id, spec=spec, entrypoint=entrypoint)
                started = time.monotonic()
                early = runner.out_dir if entrypoint is None and hook is None else None
                exit_code, timed_out = self._wait(runner.container, started, early)
                stats["warm"] = False
            stats["container_s"] = round(time.monotonic() - started, 4)
            stats["out_in"] = runner.out_in  # tmpfs or shm: RAM either way
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
                discard(runner)
            if entrypoint is None and hook is None:
                self._pool.refill(datasets)

    def _launch(
        self,
        datasets: dict[str, Path],
        job_label: str,
        *,
        spec: dict[str, Any] | None,
        entrypoint: list[str] | None = None,
    ) -> Runner:
        """Create and start one runner container: with its spec (cold) or waiting (warm)."""
        if self.backing is None:
            raise SystemFailure("The Docker executor was not started.", code="INTERNAL")
        return containers.launch(
            self.client,
            self.settings,
            datasets,
            image=self._image,
            home=self.home_label,
            runs_dir=self.runs_dir,
            backing=self.backing,
            job_label=job_label,
            spec=spec,
            entrypoint=entrypoint,
        )

    def _wait(
        self, container: Any, started: float, out_dir: Path | None = None
    ) -> tuple[int | None, bool]:
        """Wait for the container (with ``out_dir``: until its runner wrote its status);
        kill it at the wall-clock limit. (exit code, timed out)"""
        limit = self.settings.job_timeout_s
        if out_dir is not None:
            return containers.wait_done(container, out_dir, timeout_s=limit, started=started)
        return containers.wait(container, timeout_s=limit, started=started)


def _is_synthetic(path: Path) -> bool:
    from sandbox.synthetic import is_synthetic

    return is_synthetic(path)


_: type[Executor] = DockerExecutor  # mypy checks that DockerExecutor is an Executor
