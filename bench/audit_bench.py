"""Audit log benchmark: events appended per second, and the time to verify a big log.

    python bench/audit_bench.py                           # CI size: 1 000 appends, 20 000 verified
    python bench/audit_bench.py --append 5000 --verify 1000000 --export

1. **Append**: each event in its own ``store.transaction`` (BEGIN IMMEDIATE … COMMIT,
   WAL, synchronous=FULL, so one fsync per event) with ``maybe_checkpoint`` every
   ``checkpoint_every`` events, exactly as the server writes them.
2. **Verify**: a log of ``--verify`` events is built (in batches of 10 000 events per
   transaction, which is only how the fixture is made quickly), checkpointed every 256,
   then ``audit.verify`` recomputes every leaf, the chain, the root at every checkpoint
   and every signature. ``--export`` also exports it (JSONL) and verifies the export.

Prints one JSON object with the numbers (docs/performance.md records a run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox import audit, signing, store

DETAILS = {"plan_digest": "ab" * 32, "dataset": "population", "epsilon": 0.5, "delta": 1e-7}


def _event(conn: Any, i: int) -> None:
    audit.append(
        conn,
        actor="op-jinshu",
        role="operator",
        action="job.compiled",
        subject=f"j-{i:08x}",
        scenario="employment-income",
        details=DETAILS,
    )


def bench_append(root: Path, n: int, every: int) -> dict[str, Any]:
    conn = store.connect(root / "append.db")
    key = signing.load_or_create(root / "keys", "audit")
    start = time.perf_counter()
    for i in range(n):
        with store.transaction(conn):
            _event(conn, i)
            audit.maybe_checkpoint(conn, key, every)
    elapsed = time.perf_counter() - start
    report = audit.verify(conn, key.public_key())
    assert report.ok and report.entries == n
    # Baseline: the same durable transaction with one plain INSERT and no audit work,
    # so the audit's own cost can be told apart from the fsync every commit pays.
    conn.execute("CREATE TABLE IF NOT EXISTS baseline (id INTEGER PRIMARY KEY, v TEXT)")
    start = time.perf_counter()
    for i in range(n):
        with store.transaction(conn):
            conn.execute("INSERT INTO baseline (v) VALUES (?)", (f"j-{i:08x}",))
    baseline = time.perf_counter() - start
    # And the CPU cost of append alone (no commit per event).
    start = time.perf_counter()
    with store.transaction(conn):
        for i in range(n):
            _event(conn, i)
    batched = time.perf_counter() - start
    conn.close()
    return {
        "events": n,
        "seconds": round(elapsed, 3),
        "events_per_s": round(n / elapsed, 1),
        "baseline_commits_per_s": round(n / baseline, 1),
        "append_cpu_us": round(batched / n * 1e6, 1),
    }


def bench_verify(root: Path, n: int, every: int, export: bool) -> dict[str, Any]:
    conn = store.connect(root / "verify.db")
    key = signing.load_or_create(root / "keys", "audit")
    start = time.perf_counter()
    done = 0
    while done < n:
        with store.transaction(conn):
            for _ in range(min(10_000, n - done)):
                _event(conn, done)
                done += 1
                if done % every == 0:
                    audit.checkpoint(conn, key)
    audit.checkpoint(conn, key)
    build = time.perf_counter() - start
    start = time.perf_counter()
    report = audit.verify(conn, key.public_key())
    verify_s = time.perf_counter() - start
    assert report.ok and report.entries == n, report
    out: dict[str, Any] = {
        "events": n,
        "checkpoints": report.checkpoints,
        "build_s": round(build, 1),
        "verify_s": round(verify_s, 2),
        "verify_events_per_s": round(n / verify_s),
        "db_mb": round((root / "verify.db").stat().st_size / 2**20, 1),
    }
    if export:
        path = root / "audit.jsonl"
        start = time.perf_counter()
        with path.open("w", encoding="utf-8") as fh:
            audit.export(conn, fh, public_key=key.public_key())
        out["export_s"] = round(time.perf_counter() - start, 2)
        out["export_mb"] = round(path.stat().st_size / 2**20, 1)
        start = time.perf_counter()
        exported = audit.verify(path, key.public_key())
        assert exported.ok and exported.entries == n
        out["verify_export_s"] = round(time.perf_counter() - start, 2)
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", type=int, default=1000, help="events appended one by one")
    parser.add_argument("--verify", type=int, default=20_000, help="size of the verified log")
    parser.add_argument("--every", type=int, default=256, help="checkpoint every N events")
    parser.add_argument("--export", action="store_true", help="also export and verify that")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "append": bench_append(root, args.append, args.every),
            "verify": bench_verify(root, args.verify, args.every, args.export),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
