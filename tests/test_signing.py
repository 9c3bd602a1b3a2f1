from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from sandbox import signing


def test_key_is_created_once_with_owner_only_permissions(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    created: list[tuple[str, str]] = []
    key = signing.load_or_create(keys_dir, "audit", on_create=lambda n, k: created.append((n, k)))
    assert created == [("audit", signing.key_id(key))]
    assert stat.S_IMODE((keys_dir / "audit.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert (keys_dir / "audit.pub").read_bytes() == signing.public_key_pem(key)

    again = signing.load_or_create(keys_dir, "audit", on_create=lambda n, k: created.append((n, k)))
    assert len(created) == 1  # not created a second time
    assert signing.key_id(again) == signing.key_id(key)
    assert not list(keys_dir.glob(".*tmp"))


def test_ensure_key_reports_creation_and_names_are_distinct(tmp_path: Path) -> None:
    audit_key, created = signing.ensure_key(tmp_path, "audit")
    products_key, created2 = signing.ensure_key(tmp_path, "products")
    assert created and created2
    assert signing.key_id(audit_key) != signing.key_id(products_key)
    assert signing.ensure_key(tmp_path, "audit")[1] is False
    with pytest.raises(ValueError):
        signing.ensure_key(tmp_path, "other")


def test_public_key_loads_from_path_text_and_bytes_and_verifies(tmp_path: Path) -> None:
    key = signing.load_or_create(tmp_path, "products")
    pem = signing.public_key_pem(key)
    signature = key.sign(b"manifest")
    for source in (tmp_path / "products.pub", str(tmp_path / "products.pub"), pem, pem.decode()):
        public = signing.load_public_key(source)
        public.verify(signature, b"manifest")
        assert signing.key_id(public) == signing.key_id(key)
    with pytest.raises(InvalidSignature):
        signing.load_public_key(pem).verify(signature, b"other manifest")


def test_load_public_key_refuses_garbage_and_private_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        signing.load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    signing.load_or_create(tmp_path, "audit")
    with pytest.raises(ValueError):
        signing.load_public_key(tmp_path / "audit.pem")
