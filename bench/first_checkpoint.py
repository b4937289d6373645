"""The first checkpoints of a freshly started daemon: from a step body's return to the moment
its checkpoint has committed, for the first runs after start-up.

    python bench/first_checkpoint.py [--runs 20] [--rounds 3] [--workers 2]

Each round creates a fresh database (as bench/pickup.py does), starts a real daemon, waits
until it serves, then sends one event at a time and waits for its run to complete. The
function has two steps: the first returns `time.time()` as its last act; the second notes
`time.time()` as its first, which is after the first step's checkpoint committed (a step is
not continued before its checkpoint commits). The gap is the checkpoint's latency plus the
engine's bookkeeping between the two bodies. A cold commit path (a connection opened on the
first write) shows in the first run each worker process executes. Prints each round's gaps
in milliseconds, in order, and the median of the first two and of the rest.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench.pickup import Daemon, create_database, drop_database, server_url, wait_for
from orchestrator import Context, Orchestrator, event

APP_PATH = "bench.first_checkpoint:app"
EVENT = "bench/first-checkpoint"

app = Orchestrator()


@app.function("first-checkpoint", trigger=event(EVENT))
def first_checkpoint(ctx: Context) -> dict[str, float]:
    returned = ctx.step.run("return", time.time)
    continued = ctx.step.run("continue", time.time)
    return {"returned": returned, "continued": continued}


def one_round(server: str, runs: int, workers: int, logs: Path) -> list[float]:
    name, url = create_database(server)
    daemon = Daemon(url, logs / f"daemon-{name}.log", {"workers": workers}, app=APP_PATH)
    try:
        daemon.wait_serving()
        gaps: list[float] = []
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(runs):
                conn.execute(
                    "INSERT INTO orchestrator.events (id, name, data) VALUES (%s, %s, '{}')",
                    (f"{uuid.uuid4()}", EVENT),
                )
                wait_for(
                    conn,
                    "SELECT count(*) FROM orchestrator.runs WHERE status = 'completed'",
                    i + 1,
                    60,
                )
            rows = conn.execute(
                "SELECT output FROM orchestrator.runs ORDER BY created_at, id"
            ).fetchall()
        for (output,) in rows:
            gaps.append((output["continued"] - output["returned"]) * 1000)
        return gaps
    finally:
        daemon.stop()
        drop_database(server, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    server, kind = server_url()
    logs = Path(tempfile.mkdtemp(prefix="orchestrator-first-checkpoint-"))
    print(f"first checkpoints after start-up ({kind} Postgres, {args.workers} workers)")
    for n in range(args.rounds):
        gaps = one_round(server, args.runs, args.workers, logs)
        cold, warm = gaps[:2], gaps[2:]
        print(
            f"round {n + 1}: first two median {statistics.median(cold):7.2f} ms, "
            f"rest median {statistics.median(warm):6.2f} ms, max {max(gaps):7.2f} ms"
        )
        print("  gaps ms: " + " ".join(f"{g:.1f}" for g in gaps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
