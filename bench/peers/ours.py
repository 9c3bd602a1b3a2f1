"""This project: compile → execute → cost → release, in-process or through Docker.

``spec["mode"]`` is ``local`` (``LocalExecutor``, the runner's code in this process,
synthetic-marked data) or ``docker`` (``DockerExecutor``, one locked-down container
per run, the same rows without the synthetic marker). Loading the catalogue and
grants is set-up (a server does it once); each timed run compiles the SQL, runs the
Plan, computes the cost for the workload's ε/δ and releases the noisy table. No
ledger or audit writes: those are SQLite transactions outside what is compared here.
The stage times of every run are kept (``stages``) to show where the time goes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.peers._harness import BETWEEN_RUNS, NOTES, STAGES, Runner, main

WARM_RUNNERS = 2  # `sandbox serve`'s default
WARM_WAIT_S = 30.0


WARM_SETTLE_S = 1.0  # a started runner then imports DuckDB: let it finish (CPU)


def _wait_warm(executor: Any) -> None:
    """Until the warm pool is full and settled, as a server's is between jobs (so a
    timed run neither waits for a runner nor shares the CPUs with one starting)."""
    deadline = time.monotonic() + WARM_WAIT_S
    waited = False
    while executor.pool_size < WARM_RUNNERS and time.monotonic() < deadline:
        waited = True
        time.sleep(0.02)
    if waited:
        time.sleep(WARM_SETTLE_S)


def build(spec: dict[str, Any]) -> Runner:
    from sandbox.catalog import load_catalog
    from sandbox.compiler import compile_query
    from sandbox.grants import load_grants
    from sandbox.privacy import plan_cost, release
    from sandbox.settings import Settings

    policies = Path(spec["policies"])
    catalog = load_catalog(policies)
    grants = load_grants(policies, catalog)
    grant = grants.grant(spec["grant"])
    if grant is None:
        raise RuntimeError(f"no grant {spec['grant']} in {policies}")
    dataset = catalog.dataset(spec["dataset"])
    assert dataset is not None
    # The product's own limits (Settings defaults: CPUs, scratch, file size), except a
    # longer time limit so a slow run is measured rather than cut off, and the memory
    # limit the bench is given (raw DuckDB and the peers run without one).
    settings = Settings(
        home=Path(spec["home"]),
        policies=policies,
        data_root=Path(spec["data_root"]),
        executor=spec["mode"],
        job_timeout_s=float(spec.get("job_timeout_s", 600.0)),
        **({"memory_mb": int(spec["memory_mb"])} if spec.get("memory_mb") else {}),
    )
    NOTES.append(f"runner memory limit {settings.memory_mb} MB")
    if spec["mode"] == "docker":
        import docker

        from sandbox.executors.docker import DockerExecutor
        from sandbox.ops.runner_image import ensure_image

        ensure_image(docker.from_env(timeout=120))  # reuses the content-hashed image
        # Warm runners, as `sandbox serve` runs them: each job gets a container started
        # ahead (DuckDB imported), still one fresh container per job. The pool fills
        # after the first (cold) run, as a server's does after its first job.
        settings = settings.replace(warm_runners=WARM_RUNNERS)
        executor: Any = DockerExecutor(settings)
        executor.start()
        # not before the cold run: the pool fills after the first job
        BETWEEN_RUNS.append(lambda: _wait_warm(executor) if STAGES else None)
        NOTES.append(
            f"container: {settings.cpus} CPUs, {WARM_RUNNERS} warm runners (as `sandbox "
            "serve`; the wait for one between runs is untimed); peak memory column: this "
            "client only"
        )
    else:
        from sandbox.executors.local import LocalExecutor

        executor = LocalExecutor(settings)
    data_root = Path(spec["data_root"])
    counter = iter(range(1_000_000))

    def run() -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        plan = compile_query(spec["sql"], catalog=catalog, grant=grant)
        t1 = time.perf_counter()
        exact = executor.run(plan, data_root=data_root, job_id=f"bench-{next(counter)}")
        t2 = time.perf_counter()
        cost = plan_cost(
            plan, epsilon=spec["epsilon"], delta=spec["delta"], dataset=dataset, grant=grant
        )
        t3 = time.perf_counter()
        noisy = release(plan, exact.table, cost)
        t4 = time.perf_counter()
        STAGES.append(
            {
                "compile": t1 - t0,
                "execute": t2 - t1,
                "cost": t3 - t2,
                "release": t4 - t3,
                "executor_stats": {
                    k: v for k, v in exact.stats.items() if isinstance(v, int | float | str)
                },
            }
        )
        return noisy.table.to_pylist()

    return run


if __name__ == "__main__":
    main(build, ["jinyu-sandbox", "duckdb", "opendp", "pyarrow"])
