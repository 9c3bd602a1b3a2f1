"""Render bench results (the JSON bench/run.py writes) as Markdown tables."""

from __future__ import annotations

import math
from typing import Any

TARGET_RATIO = 1.5  # ours in-process ≤ 1.5 × raw DuckDB
TARGET_CONTAINER_S = 0.3  # ours through the container (warm runners) ≤ raw + 0.3 s
TARGET_PEER_SPEEDUP = 10.0  # ours in-process ≥ 10 × faster than OpenDP's Polars Context


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Run started {result['started_at']} (UTC), "
        f"finished {result.get('finished_at', '(running)')}.",
        f"Machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_gb']} GB RAM, "
        f"{m['os']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_avg_at_start'])} (shared machine).",
        f"Timed runs per cell: {result['args']['runs']} after one cold run "
        f"(fewer where a system hit the {result['args']['max_seconds']:.0f} s cap; see notes).",
        "",
    ]
    for name, why in result.get("skipped", {}).items():
        lines.append(f"- skipped {name}: {why}")
    systems = result["systems"]
    for size in result["sizes"]:
        lines += _size_tables(size, systems)
    return "\n".join(lines) + "\n"


def _size_tables(size: dict[str, Any], systems: dict[str, str]) -> list[str]:
    names = list(systems)
    t = size["data"]["tables"]
    out = [
        "",
        f"### {size['label']} rows",
        "",
        f"persons {t['persons']:,} rows; insured {t['insured']:,}; payments {t['payments']:,}.",
        "",
        "Median wall time of one query, seconds (× raw DuckDB):",
        "",
        "| workload | " + " | ".join(systems[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for w in size["workloads"]:
        cells = [_time_cell(w["systems"].get(n)) for n in names]
        out.append(f"| {w['id']} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Peak memory of the system's process tree, MB (container executor: the client "
        "process; the container's own peak in brackets):",
        "",
        "| workload | " + " | ".join(systems[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for w in size["workloads"]:
        cells = [_mem_cell(w["systems"].get(n)) for n in names]
        out.append(f"| {w['id']} | " + " | ".join(cells) + " |")
    dp = [n for n in names if n != "duckdb"]
    out += [
        "",
        "Accuracy at ε = 1: mean absolute error against the exact answer, over every "
        "released cell of every timed run (private keys: groups released / exact groups):",
        "",
        "| workload | output | " + " | ".join(systems[n] for n in dp) + " |",
        "|---|---|" + "---|" * len(dp),
    ]
    for w in size["workloads"]:
        outputs: list[str] = []
        for n in dp:
            acc = (w["systems"].get(n) or {}).get("accuracy") or {}
            outputs += [c for c in acc.get("mae", {}) if c not in outputs]
        for col in outputs:
            cells = []
            for n in dp:
                acc = (w["systems"].get(n) or {}).get("accuracy") or {}
                v = acc.get("mae", {}).get(col)
                cells.append("—" if v is None else _num(v))
            out.append(f"| {w['id']} | {col} | " + " | ".join(cells) + " |")
        groups = []
        for n in dp:
            acc = (w["systems"].get(n) or {}).get("accuracy") or {}
            if acc:
                groups.append(f"{acc['groups_released_mean']:.0f}/{acc['groups_exact']}")
            else:
                groups.append("—")
        out.append(f"| {w['id']} | groups | " + " | ".join(groups) + " |")
    out += ["", *_targets(size), *_notes(size, systems)]
    return out


def _targets(size: dict[str, Any]) -> list[str]:
    out = ["Targets (ours):", ""]
    for w in size["workloads"]:
        s = w["systems"]
        ours, cont, opendp = (
            s.get("ours") or {},
            s.get("ours_container") or {},
            s.get("opendp") or {},
        )
        parts = []
        if ours.get("ratio") is not None:
            ok = ours["ratio"] <= TARGET_RATIO
            parts.append(f"in-process {ours['ratio']:.2f}× raw ({'met' if ok else 'MISSED'})")
        if cont.get("over_raw_s") is not None:
            ok = cont["over_raw_s"] <= TARGET_CONTAINER_S
            parts.append(
                f"container raw + {cont['over_raw_s']:.2f} s ({'met' if ok else 'MISSED'})"
            )
        if ours.get("median_s") and opendp.get("median_s") is not None:
            speedup = opendp["median_s"] / ours["median_s"]
            ok = speedup >= TARGET_PEER_SPEEDUP
            parts.append(f"{speedup:.1f}× faster than OpenDP ({'met' if ok else 'MISSED'})")
        ours_acc, odp_acc = ours.get("accuracy") or {}, opendp.get("accuracy") or {}
        for col, v in ours_acc.get("mae", {}).items():
            o = odp_acc.get("mae", {}).get(col)
            if v is None or o is None:
                continue
            if o == 0:
                parts.append(f"{col} error {v:g} vs OpenDP's 0")
                continue
            # An MAE over n cells has a relative standard error of about 1/sqrt(n)
            # (Laplace and Gaussian alike): call it worse only beyond 3 standard errors.
            n1, n2 = ours_acc["cells"][col], odp_acc["cells"][col]
            tolerance = 3 * math.sqrt(1 / n1 + 1 / n2)
            verdict = "no worse" if v <= o * (1 + tolerance) else "WORSE"
            parts.append(f"{col} error {v / o:.2f}× OpenDP's ({verdict}, ±{tolerance:.0%})")
        if parts:
            out.append(f"- {w['id']}: " + "; ".join(parts))
    return out + [""]


def _notes(size: dict[str, Any], systems: dict[str, str]) -> list[str]:
    out = []
    for w in size["workloads"]:
        for n, res in w["systems"].items():
            notes = list(res.get("notes") or [])
            if res.get("status") not in (None, "ok"):
                notes.insert(0, f"{res['status']}: {res.get('reason')}")
            if res.get("stages_median_s"):
                st = res["stages_median_s"]
                notes.append(
                    "stages (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in st.items())
                )
            if res.get("warm_runs") is not None:
                warm = f"{res['warm_runs']} of {res.get('runs')}"
                notes.append(f"timed runs in a warm runner: {warm}")
            if res.get("container_overhead_s") is not None:
                notes.append(
                    f"container start/stop/IO beyond the query: "
                    f"{res['container_overhead_s']:.2f} s (median)"
                )
            if notes:
                out.append(f"- {w['id']} / {systems.get(n, n)}: " + "; ".join(notes))
    return (["Notes:", "", *out, ""]) if out else []


def _time_cell(res: dict[str, Any] | None) -> str:
    if not res:
        return "—"
    if res.get("status") == "timeout":
        return f"> {res['limit_s']:.0f} (capped)"
    if res.get("status") == "out_of_memory":
        return f"out of memory at {res['cap_gb']:g} GB"
    if res.get("status") != "ok":
        return "unsupported" if res.get("status") == "unsupported" else res.get("status", "?")
    cell = f"{res['median_s']:.3f}"
    if res.get("ratio") is not None:
        cell += f" ({res['ratio']:.1f}×)"
    if res.get("runs", 0) < 3:
        cell += f" [{res['runs']} run{'s' if res['runs'] > 1 else ''}]"
    return cell


def _mem_cell(res: dict[str, Any] | None) -> str:
    if not res or res.get("peak_mb") is None:
        return "—"
    cell = f"{res['peak_mb']:.0f}"
    if res.get("container_peak_mb") is not None:
        cell += f" [{res['container_peak_mb']:.0f}]"
    return cell


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-2:
        return f"{v:.2e}"
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
