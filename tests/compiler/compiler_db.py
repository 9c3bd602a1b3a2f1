"""A tiny in-memory DuckDB with the catalogue's schemas, for running compiled Plans.

The rows are FABRICATED here, from a seeded generator, and are the "data" of the
compiler tests: values drawn from the public key sets and bounds (plus a few outside
them, as raw data may have), never from any real file.
"""

from __future__ import annotations

import random
from typing import Any

import duckdb
import pyarrow as pa

from sandbox.catalog import Catalog
from sandbox.plan import Plan

SECRET_PREFIX = "秘密值-"  # marks every free-text value the tiny tables hold


def make_db(catalog: Catalog, tables: list[str], *, units: int = 6, seed: int = 0) -> Any:
    """An in-memory DuckDB with the given catalogue tables filled with a few rows."""
    rnd = random.Random(seed)
    con = duckdb.connect(":memory:")
    for name in tables:
        found = catalog.find_table(name)
        assert found is not None, name
        dataset, table = found
        cols = ", ".join(f'"{c.name}" {c.type}' for c in table.columns)
        con.execute(f'CREATE TABLE "{name}" ({cols})')
        if dataset.is_public:
            key_col = table.column(table.lookup_key or "")
            n_rows = len(catalog.keys(key_col.keys)) if key_col and key_col.keys else 5
        else:
            n_rows = units * (table.rows_per_unit or 1)
        rows = []
        for i in range(n_rows):
            row = []
            for c in table.columns:
                row.append(
                    _value(c, i, rnd, catalog, dataset.privacy_unit, table.lookup_key, units)
                )
            rows.append(row)
        if rows:
            marks = ", ".join("?" * len(table.columns))
            con.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)
    return con


def _value(
    c: Any,
    i: int,
    rnd: random.Random,
    catalog: Catalog,
    unit: str | None,
    lookup_key: str | None,
    units: int,
) -> Any:
    if c.name == unit:
        return f"u{i % units}"
    if c.keys is not None:
        keys = catalog.keys(c.keys)
        if c.name == lookup_key:
            return keys[i % len(keys)]
        v = rnd.choice(keys)
        return int(v) if c.type in ("INTEGER", "BIGINT") else v
    if rnd.random() < c.null_rate:
        return None
    if c.type in ("INTEGER", "BIGINT"):
        lo, hi = c.bounds or (0, 100)
        return rnd.randint(int(lo) - 2, int(hi) + 2)
    if c.type == "DOUBLE":
        lo, hi = c.bounds or (0.0, 1.0)
        return rnd.uniform(lo - 1, hi + 1)
    if c.type == "DATE":
        return f"20{rnd.randint(19, 25)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
    if c.type == "BOOLEAN":
        return rnd.random() < 0.5
    return f"{SECRET_PREFIX}{rnd.randint(0, 3)}"


def run_plan(con: Any, plan: Plan) -> tuple[pa.Table, list[tuple[Any, ...]]]:
    """Run the runner SQL, then post_sql over its result standing in for ``noisy``."""
    exact = con.sql(plan.sql).to_arrow_table()
    noisy = exact
    for m in plan.measures:  # the privacy layer releases a number for each histogram
        if m.kind == "histogram":
            i = noisy.column_names.index(m.name)
            value = pa.array(
                [m.candidates[0] if m.candidates else 0.0] * noisy.num_rows, pa.float64()
            )
            noisy = noisy.set_column(i, m.name, value)
    con.register("noisy", noisy)
    try:
        post = con.sql(plan.post_sql).fetchall()
    finally:
        con.unregister("noisy")
    return exact, post
