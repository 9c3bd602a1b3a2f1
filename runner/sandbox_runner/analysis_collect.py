"""Collecting an analysis job's outputs (issue 18): the checker's ACRO results → /out.

Part of the supervisor (``sandbox_runner.analysis``), standard library only. Reads
the ``results.json`` that the CHECKER's ACRO session wrote (never the script's) and
the files it lists, without trusting either: regular files, one link, no symlink
followed, capped, only ACRO's output types and file names, PNGs by signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from sandbox_runner.contract import ANALYSIS_FILES_DIR, ANALYSIS_MAX_OUTPUTS

COLLECTED = {
    "table": "csv",
    "regression": "csv",
    "histogram": "png",
    "pie chart": "png",
    "survival plot": "png",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_MAX = 4000  # characters kept of ACRO's summary, command, comment, exception
RESULTS_MAX_BYTES = 4 * 1024 * 1024
MANIFEST_MAX_BYTES = 1024 * 1024
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_UID = re.compile(r"^[A-Za-z0-9_.\- ]{1,100}$")


class AnalysisFailure(Exception):
    def __init__(self, category: str) -> None:
        super().__init__(category)
        self.category = category


def collect(results_dir: Path, out_dir: Path, output_max_bytes: int) -> dict[str, Any]:
    """ACRO's checked outputs → /out/files and the manifest (only fields checked here)."""
    files_dir = out_dir / ANALYSIS_FILES_DIR
    files_dir.mkdir(mode=0o755)
    outputs: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    manifest: dict[str, Any] = {"outputs": outputs, "refused": refused, "acro_version": ""}
    results_file = results_dir / "results.json"
    if not os.path.lexists(results_file):
        return manifest  # no ACRO output at all (the script made none)
    try:
        results = json.loads(_read_regular(results_file, RESULTS_MAX_BYTES))
    except ValueError as exc:
        raise AnalysisFailure("output_invalid") from exc
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
        raise AnalysisFailure("output_invalid")
    manifest["acro_version"] = _text(results.get("version"), 40)
    budget = output_max_bytes
    for uid, record in results["results"].items():
        if not isinstance(record, dict) or not isinstance(uid, str) or not _UID.match(uid):
            raise AnalysisFailure("output_invalid")
        kind = record.get("type")
        if kind not in COLLECTED:
            refused.append({"uid": uid, "type": _text(kind, 40), "reason": "custom"})
            continue
        if len(outputs) >= ANALYSIS_MAX_OUTPUTS:
            raise AnalysisFailure("output_too_large")
        files: list[dict[str, Any]] = []
        for item in record.get("files") or []:
            name = item.get("name") if isinstance(item, dict) else None
            data = _output_file(results_dir, name, COLLECTED[kind], uid)
            budget -= len(data)
            if budget < 0:
                raise AnalysisFailure("output_too_large")
            stored = f"{len(outputs)}_{len(files)}.{COLLECTED[kind]}"
            (files_dir / stored).write_bytes(data)
            files.append(
                {
                    "name": stored,
                    "format": COLLECTED[kind],
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "sdc": _sdc(item.get("sdc")),
                }
            )
        if not files:
            raise AnalysisFailure("output_invalid")
        properties = record.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        outputs.append(
            {
                "uid": uid,
                "type": kind,
                "method": _text(properties.get("method"), 40),
                "status": record.get("status")
                if record.get("status") in {"pass", "fail", "review"}
                else "review",
                "summary": _text(record.get("summary"), TEXT_MAX),
                "command": _text(record.get("command"), TEXT_MAX),
                "exception": _text(record.get("exception"), TEXT_MAX),
                "comments": [_text(c, TEXT_MAX) for c in (record.get("comments") or [])[:20]],
                "checks": _checks(record.get("fair")),
                "files": files,
            }
        )
    return manifest


def _output_file(results_dir: Path, name: Any, fmt: str, uid: str) -> bytes:
    if not isinstance(name, str) or not _PATH_PART.match(name) or not name.endswith("." + fmt):
        raise AnalysisFailure("output_invalid")
    if fmt == "csv" and not re.fullmatch(re.escape(uid) + r"_[0-9]{1,4}\.csv", name):
        raise AnalysisFailure("output_invalid")  # ACRO names its tables <uid>_<n>.csv
    data = _read_regular(results_dir / name, 64 * 1024 * 1024)
    if fmt == "png" and not data.startswith(PNG_SIGNATURE):
        raise AnalysisFailure("output_invalid")
    if fmt == "csv":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AnalysisFailure("output_invalid") from exc
    return data


def _checks(fair: Any) -> dict[str, str]:
    status = fair.get("check_status") if isinstance(fair, dict) else None
    if not isinstance(status, dict):
        return {}
    return {
        _text(k, 80): v
        for k, v in list(status.items())[:50]
        if isinstance(k, str) and v in {"pass", "fail", "review"}
    }


def _sdc(sdc: Any) -> dict[str, Any]:
    """ACRO's per-check counts (and failing cells' positions) for a file."""
    if not isinstance(sdc, dict):
        return {}
    clean: dict[str, Any] = {}
    summary = sdc.get("summary")
    if isinstance(summary, dict):
        clean["summary"] = {
            _text(k, 80): v
            for k, v in list(summary.items())[:50]
            if isinstance(v, int) and not isinstance(v, bool)
        }
    cells = sdc.get("cells")
    if isinstance(cells, dict):
        kept: dict[str, list[list[int]]] = {}
        for check, positions in list(cells.items())[:50]:
            if isinstance(positions, list):
                kept[_text(check, 80)] = [
                    [int(x) for x in pos[:2]]
                    for pos in positions[:10000]
                    if isinstance(pos, list)
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in pos[:2])
                ]
        clean["cells"] = kept
    return clean


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _read_regular(path: Path, max_bytes: int) -> bytes:
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise AnalysisFailure("output_invalid") from exc
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise AnalysisFailure("output_invalid")
    if info.st_size > max_bytes:
        raise AnalysisFailure("output_too_large")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise AnalysisFailure("output_invalid") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise AnalysisFailure("output_invalid")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AnalysisFailure("output_too_large")
    return data
