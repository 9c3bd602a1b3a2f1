"""Tumult Analytics on local Spark (runs in bench/.venvs/tumult; needs Java 17).

The SparkSession is started once per process (outside the timings: ``setup_s``).
Each run reads the Parquet file(s), builds a Tumult ``Session`` holding the
workload's total budget (ε = 1; ApproxDP with δ where the workload has one), and
evaluates one Tumult query per aggregate (Tumult has no multi-aggregate query), the
budget split evenly between them. Private keys: ``get_groups`` (half the budget,
with δ) then a count over the selected keys. The join: ``join_private`` of the two
tables under ``AddRowsWithID("person_id")``, bounded with ``MaxRowsPerID(12)``.
Nulls are replaced by 0 before summing (Tumult refuses nullable sums otherwise).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from bench.peers._harness import NOTES, Runner, Unsupported, main


def build(spec: dict[str, Any]) -> Runner:
    warnings.simplefilter("ignore")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    from tmlt.analytics import (
        AddOneRow,
        AddRowsWithID,
        ApproxDPBudget,
        KeySet,
        MaxRowsPerID,
        PureDPBudget,
        QueryBuilder,
        Session,
    )

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "8g")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", "/tmp/bench-spark-warehouse")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    NOTES.append("Spark local[2], 8 shuffle partitions (the default 200 is slower here)")
    wid = spec["id"]
    eps, delta = float(spec["epsilon"]), float(spec["delta"])
    paths = spec["tables"]
    filt = spec["filter"]
    counties = KeySet.from_dict({"county_code": list(spec["counties"])})

    def budget(e: float, d: float = 0.0) -> Any:
        return ApproxDPBudget(e, d) if delta > 0 else PureDPBudget(e)

    def persons_session(cols: list[str]) -> Any:
        df = spark.read.parquet(paths["persons"]).select(*cols)
        return Session.from_dataframe(
            privacy_budget=budget(eps, delta),
            source_id="persons",
            dataframe=df,
            protected_change=AddOneRow(),
        )

    def collect(frames: list[tuple[str, Any]], key: str) -> list[dict[str, Any]]:
        merged: dict[Any, dict[str, Any]] = {}
        for name, sdf in frames:
            for row in sdf.toPandas().to_dict("records"):
                value = row[name]
                merged.setdefault(row[key], {key: row[key]})[name] = value
        return list(merged.values())

    income_q = QueryBuilder("persons").replace_null_and_nan({"monthly_income": 0.0})
    lo, hi = spec["bounds"].get("monthly_income", [0, 50000])

    if wid == "count_sum":

        def run() -> list[dict[str, Any]]:
            s = persons_session(["county_code", "monthly_income"])
            n = s.evaluate(income_q.groupby(counties).count(name="n"), budget(eps / 2))
            total = s.evaluate(
                income_q.groupby(counties).sum("monthly_income", lo, hi, name="income_sum"),
                budget(eps / 2),
            )
            return collect([("n", n), ("income_sum", total)], "county_code")

    elif wid == "mean_median":
        a_lo, a_hi = spec["bounds"]["age"]

        def run() -> list[dict[str, Any]]:
            s = persons_session(["county_code", "age"])
            q = QueryBuilder("persons").groupby(counties)
            mean = s.evaluate(q.average("age", a_lo, a_hi, name="age_mean"), budget(eps / 2))
            median = s.evaluate(q.median("age", a_lo, a_hi, name="age_median"), budget(eps / 2))
            return collect([("age_mean", mean), ("age_median", median)], "county_code")

    elif wid == "private_keys":

        def run() -> list[dict[str, Any]]:
            s = persons_session(["occupation"])
            q = QueryBuilder("persons").filter("occupation IS NOT NULL")
            groups = s.evaluate(q.get_groups(["occupation"]), ApproxDPBudget(eps / 2, delta))
            keys = KeySet.from_dataframe(groups)
            n = s.evaluate(q.groupby(keys).count(name="n"), ApproxDPBudget(eps / 2, 0.0))
            return collect([("n", n)], "occupation")

    elif wid == "join":
        k = int(spec["rows_per_unit"])
        p_lo, p_hi = spec["bounds"]["amount"]

        def run() -> list[dict[str, Any]]:
            ins = spark.read.parquet(paths["insured"]).select("person_id", "county_code")
            pay = spark.read.parquet(paths["payments"]).select("person_id", "amount")
            s = (
                Session.Builder()
                .with_privacy_budget(budget(eps, delta))
                .with_id_space("person")
                .with_private_dataframe("insured", ins, AddRowsWithID("person_id", "person"))
                .with_private_dataframe("payments", pay, AddRowsWithID("person_id", "person"))
                .build()
            )
            q = QueryBuilder("payments").join_private("insured").enforce(MaxRowsPerID(k))
            n = s.evaluate(q.groupby(counties).count(name="n"), budget(eps / 2))
            total = s.evaluate(
                q.groupby(counties).sum("amount", p_lo, p_hi, name="amount_sum"), budget(eps / 2)
            )
            return collect([("n", n), ("amount_sum", total)], "county_code")

    elif wid == "filter":
        emp = ", ".join(f"'{e}'" for e in filt["employment"])
        where = (
            f"age BETWEEN {filt['age'][0]} AND {filt['age'][1]} AND sex = '{filt['sex']}' "
            f"AND employment IN ({emp}) AND monthly_income > {filt['income_gt']}"
        )

        def run() -> list[dict[str, Any]]:
            s = persons_session(["county_code", "monthly_income", "age", "sex", "employment"])
            q = QueryBuilder("persons").filter(where).replace_null_and_nan({"monthly_income": 0.0})
            n = s.evaluate(q.groupby(counties).count(name="n"), budget(eps / 2))
            total = s.evaluate(
                q.groupby(counties).sum("monthly_income", lo, hi, name="income_sum"),
                budget(eps / 2),
            )
            return collect([("n", n), ("income_sum", total)], "county_code")

    else:
        raise Unsupported(f"no Tumult version of {wid}")
    return run


if __name__ == "__main__":
    main(build, ["tmlt.analytics", "pyspark"])
