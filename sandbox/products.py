"""Data products (数据产品): the released result, its manifest and the bureau's signature.

A product is kept as one Parquet file of the reviewed noisy result
(``<products_dir>/<job>/result.parquet``). At release it is rendered once into each
download format (CSV, Parquet, JSON), and each rendering gets a manifest (the
certificate of article 18) signed with the bureau's Ed25519 ``products`` key.

The downloadable format is two files side by side::

    result.csv                  the result, exactly the bytes that were signed for
    result.csv.manifest.json    {"manifest": {...}, "signature": {...}}

Beside each released value column ``x`` the result carries ``x_pm95``, its 95%
half-width (``x_rank_pm95`` for a quantile: the rank error in rows), and the manifest's
``accuracy`` names, per output, its ± column, method, typical and largest ±; both
are covered by the signature.

``manifest.result.sha256`` is the SHA-256 of the result file; ``signature.value`` is
the base64 Ed25519 signature of the manifest's canonical JSON (UTF-8, keys sorted, no
spaces). Anyone can check a product with only the public key (``sandbox product
verify FILE --public-key products.pub``): one changed byte in the result or in a
manifest field makes it fail.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sandbox import store, strictjson
from sandbox.errors import BadInput

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    job_id       TEXT PRIMARY KEY,
    operator     TEXT NOT NULL,
    released_at  TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    files        TEXT NOT NULL   -- JSON {format: sha256}
);
"""
store.register_schema("sandbox.products", SCHEMA)

MANIFEST_VERSION = 1
FORMATS: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "json": "application/json",
}
RESULT_NAME = "result.parquet"


def product_dir(products_dir: Path, job_id: str) -> Path:
    return products_dir / job_id


def store_result(products_dir: Path, job_id: str, table: pa.Table) -> Path:
    """Keep the reviewed noisy result for review and release (written atomically)."""
    folder = product_dir(products_dir, job_id)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / RESULT_NAME
    tmp = folder / f".{RESULT_NAME}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_result(products_dir: Path, job_id: str) -> pa.Table:
    return pq.read_table(product_dir(products_dir, job_id) / RESULT_NAME)


def discard(products_dir: Path, job_id: str) -> None:
    """Remove whatever was stored for a job that will release nothing."""
    shutil.rmtree(product_dir(products_dir, job_id), ignore_errors=True)


def preview(products_dir: Path, job_id: str, *, limit: int = 200) -> dict[str, Any]:
    """The noisy result as JSON-ready columns and rows (for reviewers)."""
    table = read_result(products_dir, job_id)
    return {
        "columns": table.column_names,
        "rows": [_json_row(r) for r in table.slice(0, limit).to_pylist()],
        "total_rows": table.num_rows,
    }


PM_SUFFIX = "_pm95"  # beside a value column x: x_pm95, its 95% half-width
RANK_PM_SUFFIX = "_rank_pm95"  # beside a quantile: the rank error, in rows


def accuracy_columns(names: list[str], accuracy: dict[str, Any] | None) -> dict[str, str]:
    """Each column with released accuracy → the name of its ± column: ``x_pm95``
    (``x_rank_pm95`` for a quantile), with ``_2``, ``_3`` … if an output already has
    that name."""
    taken = set(names)
    out: dict[str, str] = {}
    for name in names:
        cells = (accuracy or {}).get(name)
        if not isinstance(cells, list):
            continue
        rank = any(isinstance(c, dict) and c.get("pm95_unit") == "rank" for c in cells)
        base = name + (RANK_PM_SUFFIX if rank else PM_SUFFIX)
        pm, n = base, 2
        while pm in taken:
            pm, n = f"{base}_{n}", n + 1
        taken.add(pm)
        out[name] = pm
    return out


def with_accuracy(table: pa.Table, accuracy: dict[str, Any] | None) -> pa.Table:
    """The released table with each value column's ± column right after it (null
    where a cell has none: suppressed, NULL or unbounded)."""
    pm_names = accuracy_columns(table.column_names, accuracy)
    arrays: list[pa.Array | pa.ChunkedArray] = []
    names: list[str] = []
    for name in table.column_names:
        arrays.append(table.column(name))
        names.append(name)
        if name not in pm_names:
            continue
        cells = (accuracy or {})[name]
        pms = [
            c.get("pm95") if isinstance(c, dict) else None
            for c in (cells[i] if i < len(cells) else None for i in range(table.num_rows))
        ]
        # one type per kind of output, never per run: a derived ± is always a float
        derived = any(isinstance(c, dict) and c.get("method") == "propagated" for c in cells)
        whole = not derived and all(v is None or type(v) is int for v in pms)
        arrays.append(pa.array(pms, type=pa.int64() if whole else pa.float64()))
        names.append(pm_names[name])
    return pa.Table.from_arrays(arrays, names=names)


def accuracy_summary(table: pa.Table, accuracy: dict[str, Any] | None) -> dict[str, Any]:
    """What the manifest says of the ± columns: per output its ± column, unit, method,
    typical (median) and largest ±, and how many cells are unbounded or wider than
    their value."""
    from sandbox.review import wide_cells

    pm_names = accuracy_columns(table.column_names, accuracy)
    wide = wide_cells(dict(accuracy or {}), table)
    outputs: dict[str, Any] = {}
    for name, pm_name in pm_names.items():
        cells = [c for c in (accuracy or {})[name] if isinstance(c, dict)]
        pms = sorted(c["pm95"] for c in cells if isinstance(c.get("pm95"), int | float))
        methods = sorted({str(c.get("method") or "direct") for c in cells})
        rank = any(c.get("pm95_unit") == "rank" for c in cells)
        outputs[name] = {
            "column": pm_name,
            "unit": "rank (rows)" if rank else "value",
            "method": methods[0] if len(methods) == 1 else methods,
            "cells": len(cells),
            "typical_pm95": pms[(len(pms) - 1) // 2] if pms else None,
            "max_pm95": pms[-1] if pms else None,
            "unbounded_cells": sum(1 for c in cells if c.get("unbounded")),
            "wide_cells": wide.get(name, 0),
        }
    return {
        "confidence": 0.95,
        "statement": "Beside each released value x, x_pm95 is its 95% half-width: the true "
        "value lies within x ± x_pm95 with probability at least 95%. Direct counts and "
        "sums: from the noise scale; derived outputs: propagated from the noisy measures; "
        "quantiles: x_rank_pm95, the rank error in rows. Rounded outward; a rounded count "
        "includes its rounding (docs/privacy.md, 'Accuracy statements').",
        "outputs": outputs,
    }


def render(table: pa.Table, fmt: str) -> bytes:
    """The table as the bytes of one download format (deterministic)."""
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    rows = table.to_pylist()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.column_names)
        for r in rows:
            writer.writerow(["" if v is None else _cell(v) for v in r.values()])
        return out.getvalue().encode("utf-8")
    if fmt == "json":
        doc = {"columns": table.column_names, "rows": [_json_row(r) for r in rows]}
        return (json.dumps(doc, ensure_ascii=False, indent=1, allow_nan=False) + "\n").encode()
    raise BadInput(f"Unknown format {fmt!r}.", hint="Use csv, parquet or json.")


def _cell(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return ""
    if isinstance(v, datetime | date):
        return v.isoformat()
    return v


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, datetime | date):
            v = v.isoformat()
        out[k] = v
    return out


def canonical(obj: Any) -> bytes:
    """The bytes that are signed: JSON, keys sorted, no spaces, UTF-8."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    from sandbox.signing import key_id as _key_id

    return _key_id(key)


def sign_manifest(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    signature = key.sign(canonical(manifest))
    return {
        "manifest": manifest,
        "signature": {
            "algorithm": "Ed25519",
            "key_id": key_id(key),
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def manifest_head(job: dict[str, Any]) -> dict[str, Any]:
    """The fields every product manifest (SQL or analysis) opens with: who, what, which job."""
    return {
        "version": MANIFEST_VERSION,
        "product": job["id"],
        "job": job["id"],
        "operator": job["operator"],
        "scenario": job["scenario"],
        "grant": job["grant_id"],
        "dataset": job["dataset"],
        "grade": job["grade"],
    }


def manifest_tail(
    *,
    job: dict[str, Any],
    reviewers: list[dict[str, Any]],
    released_at: str,
    fmt: str,
    media_type: str,
    data: bytes,
) -> dict[str, Any]:
    """The fields every product manifest closes with: the reviewers, the times and the
    result file (its format, size and SHA-256)."""
    return {
        "reviewers": [
            {"reviewer": r["reviewer"], "decision": r["decision"], "decided_at": r["decided_at"]}
            for r in reviewers
        ],
        "times": {"submitted": job["created_at"], "released": released_at},
        "result": {
            "file": f"result.{fmt}",
            "format": fmt,
            "media_type": media_type,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    }


def write_manifest(folder: Path, manifest: dict[str, Any], key: Ed25519PrivateKey) -> None:
    """Sign ``manifest`` and write it beside its result file (``result.<fmt>.manifest.json``)."""
    signed = sign_manifest(manifest, key)
    _write(
        folder / f"result.{manifest['result']['format']}.manifest.json", canonical(signed) + b"\n"
    )


def build_manifest(
    *,
    job: dict[str, Any],
    fmt: str,
    data: bytes,
    reviewers: list[dict[str, Any]],
    released_at: str,
    sdc: dict[str, Any],
    accuracy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The certificate of one product file. ``job`` is the job record (jobs.Job.record);
    ``accuracy`` the summary of its ± columns (``accuracy_summary``)."""
    plan = json.loads(job["plan_json"])
    cost = json.loads(job["cost_json"]) if job.get("cost_json") else {}
    return {
        **manifest_head(job),
        "query_sha256": plan.get("query_sha256", job["sql_sha256"]),
        "plan_digest": job["plan_digest"],
        "dataset_versions": plan.get("dataset_versions", {}),
        "privacy_loss": {
            "epsilon": cost.get("epsilon", job["epsilon"]),
            "delta": cost.get("delta", job["delta"]),
            "rho": cost.get("rho"),
            "definition": cost.get("definition", plan.get("definition")),
        },
        "mechanisms": json.loads(job["mechanisms"] or "[]"),
        "disclosure_control": sdc,
        "accuracy": accuracy or {},
        **manifest_tail(
            job=job,
            reviewers=reviewers,
            released_at=released_at,
            fmt=fmt,
            media_type=FORMATS[fmt],
            data=data,
        ),
    }


def release_product(
    products_dir: Path,
    *,
    job: dict[str, Any],
    key: Ed25519PrivateKey,
    reviewers: list[dict[str, Any]],
    released_at: str,
    sdc: dict[str, Any],
) -> dict[str, str]:
    """Render every format, sign a manifest for each, write them; {format: sha256}."""
    folder = product_dir(products_dir, job["id"])
    stored = read_result(products_dir, job["id"])
    accuracy = json.loads(job["accuracy"]) if job.get("accuracy") else {}
    table = with_accuracy(stored, accuracy)
    summary = accuracy_summary(stored, accuracy)
    files: dict[str, str] = {}
    for fmt in FORMATS:
        data = render(table, fmt)
        manifest = build_manifest(
            job=job,
            fmt=fmt,
            data=data,
            reviewers=reviewers,
            released_at=released_at,
            sdc=sdc,
            accuracy=summary,
        )
        write_manifest(folder, manifest, key)
        if fmt != "parquet":
            _write(folder / f"result.{fmt}", data)
        else:
            _write(folder / "result.download.parquet", data)
        files[fmt] = manifest["result"]["sha256"]
    return files


def release_analysis_product(products_dir: Path, **kw: Any) -> dict[str, str]:
    """An approved analysis job's product: ``result.zip`` (ACRO's approved output files)
    and its signed manifest (``sandbox.products_analysis``). {"zip": sha256}"""
    from sandbox.products_analysis import release_analysis_product as release

    return release(products_dir, **kw)


def record_product(
    conn: store.Connection,
    *,
    job_id: str,
    operator: str,
    released_at: str,
    key: Ed25519PrivateKey,
    files: dict[str, str],
) -> None:
    """Register the product (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO products (job_id, operator, released_at, key_id, files)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET operator = excluded.operator,"
        " released_at = excluded.released_at, key_id = excluded.key_id, files = excluded.files",
        (job_id, operator, released_at, key_id(key), json.dumps(files, sort_keys=True)),
    )


def product_file(products_dir: Path, job_id: str, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise BadInput(f"Unknown format {fmt!r}.", hint="Use csv, parquet or json.")
    folder = product_dir(products_dir, job_id)
    return folder / ("result.download.parquet" if fmt == "parquet" else f"result.{fmt}")


def manifest_file(products_dir: Path, job_id: str, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise BadInput(f"Unknown format {fmt!r}.", hint="Use csv, parquet or json.")
    return product_dir(products_dir, job_id) / f"result.{fmt}.manifest.json"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- verification (needs only the public key) -------------------------------------


def _invalid(message: str) -> BadInput:
    return BadInput(
        message,
        code="PRODUCT_INVALID",
        hint="Download the product again; if it still fails, report it to the bureau.",
    )


def verify_product(
    data: bytes, signed: dict[str, Any] | bytes, public_key: Ed25519PublicKey
) -> dict[str, Any]:
    """Check a result file against its signed manifest; the manifest, or PRODUCT_INVALID.

    The manifest is read as strict JSON: a duplicate key is refused (a reader that kept
    the first value would see another manifest than the one whose last values were
    signed), and so is nesting deeper than any manifest has. ``signature.key_id`` must
    name ``public_key``: it is not covered by the signature, so it is checked here.
    """
    if isinstance(signed, bytes | bytearray):
        try:
            signed = strictjson.loads(signed)
        except strictjson.JSONRefused as exc:
            if exc.reason == "duplicate_key":
                raise _invalid(f"The manifest has the key {exc.key!r} twice.") from exc
            if exc.reason == "too_deep":
                raise _invalid("The manifest nests deeper than any manifest does.") from exc
            raise _invalid("The manifest is not valid JSON.") from exc
    elif strictjson.depth(signed) > strictjson.MAX_DEPTH:
        raise _invalid("The manifest nests deeper than any manifest does.")
    if not isinstance(signed, dict):
        raise _invalid("The manifest is not a JSON object.")
    manifest = signed.get("manifest")
    sig = signed.get("signature")
    if not isinstance(manifest, dict) or not isinstance(sig, dict):
        raise _invalid("The manifest file lacks 'manifest' or 'signature'.")
    if sig.get("algorithm") != "Ed25519":
        raise _invalid("The signature algorithm is not Ed25519.")
    if sig.get("key_id") != key_id(public_key):
        raise _invalid(
            "The signature's key_id is not the id of this public key: the manifest names "
            "another signing key."
        )
    try:
        value = base64.b64decode(str(sig.get("value", "")), validate=True)
    except ValueError as exc:
        raise _invalid("The signature is not valid base64.") from exc
    try:
        signed_bytes = canonical(manifest)
    except (ValueError, TypeError) as exc:
        raise _invalid("The manifest holds values that are not JSON.") from exc
    try:
        public_key.verify(value, signed_bytes)
    except InvalidSignature as exc:
        raise _invalid(
            "The manifest's signature does not verify with this public key: the manifest "
            "was changed or was not signed by this key."
        ) from exc
    result = manifest.get("result")
    if not isinstance(result, dict) or "sha256" not in result:
        raise _invalid("The manifest names no result hash.")
    if hashlib.sha256(data).hexdigest() != result["sha256"] or len(data) != result.get("bytes"):
        raise _invalid("The result file does not match its manifest: it was changed.")
    if manifest.get("kind") == "analysis":
        from sandbox.products_analysis import check_members

        check_members(data, manifest)
    return manifest


def verify_files(
    path: Path, public_key: Ed25519PublicKey, manifest: Path | None = None
) -> dict[str, Any]:
    """Verify ``path`` against ``path.manifest.json`` (or the given manifest file)."""
    manifest = manifest or path.with_name(path.name + ".manifest.json")
    if not path.is_file():
        raise BadInput(f"No file {str(path)!r}.")
    if not manifest.is_file():
        raise _invalid(f"No manifest beside the file (expected {manifest.name}).")
    return verify_product(path.read_bytes(), manifest.read_bytes(), public_key)
