"""Products carry each released value's ± (issue 16): x_pm95 columns in every format,
the manifest's accuracy summary, both covered by the signature."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox import products, signing
from sandbox.errors import BadInput
from tests.test_products import make_job

ACCURACY = {
    "n": [
        {"scale": 4.0, "accuracy_95": 12.45, "pm95": 15, "pm95_unit": "value", "method": "direct"},
        None,  # suppressed
        {"scale": 4.0, "accuracy_95": 12.45, "pm95": 15, "pm95_unit": "value", "method": "direct"},
    ],
    "mean_income": [
        {
            "scale": None,
            "pm95": 410.0,
            "pm95_unit": "value",
            "method": "propagated",
            "derived": True,
        },
        None,
        {
            "scale": None,
            "pm95": None,
            "pm95_unit": "value",
            "method": "propagated",
            "derived": True,
            "unbounded": True,
        },  # fmt: skip
    ],
    "p50": [
        {"scale": 8.0, "pm95": 40, "pm95_unit": "rank", "method": "rank", "rank_error_95": 39.6},
        None,
        {"scale": 8.0, "pm95": 40, "pm95_unit": "rank", "method": "rank", "rank_error_95": 39.6},
    ],
}


@pytest.fixture()
def released(tmp_path):
    key, _ = signing.ensure_key(tmp_path / "keys", "products")
    table = pa.table(
        {
            "county": ["140105", "140106", "140107"],
            "n": [1235, None, 15],
            "mean_income": [4818.5, None, 300.0],
            "p50": [4004.0, None, 3000.0],
            "suppressed": [False, True, False],
        }
    )
    products.store_result(tmp_path / "products", "j-abc", table)
    products.release_product(
        tmp_path / "products",
        job=make_job(accuracy=json.dumps(ACCURACY)),
        key=key,
        reviewers=[],
        released_at="2026-06-01T11:00:01+00:00",
        sdc={"min_count": 10, "round_base": 5, "suppressed_rows": 1},
    )
    return tmp_path / "products", key


def test_every_format_has_each_values_pm_beside_it(released):
    root, key = released
    csv = products.product_file(root, "j-abc", "csv").read_text().splitlines()
    assert csv == [
        "county,n,n_pm95,mean_income,mean_income_pm95,p50,p50_rank_pm95,suppressed",
        "140105,1235,15,4818.5,410.0,4004.0,40,False",
        "140106,,,,,,,True",
        "140107,15,15,300.0,,3000.0,40,False",  # an unbounded ± is empty
    ]
    doc = json.loads(products.product_file(root, "j-abc", "json").read_text())
    assert doc["rows"][0]["n_pm95"] == 15 and doc["rows"][0]["mean_income_pm95"] == 410.0
    parquet = pq.read_table(
        io.BytesIO(products.product_file(root, "j-abc", "parquet").read_bytes())
    )
    assert parquet.column("n_pm95").type == pa.int64()
    assert parquet.column("mean_income_pm95").to_pylist() == [410.0, None, None]
    for fmt in products.FORMATS:
        path = products.product_file(root, "j-abc", fmt)
        manifest = products.verify_files(
            path, key.public_key(), products.manifest_file(root, "j-abc", fmt)
        )
        acc = manifest["accuracy"]
        assert acc["confidence"] == 0.95
        assert acc["outputs"]["n"] == {
            "column": "n_pm95",
            "unit": "value",
            "method": "direct",
            "cells": 2,
            "typical_pm95": 15,
            "max_pm95": 15,
            "unbounded_cells": 0,
            "wide_cells": 0,  # 15 ± 15 is not wider than its value
        }
        assert acc["outputs"]["mean_income"]["unbounded_cells"] == 1
        assert acc["outputs"]["mean_income"]["wide_cells"] == 1  # the unbounded one
        assert acc["outputs"]["p50"]["column"] == "p50_rank_pm95"
        assert acc["outputs"]["p50"]["unit"] == "rank (rows)"


def test_the_pm_columns_and_the_accuracy_summary_are_signed(released, tmp_path):
    root, key = released
    data = products.product_file(root, "j-abc", "csv").read_bytes()
    signed = json.loads(products.manifest_file(root, "j-abc", "csv").read_bytes())
    narrower = data.replace(b",410.0,", b",41.0,", 1)  # a ± made to look tighter
    assert narrower != data
    with pytest.raises(BadInput) as info:
        products.verify_product(narrower, signed, key.public_key())
    assert info.value.code == "PRODUCT_INVALID"
    forged = json.loads(json.dumps(signed))
    forged["manifest"]["accuracy"]["outputs"]["mean_income"]["typical_pm95"] = 1.0
    with pytest.raises(BadInput, match="signature"):
        products.verify_product(data, forged, key.public_key())


def test_a_pm_column_never_takes_an_outputs_name() -> None:
    table = pa.table({"n": [5], "n_pm95": [3]})
    cells = {"scale": 1.0, "pm95": 4, "pm95_unit": "value"}
    acc = {"n": [cells], "n_pm95": [cells]}
    assert products.accuracy_columns(table.column_names, acc) == {
        "n": "n_pm95_2",
        "n_pm95": "n_pm95_pm95",
    }
    assert products.with_accuracy(table, acc).column_names == [
        "n",
        "n_pm95_2",
        "n_pm95",
        "n_pm95_pm95",
    ]
    assert products.with_accuracy(table, None).column_names == ["n", "n_pm95"]  # old jobs
