"""The fabricated demo data obeys the catalogue and is realistic where it matters."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.catalog import Catalog, Use
from sandbox.errors import BadInput
from sandbox.ops.demo_data import generate_demo_data

ARROW = {
    "VARCHAR": pa.string(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "DATE": pa.date32(),
    "BOOLEAN": pa.bool_(),
}


def _tables(catalog: Catalog):  # type: ignore[no-untyped-def]
    return [(d, t) for d in catalog.datasets if d.grantable for t in d.tables]


def _sql(root: Path, q: str) -> list[tuple]:  # type: ignore[type-arg]
    con = duckdb.connect()
    try:
        return con.execute(q.replace("{root}", str(root))).fetchall()
    finally:
        con.close()


def test_every_grantable_table_has_exactly_the_catalogue_schema(
    demo_data_root: Path, catalog: Catalog
) -> None:
    for ds, t in _tables(catalog):
        schema = pq.read_schema(demo_data_root / t.file)
        assert schema.names == [c.name for c in t.columns], t.name
        assert [f.type for f in schema] == [ARROW[c.type] for c in t.columns], t.name
        meta = schema.metadata
        assert meta[b"jinyu.fabricated"] == b"true"
        assert b"FABRICATED" in meta[b"jinyu.description"]
        assert b"jinyu.synthetic" not in meta
        assert meta[b"jinyu.dataset"] == ds.id.encode()


def test_core_data_is_skipped_and_said_so(tmp_path: Path, policies_dir: Path) -> None:
    summary = generate_demo_data(tmp_path, policies_dir, people=200, seed=1)
    assert [s["dataset"] for s in summary["skipped"]] == ["medical_records"]
    assert "core" in summary["skipped"][0]["reason"]
    assert not (tmp_path / "medical_records").exists()
    written = {(t["dataset"], t["table"]) for t in summary["tables"]}
    assert written == {
        ("divisions", "divisions"),
        ("population", "persons"),
        ("social_insurance", "insured"),
        ("social_insurance", "payments"),
        ("enterprises", "enterprises"),
    }
    for t in summary["tables"]:
        assert pq.read_metadata(t["path"]).num_rows == t["rows"]


def test_values_respect_key_sets_bounds_and_null_rates(
    demo_data_root: Path, catalog: Catalog
) -> None:
    for _ds, t in _tables(catalog):
        table = pq.read_table(demo_data_root / t.file)
        n = table.num_rows
        assert n > 0
        for c in t.columns:
            col = table.column(c.name)
            nulls = col.null_count / n
            if c.null_rate == 0:
                assert nulls == 0, f"{t.name}.{c.name} has nulls"
            else:
                assert abs(nulls - c.null_rate) < 0.02, f"{t.name}.{c.name} null rate {nulls}"
            values = [v for v in col.to_pylist() if v is not None]
            if c.keys is not None:
                allowed = {str(k) for k in catalog.keys(c.keys)}
                seen = {str(v) for v in set(values)}
                assert seen <= allowed, f"{t.name}.{c.name}: {sorted(seen - allowed)[:5]}"
            if c.bounds is not None:
                lo, hi = c.bounds
                assert min(values) >= lo and max(values) <= hi, f"{t.name}.{c.name}"


def test_joins_match_and_payments_exceed_the_row_cap(
    demo_data_root: Path, catalog: Catalog
) -> None:
    persons = "'{root}/population/persons.parquet'"
    insured = "'{root}/social_insurance/insured.parquet'"
    payments = "'{root}/social_insurance/payments.parquet'"
    # every payment belongs to an insured person, every insured person is in the register
    orphan = _sql(demo_data_root, f"SELECT count(*) FROM {payments} WHERE person_id NOT IN "
                  f"(SELECT person_id FROM {insured})")  # fmt: skip
    assert orphan == [(0,)]
    mismatch = _sql(demo_data_root, f"""
        SELECT count(*) FROM {insured} i LEFT JOIN {persons} p USING (person_id)
        WHERE p.person_id IS NULL OR p.age <> i.age OR p.sex <> i.sex
           OR p.county_code <> i.county_code""")  # fmt: skip
    assert mismatch == [(0,)]
    # unit ids are unique where rows_per_unit is 1
    for _ds, t in _tables(catalog):
        if t.rows_per_unit == 1:
            unit = next(c.name for c in t.columns if Use.IDENTIFIER in c.uses)
            dup = _sql(demo_data_root, f"SELECT count(*) - count(DISTINCT {unit}) "
                       f"FROM '{{root}}/{t.file}'")  # fmt: skip
            assert dup == [(0,)], t.name
    # many rows per person; some people pay every month of 2019-2025 (84 > the cap of 12)
    [(share, mean_rows, max_rows)] = _sql(demo_data_root, f"""
        SELECT (SELECT count(*) FROM {insured}) / (SELECT count(*) FROM {persons}),
               avg(n), max(n)
        FROM (SELECT person_id, count(*) AS n FROM {payments} GROUP BY 1)""")  # fmt: skip
    assert 0.5 < share < 0.75
    assert 20 < mean_rows < 50
    assert max_rows == 84
    # each (person, year, month) at most once
    [(dups,)] = _sql(demo_data_root, f"SELECT count(*) - count(DISTINCT (person_id, year, month)) "
                     f"FROM {payments}")  # fmt: skip
    assert dups == 0


def test_distributions_are_realistic(demo_data_root: Path) -> None:
    persons = "'{root}/population/persons.parquet'"
    rows = dict(_sql(demo_data_root, f"""
        SELECT employment, avg(age) FROM {persons} GROUP BY 1"""))  # fmt: skip
    assert rows["student"] < 20 < rows["employed"] < 50 < 60 < rows["retired"]
    [(bad,)] = _sql(
        demo_data_root,
        f"""SELECT count(*) FROM {persons}
        WHERE (employment = 'retired' AND age < 50)
           OR (employment IN ('employed', 'self_employed', 'unemployed') AND age < 16)""",
    )
    assert bad == 0
    # Taiyuan's urban districts are the most populous counties
    top = [r[0] for r in _sql(demo_data_root, f"""SELECT county_code FROM {persons}
        GROUP BY 1 ORDER BY count(*) DESC LIMIT 5""")]  # fmt: skip
    assert all(code.startswith("1401") for code in top)
    # occupation has a long tail of a few hundred titles
    [(titles, top_share)] = _sql(demo_data_root, f"""
        SELECT count(DISTINCT occupation),
               max(n) / sum(n) FROM (SELECT occupation, count(*)::DOUBLE AS n FROM {persons}
               WHERE occupation IS NOT NULL GROUP BY 1)""")  # fmt: skip
    assert 200 <= titles <= 800
    assert top_share > 0.02
    # income: employed earn more than students; log-normal shape (mean above median)
    inc = dict((r[0], (r[1], r[2])) for r in _sql(demo_data_root, f"""
        SELECT employment, median(monthly_income), avg(monthly_income) FROM {persons}
        WHERE monthly_income > 0 GROUP BY 1"""))  # fmt: skip
    assert inc["employed"][0] > 2 * inc["student"][0]
    assert inc["employed"][1] > inc["employed"][0]
    [(ids_ok,)] = _sql(
        demo_data_root,
        f"""SELECT bool_and(length(id_number) = 18
        AND substr(id_number, 1, 6) = county_code) FROM {persons}""",
    )
    assert ids_ok


def test_enterprises_are_heavy_tailed(demo_data_root: Path) -> None:
    ent = "'{root}/enterprises/enterprises.parquet'"
    [(n, median, top)] = _sql(
        demo_data_root,
        f"""
        SELECT count(*), median(employees), max(employees) FROM {ent}""",
    )
    assert n == 20_000 // 20
    assert median < 10 and top > 200
    assert dict(_sql(demo_data_root, f"SELECT status, count(*) > 0 FROM {ent} GROUP BY 1")) == {
        "active": True, "revoked": True, "cancelled": True,
    }  # fmt: skip


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path, policies_dir: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_demo_data(a, policies_dir, people=500, seed=5)
    generate_demo_data(b, policies_dir, people=500, seed=5)
    generate_demo_data(c, policies_dir, people=500, seed=6)
    for rel in ("population/persons.parquet", "social_insurance/payments.parquet",
                "enterprises/enterprises.parquet"):  # fmt: skip
        assert pq.read_table(a / rel).equals(pq.read_table(b / rel)), rel
        assert not pq.read_table(a / rel).equals(pq.read_table(c / rel)), rel


def test_scale_and_progress(tmp_path: Path, policies_dir: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    summary = generate_demo_data(
        tmp_path, policies_dir, people=1_234, seed=0, progress=lambda *a: seen.append(a)
    )
    rows = {t["table"]: t["rows"] for t in summary["tables"]}
    assert rows["persons"] == 1_234
    assert rows["enterprises"] == 61
    assert rows["divisions"] == 117
    assert ("population.persons", 0, 1_234) in seen
    assert ("population.persons", 1_234, 1_234) in seen


def test_chunks_join_up(
    tmp_path: Path, policies_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming in chunks gives the same rows as one pass (what 100M-row runs rely on)."""
    import sandbox.ops.demo_data as dd

    generate_demo_data(tmp_path / "one", policies_dir, people=700, seed=2)
    monkeypatch.setattr(dd, "CHUNK_UNITS", 256)
    generate_demo_data(tmp_path / "many", policies_dir, people=700, seed=2)
    for rel in ("population/persons.parquet", "social_insurance/payments.parquet"):
        one, many = pq.read_table(tmp_path / "one" / rel), pq.read_table(tmp_path / "many" / rel)
        assert one.equals(many), rel


def test_bad_sizes_are_refused(tmp_path: Path, policies_dir: Path) -> None:
    with pytest.raises(BadInput):
        generate_demo_data(tmp_path, policies_dir, people=0)
    with pytest.raises(BadInput):
        generate_demo_data(tmp_path, policies_dir, people=10, seed=-1)
