"""Throughput of functions served by an official Inngest SDK app beside the same functions
written with our Python API, in the same run.

    python bench/inngest.py [--one 1000] [--three 300] [--sdk v4]

One daemon (`orchestrator run` with `inngest = true` in dev mode) serves both: the native
functions below, and the Node SDK app tests/inngest/sdk_apps/node/app_<sdk>.mjs (the official
JS SDK, installed by `make inngest-sdks`) synced with `orchestrator apps sync`. Its
`one-step` and `three-steps` functions have the shapes of `native-one` and `native-three`
here. Events are inserted in one statement (the same way for both), so the figures are the
engine's: claiming, the SDK calls over HTTP (one per step plus one to finish), checkpoints.
Prints runs/s for each and the SDK/native ratio, and, as a ceiling, the SDK app alone driven
straight over HTTP with no engine; writes bench/results/inngest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pickup import (
    ROOT,
    Daemon,
    create_database,
    drop_database,
    send_bulk,
    server_url,
    wait_completed,
    write_result,
)
from orchestrator import Context, Orchestrator, event
from tests.inngest.sdk_harness import MissingTool, SdkApp, free_port

APP_PATH = "bench.inngest:app"
app = Orchestrator()


def _value(i: int) -> int:
    return i


@app.function("native-one", trigger=event("bench/native-one"))
def native_one(ctx: Context) -> int:
    return ctx.step.run("only", _value, ctx.event.data.get("i", 0))


@app.function("native-three", trigger=event("bench/native-three"))
def native_three(ctx: Context) -> int:
    a = ctx.step.run("first", _value, ctx.event.data.get("i", 0))
    b = ctx.step.run("second", _value, a + 1)
    return ctx.step.run("third", _value, b + 1)


def measure(
    url: str, event_name: str, function_id: str, n: int, steps: int, *, done_before: int = 0
) -> dict[str, Any]:
    """`n` runs of `function_id` from `n` events inserted at once; `done_before` of its runs
    had completed before (wait_completed counts them all)."""
    started = send_bulk(url, event_name, n, {"i": 1})
    seconds = wait_completed(url, function_id, done_before + n, started, timeout=900)
    return {
        "runs": n,
        "seconds": round(seconds, 2),
        "runs_per_s": round(n / seconds, 1),
        "steps_per_s": round(steps * n / seconds, 1),
    }


def sync(url: str, app_url: str) -> None:
    """`orchestrator apps sync APP_URL`: the app registers its functions with us."""
    env = {"ORCHESTRATOR_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "apps", "sync", app_url],
        cwd=ROOT,
        env=dict(os.environ) | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"orchestrator apps sync {app_url} failed:\n{out.stdout}{out.stderr}")


def direct(
    app_url: str, function_id: str, event_name: str, n: int, concurrency: int = 16
) -> dict[str, Any]:
    """The SDK app alone: `n` runs of `function_id` driven straight over HTTP with an empty
    memo and no engine (each run: one call per step and one to finish), as a ceiling."""

    async def one_run(client: httpx.AsyncClient) -> None:
        event = {"name": event_name, "data": {"i": 1}, "id": str(uuid.uuid4()), "ts": 0}
        steps: dict[str, Any] = {}
        ctx = {"attempt": 0, "disable_immediate_execution": False, "use_api": False}
        for _ in range(10):
            body = {
                "event": event,
                "events": [event],
                "steps": steps,
                "use_api": False,
                "version": -1,
                "ctx": ctx | {"run_id": event["id"], "stack": {"stack": list(steps), "current": 0}},
            }
            r = await client.post(app_url, params={"fnId": function_id}, json=body)
            if r.status_code == 200:
                return
            if r.status_code != 206:
                raise SystemExit(f"{function_id}: the app answered {r.status_code}: {r.text}")
            for op in r.json():
                steps[op["id"]] = {"data": op.get("data")}
        raise SystemExit(f"{function_id}: a direct run did not finish")

    async def main() -> float:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30) as client:

            async def gated() -> None:
                async with gate:
                    await one_run(client)

            started = time.monotonic()
            await asyncio.gather(*(gated() for _ in range(n)))
            return time.monotonic() - started

    seconds = asyncio.run(main())
    return {"runs": n, "seconds": round(seconds, 2), "runs_per_s": round(n / seconds, 1)}


def wait_served(url: str, function_id: str, timeout: float = 60.0) -> None:
    """Until a running daemon lists `function_id` among the functions it serves."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute(
                "SELECT 1 FROM orchestrator.daemons WHERE status = 'running' "
                "AND %s = ANY(functions)",
                (function_id,),
            ).fetchone():
                return
            time.sleep(0.1)
    raise SystemExit(f"no daemon serves {function_id} after {timeout}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", type=int, default=1000, help="one-step runs of each kind")
    parser.add_argument("--three", type=int, default=300, help="three-step runs of each kind")
    parser.add_argument("--sdk", choices=("v3", "v4"), default="v4")
    args = parser.parse_args(argv)
    server, kind = server_url()
    name, url = create_database(server)
    work = Path(tempfile.mkdtemp(prefix="inngest-bench-"))
    gateway = f"127.0.0.1:{free_port()}"
    results: dict[str, Any] = {"database": kind, "sdk": args.sdk}
    try:
        sdk_app = SdkApp(args.sdk, work, gateway, app_id="bench-node").start()
    except MissingTool as exc:
        drop_database(server, name)
        raise SystemExit(str(exc)) from None
    config = {"inngest": True, "inngest_dev": True, "inngest_address": gateway}
    daemon = Daemon(url, work / "daemon.log", config, app=APP_PATH)
    try:
        daemon.wait_serving()
        sync(url, sdk_app.url)
        wait_served(url, "bench-node-three-steps")
        # a few runs of each first, so neither side pays first-call costs in the figures
        warm = 5
        measure(url, "bench/native-one", "native-one", warm, 1)
        measure(url, "bench/one", "bench-node-one-step", warm, 1)
        shapes = (
            (
                "one_step",
                args.one,
                1,
                ("bench/native-one", "native-one"),
                ("bench/one", "bench-node-one-step"),
            ),
            (
                "three_steps",
                args.three,
                3,
                ("bench/native-three", "native-three"),
                ("bench/three", "bench-node-three-steps"),
            ),
        )
        for shape, n, steps, (native_event, native_fn), (sdk_event, sdk_fn) in shapes:
            done = warm if steps == 1 else 0
            native_fig = measure(url, native_event, native_fn, n, steps, done_before=done)
            sdk_fig = measure(url, sdk_event, sdk_fn, n, steps, done_before=done)
            results[shape] = {
                "native": native_fig,
                "sdk": sdk_fig,
                "sdk_app_alone": direct(sdk_app.url, sdk_fn, sdk_event, n),
                "sdk_over_native": round(sdk_fig["runs_per_s"] / native_fig["runs_per_s"], 3),
            }
    finally:
        daemon.stop()
        sdk_app.stop()
        drop_database(server, name)
    path = write_result("inngest.json", results)
    print(f"Inngest SDK ({args.sdk}) functions beside native ones, {kind} database")
    for shape in ("one_step", "three_steps"):
        r = results[shape]
        print(
            f"  {shape:12} native {r['native']['runs_per_s']:>8} runs/s   "
            f"SDK {r['sdk']['runs_per_s']:>8} runs/s   SDK/native {r['sdk_over_native']}   "
            f"(the SDK app alone, no engine: {r['sdk_app_alone']['runs_per_s']} runs/s)"
        )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
