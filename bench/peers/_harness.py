"""The timing loop every system's script shares (standard library only).

Each system runs as its own process: ``python -m bench.peers.<name> SPEC OUT``.
SPEC is a JSON file written by bench/run.py (workload id, data root, ε, δ, bounds,
public keys, runs); OUT receives::

    {"status": "ok" | "skipped" | "unsupported" | "failed", "reason": "...",
     "versions": {...}, "setup_s": .., "cold_s": .., "times": [..],
     "results": [[{key: .., output: ..}, ...] per timed run], "notes": [..]}

A system script provides ``build(spec) -> Callable[[], list[dict]]`` for a workload
(one call = one full query: read the files, compute, release; everything but the
process start and imports) or raises ``Unsupported(reason)``. ``BETWEEN_RUNS``, if a
script appends to it, is called before every run, untimed (our container path waits
there for its warm runner, as a server's would be ready between jobs). The first call is the
cold run (recorded, not in the median); then ``runs`` timed calls, stopping early,
after at least one, once ``max_seconds`` of timed calls have passed.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


class Unsupported(Exception):
    """The system cannot express this workload (the reason is printed in the table)."""


Runner = Callable[[], list[dict[str, Any]]]

NOTES: list[str] = []  # what a system script had to adapt, shown beside its numbers
STAGES: list[dict[str, Any]] = []  # optional per-run breakdown (cold run first)
BETWEEN_RUNS: list[Callable[[], None]] = []  # untimed, before every run


def main(build: Callable[[dict[str, Any]], Runner], dists: list[str]) -> None:
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    out: dict[str, Any] = {"status": "ok", "notes": []}
    try:
        out["versions"] = versions(dists)
        t0 = time.perf_counter()
        run = build(spec)
        out["setup_s"] = time.perf_counter() - t0
        out["notes"] = NOTES
        times: list[float] = []
        results: list[list[dict[str, Any]]] = []
        if spec.get("warmup", True):
            _between()
            t0 = time.perf_counter()
            rows = run()
            out["cold_s"] = time.perf_counter() - t0
            slow = float(spec.get("count_cold_after", 1e9))
            if out["cold_s"] > slow:  # too slow to repeat: warm-up is noise at this length
                times.append(out["cold_s"])
                results.append(rows)
                NOTES.append(f"cold run counted as a timed run (over {slow:.0f} s)")
        budget = float(spec.get("max_seconds", 1e9))
        while len(times) < int(spec["runs"]):
            if times and sum(times) >= budget:
                NOTES.append(f"stopped after {len(times)} run(s): time cap {budget:.0f} s")
                break
            _between()
            t0 = time.perf_counter()
            rows = run()
            times.append(time.perf_counter() - t0)
            results.append(rows)
        out["times"] = times
        if STAGES:
            out["stages"] = STAGES
        out["results"] = results
    except Unsupported as exc:
        out = {"status": "unsupported", "reason": str(exc), "versions": out.get("versions", {})}
    except Exception as exc:  # the report names the failure; the traceback goes to stderr
        traceback.print_exc()
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, default=_jsonable)


def _between() -> None:
    for hook in BETWEEN_RUNS:
        hook()


def versions(dists: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for d in dists:
        try:
            found[d] = version(d)
        except PackageNotFoundError:
            found[d] = "?"
    return found


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def rows_from_columns(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, vals, strict=True)) for vals in zip(*columns.values(), strict=True)]
