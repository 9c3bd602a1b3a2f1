"""Host release benchmark: the worst case the host's noise stage can be given.

    python bench/release_bench.py                      # 100 000 and 2 000 000 groups
    python bench/release_bench.py --groups 10000,500000

The release runs on the host, outside the runner's limits (issue 22). Its work is
bounded by the runner's row cap (``runner_max_rows``, 2,000,000): a private-key query
can hand it that many exact groups. The worst case is built here directly: a Plan
compiled from a private-key GROUP BY with a count, a median and a quartile, and an
exact table of N distinct groups that ALL pass partition selection (so the 10,000-group
cap applies and both quantiles run over 10,000 histograms). The exact table is
fabricated (no DuckDB run): what is timed is ``privacy.release`` alone, the stage that
``SANDBOX_RELEASE_TIMEOUT`` bounds.

Prints one JSON object (docs/security.md records a run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

SQL = (
    "SELECT registered_on, COUNT(*) AS n, MEDIAN(monthly_income) AS m, "
    "QUANTILE_CONT(age, 0.25) AS q FROM persons GROUP BY registered_on"
)


def worst_case(groups: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    from sandbox import privacy
    from sandbox.catalog import load_catalog
    from sandbox.compiler import compile_query
    from sandbox.grants import load_grants

    policies = Path(__file__).resolve().parents[1] / "policies"
    catalog = load_catalog(policies)
    grant = load_grants(policies, catalog).grant("g-jinshu-employment")
    plan = compile_query(SQL, catalog=catalog, grant=grant)
    cost = privacy.plan_cost(
        plan, epsilon=1.0, delta=1e-7, dataset=catalog.dataset("population"), grant=grant
    )
    columns: dict[str, Any] = {}
    histogram = pa.map_(pa.int64(), pa.uint64())
    for m in plan.measures:
        if m.kind == "histogram":
            slots = [(2 * i + 1, 3) for i in range(0, len(m.candidates or ()), 7)]
            columns[m.name] = pa.array([slots] * groups, type=histogram)
        else:
            columns[m.name] = pa.array(np.full(groups, 1_000, dtype=np.int64))
    key = plan.keys[0].name
    days = np.arange(groups, dtype=np.int64)  # from 1970: within Python dates at 2M
    table = pa.table({key: pa.array(days.astype("datetime64[D]")), **columns})
    table = table.select(plan.result_columns)
    start = time.perf_counter()
    noisy = privacy.release(plan, table, cost)
    return {
        "groups_in": groups,
        "groups_released": noisy.table.num_rows,
        "quantile_measures": sum(m.kind == "histogram" for m in plan.measures),
        "release_s": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="100000,2000000", help="comma-separated N")
    args = parser.parse_args()
    runs = [worst_case(int(n)) for n in args.groups.split(",")]
    print(
        json.dumps(
            {"cpus": os.cpu_count(), "python": platform.python_version(), "runs": runs},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
