"""Analysis products (sandbox/products_analysis.py): the approved ACRO outputs as a
deterministic result.zip with a signed manifest; `verify_product` checks the archive's
hash, the signature, and that the archive holds exactly the listed files."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import products
from sandbox.errors import BadInput

CSV = b"band,F,M\n10,40,41\nrare,1,2\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JOB = {
    "id": "j-analysis",
    "operator": "op-jinshu",
    "scenario": "pension-contributions",
    "grant_id": "g-jinshu-pension",
    "dataset": "social_insurance,divisions",
    "grade": "important",
    "created_at": "2025-01-01T00:00:00+00:00",
}


def _file(name: str, data: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "format": name.rsplit(".", 1)[1],
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


SCRIPT = {
    "script_sha256": "ab" * 32,
    "tables": {"insured": "social_insurance/insured.parquet"},
    "acro": {"safe_threshold": 20},
    "manifest": {
        "acro_version": "1.0.2",
        "refused": [{"uid": "output_2", "type": "custom", "reason": "custom"}],
        "outputs": [
            {
                "uid": "output_0",
                "type": "table",
                "method": "crosstab",
                "status": "fail",
                "checks": {"MinimumThresholdCheck": "fail"},
                "exception": "a published fact",
                "files": [_file("1_0.csv", CSV)],
            },
            {
                "uid": "output_1",
                "type": "histogram",
                "method": "hist",
                "status": "pass",
                "checks": {},
                "exception": "",
                "files": [_file("1_1.png", PNG)],
            },
        ],
    },
}
REVIEWERS = [
    {"reviewer": "supervisor-li", "decision": "approve", "decided_at": "t1", "reason": "ok"},
    {"reviewer": "supervisor-wang", "decision": "approve", "decided_at": "t2", "reason": "ok"},
]


def _release(folder: Path, key: Ed25519PrivateKey) -> dict[str, str]:
    return products.release_analysis_product(
        folder,
        job=JOB,
        key=key,
        reviewers=REVIEWERS,
        released_at="2025-01-02T00:00:00+00:00",
        script=SCRIPT,
        outputs={"1_0.csv": CSV, "1_1.png": PNG},
    )


def test_the_product_verifies_and_names_every_output_with_its_verdict(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    files = _release(tmp_path, key)
    path = tmp_path / "j-analysis" / "result.zip"
    manifest = products.verify_files(path, key.public_key())
    assert files == {"zip": manifest["result"]["sha256"]}
    assert manifest["kind"] == "analysis" and manifest["script_sha256"] == "ab" * 32
    assert [(o["uid"], o["acro_status"]) for o in manifest["outputs"]] == [
        ("output_0", "fail"),
        ("output_1", "pass"),
    ]
    assert manifest["outputs"][0]["exception_requested"] is True
    assert manifest["refused_custom_outputs"] == 1
    assert [r["reviewer"] for r in manifest["reviewers"]] == ["supervisor-li", "supervisor-wang"]
    assert "reason" not in manifest["reviewers"][0]
    with zipfile.ZipFile(path) as archive:
        assert archive.read("1_0.csv") == CSV and archive.read("1_1.png") == PNG


def test_the_archive_is_deterministic(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    assert _release(tmp_path / "a", key) == _release(tmp_path / "b", key)


def test_a_changed_byte_fails(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    _release(tmp_path, key)
    path = tmp_path / "j-analysis" / "result.zip"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BadInput) as info:
        products.verify_files(path, key.public_key())
    assert info.value.code == "PRODUCT_INVALID"


def test_an_archive_holding_other_files_than_listed_fails_even_if_signed(tmp_path: Path):
    """The members are checked, not only the archive's hash: a signed manifest whose
    outputs do not match the archive (a file added) is refused."""
    key = Ed25519PrivateKey.generate()
    _release(tmp_path, key)
    folder = tmp_path / "j-analysis"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("1_0.csv", CSV)
        archive.writestr("1_1.png", PNG)
        archive.writestr("raw_rows.csv", b"person_id,age\n1,40\n")
    data = buf.getvalue()
    signed = json.loads((folder / "result.zip.manifest.json").read_bytes())
    manifest = signed["manifest"]
    manifest["result"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    resigned = products.sign_manifest(manifest, key)
    with pytest.raises(BadInput) as info:
        products.verify_product(data, products.canonical(resigned), key.public_key())
    assert "do not match" in info.value.message


def test_a_partial_release_holds_only_the_released_outputs_and_names_the_withheld(
    tmp_path: Path,
):
    """Partial release (jobs.analysis_selection): the archive and the manifest's
    ``outputs`` hold only the released outputs; ``withheld_outputs`` names the others
    by uid, nothing of their content (not their file names, not their hashes);
    ``selections`` says who chose what; and the product still verifies."""
    key = Ed25519PrivateKey.generate()
    chosen = {"supervisor-li": ["output_1"], "supervisor-wang": ["output_0", "output_1"]}
    files = products.release_analysis_product(
        tmp_path,
        job=JOB,
        key=key,
        reviewers=REVIEWERS,
        released_at="2025-01-02T00:00:00+00:00",
        script=SCRIPT,
        outputs={"1_0.csv": CSV, "1_1.png": PNG},
        released=["output_1"],
        selections=chosen,
    )
    path = tmp_path / "j-analysis" / "result.zip"
    manifest = products.verify_files(path, key.public_key())
    assert files == {"zip": manifest["result"]["sha256"]}
    assert [o["uid"] for o in manifest["outputs"]] == ["output_1"]
    assert manifest["withheld_outputs"] == ["output_0"]
    assert manifest["selections"] == [
        {"reviewer": "supervisor-li", "outputs": ["output_1"]},
        {"reviewer": "supervisor-wang", "outputs": ["output_0", "output_1"]},
    ]
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["1_1.png"]
    text = (tmp_path / "j-analysis" / "result.zip.manifest.json").read_text()
    assert "1_0.csv" not in text and hashlib.sha256(CSV).hexdigest() not in text
    assert "MinimumThresholdCheck" not in text  # nor the withheld output's checks


def test_a_full_release_withholds_nothing(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    _release(tmp_path, key)
    manifest = products.verify_files(tmp_path / "j-analysis" / "result.zip", key.public_key())
    assert manifest["withheld_outputs"] == [] and manifest["selections"] == []
