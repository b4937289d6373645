"""A four-step function deployed in three versions, to exercise resume, fork and replay:

- `pipeline_v1`: step 3 has a bug and fails (not retriable);
- `pipeline_v2`: the fix;
- `pipeline_v3`: the fix, but steps 1 and 2 swapped, which recorded runs cannot follow.

Each step body records its execution in `effects`, so tests can tell a replayed step (no
record) from an executed one.
"""

from __future__ import annotations

from typing import Any

from orchestrator import Backoff, Context, NonRetriableError, event
from tests.e2e.apps.common import record

TRIGGER = event("pipeline/start")
OPTIONS: dict[str, Any] = {"retries": 1, "backoff": Backoff.of(base=0.1, max=0.2)}


def fetch(ctx: Context) -> dict[str, Any]:
    record(ctx.run_id, "fetch")
    return {"n": ctx.event.data["n"]}


def enrich(ctx: Context, fetched: dict[str, Any]) -> dict[str, Any]:
    record(ctx.run_id, "enrich")
    return {"n": fetched["n"], "doubled": fetched["n"] * 2}


def transform(ctx: Context, enriched: dict[str, Any], *, fixed: bool) -> dict[str, Any]:
    record(ctx.run_id, "transform")
    if not fixed:
        raise NonRetriableError("transform: division by zero (the bug)")
    return {"total": enriched["doubled"] + ctx.event.data.get("bonus", 0)}


def store(ctx: Context, transformed: dict[str, Any]) -> dict[str, Any]:
    record(ctx.run_id, "store")
    return {"stored": transformed["total"]}


def run_pipeline(ctx: Context, *, fixed: bool, swapped: bool = False) -> dict[str, Any]:
    if swapped:  # a careless edit: enrich no longer needs fetch first
        enriched = ctx.step.run("enrich", enrich, ctx, {"n": ctx.event.data["n"]})
        ctx.step.run("fetch", fetch, ctx)
    else:
        fetched = ctx.step.run("fetch", fetch, ctx)
        enriched = ctx.step.run("enrich", enrich, ctx, fetched)
    transformed = ctx.step.run("transform", transform, ctx, enriched, fixed=fixed)
    return ctx.step.run("store", store, ctx, transformed)
