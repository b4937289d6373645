"""Plain Python functions served beside the SDK apps (tests/inngest/test_sdk_e2e.py, and the
native side of bench/inngest.py's comparison)."""

from __future__ import annotations

from typing import Any

from orchestrator import Context, Orchestrator, event

app = Orchestrator()


@app.function("native-ping", trigger=event("app/native.ping"))
def native_ping(ctx: Context) -> dict[str, Any]:
    return {"pong": ctx.event.data.get("x")}
