"""`make soak`: every fault scenario at full size, one after another, on a private cluster.

Prints a table of each scenario's figures and writes them to bench/results/soak.json (and,
with --markdown FILE, a Markdown table for docs/RELIABILITY.md). Exits 1 if any scenario
broke an invariant. `--only NAME` runs one scenario; `--scale F` multiplies the sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tests.chaos import scenarios
from tests.chaos.checker import Report
from tests.chaos.cluster import PrivateCluster
from tests.chaos.harness import ChaosEnv
from tests.conftest import ROOT

SOAK_SIZES: dict[str, dict[str, Any]] = {
    "worker_kills": {"runs": 2000, "every": 2.0},
    "daemon_kills": {"kills": 8, "runs": 1500},
    "postgres_restarts": {"runs": 2000, "restarts": 3},
    "terminate_backends": {"runs": 2000},
    "sigstop": {"runs": 300},
    "timers": {"timers": 5000, "daemons": 4, "lead": 30},
    "poison": {"runs": 1000, "repeats": 3, "min_ratio": 0.9},
    "hostile_input": {"huge_mib": 64},
    "sigterm_in_flight": {"in_flight": 200, "grace": 10},
    "migrate_under_load": {"runs": 2000, "migrations": 10},
}
SCALED = {"runs", "kills", "timers", "restarts", "migrations"}

COLUMNS = [
    "scenario",
    "runs",
    "faults",
    "lost",
    "duplicated results",
    "extra executions",
    "recovery p50 s",
    "recovery p99 s",
    "recovery max s",
    "seconds",
    "passed",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", choices=list(scenarios.SCENARIOS))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    names = args.only or list(scenarios.SCENARIOS)
    logs = Path(tempfile.mkdtemp(prefix="orchestrator-soak-logs-"))
    cluster = PrivateCluster().init()
    cluster.start()
    results = []
    try:
        for name in names:
            results.append(_run(cluster, logs, name, args.scale))
            _print_row(results[-1])
    finally:
        cluster.destroy()
    _print_table(results)
    out = ROOT / "bench" / "results" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    if args.markdown:
        args.markdown.write_text(_markdown(results))
    print(f"\nfigures: {out}; daemon logs: {logs}")
    return 0 if all(r["passed"] for r in results) else 1


def _run(cluster: PrivateCluster, logs: Path, name: str, scale: float) -> dict[str, Any]:
    sizes = {k: max(1, round(v * scale)) if k in SCALED else v for k, v in SOAK_SIZES[name].items()}
    env = ChaosEnv(cluster, logs)
    started = time.monotonic()
    try:
        result = scenarios.SCENARIOS[name](env, **sizes)
        row = result.row() | {"figures": result.figures, "why": result.explain()}
    except Exception as exc:
        traceback.print_exc()
        failed = scenarios.Result(name, Report(), failures=[f"{type(exc).__name__}: {exc}"])
        failed.seconds = time.monotonic() - started
        row = failed.row() | {"figures": {}, "why": failed.explain()}
    finally:
        env.close()
    return row


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"[{'pass' if row['passed'] else 'FAIL'}] {row['scenario']}: {row['figures']} "
        f"({row['why']})",
        flush=True,
    )


def _print_table(rows: list[dict[str, Any]]) -> None:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS]
    print()
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "Scenario figures:", ""]
    lines += [f"- {r['scenario']}: {json.dumps(r['figures'], default=str)}" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
