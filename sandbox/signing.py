"""The bureau's Ed25519 signing keys ("audit" for checkpoints, "products" for manifests).

A key lives in ``<keys_dir>/<name>.pem`` (PKCS#8 PEM, mode 0600, directory 0700) and
its public half in ``<name>.pub`` (SubjectPublicKeyInfo PEM), so the public key can be
handed to anyone who verifies. Keys are created on first use; the caller learns that a
key was created (``ensure_key`` returns a flag, ``load_or_create`` calls ``on_create``)
so it can write the ``key.created`` audit event.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "KEY_NAMES",
    "ensure_key",
    "key_id",
    "load_or_create",
    "load_public_key",
    "public_key_pem",
]

KEY_NAMES = ("audit", "products")


def ensure_key(keys_dir: Path, name: str) -> tuple[Ed25519PrivateKey, bool]:
    """The named private key and whether it was created by this call."""
    if name not in KEY_NAMES:
        raise ValueError(f"unknown key name {name!r}; expected one of {KEY_NAMES}")
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    path = keys_dir / f"{name}.pem"
    if path.exists():
        return _load_private(path), False
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Write to a private temporary file, then link it into place: link fails if another
    # process created the key first, and nobody can ever read a half-written key.
    tmp = keys_dir / f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _load_private(path), False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    pub_path = keys_dir / f"{name}.pub"
    pub_tmp = keys_dir / f".{name}.pub.{os.getpid()}.tmp"
    pub_tmp.write_bytes(public_key_pem(key))
    os.chmod(pub_tmp, 0o644)
    os.replace(pub_tmp, pub_path)
    return key, True


def load_or_create(
    keys_dir: Path, name: str, *, on_create: Callable[[str, str], None] | None = None
) -> Ed25519PrivateKey:
    """The named private key, created at first use; ``on_create(name, key_id)`` if new."""
    key, created = ensure_key(keys_dir, name)
    if created and on_create is not None:
        on_create(name, key_id(key))
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of a key (private keys give their public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(source: Path | str | bytes) -> Ed25519PublicKey:
    """A public key from a PEM file path or PEM bytes/text."""
    if isinstance(source, Path):
        data = source.read_bytes()
    elif isinstance(source, str):
        data = source.encode() if "-----BEGIN" in source else Path(source).read_bytes()
    else:
        data = source
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A short, stable name of a key: the first 16 hex digits of SHA-256 of its raw bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path.name} is not an Ed25519 private key")
    return key
