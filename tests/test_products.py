"""Products: rendering, signed manifests, verification with only the public key."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import products, signing
from sandbox.errors import BadInput


def make_job(**overrides) -> dict:
    job = {
        "id": "j-abc",
        "operator": "op-jinshu",
        "scenario": "employment-income",
        "grant_id": "g-jinshu-employment",
        "dataset": "population",
        "grade": "general-3",
        "sql_sha256": "s" * 64,
        "plan_digest": "d" * 64,
        "plan_json": json.dumps(
            {
                "query_sha256": "q" * 64,
                "dataset_versions": {"population": "2026.3"},
                "definition": "pure",
            }
        ),
        "cost_json": json.dumps({"epsilon": 1.0, "delta": 0.0, "rho": None, "definition": "pure"}),
        "epsilon": 1.0,
        "delta": 0.0,
        "mechanisms": json.dumps(["laplace"]),
        "created_at": "2026-06-01T10:00:00+00:00",
    }
    job.update(overrides)
    return job


@pytest.fixture()
def released(tmp_path):
    key, _ = signing.ensure_key(tmp_path / "keys", "products")
    table = pa.table(
        {"county": ["140105", "140106"], "n": [1235, None], "suppressed": [False, True]}
    )
    products.store_result(tmp_path / "products", "j-abc", table)
    files = products.release_product(
        tmp_path / "products",
        job=make_job(),
        key=key,
        reviewers=[{"reviewer": "li", "decision": "approve", "decided_at": "2026-06-01T11:00:00"}],
        released_at="2026-06-01T11:00:01+00:00",
        sdc={"min_count": 10, "round_base": 5, "suppressed_rows": 1},
    )
    return tmp_path, key, files


def test_every_format_is_signed_and_verifies(released):
    root, key, files = released
    assert sorted(files) == ["csv", "json", "parquet"]
    for fmt in products.FORMATS:
        path = products.product_file(root / "products", "j-abc", fmt)
        manifest = products.verify_files(
            path, key.public_key(), products.manifest_file(root / "products", "j-abc", fmt)
        )
        assert manifest["result"]["format"] == fmt
        assert manifest["result"]["sha256"] == files[fmt]
        assert manifest["operator"] == "op-jinshu"
        assert manifest["privacy_loss"]["epsilon"] == 1.0
        assert manifest["dataset_versions"] == {"population": "2026.3"}
        assert [r["reviewer"] for r in manifest["reviewers"]] == ["li"]
    csv = products.product_file(root / "products", "j-abc", "csv").read_text()
    assert csv == "county,n,suppressed\n140105,1235,False\n140106,,True\n"
    doc = json.loads(products.product_file(root / "products", "j-abc", "json").read_text())
    assert doc["rows"][1] == {"county": "140106", "n": None, "suppressed": True}


def _copy(root, tmp_path, data: bytes) -> tuple:
    out = tmp_path / "copy.csv"
    out.write_bytes(data)
    manifest = products.manifest_file(root / "products", "j-abc", "csv")
    (tmp_path / "copy.csv.manifest.json").write_bytes(manifest.read_bytes())
    return out


def test_any_single_changed_byte_is_rejected(released, tmp_path):
    root, key, _ = released
    original = products.product_file(root / "products", "j-abc", "csv").read_bytes()
    assert products.verify_files(_copy(root, tmp_path, original), key.public_key())
    for i in range(len(original)):
        changed = bytearray(original)
        changed[i] ^= 0x01
        with pytest.raises(BadInput) as info:
            products.verify_files(_copy(root, tmp_path, bytes(changed)), key.public_key())
        assert info.value.code == "PRODUCT_INVALID"
    with pytest.raises(BadInput):
        products.verify_files(_copy(root, tmp_path, original + b"\n"), key.public_key())


def test_a_changed_manifest_or_another_key_is_rejected(released, tmp_path):
    root, key, _ = released
    data = products.product_file(root / "products", "j-abc", "csv").read_bytes()
    signed = json.loads(products.manifest_file(root / "products", "j-abc", "csv").read_bytes())
    forged = json.loads(json.dumps(signed))
    forged["manifest"]["privacy_loss"]["epsilon"] = 0.1
    with pytest.raises(BadInput, match="signature"):
        products.verify_product(data, forged, key.public_key())
    with pytest.raises(BadInput, match="signature"):
        products.verify_product(data, signed, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(BadInput):
        products.verify_product(data, b"not json", key.public_key())
    assert products.verify_product(data, signed, key.public_key())["job"] == "j-abc"


def test_missing_manifest_is_rejected(tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(BadInput) as info:
        products.verify_files(tmp_path / "x.csv", key.public_key())
    assert info.value.code == "PRODUCT_INVALID"


def _manifest_text(root) -> bytes:
    return products.manifest_file(root / "products", "j-abc", "csv").read_bytes()


def test_a_manifest_with_a_duplicate_key_is_rejected(released):
    # the signature covers the last value; a reader keeping the first would see ε = 0.1
    root, key, _ = released
    data = products.product_file(root / "products", "j-abc", "csv").read_bytes()
    text = _manifest_text(root)
    assert b'"privacy_loss":{"definition"' in text
    doubled = text.replace(b'"privacy_loss":{', b'"privacy_loss":{"epsilon":0.1,', 1)
    with pytest.raises(BadInput, match="the key 'epsilon' twice") as info:
        products.verify_product(data, doubled, key.public_key())
    assert info.value.code == "PRODUCT_INVALID"


def test_the_signature_key_id_must_name_the_key(released):
    root, key, _ = released
    data = products.product_file(root / "products", "j-abc", "csv").read_bytes()
    signed = json.loads(_manifest_text(root))
    assert signed["signature"]["key_id"] == signing.key_id(key.public_key())
    signed["signature"]["key_id"] = "k-0000000000000000"
    with pytest.raises(BadInput, match="key_id") as info:
        products.verify_product(data, signed, key.public_key())
    assert info.value.code == "PRODUCT_INVALID"
    del signed["signature"]["key_id"]
    with pytest.raises(BadInput, match="key_id"):
        products.verify_product(data, signed, key.public_key())


@pytest.mark.parametrize("levels", [40, 100_000])
def test_a_deeply_nested_manifest_is_product_invalid(released, levels):
    root, key, _ = released
    data = products.product_file(root / "products", "j-abc", "csv").read_bytes()
    deep = b'{"manifest": ' + b"[" * levels + b"]" * levels + b', "signature": {}}'
    with pytest.raises(BadInput, match="nests deeper") as info:
        products.verify_product(data, deep, key.public_key())
    assert info.value.code == "PRODUCT_INVALID"
    nested: list = []
    for _ in range(levels if levels < 1000 else 5000):
        nested = [nested]
    with pytest.raises(BadInput, match="nests deeper"):
        products.verify_product(data, {"manifest": nested, "signature": {}}, key.public_key())
