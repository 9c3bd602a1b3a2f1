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

from bench.peers._harness import NOTES, STAGES, Runner, main


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
        executor: Any = DockerExecutor(settings)
        executor.start()
        NOTES.append(f"container: {settings.cpus} CPUs; peak memory column: this client only")
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
