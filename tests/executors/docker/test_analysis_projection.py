"""Analysis jobs on a table with columns of no declared use (real containers).

The script sees the table projected to its usable columns, cut by a runner container
first: not through ``jinyu.read_table``, not by opening the mounted file, not anywhere
else under /data. The raw file's other columns never reach the script's container.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sandbox.executors.docker.analysis import analysis_spec, run_analysis, split_tables

pytestmark = pytest.mark.container

ACRO = {"safe_threshold": 10, "safe_dof_threshold": 10, "safe_nk_n": 2, "safe_nk_k": 0.9}
USABLE = ["person_id", "county_code", "sex", "age"]
TABLES: dict[str, Any] = {
    "persons": {"file": "population/persons.parquet", "columns": USABLE},
    "divisions": "divisions/divisions.parquet",
}

# The script fails (script_error) unless it sees exactly the usable columns, wherever
# it looks; the crosstab is its one output when it does.
SCRIPT = f"""
import os, jinyu
import pyarrow.parquet as pq
usable = {USABLE!r}
df = jinyu.read_table("persons")
assert list(df.columns) == usable, "read_table"
assert pq.read_schema("/data/population/persons.parquet").names == usable, "the mount"
found = sorted(os.path.join(d, f) for d, _, fs in os.walk("/data") for f in fs)
assert found == ["/data/divisions/divisions.parquet", "/data/population/persons.parquet"], found
for path in found:
    assert b"id_number" not in open(path, "rb").read()
assert len(df) == {{n}}
jinyu.acro.crosstab(df["sex"], df["county_code"].str[:4])
"""


def _run(make_executor: Any, data_root: Path, script: str, **settings: Any) -> Any:
    executor = make_executor(memory_mb=settings.pop("memory_mb", 1024), pids=64, **settings)
    files, columns = split_tables(TABLES)
    spec = analysis_spec(entry="main.py", tables=files, acro=ACRO)
    return run_analysis(
        executor,
        spec,
        {"main.py": script.encode()},
        data_root=data_root,
        job_id="analysis-projection",
        columns=columns,
    )


def test_the_script_sees_only_the_usable_columns(make_executor: Any, demo_data_root: Path):
    raw = pq.read_schema(demo_data_root / "population" / "persons.parquet").names
    assert "id_number" in raw and "name" in raw  # the raw table has them
    n = pq.ParquetFile(demo_data_root / "population" / "persons.parquet").metadata.num_rows
    out = _run(make_executor, demo_data_root, SCRIPT.replace("{n}", str(n)))
    (table,) = out.manifest["outputs"]
    assert table["type"] == "table"
    for data in out.files.values():
        assert b"id_number" not in data
