"""The protocol's shapes, both ways: the ops an app answers with, our events as the SDKs
expect them (`ts` in milliseconds, Inngest's names for the engine's own events), and step
errors as the memo carries them."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from orchestrator.context import Event
from orchestrator.errors import SdkResponseError
from orchestrator.functions import CRON_EVENT_NAME, FAILED_EVENT_NAME, INVOKED_EVENT_NAME
from orchestrator.inngest import timestr

EVENT_NAMES = {
    INVOKED_EVENT_NAME: "inngest/function.invoked",
    CRON_EVENT_NAME: "inngest/scheduled.timer",
    FAILED_EVENT_NAME: "inngest/function.failed",  # what an onFailure handler is sent
}


def ops_of(body: Any) -> list[dict[str, Any]]:
    ops = [body] if isinstance(body, dict) else body
    if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
        raise SdkResponseError("the app answered 206 without a list of ops")
    return ops


def op_id(op: dict[str, Any]) -> str:
    hashed = op.get("id")
    if not isinstance(hashed, str) or not 1 <= len(hashed) <= 80 or not hashed.isalnum():
        raise SdkResponseError(f"an op's id must be a hashed step id, got {hashed!r}")
    return hashed


def unsupported(op: dict[str, Any], where: str = "") -> SdkResponseError:
    return SdkResponseError(
        f"the app asked for op {str(op.get('op'))[:60]!r}{' ' + where if where else ''}, "
        "which is not supported (supported: step.run, sleep, waitForEvent, invoke, and "
        "parallel step.run)",
        non_retriable=True,
    )


def opts_of(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def seconds_of(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        return timestr.seconds(value, what=what)
    except ValueError as exc:
        raise SdkResponseError(str(exc)) from None


def event_json(event: Event | dict[str, Any]) -> dict[str, Any]:
    if isinstance(event, Event):
        return {"id": event.id, "name": event.name, "data": event.data, "ts": event.ts}
    return event


def inngest_event(event: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One of our events in Inngest's shape: `ts` in milliseconds, Inngest's names for the
    engine's own events (an invocation, a cron tick), and the `user` and `v` it was sent with
    (`extra`: kept in `events.extra` by the event API)."""
    name = str(event.get("name") or "")
    data = opts_of(event, "data")
    if name == FAILED_EVENT_NAME and isinstance(data.get("error"), dict):
        data = data | {"error": sdk_error(data["error"])}  # as an onFailure handler reads it
    shaped = {
        "id": str(
            event.get("id") or hashlib.sha1(json.dumps(event, default=str).encode()).hexdigest()
        ),
        "name": EVENT_NAMES.get(name, name),
        "data": data,
        "user": (extra or {}).get("user") or {},
        "ts": _ms(event.get("ts")),
    }
    if extra and extra.get("v") is not None:
        shaped["v"] = extra["v"]
    return shaped


def _ms(ts: Any) -> int:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return int(ts)
    try:
        moment = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def sdk_error(error: Any) -> dict[str, Any]:
    """A recorded step error as the SDK expects it in the memo: name and message."""
    if not isinstance(error, dict):
        return {"name": "Error", "message": str(error)}
    name = error.get("code") if error.get("type") == "SdkError" else error.get("type")
    return {"name": str(name or "Error"), "message": str(error.get("message") or "")}
