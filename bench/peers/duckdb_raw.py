"""Raw DuckDB: the workload's SQL, exact, no DP. The floor every system is compared to.

A fresh connection per run, with one view per table over its Parquet file, as our
executor does; the answer is fetched into Python like every other system's.
"""

from __future__ import annotations

from typing import Any

from bench.peers._harness import Runner, main


def build(spec: dict[str, Any]) -> Runner:
    import duckdb

    tables: dict[str, str] = spec["tables"]
    sql: str = spec["sql"]

    def run() -> list[dict[str, Any]]:
        con = duckdb.connect()
        try:
            for name, path in tables.items():
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        finally:
            con.close()

    return run


if __name__ == "__main__":
    main(build, ["duckdb"])
