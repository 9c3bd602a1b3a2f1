"""Synthetic data obeys the catalogue: types, bounds, keys, null rates, rows per unit,
joins that match; it is marked synthetic and demo data is not."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.catalog import Catalog, Use
from sandbox.errors import Refused
from sandbox.synthetic import generate_synthetic, is_synthetic

ARROW = {
    "VARCHAR": pa.string(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "DATE": pa.date32(),
    "BOOLEAN": pa.bool_(),
}
DATASETS = ["population", "social_insurance", "enterprises", "divisions"]
UNITS = 4_000


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog,
                   policies_dir: Path) -> Path:  # fmt: skip
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, catalog, DATASETS, units=UNITS, seed=3, policies=policies_dir)
    return root


def _q(sql: str) -> list[tuple]:  # type: ignore[type-arg]
    con = duckdb.connect()
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_schema_types_and_marker(synthetic_root: Path, catalog: Catalog) -> None:
    for ds_id in DATASETS:
        ds = catalog.dataset(ds_id)
        assert ds is not None
        for t in ds.tables:
            path = synthetic_root / t.file
            schema = pq.read_schema(path)
            assert schema.names == [c.name for c in t.columns]
            assert [f.type for f in schema] == [ARROW[c.type] for c in t.columns], t.name
            assert schema.metadata[b"jinyu.synthetic"] == b"true"
            assert is_synthetic(path)


def test_values_obey_bounds_keys_and_null_rates(synthetic_root: Path, catalog: Catalog) -> None:
    for ds_id in DATASETS:
        ds = catalog.dataset(ds_id)
        assert ds is not None
        for t in ds.tables:
            table = pq.read_table(synthetic_root / t.file)
            for c in t.columns:
                col = table.column(c.name)
                share = col.null_count / table.num_rows
                if c.null_rate == 0:
                    assert share == 0, f"{t.name}.{c.name}"
                else:
                    assert abs(share - c.null_rate) < 0.03, f"{t.name}.{c.name}: {share}"
                values = [v for v in col.to_pylist() if v is not None]
                if c.keys is not None:
                    allowed = {str(k) for k in catalog.keys(c.keys)}
                    assert {str(v) for v in values} <= allowed, f"{t.name}.{c.name}"
                    # the whole key set is used, so filters and joins find rows
                    if len(allowed) <= 20:
                        assert {str(v) for v in values} == allowed, f"{t.name}.{c.name}"
                if c.bounds is not None:
                    assert c.bounds[0] <= min(values) and max(values) <= c.bounds[1], c.name


def test_hints_shape_the_distributions(synthetic_root: Path) -> None:
    persons = f"'{synthetic_root}/population/persons.parquet'"
    shares = dict(_q(f"SELECT employment, count(*) / {UNITS} FROM {persons} GROUP BY 1"))
    assert 0.45 < shares["employed"] < 0.55  # weight 50 of 100
    assert 0.03 < shares["unemployed"] < 0.07  # weight 5 of 100
    [(mean_age, median_income)] = _q(f"SELECT avg(age), median(monthly_income) FROM {persons}")
    assert 37 < mean_age < 45  # normal(40, 20) clipped to [0, 100]
    assert 3300 < median_income < 4800  # lognormal(8.3, 0.6): median e^8.3 ≈ 4024
    # a free-text group column gets a few placeholder categories
    cats = [r[0] for r in _q(f"SELECT DISTINCT occupation FROM {persons} WHERE occupation "
                             "IS NOT NULL ORDER BY 1")]  # fmt: skip
    assert cats[0] == "occupation_01" and 5 <= len(cats) <= 12


def test_rows_per_unit_and_joins(synthetic_root: Path, catalog: Catalog) -> None:
    root = synthetic_root
    for ds_id in ("population", "social_insurance", "enterprises"):
        ds = catalog.dataset(ds_id)
        assert ds is not None and ds.privacy_unit is not None
        for t in ds.tables:
            [(units, max_rows, multi)] = _q(f"""
                SELECT count(*), max(n), count(*) FILTER (WHERE n > 1)
                FROM (SELECT {ds.privacy_unit}, count(*) AS n FROM '{root}/{t.file}' GROUP BY 1)""")
            assert units == UNITS
            assert max_rows <= (t.rows_per_unit or 1)
            if (t.rows_per_unit or 1) > 1:
                assert max_rows == t.rows_per_unit and multi > UNITS // 2
    # tables of a dataset share their unit ids: the join on the unit matches every row
    [(matched,)] = _q(f"""SELECT count(*) FROM '{root}/social_insurance/payments.parquet' p
        JOIN '{root}/social_insurance/insured.parquet' i USING (person_id)""")
    assert matched == pq.read_metadata(root / "social_insurance/payments.parquet").num_rows
    # a key column joins the lookup table on every row; the lookup has one row per key
    [(n_rows, n_keys)] = _q(f"SELECT count(*), count(DISTINCT county_code) "
                            f"FROM '{root}/divisions/divisions.parquet'")  # fmt: skip
    assert n_rows == n_keys == len(catalog.keys("counties"))
    [(joined,)] = _q(f"""SELECT count(*) FROM '{root}/population/persons.parquet'
        JOIN '{root}/divisions/divisions.parquet' USING (county_code)""")
    assert joined == UNITS
    # the lookup's labels come from the public key-set file
    [(name, city)] = _q(f"SELECT county_name, city_name FROM '{root}/divisions/divisions.parquet' "
                        "WHERE county_code = '140105'")  # fmt: skip
    assert (name, city) == ("小店区", "太原市")


def test_identifiers_are_unique_and_not_names(synthetic_root: Path, catalog: Catalog) -> None:
    persons = pq.read_table(synthetic_root / "population/persons.parquet")
    ids = persons.column("person_id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(n.startswith("synthetic-name-") for n in persons.column("name").to_pylist())
    t = catalog.find_table("persons")
    assert t is not None
    assert Use.IDENTIFIER in (t[1].column("person_id") or t[1].columns[0]).uses


def test_deterministic_for_a_seed(tmp_path: Path, catalog: Catalog) -> None:
    a = generate_synthetic(tmp_path / "a", catalog, ["social_insurance"], units=300, seed=9)
    generate_synthetic(tmp_path / "b", catalog, ["social_insurance"], units=300, seed=9)
    generate_synthetic(tmp_path / "c", catalog, ["social_insurance"], units=300, seed=10)
    rel = "social_insurance/payments.parquet"
    assert pq.read_table(tmp_path / "a" / rel).equals(pq.read_table(tmp_path / "b" / rel))
    assert not pq.read_table(tmp_path / "a" / rel).equals(pq.read_table(tmp_path / "c" / rel))
    assert [t["table"] for t in a["tables"]] == ["insured", "payments"]


def test_core_data_has_no_synthetic_data(tmp_path: Path, catalog: Catalog) -> None:
    with pytest.raises(Refused) as err:
        generate_synthetic(tmp_path, catalog, ["medical_records"], units=10)
    assert err.value.code == "GRANT_FORBIDDEN"
    assert not (tmp_path / "medical_records").exists()


def test_is_synthetic_false_for_demo_and_other_files(demo_data_root: Path, tmp_path: Path) -> None:
    assert not is_synthetic(demo_data_root / "population/persons.parquet")
    assert not is_synthetic(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert not is_synthetic(tmp_path / "junk.parquet")
    # the marker must say "true": another value is not synthetic
    plain = pa.table({"x": [1]}).replace_schema_metadata({b"jinyu.synthetic": b"false"})
    pq.write_table(plain, tmp_path / "false.parquet")
    assert not is_synthetic(tmp_path / "false.parquet")


def test_is_synthetic_reads_only_the_footer(tmp_path: Path, catalog: Catalog) -> None:
    generate_synthetic(tmp_path, catalog, ["enterprises"], units=2_000, seed=1)
    path = tmp_path / "enterprises/enterprises.parquet"
    data = bytearray(path.read_bytes())
    # corrupt the first data page: the footer is intact, so the marker still reads
    data[4:200] = bytes(196)
    path.write_bytes(bytes(data))
    assert is_synthetic(path)
