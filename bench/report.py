"""The summary table of one `make bench` run: every figure, its ratio to the pgbench baseline
of the same run, and the target.

    python bench/report.py

Reads bench/results/throughput.json, pickup.json, pickup-idle.json, waits.json, flow.json,
retention.json, async_sleep.json, scale.json and floor.json (written by bench/throughput.py,
bench/pickup.py, bench/waits.py, bench/flow.py, bench/retention.py, bench/async_sleep.py,
bench/scale.py and bench/floor.py) and prints one table. Rates are divided by the 1-client
pgbench rate (the scale-out and floor rows by the one their script measured in its own
run); latencies and per-step costs are expressed in pgbench 1-client commit times (1 / its
rate), so both read as "how many single-row commits is this worth".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def rows(
    tp: dict[str, Any],
    pickup: dict[str, Any] | None,
    idle: dict[str, Any] | None,
    waits: dict[str, Any] | None = None,
    flow: dict[str, Any] | None = None,
    *,
    retention: dict[str, Any] | None = None,
    async_sleep: dict[str, Any] | None = None,
    scale: dict[str, Any] | None = None,
    floor: dict[str, Any] | None = None,
) -> list[tuple[str, str, str, str]]:
    base = float(tp["pgbench_1"])
    commit_ms = 1000.0 / base

    def rate(value: float) -> str:
        return f"{value / base:.3f} x pgbench(1)"

    def latency(ms: float) -> str:
        return f"{ms / commit_ms:.1f} commit times"

    out = [
        ("pgbench single-row INSERT, 1 client", f"{base:,.0f} tps", "1", ""),
        (
            "pgbench single-row INSERT, 8 clients",
            f"{tp['pgbench_8']:,.0f} tps",
            rate(tp["pgbench_8"]),
            "",
        ),
        (
            "W1 single-step runs/s",
            f"{tp['W1']['runs_per_s']:,.1f}",
            rate(tp["W1"]["runs_per_s"]),
            ">= 2.0 x pgbench(1)",
        ),
        (
            "W2 three-step runs/s",
            f"{tp['W2']['runs_per_s']:,.1f}",
            rate(tp["W2"]["runs_per_s"]),
            ">= 0.6 x pgbench(1)",
        ),
        ("W2 steps/s", f"{tp['W2']['steps_per_s']:,.1f}", rate(tp["W2"]["steps_per_s"]), ""),
    ]
    for w in ("W1", "W2"):
        if f"{w}_async" in tp:
            value = tp[f"{w}_async"]["runs_per_s"]
            out.append(
                (
                    f"{w} async def runs/s",
                    f"{value:,.1f} (x{tp['async_over_sync'][w]} of plain, same run)",
                    rate(value),
                    "report the ratio",
                )
            )
    w4 = tp["W4"]
    out.append(
        (
            f"W4 {w4['steps']:,} steps: ms/step first 100 / last 100",
            f"{w4['first_100_ms_per_step']} / {w4['last_100_ms_per_step']} "
            f"(x{w4['last_over_first']})",
            latency(w4["last_100_ms_per_step"]),
            "flat (last <= 1.5 x first)",
        )
    )
    if pickup:
        out.append(
            (
                "W3 pickup p50 / p95 / p99 ms",
                f"{pickup['p50_ms']} / {pickup['p95_ms']} / {pickup['p99_ms']}",
                latency(pickup["p50_ms"]),
                "p50 <= 2 ms, p99 <= 10 ms",
            )
        )
    if pickup and "async" in pickup:
        a = pickup["async"]
        out.append(
            (
                "W3 pickup, async def function, p50 / p95 / p99 ms",
                f"{a['p50_ms']} / {a['p95_ms']} / {a['p99_ms']} "
                f"(x{pickup['async_over_sync_p50']} of plain, same run)",
                latency(a["p50_ms"]),
                "report the ratio",
            )
        )
    if "W5" in tp:
        w5 = tp["W5"]
        out.append(
            (
                f"W5 W1 with {w5['idle_runs']:,} idle runs",
                f"{w5['runs_per_s']:,.1f} (x{w5['vs_empty']} of empty)",
                rate(w5["runs_per_s"]),
                "within 20 % of empty",
            )
        )
    if idle and pickup:
        ratio = idle["p50_ms"] / pickup["p50_ms"]
        out.append(
            (
                f"W5 W3 with {idle['idle_runs']:,} idle runs, p50 / p95 ms",
                f"{idle['p50_ms']} / {idle['p95_ms']} (x{ratio:.2f} of empty)",
                latency(idle["p50_ms"]),
                "within 20 % of empty",
            )
        )
    if waits:
        single, bulk = waits["single"], waits["bulk"]
        vs = f" (x{single['p50_ms'] / pickup['p50_ms']:.1f} of W3 pickup)" if pickup else ""
        out.append(
            (
                f"one event resolves 1 of {waits['runs']:,} waiting runs, p50 / max ms",
                f"{single['p50_ms']} / {single['max_ms']}{vs}",
                latency(single["p50_ms"]),
                "within 100 ms",
            )
        )
        out.append(
            (
                f"{bulk['events']:,} matching events in one INSERT: all resolved",
                f"{bulk['seconds']} s ({bulk['runs_per_s']:,} runs/s)",
                rate(bulk["runs_per_s"]),
                ">= 5,000 runs/s",
            )
        )
    if flow:
        ratios = flow["ratio_to_plain"]
        for fid in ("limited", "keyed", "throttled"):
            out.append(
                (
                    f"{fid} one-step runs/s (flow control)",
                    f"{flow['runs_per_s'][fid]:,.1f} (x{ratios[fid]} of plain, same run)",
                    rate(flow["runs_per_s"][fid]),
                    "report the cost",
                )
            )
        claim = flow["keyed_claim_ms"]
        out.append(
            (
                f"one keyed claim, {claim['backlog']:,} due runs, p50 / max ms",
                f"{claim['p50']} / {claim['max']}",
                latency(claim["p50"]),
                "report the time",
            )
        )
    if retention:
        out.extend(_retention_rows(retention, latency))
    if async_sleep:
        a = async_sleep
        out.append(
            (
                f"{a['runs']:,} async runs awaiting {a['step_await_s']:g} s, "
                f"{a['workers']} workers: wall s",
                f"{a['wall_s']} (floor {a['async_floor_s']:g}; {a['on_threads_s']} on threads)",
                "",
                "report the time",
            )
        )
    if scale:
        out.extend(_scale_rows(scale))
    out.extend(_floor_rows(floor or {}))
    return out


def _floor_rows(floor: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """W1's database work alone (bench/floor.py), against that run's own pgbench(1): the most
    W1 could reach with no Python at all, with the engine's statements and with the fewest."""
    out = []
    for label, what in (("engine", "the engine's statements"), ("minimum", "the fewest writes")):
        for clients in (1, 2):
            f = floor.get(f"{label}_{clients}")
            if f is None:
                continue
            out.append(
                (
                    f"W1 floor, {what}, {clients} client(s): runs/s",
                    f"{f['runs_per_s']:,.1f} (backend {f['backend_us_per_run']} us/run)",
                    f"{f['over_pgbench_1']:.3f} x pgbench(1)",
                    "bounds W1",
                )
            )
    return out


def _scale_rows(scale: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """One row per daemon count: W1 and W2 runs/s, against that run's own pgbench(1) and its
    first setting (one daemon), and how the W1 runs were spread over the daemons."""
    out = []
    first = scale["settings"][0]["daemons"]
    for s in scale["settings"]:
        w1, w2 = s["W1"], s["W2"]
        out.append(
            (
                f"scale-out, {s['daemons']} daemon(s): W1 / W2 runs/s",
                f"{w1['runs_per_s']:,.1f} / {w2['runs_per_s']:,.1f} (x{w1['ratio_to_first']} / "
                f"x{w2['ratio_to_first']} of {first}; W1 per daemon "
                f"{'/'.join(map(str, w1['per_daemon']))})",
                f"{w1['ratio_to_pgbench_1']:.3f} / {w2['ratio_to_pgbench_1']:.3f} x pgbench(1)",
                "report the ratio",
            )
        )
    return out


def _retention_rows(r: dict[str, Any], latency: Any) -> list[tuple[str, str, str, str]]:
    a, b, ratio, done = r["a_without_cleanup"], r["b_with_cleanup"], r["ratio_b_over_a"], r["pass"]
    deleted = done["runs_completed"] + done["runs_failed"] + done["steps"] + done["events"]
    return [
        (
            f"claim p50 / p99 ms while deleting {r['backlog']['runs']:,} old runs",
            f"{b['p50_ms']} / {b['p99_ms']} (x{ratio['p50_ms']} / x{ratio['p99_ms']} of "
            f"{a['p50_ms']} / {a['p99_ms']} without)",
            latency(b["p99_ms"]),
            "within 2 x of without",
        ),
        (
            "retention pass: rows deleted, seconds",
            f"{deleted:,} in {done['seconds']} s",
            "",
            "report the time",
        ),
    ]


def main() -> int:
    tp = _load("throughput.json")
    if tp is None:
        print("no bench/results/throughput.json: run bench/throughput.py first", file=sys.stderr)
        return 1
    table = rows(
        tp,
        _load("pickup.json"),
        _load("pickup-idle.json"),
        _load("waits.json"),
        _load("flow.json"),
        retention=_load("retention.json"),
        async_sleep=_load("async_sleep.json"),
        scale=_load("scale.json"),
        floor=_load("floor.json"),
    )
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    header = ("figure", "measured", "ratio to baseline", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for line in (header, tuple("-" * w for w in widths), *table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
