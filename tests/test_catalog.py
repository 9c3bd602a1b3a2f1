"""The catalogue: the demo policies load, and bad catalogues are refused with reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.catalog import Catalog, Grade, Sharing, Use, load_catalog
from sandbox.errors import PolicyInvalid
from tests.policy_factory import dataset, make_policies


def test_demo_catalogue(catalog: Catalog) -> None:
    ids = [d.id for d in catalog.datasets]
    assert ids == ["divisions", "population", "social_insurance", "enterprises", "medical_records"]
    divisions = catalog.dataset("divisions")
    assert divisions is not None and divisions.is_public and divisions.grantable
    medical = catalog.dataset("medical_records")
    assert medical is not None and medical.grade == Grade.CORE
    assert medical.sharing.attribute == Sharing.NOT_SHARED and not medical.grantable
    found = catalog.find_table("payments")
    assert found is not None and found[0].id == "social_insurance"
    assert found[1].rows_per_unit == 12
    persons = catalog.find_table("persons")
    assert persons is not None
    assert persons[1].column("person_id").uses == frozenset({Use.IDENTIFIER})  # type: ignore[union-attr]
    assert persons[1].column("name").uses == frozenset()  # type: ignore[union-attr]
    assert len(catalog.keys("counties")) == 117
    assert catalog.keys("counties")[0] == "140105"
    assert catalog.keys("years") == (2019, 2020, 2021, 2022, 2023, 2024, 2025)


def _expect_invalid(tmp_path: Path, edit: Any, fragment: str) -> PolicyInvalid:
    policies = make_policies(tmp_path, catalog=edit)
    with pytest.raises(PolicyInvalid) as info:
        load_catalog(policies)
    assert fragment in info.value.message
    assert info.value.code == "POLICY_INVALID"
    return info.value


def _col(data: dict[str, Any], ds: str, table: str, col: str) -> dict[str, Any]:
    t = next(t for t in dataset(data, ds)["tables"] if t["name"] == table)
    return next(c for c in t["columns"] if c["name"] == col)


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (
            lambda d: _col(d, "population", "persons", "age").update(bounds=[100, 0]),
            "lower < upper",
        ),
        (lambda d: _col(d, "population", "persons", "sex").update(bounds=[0, 1]), "numeric"),
        (
            lambda d: _col(d, "population", "persons", "person_id").update(
                uses=["identifier", "group"]
            ),
            "identifier has no other use",
        ),
        (lambda d: _col(d, "population", "persons", "sex").update(keys="nope"), "unknown key set"),
        (lambda d: _col(d, "population", "persons", "sex").update(uses=["shout"]), "uses"),
        (lambda d: _col(d, "population", "persons", "age").update(type="BLOB"), "type"),
        (lambda d: dataset(d, "population")["tables"][0].update(file="../etc/passwd"), "relative"),
        (lambda d: dataset(d, "population")["tables"][0].update(file="/etc/passwd"), "relative"),
        (lambda d: dataset(d, "population")["tables"][0].pop("rows_per_unit"), "rows_per_unit"),
        (lambda d: dataset(d, "population").update(privacy_unit="nobody"), "privacy unit"),
        (lambda d: dataset(d, "population")["sharing"].update(reason=""), "reason"),
        (lambda d: dataset(d, "population").update(grade="secret"), "grade"),
        (lambda d: dataset(d, "population").update(extra_field=1), "extra"),
        (lambda d: dataset(d, "divisions")["tables"][0].update(rows_per_unit=1), "lookup"),
        (lambda d: dataset(d, "divisions")["tables"][0].update(lookup_key="nope"), "lookup_key"),
        (lambda d: d["datasets"].append(dict(dataset(d, "divisions"))), "duplicate dataset ids"),
        (lambda d: dataset(d, "enterprises")["tables"][0].update(name="persons"), "unique"),
        (lambda d: d["key_sets"].update(counties={"file": "key_sets/missing.csv"}), "cannot read"),
        (lambda d: d["key_sets"].update(sexes={"values": []}), "empty"),
        # each of these passed `policy check` and then crashed explain with INTERNAL
        (
            lambda d: _col(d, "population", "persons", "age").update(bounds=[0, 1e308]),
            "columns.5.bounds: Value error, bounds must lie within",
        ),
        (
            lambda d: _col(d, "population", "persons", "age").update(bounds=[0, float("inf")]),
            "columns.5.bounds: Value error, bounds must be finite",
        ),
        (
            lambda d: _col(d, "population", "persons", "age").update(bounds=[float("-inf"), 0]),
            "bounds must be finite",
        ),
        (
            lambda d: _col(d, "population", "persons", "age").update(bounds=[0, float("nan")]),
            "bounds must be finite",
        ),
        (
            lambda d: dataset(d, "population")["tables"][0].update(rows_per_unit=10**21),
            "tables.0.rows_per_unit: Input should be less than or equal to 1000000",
        ),
        (
            lambda d: (
                dataset(d, "social_insurance")["tables"][1].update(rows_per_unit=10**6),
                _col(d, "social_insurance", "payments", "amount").update(bounds=[0, 1e12]),
            ),
            "column amount: rows_per_unit x the largest bound exceeds 2**53",
        ),
        (
            lambda d: _col(d, "population", "persons", "age").update(bounds=[0, 2**32]),
            "column age: rows_per_unit x the largest bound squared exceeds 2**62",
        ),
        (
            lambda d: dataset(d, "population")["privacy"].update(max_groups_per_unit=10**7),
            "privacy.max_groups_per_unit",
        ),
        (
            lambda d: dataset(d, "population")["tables"][0].update(file="persons.parquet"),
            "file must be '<dataset directory>/<file>'",
        ),
        (
            lambda d: dataset(d, "population")["tables"][0].update(file="population/"),
            "file must be '<dataset directory>/<file>'",
        ),
        (
            lambda d: dataset(d, "population")["tables"][0].update(file="population/a b.parquet"),
            "file must be '<dataset directory>/<file>'",
        ),
    ],
    ids=[
        "bounds-order",
        "bounds-type",
        "identifier-plus",
        "unknown-keyset",
        "bad-use",
        "bad-type",
        "dotdot-file",
        "absolute-file",
        "rows-per-unit",
        "unit-missing",
        "no-reason",
        "bad-grade",
        "extra-field",
        "lookup-rows",
        "lookup-key",
        "dup-dataset",
        "dup-table",
        "keyset-file",
        "keyset-empty",
        "bounds-huge",
        "bounds-inf",
        "bounds-minus-inf",
        "bounds-nan",
        "rows-per-unit-huge",
        "contribution-huge",
        "squares-overflow",
        "groups-huge",
        "file-one-part",
        "file-empty-part",
        "file-space",
    ],
)
def test_invalid_catalogues(tmp_path: Path, edit: Any, fragment: str) -> None:
    _expect_invalid(tmp_path, edit, fragment)


def test_keyset_file_without_value_column(tmp_path: Path) -> None:
    policies = make_policies(tmp_path)
    (policies / "key_sets" / "counties.csv").write_text("code,name\n1,a\n", "utf-8")
    with pytest.raises(PolicyInvalid, match="no 'value' column"):
        load_catalog(policies)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid, match="does not exist"):
        load_catalog(tmp_path)
    (tmp_path / "catalog.yaml").write_text("datasets: [\n", "utf-8")
    with pytest.raises(PolicyInvalid, match="not valid YAML"):
        load_catalog(tmp_path)


@pytest.mark.parametrize("name", ["catalog.yaml", "grants.yaml"])
def test_unreadable_policy_files(tmp_path: Path, name: str) -> None:
    from sandbox.grants import load_grants

    def load() -> None:
        load_grants(policies, load_catalog(policies))

    policies = make_policies(tmp_path)
    text = (policies / name).read_text("utf-8")
    (policies / name).write_bytes(b"# \xff\xfe\n" + text.encode("utf-8"))
    with pytest.raises(PolicyInvalid, match=f"{name} is not UTF-8 text"):
        load()
    (policies / name).unlink()
    (policies / name).mkdir()
    with pytest.raises(PolicyInvalid, match=f"{name} is a directory, not a file"):
        load()
