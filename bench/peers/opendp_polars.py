"""OpenDP's Polars Context (runs in bench/.venvs/opendp).

Each run builds a Context over ``pl.scan_parquet`` (so reading the file is in the
timing, as for every system) with the workload's total privacy loss, then releases
one query. Public keys go through ``with_keys``; private keys through OpenDP's own
partition selection (needs δ). The join is done by Polars before the Context,
whose privacy unit is then one ``person_id`` (identifier), bounded to 12 rows with
``truncate_per_group``. Income and amounts are rounded to whole yuan before the
Context: OpenDP's integer sums are exact, its float sums are not.
"""

from __future__ import annotations

import warnings
from typing import Any

from bench.peers._harness import NOTES, Runner, Unsupported, main

MAX_LENGTH = 1_000_000_000  # a public bound on any table's length (float-sum safety)


def build(spec: dict[str, Any]) -> Runner:
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")
    warnings.simplefilter("ignore", FutureWarning)  # dp.len()'s coming default change
    NOTES.append("income and amount rounded to whole yuan (Int64) for exact integer sums")
    wid = spec["id"]
    eps, delta = float(spec["epsilon"]), float(spec["delta"])
    loss = dp.loss_of(epsilon=eps, delta=delta) if delta > 0 else dp.loss_of(epsilon=eps)
    keys = pl.LazyFrame({"county_code": spec["counties"]})
    paths = spec["tables"]
    filt = spec["filter"]

    def context(lf: Any, contributions: int, identifier: str | None = None) -> Any:
        unit = (
            dp.unit_of(contributions=contributions, identifier=identifier)
            if identifier
            else dp.unit_of(contributions=contributions)
        )
        return dp.Context.compositor(
            data=lf,
            privacy_unit=unit,
            privacy_loss=loss,
            split_evenly_over=1,
            margins=[dp.polars.Margin(by=[], max_length=MAX_LENGTH)],
        )

    def income_sum() -> Any:
        lo, hi = spec["bounds"]["monthly_income"]
        return pl.col("monthly_income").fill_null(0).dp.sum((int(lo), int(hi)))

    def whole_yuan(col: str) -> Any:
        # OpenDP's float sums pay for rounding error in proportion to the table's
        # length bound (scale ~5e9 at 1e9 rows); integer sums are exact, so a careful
        # user rounds to whole yuan before the Context (a row-wise map), as here.
        return pl.col(col).round(0).cast(pl.Int64)

    def release(query: Any, value_cols: list[str]) -> list[dict[str, Any]]:
        df = query.release().collect()
        return df.select([spec["keys"][0], *value_cols]).to_dicts()

    persons = paths.get("persons")
    if wid == "count_sum":

        def run() -> list[dict[str, Any]]:
            lf = pl.scan_parquet(persons).select("county_code", whole_yuan("monthly_income"))
            q = (
                context(lf, 1)
                .query()
                .group_by("county_code")
                .agg(dp.len().alias("n"), income_sum().alias("income_sum"))
                .with_keys(keys)
            )
            return release(q, ["n", "income_sum"])

    elif wid == "mean_median":
        lo, hi = spec["bounds"]["age"]
        cands = [int(c) for c in spec["median_candidates"]]
        age = pl.col("age").cast(pl.Int64).fill_null(0)  # Int32 sums could overflow

        def run() -> list[dict[str, Any]]:
            lf = pl.scan_parquet(persons).select("county_code", "age")
            q = (
                context(lf, 1)
                .query()
                .group_by("county_code")
                .agg(
                    age.dp.mean((int(lo), int(hi))).alias("age_mean"),
                    age.dp.median(cands).alias("age_median"),
                )
                .with_keys(keys)
            )
            return release(q, ["age_mean", "age_median"])

    elif wid == "private_keys":

        def run() -> list[dict[str, Any]]:
            lf = pl.scan_parquet(persons).select("occupation")
            q = (
                context(lf, 1)
                .query()
                .filter(pl.col("occupation").is_not_null())
                .group_by("occupation")
                .agg(dp.len().alias("n"))
            )
            return release(q, ["n"])

    elif wid == "join":
        lo, hi = spec["bounds"]["amount"]
        k = int(spec["rows_per_unit"])
        NOTES.append(
            "join done by Polars before the Context; privacy unit = one person_id, "
            "bounded to 12 rows with truncate_per_group"
        )

        def run() -> list[dict[str, Any]]:
            ins = pl.scan_parquet(paths["insured"]).select("person_id", "county_code")
            pay = pl.scan_parquet(paths["payments"]).select("person_id", whole_yuan("amount"))
            lf = pay.join(ins, on="person_id", how="inner")
            q = (
                context(lf, 1, identifier="person_id")
                .query()
                .truncate_per_group(k)
                .group_by("county_code")
                .agg(
                    dp.len().alias("n"),
                    pl.col("amount").fill_null(0).dp.sum((int(lo), int(hi))).alias("amount_sum"),
                )
                .with_keys(keys)
            )
            return release(q, ["n", "amount_sum"])

    elif wid == "filter":
        a_lo, a_hi = filt["age"]
        # is_in and is_between are not in OpenDP's supported expressions: spell them out
        employment = pl.lit(False)
        for value in filt["employment"]:
            employment = employment | (pl.col("employment") == value)

        def run() -> list[dict[str, Any]]:
            lf = pl.scan_parquet(persons).select(
                "county_code", whole_yuan("monthly_income"), "age", "sex", "employment"
            )
            q = (
                context(lf, 1)
                .query()
                .filter(
                    (pl.col("age") >= a_lo)
                    & (pl.col("age") <= a_hi)
                    & (pl.col("sex") == filt["sex"])
                    & employment
                    & (pl.col("monthly_income") > filt["income_gt"])
                )
                .group_by("county_code")
                .agg(dp.len().alias("n"), income_sum().alias("income_sum"))
                .with_keys(keys)
            )
            return release(q, ["n", "income_sum"])

    else:
        raise Unsupported(f"no OpenDP version of {wid}")
    return run


if __name__ == "__main__":
    main(build, ["opendp", "polars"])
