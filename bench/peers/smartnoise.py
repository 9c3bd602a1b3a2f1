"""SmartNoise SQL with its pandas reader (runs in bench/.venvs/smartnoise).

Each run reads the needed columns of the Parquet file into pandas and releases the
workload's SQL through ``snsql.from_df``. SmartNoise charges its ``epsilon`` to every
aggregate it computes, so the per-aggregate ε is set so that
``get_privacy_cost`` of the whole query is the workload's total (ε = 1).
SmartNoise has no public key sets (it releases the keys present in the data; for
public-key workloads ``censor_dims`` is off), no quantiles, and refuses JOINs: the
join is done in pandas first and the joined table declared with ``max_ids = 12``
(SmartNoise then samples at most 12 rows per person).
"""

from __future__ import annotations

import warnings
from typing import Any

from bench.peers._harness import NOTES, Runner, Unsupported, main


def _meta(table: str, columns: dict[str, dict[str, Any]], *, max_ids: int, censor: bool) -> Any:
    body: dict[str, Any] = {
        "max_ids": max_ids,
        "row_privacy": False,
        "censor_dims": censor,
        "person_id": {"type": "string", "private_id": True},
    }
    body.update(columns)
    schema, name = table.split(".")
    return {"bench": {schema: {name: body}}}


def build(spec: dict[str, Any]) -> Runner:
    import pandas as pd
    import snsql

    warnings.simplefilter("ignore")  # SmartNoise warns on every run about its defaults
    wid = spec["id"]
    eps, delta = float(spec["epsilon"]), float(spec["delta"])
    paths = spec["tables"]
    filt = spec["filter"]
    s = {"type": "string"}
    income = {"type": "float", "lower": 0.0, "upper": 50000.0, "nullable": True}
    censor = not spec["public_keys"]
    max_ids = 1
    sql_where = ""
    if wid == "count_sum":
        cols = {"county_code": s, "monthly_income": income}
        select = "county_code, COUNT(*) AS n, SUM(monthly_income) AS income_sum"
        table, key = "population.persons", "county_code"
    elif wid == "mean_median":
        NOTES.append("mean only: SmartNoise SQL has no median or quantile")
        cols = {"county_code": s, "age": {"type": "int", "lower": 0, "upper": 100}}
        select = "county_code, AVG(age) AS age_mean"
        table, key = "population.persons", "county_code"
    elif wid == "private_keys":
        cols = {"occupation": {"type": "string", "nullable": True}}
        select = "occupation, COUNT(*) AS n"
        sql_where = " WHERE occupation IS NOT NULL"
        table, key = "population.persons", "occupation"
    elif wid == "join":
        NOTES.append("SmartNoise refuses JOIN: joined in pandas, then max_ids = 12")
        cols = {"county_code": s, "amount": {"type": "float", "lower": 0.0, "upper": 5000.0}}
        select = "county_code, COUNT(*) AS n, SUM(amount) AS amount_sum"
        table, key = "social_insurance.joined", "county_code"
        max_ids = int(spec["rows_per_unit"])
    elif wid == "filter":
        cols = {
            "county_code": s,
            "monthly_income": income,
            "age": {"type": "int", "lower": 0, "upper": 100},
            "sex": s,
            "employment": s,
        }
        select = "county_code, COUNT(*) AS n, SUM(monthly_income) AS income_sum"
        emp = ", ".join(f"'{e}'" for e in filt["employment"])
        sql_where = (
            f" WHERE age BETWEEN {filt['age'][0]} AND {filt['age'][1]} AND sex = '{filt['sex']}'"
            f" AND employment IN ({emp}) AND monthly_income > {filt['income_gt']}"
        )
        table, key = "population.persons", "county_code"
    else:
        raise Unsupported(f"no SmartNoise version of {wid}")
    sql = f"SELECT {select} FROM {table}{sql_where} GROUP BY {key}"
    meta = _meta(table, cols, max_ids=max_ids, censor=censor)

    def frame() -> Any:
        if wid == "join":
            ins = pd.read_parquet(paths["insured"], columns=["person_id", "county_code"])
            pay = pd.read_parquet(paths["payments"], columns=["person_id", "amount"])
            return pay.merge(ins, on="person_id", how="inner")
        return pd.read_parquet(paths["persons"], columns=["person_id", *cols])

    # per-aggregate ε such that the whole query costs the workload's total ε
    probe = snsql.from_df(
        frame().head(1000), privacy=snsql.Privacy(epsilon=1.0, delta=delta or 1e-12), metadata=meta
    )
    total, _ = probe.get_privacy_cost(sql)
    per = eps / float(total)
    NOTES.append(f"per-aggregate epsilon {per:.4f} so the query costs epsilon {eps}")
    privacy = snsql.Privacy(epsilon=per, delta=delta if delta > 0 else 1e-12)
    out_cols = [c.split(" AS ")[-1].strip() for c in select.split(",")]

    def run() -> list[dict[str, Any]]:
        reader = snsql.from_df(frame(), privacy=privacy, metadata=meta)
        rows = reader.execute(sql)
        header = [str(h).lower() for h in rows[0]]
        body = [dict(zip(header, r, strict=True)) for r in rows[1:]]
        return [{c: r.get(c.lower()) for c in out_cols} for r in body]

    return run


if __name__ == "__main__":
    main(build, ["smartnoise-sql", "pandas", "opendp"])
