"""Analysis jobs' products (issue 18): the approved ACRO outputs, signed.

``<products_dir>/<job>/result.zip`` holds the approved output files (ACRO's table and
regression CSVs, figure PNGs), written deterministically; ``result.zip.manifest.json``
is ``{"manifest", "signature"}`` as for SQL products (sandbox/products.py), signed with
the same ``products`` key. The manifest carries ``kind: "analysis"``, the script's
SHA-256, the tables, ACRO's version and thresholds, every output with ACRO's verdict,
its checks, whether an exception was requested and each file's SHA-256, the
reviewers and the times. ``products.verify_product`` checks the archive's hash and
then that it holds exactly the listed files with the listed hashes.

A partial release (sandbox/jobs/analysis_selection.py): ``outputs`` lists only the
released outputs and the archive holds only their files; ``withheld_outputs`` names
the others by uid (nothing of their content, not even their hashes) and
``selections`` says which outputs each approving supervisor chose.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.products import (
    _invalid as invalid,
)
from sandbox.products import (
    _write,
    manifest_head,
    manifest_tail,
    product_dir,
    write_manifest,
)

ANALYSIS_FORMAT = "zip"
ANALYSIS_MEDIA_TYPE = "application/zip"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def release_analysis_product(
    products_dir: Path,
    *,
    job: dict[str, Any],
    key: Ed25519PrivateKey,
    reviewers: list[dict[str, Any]],
    released_at: str,
    script: dict[str, Any],
    outputs: dict[str, bytes],
    released: list[str] | None = None,
    selections: dict[str, list[str]] | None = None,
) -> dict[str, str]:
    """An approved analysis job's product (issue 18): ``result.zip`` (ACRO's output
    files, deterministic) and ``result.zip.manifest.json``, signed as SQL products are.
    The manifest lists each output with ACRO's verdict and checks and each file's
    SHA-256 (``verify_product`` checks the archive against them). ``released``: the
    uids of the outputs to release (None: all); the others are withheld, named in the
    manifest by uid only. ``selections``: approving reviewer → the uids they chose.
    {"zip": sha256}"""
    import zipfile

    manifest_in = script.get("manifest") or {}
    every = [out["uid"] for out in manifest_in.get("outputs", [])]
    keep = set(every if released is None else released)
    listed = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for out in manifest_in.get("outputs", []):
            if out["uid"] not in keep:
                continue
            files = []
            for item in out["files"]:
                data = outputs[item["name"]]
                info = zipfile.ZipInfo(item["name"], date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
                files.append(
                    {
                        "name": item["name"],
                        "format": item["format"],
                        "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
            listed.append(
                {
                    "uid": out["uid"],
                    "type": out["type"],
                    "method": out["method"],
                    "acro_status": out["status"],
                    "checks": out["checks"],
                    "exception_requested": bool(out["exception"]),
                    "files": files,
                }
            )
    data = buf.getvalue()
    manifest = {
        **manifest_head(job),
        "kind": "analysis",
        "script_sha256": script["script_sha256"],
        "tables": sorted(script["tables"]),
        "acro_version": manifest_in.get("acro_version", ""),
        "acro_thresholds": script["acro"],
        "privacy_loss": {"epsilon": 0, "delta": 0, "rho": None, "definition": None},
        "guarantee": "statistical disclosure control (ACRO) and human review; no DP",
        "outputs": listed,
        "withheld_outputs": [uid for uid in every if uid not in keep],
        "selections": [
            {"reviewer": reviewer, "outputs": list(chosen)}
            for reviewer, chosen in sorted((selections or {}).items())
        ],
        "refused_custom_outputs": len(manifest_in.get("refused", [])),
        **manifest_tail(
            job=job,
            reviewers=reviewers,
            released_at=released_at,
            fmt=ANALYSIS_FORMAT,
            media_type=ANALYSIS_MEDIA_TYPE,
            data=data,
        ),
    }
    folder = product_dir(products_dir, job["id"])
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_manifest(folder, manifest, key)
    _write(folder / f"result.{ANALYSIS_FORMAT}", data)
    return {ANALYSIS_FORMAT: manifest["result"]["sha256"]}


def check_members(data: bytes, manifest: dict[str, Any]) -> None:
    """An analysis product's archive holds exactly the files its manifest lists."""
    import zipfile

    listed = {
        f.get("name"): f.get("sha256")
        for out in manifest.get("outputs") or []
        if isinstance(out, dict)
        for f in out.get("files") or []
        if isinstance(f, dict)
    }
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            found = {
                i.filename: hashlib.sha256(archive.read(i)).hexdigest() for i in archive.infolist()
            }
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise invalid("The analysis product is not a readable archive.") from exc
    if found != listed:
        raise invalid("The archive's files do not match the manifest's outputs.")
