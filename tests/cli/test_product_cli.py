"""`sandbox product verify` through the real CLI: hostile manifests exit 2, never 1."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from sandbox import products, signing
from sandbox.cli import app
from tests.test_products import make_job


@pytest.fixture()
def product(tmp_path: Path) -> tuple[Path, Path, bytes]:
    key, _ = signing.ensure_key(tmp_path / "keys", "products")
    products.store_result(tmp_path / "products", "j-abc", pa.table({"n": [1, 2]}))
    products.release_product(
        tmp_path / "products",
        job=make_job(),
        key=key,
        reviewers=[],
        released_at="2026-06-01T11:00:01+00:00",
        sdc={},
    )
    result = products.product_file(tmp_path / "products", "j-abc", "csv")
    manifest = products.manifest_file(tmp_path / "products", "j-abc", "csv")
    return result, tmp_path / "keys" / "products.pub", manifest.read_bytes()


def _verify(tmp: Path, result: Path, pub: Path) -> tuple[int, dict]:
    out = CliRunner().invoke(
        app,
        ["--home", str(tmp / "home"), "product", "verify", str(result), "-k", str(pub), "--json"],
    )
    return out.exit_code, json.loads(out.stdout)


@pytest.mark.parametrize("hostile", ["duplicate-key", "key-id", "deep"])
def test_verify_refuses_hostile_manifests(tmp_path, product, hostile):
    result, pub, text = product
    code, out = _verify(tmp_path, result, pub)
    assert code == 0 and out["ok"] is True
    manifest = result.with_name(result.name + ".manifest.json")
    if hostile == "duplicate-key":
        text = text.replace(b'"privacy_loss":{', b'"privacy_loss":{"epsilon":0.1,', 1)
    elif hostile == "key-id":
        signed = json.loads(text)
        signed["signature"]["key_id"] = "k-someone-else"
        text = json.dumps(signed).encode()
    else:
        text = b'{"manifest": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    manifest.write_bytes(text)
    code, out = _verify(tmp_path, result, pub)
    assert code == 2, out
    assert out["error"]["code"] == "PRODUCT_INVALID"
