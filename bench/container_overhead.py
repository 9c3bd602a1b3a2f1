"""Container overhead of the Docker executor, and jobs per minute.

Overhead of one job = its wall time through ``DockerExecutor.run`` (container
create/start, the runner, reading the result, removal) minus the wall time of the
same Plan run in-process by the same executor code (``sandbox_runner.executor``).
Measured cold (a fresh container per job, ``warm_runners=0``) and warm (a container
started ahead with the Plan's datasets mounted, ``warm_runners=2``; jobs arrive one
second apart so the pool can refill, as interactive queries do). Throughput: jobs
per minute with a full queue at concurrency 1, 2 and 4 (cold and warm).

    python bench/container_overhead.py [--jobs 20] [--people 20000]

Prints a Markdown table; writes bench/results/container_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "container_overhead.json"

SQL = (
    "SELECT county_code, COUNT(*) AS n, SUM(LEAST(GREATEST(age, 0), 100)) AS age_sum "
    "FROM persons GROUP BY county_code"
)


def make_plan() -> Any:
    from sandbox.plan import KeySpec, Measure, Output, Plan

    return Plan(
        query_sha256="0" * 64,
        dataset="population",
        dataset_version="bench",
        privacy_unit="person_id",
        definition="pure",
        tables={"persons": "population/persons.parquet"},
        dataset_versions={"population": "bench"},
        sql=SQL,
        keys=(KeySpec("county_code", "persons.county_code", None),),
        measures=(Measure("n", "count"), Measure("age_sum", "sum", "persons.age", 0, 100)),
        outputs=(Output("county_code", "key"), Output("n", "count", ("n",), "n")),
        post_sql="SELECT county_code, n FROM noisy",
        unit_rows=1,
        unit_groups=1,
        max_groups=200,
    )


def in_process_s(plan: Any, data_root: Path, settings: Any) -> float:
    from sandbox_runner.executor import execute

    from sandbox.executors.budget import runner_budget

    budget = runner_budget(settings)

    with tempfile.TemporaryDirectory() as tmp:
        out, scratch = Path(tmp) / "out", Path(tmp) / "scratch"
        out.mkdir()
        scratch.mkdir()
        began = time.perf_counter()
        execute(
            plan.runner_spec(),
            data_root,
            out,
            memory_limit=budget.memory_limit,
            threads=budget.threads,
            temp_dir=scratch,
            max_temp_size=budget.max_temp_size,
        )
        elapsed = time.perf_counter() - began
        assert json.loads((out / "status.json").read_text())["status"] == "ok"
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def overhead(executor: Any, plan: Any, data_root: Path, jobs: int, gap_s: float) -> dict:
    inproc = [in_process_s(plan, data_root, executor.settings) for _ in range(5)]
    base = statistics.median(inproc)
    walls, warm = [], 0
    executor.run(plan, data_root=data_root, job_id="bench-prime")  # first job primes a pool
    for i in range(jobs):
        time.sleep(gap_s)
        result = executor.run(plan, data_root=data_root, job_id=f"bench-{i}")
        walls.append(result.wall_s)
        warm += bool(result.stats.get("warm"))
    over = [w - base for w in walls]
    return {
        "jobs": jobs,
        "in_process_s": round(base, 4),
        "wall_p50_s": round(pct(walls, 0.5), 4),
        "overhead_p50_s": round(pct(over, 0.5), 4),
        "overhead_p95_s": round(pct(over, 0.95), 4),
        "warm_hits": warm,
    }


def throughput(executor: Any, plan: Any, data_root: Path, jobs: int) -> float:
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(executor.run, plan, data_root=data_root, job_id=f"tp-{i}")
            for i in range(jobs)
        ]
        for future in futures:
            future.result()
    return jobs / (time.perf_counter() - began) * 60


def main() -> None:
    import docker

    from sandbox.executors.docker import DockerExecutor
    from sandbox.ops.demo_data import generate_demo_data
    from sandbox.ops.runner_image import ensure_image
    from sandbox.settings import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--throughput-jobs", type=int, default=12)
    args = parser.parse_args()

    client = docker.from_env(timeout=120)
    image = ensure_image(client).tag
    report: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "image": image,
        "people": args.people,
        "overhead": {},
        "jobs_per_minute": {},
    }
    with tempfile.TemporaryDirectory(prefix="jinyu-bench-") as tmp:
        data_root = Path(tmp) / "data"
        generate_demo_data(data_root, ROOT / "policies", people=args.people, seed=1)
        plan = make_plan()
        base = Settings(home=Path(tmp) / "home", memory_mb=1024, cpus=1.0)
        for mode, warm, gap in (("cold", 0, 0.0), ("warm", 2, 1.0)):
            executor = DockerExecutor(base.replace(warm_runners=warm), client=client, image=image)
            try:
                report["overhead"][mode] = overhead(executor, plan, data_root, args.jobs, gap)
            finally:
                executor.close()
        for mode, warm in (("cold", 0), ("warm", 2)):
            rates = {}
            for concurrency in (1, 2, 4):
                settings = base.replace(concurrency=concurrency, warm_runners=warm * concurrency)
                executor = DockerExecutor(settings, client=client, image=image)
                try:
                    executor.run(plan, data_root=data_root, job_id="tp-prime")
                    rates[str(concurrency)] = round(
                        throughput(executor, plan, data_root, args.throughput_jobs), 1
                    )
                finally:
                    executor.close()
            report["jobs_per_minute"][mode] = rates
    client.close()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Container overhead over {args.jobs} jobs ({args.people} people, image {image})\n")
    print("| mode | in-process s | job wall p50 s | overhead p50 s | overhead p95 s | warm hits |")
    print("|---|---|---|---|---|---|")
    for mode, row in report["overhead"].items():
        print(
            f"| {mode} | {row['in_process_s']} | {row['wall_p50_s']} | {row['overhead_p50_s']} "
            f"| {row['overhead_p95_s']} | {row['warm_hits']}/{row['jobs']} |"
        )
    print("\n| mode | jobs/min @1 | jobs/min @2 | jobs/min @4 |")
    print("|---|---|---|---|")
    for mode, rates in report["jobs_per_minute"].items():
        print(f"| {mode} | {rates['1']} | {rates['2']} | {rates['4']} |")
    print(f"\nwritten: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
