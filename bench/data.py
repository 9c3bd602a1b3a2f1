"""Benchmark data: the demo catalogue's schemas at 100k to 100M rows.

Writes, under ``<root>/<rows>/``, two copies of the same rows laid out as the
catalogue says (``<dataset>/<table>.parquet`` below a data root):

- ``synthetic/``: every file carries the schema metadata ``jinyu.synthetic = true``,
  so the local executor (synthetic data only) accepts it;
- ``raw/``: the same files without the marker, for the container executor (which
  refuses synthetic-marked data) and for the peers.

``rows`` is the size of both the one-row-per-person table (``population.persons``)
and the many-rows-per-person table (``social_insurance.payments``, 4 to 12
payments per insured person, so ``insured`` has about rows / 8 people). The rows are
random (numpy, fixed seed) and follow the catalogue's synthetic hints; nothing here
is real data. Generation is chunked (1M rows at a time) so 100M rows fit in memory.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DATA_VERSION = 2
CHUNK = 1_000_000
MARKER = {b"jinyu.synthetic": b"true"}
SEXES = ["F", "M"]
HOUSEHOLDS = ["single", "couple", "family_with_children", "extended", "collective"]
EMPLOYMENT = ["employed", "self_employed", "unemployed", "retired", "student", "other"]
EMPLOYMENT_W = [50, 10, 5, 18, 12, 5]
INSURANCE = ["enterprise_employee", "urban_rural_resident", "public_sector"]
PAYERS = ["employer", "individual", "government"]
N_OCCUPATIONS = 400  # a Zipf-like tail: rare titles fall to partition selection

PERSONS = pa.schema(
    [
        ("person_id", pa.string()),
        ("name", pa.string()),
        ("id_number", pa.string()),
        ("county_code", pa.string()),
        ("sex", pa.string()),
        ("age", pa.int32()),
        ("household_type", pa.string()),
        ("employment", pa.string()),
        ("occupation", pa.string()),
        ("monthly_income", pa.float64()),
        ("registered_on", pa.date32()),
    ]
)
INSURED = pa.schema(
    [
        ("person_id", pa.string()),
        ("county_code", pa.string()),
        ("sex", pa.string()),
        ("age", pa.int32()),
        ("insurance_type", pa.string()),
    ]
)
PAYMENTS = pa.schema(
    [
        ("person_id", pa.string()),
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("amount", pa.float64()),
        ("payer_type", pa.string()),
    ]
)
DIVISIONS = pa.schema(
    [
        ("county_code", pa.string()),
        ("county_name", pa.string()),
        ("city_code", pa.string()),
        ("city_name", pa.string()),
    ]
)

TABLES = {
    "persons": ("population/persons.parquet", PERSONS),
    "insured": ("social_insurance/insured.parquet", INSURED),
    "payments": ("social_insurance/payments.parquet", PAYMENTS),
    "divisions": ("divisions/divisions.parquet", DIVISIONS),
}


def parse_rows(text: str) -> int:
    """'100k' -> 100_000, '10M' -> 10_000_000, '1e6' -> 1_000_000."""
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "kmg" else t
    return int(float(num) * mult)


def label_rows(rows: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{unit}"
    return str(rows)


def load_counties(policies: Path) -> list[dict[str, str]]:
    with (policies / "key_sets" / "counties.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def ensure_data(
    root: Path,
    rows: int,
    policies: Path,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Generate (or reuse) the data for ``rows``; return its manifest.

    The manifest holds the two data roots (``synthetic``, ``raw``), the row count of
    each table and the generation seconds; it is reused when rows, seed and
    DATA_VERSION match.
    """
    base = root / label_rows(rows)
    manifest_path = base / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("rows"), manifest.get("seed"), manifest.get("version")) == (
            rows,
            seed,
            DATA_VERSION,
        ):
            return manifest
    t0 = time.perf_counter()
    counties = load_counties(policies)
    codes = np.array([c["value"] for c in counties], dtype=object)
    counts = _write_table(base, "persons", _persons(rows, codes, seed), progress)
    n_insured = max(1, rows // 8)
    counts.update(_write_table(base, "insured", _insured(n_insured, codes, seed), progress))
    counts.update(_write_table(base, "payments", _payments(n_insured, rows, seed), progress))
    divisions = pa.table(
        {
            "county_code": [c["value"] for c in counties],
            "county_name": [c["name"] for c in counties],
            "city_code": [c["city_code"] for c in counties],
            "city_name": [c["city_name"] for c in counties],
        },
        schema=DIVISIONS,
    )
    counts.update(_write_table(base, "divisions", iter([divisions]), progress))
    manifest = {
        "version": DATA_VERSION,
        "rows": rows,
        "seed": seed,
        "tables": counts,
        "synthetic": str(base / "synthetic"),
        "raw": str(base / "raw"),
        "generate_s": round(time.perf_counter() - t0, 2),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def _write_table(
    base: Path,
    table: str,
    chunks: Iterator[pa.Table],
    progress: Callable[[str], None] | None,
) -> dict[str, int]:
    rel, schema = TABLES[table]
    marked = schema.with_metadata(MARKER)
    paths = {variant: base / variant / rel for variant in ("synthetic", "raw")}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with (
        pq.ParquetWriter(paths["synthetic"].with_suffix(".tmp"), marked) as syn,
        pq.ParquetWriter(paths["raw"].with_suffix(".tmp"), schema) as raw,
    ):
        for chunk in chunks:
            syn.write_table(chunk.replace_schema_metadata(MARKER))
            raw.write_table(chunk)
            n += chunk.num_rows
    for p in paths.values():
        p.with_suffix(".tmp").replace(p)
    if progress is not None:
        progress(f"wrote {table}: {n:,} rows")
    return {table: n}


def _ids(prefix: str, start: int, n: int) -> pa.Array:
    nums = pc.cast(pa.array(np.arange(start, start + n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(nums, 10, "0"), "")


def _pick(rng: np.random.Generator, values: list[str], n: int, weights=None) -> pa.Array:
    p = None if weights is None else np.asarray(weights, dtype=float) / sum(weights)
    idx = rng.choice(len(values), size=n, p=p)
    return pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array(values)).cast(
        pa.string()
    )


def _persons(rows: int, codes: np.ndarray, seed: int) -> Iterator[pa.Table]:
    occupations = [f"occupation-{i:03d}" for i in range(N_OCCUPATIONS)]
    occ_w = 1.0 / np.arange(1, N_OCCUPATIONS + 1) ** 1.3
    county_w = np.random.default_rng(seed).uniform(0.2, 1.0, len(codes))  # uneven counties
    epoch = date(1990, 1, 1).toordinal() - date(1970, 1, 1).toordinal()
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        rng = np.random.default_rng([seed, 1, start])
        pid = _ids("P", start, n)
        age = np.clip(np.rint(rng.normal(40, 20, n)), 0, 100).astype(np.int32)
        income = np.exp(rng.normal(8.3, 0.6, n))
        occ = _pick(rng, occupations, n, occ_w)
        yield pa.table(
            {
                "person_id": pid,
                "name": pc.binary_join_element_wise("name-", pid, ""),
                "id_number": pc.binary_join_element_wise("14", pid, ""),
                "county_code": _pick(rng, list(codes), n, county_w),
                "sex": _pick(rng, SEXES, n),
                "age": pa.array(age),
                "household_type": _pick(rng, HOUSEHOLDS, n),
                "employment": _pick(rng, EMPLOYMENT, n, EMPLOYMENT_W),
                "occupation": pa.array(occ, mask=rng.random(n) < 0.3),
                "monthly_income": pa.array(np.round(income, 2), mask=rng.random(n) < 0.05),
                "registered_on": pa.array(
                    (epoch + rng.integers(0, 12_000, n)).astype(np.int32), pa.int32()
                ).cast(pa.date32()),
            },
            schema=PERSONS,
        )


def _insured(n_people: int, codes: np.ndarray, seed: int) -> Iterator[pa.Table]:
    for start in range(0, n_people, CHUNK):
        n = min(CHUNK, n_people - start)
        rng = np.random.default_rng([seed, 2, start])
        yield pa.table(
            {
                "person_id": _ids("S", start, n),
                "county_code": _pick(rng, list(codes), n),
                "sex": _pick(rng, SEXES, n),
                "age": pa.array(rng.integers(16, 101, n).astype(np.int32)),
                "insurance_type": _pick(rng, INSURANCE, n, [60, 30, 10]),
            },
            schema=INSURED,
        )


def _payments(n_people: int, target_rows: int, seed: int) -> Iterator[pa.Table]:
    """4..12 monthly payments per insured person (never more than the catalogue's
    12 rows per unit, so the exact answer needs no truncation), in the person's order,
    stopping at ``target_rows``."""
    written = 0
    for start in range(0, n_people, CHUNK):
        if written >= target_rows:
            return
        n = min(CHUNK, n_people - start)
        rng = np.random.default_rng([seed, 3, start])
        k = 4 + rng.binomial(8, 0.5, n)
        owners = np.repeat(np.arange(start, start + n, dtype=np.int64), k)
        # month index within each person: position minus the person's first row
        first = np.repeat(np.cumsum(k) - k, k)
        month = (np.arange(owners.size) - first + 1).astype(np.int32)
        m = min(owners.size, target_rows - written)
        owners, month = owners[:m], month[:m]
        nums = pc.cast(pa.array(owners), pa.string())
        yield pa.table(
            {
                "person_id": pc.binary_join_element_wise("S", pc.utf8_lpad(nums, 10, "0"), ""),
                "year": pa.array(np.full(m, 2024, dtype=np.int32)),
                "month": pa.array(month),
                "amount": pa.array(np.round(np.clip(rng.lognormal(6.5, 0.5, m), 0, 5000), 2)),
                "payer_type": _pick(rng, PAYERS, m, [70, 25, 5]),
            },
            schema=PAYMENTS,
        )
        written += m
