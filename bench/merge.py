"""Merge the results of several bench runs into one (``python -m bench.merge``).

The slow DP peers (SmartNoise, Tumult) take tens of minutes per size; they can run in
a run of their own (``--peers smartnoise,tumult --no-container``) while the fast
systems (raw DuckDB, ours, OpenDP) run side by side in another. This takes the first
file as the base and adds, per size and workload, every system the base lacks from
the later files. An added system keeps its own timings, memory and accuracy (its
accuracy was measured against the exact answer of its own run: the same data and
seed); its ratio to raw DuckDB is recomputed against the base run's raw DuckDB, and a
note says which run it came from and that run's load. Nothing else is changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.report import render_markdown


def merge(base: dict[str, Any], others: list[dict[str, Any]]) -> dict[str, Any]:
    """``base`` with the systems of ``others`` it lacks (per size and workload)."""
    out = json.loads(json.dumps(base))
    out.setdefault("merged_from", [])
    for other in others:
        load = other["machine"].get("load_avg_at_start") or []
        origin = (
            f"measured in a separate run started {other['started_at']} "
            f"(load average at its start {', '.join(f'{x:.1f}' for x in load)}); "
            "ratio against this run's raw DuckDB"
        )
        out["merged_from"].append({"started_at": other["started_at"], "args": other["args"]})
        sizes = {s["label"]: s for s in out["sizes"]}
        for osize in other["sizes"]:
            size = sizes.get(osize["label"])
            if size is None:
                continue
            work = {w["id"]: w for w in size["workloads"]}
            for ow in osize["workloads"]:
                w = work.get(ow["id"])
                if w is None:
                    continue
                raw = (w["systems"].get("duckdb") or {}).get("median_s")
                for name, res in ow["systems"].items():
                    if name in w["systems"]:
                        continue
                    res = dict(res)
                    if raw and res.get("median_s") is not None:
                        res["ratio"] = res["median_s"] / raw
                        res["over_raw_s"] = res["median_s"] - raw
                    notes = res.get("notes") or []
                    res["notes"] = [*(notes if isinstance(notes, list) else [notes]), origin]
                    w["systems"][name] = res
                    out["systems"].setdefault(name, other["systems"].get(name, name))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.merge", description=__doc__.split("\n")[0])
    p.add_argument("base", type=Path, help="the run whose systems ran side by side")
    p.add_argument("others", type=Path, nargs="+", help="runs adding systems the base lacks")
    p.add_argument("--out", type=Path, required=True, help="directory for latest.json/.md")
    args = p.parse_args(argv)
    base = json.loads(args.base.read_text())
    merged = merge(base, [json.loads(f.read_text()) for f in args.others])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(merged, indent=1, default=str))
    (args.out / "latest.md").write_text(render_markdown(merged))
    print(f"wrote {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
