"""The benchmark: every workload on every system, side by side, in one run.

    python -m bench.run --rows 1M,10M [--peers opendp,smartnoise,tumult] [--runs 3]
    python -m bench.run --smoke          # 100k rows, raw DuckDB + ours only (CI)

For each size it generates (or reuses) the data (bench/data.py), then for each
workload runs each system in its own process (bench/peers/*.py; the DP peers in
their own virtualenvs, bench/venvs.py): one cold run, then ``--runs`` timed runs.
It writes ``<out>/latest.json`` and ``<out>/latest.md``: median wall time, ratio
to raw DuckDB, peak memory (bench/measure.py), and accuracy at ε = 1 (mean absolute
error of every released cell against raw DuckDB's exact answer, over all timed runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import venvs
from bench.data import TABLES, ensure_data, label_rows, load_counties, parse_rows
from bench.measure import run_measured
from bench.report import render_markdown
from bench.workloads import WORKLOADS, Workload

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


@dataclass(frozen=True)
class System:
    name: str
    label: str
    module: str
    data: str  # "synthetic" or "raw"
    python: str = sys.executable
    extra: dict[str, Any] = field(default_factory=dict)
    slow: bool = False  # run after every fast system (SmartNoise, Tumult)
    jvm: bool = False  # reserves huge address space: no RLIMIT_AS fallback (Tumult)


def core_systems(container: bool) -> list[System]:
    systems = [
        System("duckdb", "raw DuckDB (exact)", "duckdb_raw", "raw"),
        System("ours", "ours, in-process", "ours", "synthetic", extra={"mode": "local"}),
    ]
    if container:
        systems.append(
            System("ours_container", "ours, container", "ours", "raw", extra={"mode": "docker"})
        )
    return systems


def peer_systems(
    names: list[str], *, install: bool, log: Path
) -> tuple[list[System], dict[str, str]]:
    systems, skipped = [], {}
    for name in names:
        peer = venvs.PEERS.get(name)
        if peer is None:
            skipped[name] = f"unknown peer (known: {', '.join(venvs.PEERS)})"
            continue
        reason = venvs.ensure_peer(peer, log=log, install=install)
        if reason is not None:
            print(f"skipping {peer.label}: {reason}", flush=True)
            skipped[name] = reason
            continue
        py = str(venvs.python_of(peer))
        jvm = name == "tumult"
        systems.append(System(name, peer.label, peer.module, "raw", py, slow=peer.slow, jvm=jvm))
    return systems, skipped


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="jinyu-bench-"))
    started = datetime.now(UTC)
    peers, skipped = peer_systems(args.peers, install=not args.no_install, log=work / "pip.log")
    systems = core_systems(args.container) + peers
    policies = Path(args.policies).resolve()
    counties = [c["value"] for c in load_counties(policies)]
    workloads = [w for w in WORKLOADS if not args.workloads or w.id in args.workloads]
    result: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items()},
        "systems": {s.name: s.label for s in systems},
        "skipped": skipped,
        "sizes": [],
    }
    for rows in args.rows:
        manifest = ensure_data(Path(args.data), rows, policies, progress=_say)
        size: dict[str, Any] = {"rows": rows, "label": label_rows(rows), "data": manifest}
        entries: dict[str, dict[str, Any]] = {
            w.id: {"id": w.id, "title": w.title, "sql": w.sql, "systems": {}} for w in workloads
        }
        size["workloads"] = list(entries.values())
        result["sizes"].append(size)
        answers: dict[tuple[str, str], Any] = {}  # in memory only, never written
        # The slow peers run as a block (last, or first with --slow-first), so the
        # comparison the targets are about (raw, ours, OpenDP) is taken close together.
        fast, slow = [s for s in systems if not s.slow], [s for s in systems if s.slow]
        for phase in (slow, fast) if args.slow_first else (fast, slow):
            for w in workloads:
                for system in phase:
                    _say(f"{label_rows(rows)} {w.id}: {system.label} ...")
                    spec = _spec(w, system, manifest, counties, policies, args, work)
                    res = run_system(system, spec, work, args)
                    answers[w.id, system.name] = res.pop("results", None)
                    entries[w.id]["systems"][system.name] = res
                    _say(f"   {_short(res)}")
                    _write(result, out_dir)  # partial results survive an interrupted run
        for wid, entry in entries.items():
            raw = entry["systems"].get("duckdb") or {}
            exact = (answers.get((wid, "duckdb")) or [None])[0]
            for name, res in entry["systems"].items():
                score(res, None if name == "duckdb" else raw, exact, answers.get((wid, name)))
        _write(result, out_dir)
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    _write(result, out_dir)
    print(render_markdown(result))
    return 0


def _spec(
    w: Workload,
    system: System,
    manifest: dict[str, Any],
    counties: list[str],
    policies: Path,
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    root = Path(str(manifest[system.data])).resolve()
    spec = w.spec()
    spec.update(
        tables={t: str(root / rel) for t, (rel, _) in TABLES.items()},
        counties=counties,
        runs=args.runs,
        warmup=True,
        max_seconds=args.max_seconds,
        count_cold_after=args.count_cold_after,
        grant=w.grant,
        policies=str(policies),
        home=str(work / "home"),
        data_root=str(root),
        job_timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        **system.extra,
    )
    return spec


def run_system(
    system: System, spec: dict[str, Any], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    tag = f"{spec['id']}-{system.name}-{time.monotonic_ns()}"
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    cmd = [system.python, "-m", f"bench.peers.{system.module}", str(spec_path), str(out_path)]
    limit = args.timeout * (args.runs + 2) + 120
    if system.slow and args.slow_cap:
        limit = args.slow_cap
    cap_gb = float(args.peer_memory_gb)
    m = run_measured(
        cmd,
        cwd=ROOT,
        env=env,
        timeout_s=limit,
        stderr_path=work / f"{tag}.stderr.txt",
        memory_cap_bytes=int(cap_gb * 2**30) if cap_gb > 0 else None,
        rlimit_ok=not system.jvm,
    )
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    hit_rlimit = m.cap == "RLIMIT_AS" and "MemoryError" in str(out.get("reason", ""))
    if (m.oom or hit_rlimit) and out.get("status") != "ok":
        out = {
            "status": "out_of_memory",
            "cap_gb": cap_gb,
            "reason": f"out of memory at {cap_gb:g} GB (--peer-memory-gb; {m.cap})",
        }
    elif out:
        pass  # the system's own answer (ok, unsupported or failed)
    elif m.timed_out:
        out = {
            "status": "timeout",
            "limit_s": limit,
            "reason": f"no answer within {limit:.0f} s (start-up, set-up and cold run included)",
        }
    else:
        why = f"exited {m.returncode} without a result"
        out = {"status": "failed", "reason": f"{why} (stderr: {work / (tag + '.stderr.txt')})"}
    out["process_wall_s"] = round(m.wall_s, 2)
    out["maxrss_mb"] = round(m.maxrss_kb / 1024, 1)
    out["tree_peak_mb"] = round(m.tree_peak_kb / 1024, 1)
    out["peak_mb"] = round(m.peak_kb / 1024, 1)
    out["memory_cap"] = f"{cap_gb:g} GB ({m.cap})" if m.cap else "none"
    if m.cgroup_peak_kb is not None:  # the cap cgroup's peak: page cache included
        out["cgroup_peak_mb"] = round(m.cgroup_peak_kb / 1024, 1)
    times = out.get("times") or []
    if out.get("status") == "ok" and times:
        out["median_s"] = statistics.median(times)
        out["runs"] = len(times)
    stages = out.pop("stages", None)
    if stages:
        timed = stages[1:] if len(stages) > len(times) else stages
        out["stages_median_s"] = {
            k: statistics.median(s[k] for s in timed)
            for k in ("compile", "execute", "cost", "release")
        }
        peaks = [s["executor_stats"].get("peak_rss_kb") for s in stages]
        if system.extra.get("mode") == "docker" and any(isinstance(p, int) for p in peaks):
            out["container_peak_mb"] = round(max(p for p in peaks if isinstance(p, int)) / 1024, 1)
        overhead = [
            s["executor_stats"].get("wall_s", 0) - s["executor_stats"].get("container_s", 0)
            for s in timed
            if "container_s" in s["executor_stats"]
        ]
        if overhead:
            out["container_overhead_s"] = statistics.median(overhead)
        if system.extra.get("mode") == "docker":
            out["warm_runs"] = sum(bool(s["executor_stats"].get("warm")) for s in timed)
    return out


def score(
    res: dict[str, Any],
    raw: dict[str, Any] | None,
    exact_rows: list[dict[str, Any]] | None,
    runs: list[list[dict[str, Any]]] | None,
) -> None:
    """Ratio to raw DuckDB and accuracy against its exact answer (``raw`` is None for
    raw DuckDB itself)."""
    floor = res.get("median_s") if raw is None else raw.get("median_s")
    if floor and res.get("median_s") is not None:
        res["ratio"] = res["median_s"] / floor
        res["over_raw_s"] = res["median_s"] - floor
    if raw is None:
        if exact_rows is not None:
            res["exact_groups"] = len(exact_rows)
    elif exact_rows is not None and runs:
        res["accuracy"] = accuracy(exact_rows, runs)


def accuracy(exact_rows: list[dict[str, Any]], runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean absolute error per output column over every (run, released key) pair."""
    if not exact_rows:
        return {}
    key = next(iter(exact_rows[0]))
    exact = {str(r[key]): r for r in exact_rows}
    columns = [c for c in exact_rows[0] if c != key]
    errors: dict[str, list[float]] = {c: [] for c in columns}
    released, spurious, missing = [], 0, 0
    for rows in runs:
        seen = {str(r.get(key)) for r in rows}
        released.append(len(seen))
        spurious += len(seen - set(exact))
        missing += len(set(exact) - seen)
        for r in rows:
            truth = exact.get(str(r.get(key)))
            if truth is None:
                continue
            for c in columns:
                v, t = r.get(c), truth.get(c)
                if isinstance(v, int | float) and isinstance(t, int | float):
                    errors[c].append(abs(float(v) - float(t)))
    mae = {c: (statistics.fmean(e) if e else None) for c, e in errors.items()}
    return {
        "mae": mae,
        "cells": {c: len(e) for c, e in errors.items()},
        "groups_released_mean": statistics.fmean(released),
        "groups_exact": len(exact),
        "spurious_groups": spurious,
        "missing_group_runs": missing,
    }


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def _write(result: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "latest.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "latest.md").write_text(render_markdown(result))


def _short(res: dict[str, Any]) -> str:
    if res.get("status") != "ok":
        return f"{res.get('status')}: {res.get('reason')}"
    return f"median {res['median_s']:.3f} s over {res['runs']} run(s), peak {res['peak_mb']} MB"


def _say(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows",
        default="1M,10M",
        help="sizes, e.g. 1M,10M or 100k (100M: optional, not run by default)",
    )
    p.add_argument("--peers", default="opendp,smartnoise,tumult", help="DP peers ('' for none)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per system and workload")
    p.add_argument("--workloads", default="", help="subset of workload ids (default: all)")
    p.add_argument("--no-container", action="store_true", help="skip the container executor")
    p.add_argument("--no-install", action="store_true", help="do not pip-install missing peers")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=240.0,
        help="stop taking timed runs of one system once they add up to this",
    )
    p.add_argument(
        "--count-cold-after",
        type=float,
        default=30.0,
        help="a cold run longer than this counts as a timed run (no repeat of slow runs)",
    )
    p.add_argument(
        "--memory-mb",
        type=int,
        default=0,
        help="our runner's memory limit (0: the product default, 2048 MB)",
    )
    p.add_argument(
        "--slow-first", action="store_true", help="run SmartNoise and Tumult before the rest"
    )
    p.add_argument(
        "--slow-cap",
        type=float,
        default=0.0,
        help="wall-clock limit of a whole SmartNoise/Tumult process (0: none)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="limit of one run, seconds")
    p.add_argument(
        "--peer-memory-gb",
        type=float,
        default=16.0,
        help="memory cap of each system's process tree (cgroup, else RLIMIT_AS; 0: none); "
        "a process over it is reported as out of memory",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI version: 100k rows, no peers, no container (unless asked)",
    )
    p.add_argument("--container", action="store_true", help="with --smoke: include the container")
    p.add_argument("--data", default=str(BENCH / "data"), help="where the data is generated")
    p.add_argument("--policies", default=str(ROOT / "policies"))
    p.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = p.parse_args(argv)
    if args.smoke:
        explicit = argv is not None and any(a.startswith("--peers") for a in argv)
        explicit = explicit or (argv is None and any(a.startswith("--peers") for a in sys.argv))
        args.rows = args.rows if "--rows" in (argv or sys.argv) else "100k"
        args.peers = args.peers if explicit else ""
        args.out = args.out or str(BENCH / "results" / "tmp")
    args.container = (not args.no_container) if not args.smoke else args.container
    args.rows = [parse_rows(r) for r in str(args.rows).split(",") if r.strip()]
    args.peers = [p.strip() for p in str(args.peers).split(",") if p.strip()]
    args.workloads = [w.strip() for w in str(args.workloads).split(",") if w.strip()]
    args.out = args.out or str(BENCH / "results")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
