from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from sandbox import keys


def test_key_is_created_once_with_owner_only_permissions(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    created: list[tuple[str, str]] = []
    key = keys.load_or_create(keys_dir, "audit", on_create=lambda n, k: created.append((n, k)))
    assert created == [("audit", keys.key_id(key))]
    assert stat.S_IMODE((keys_dir / "audit.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert (keys_dir / "audit.pub").read_bytes() == keys.public_key_pem(key)

    again = keys.load_or_create(keys_dir, "audit", on_create=lambda n, k: created.append((n, k)))
    assert len(created) == 1  # not created a second time
    assert keys.key_id(again) == keys.key_id(key)
    assert not list(keys_dir.glob(".*tmp"))


def test_ensure_key_reports_creation_and_names_are_distinct(tmp_path: Path) -> None:
    audit_key, created = keys.ensure_key(tmp_path, "audit")
    products_key, created2 = keys.ensure_key(tmp_path, "products")
    assert created and created2
    assert keys.key_id(audit_key) != keys.key_id(products_key)
    assert keys.ensure_key(tmp_path, "audit")[1] is False
    with pytest.raises(ValueError):
        keys.ensure_key(tmp_path, "other")


def test_public_key_loads_from_path_text_and_bytes_and_verifies(tmp_path: Path) -> None:
    key = keys.load_or_create(tmp_path, "products")
    pem = keys.public_key_pem(key)
    signature = key.sign(b"manifest")
    for source in (tmp_path / "products.pub", str(tmp_path / "products.pub"), pem, pem.decode()):
        public = keys.load_public_key(source)
        public.verify(signature, b"manifest")
        assert keys.key_id(public) == keys.key_id(key)
    with pytest.raises(InvalidSignature):
        keys.load_public_key(pem).verify(signature, b"other manifest")


def test_load_public_key_refuses_garbage_and_private_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        keys.load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    keys.load_or_create(tmp_path, "audit")
    with pytest.raises(ValueError):
        keys.load_public_key(tmp_path / "audit.pem")
