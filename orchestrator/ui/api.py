"""The JSON API, under /api/v1 (its OpenAPI schema at /api/v1/openapi.json).

Reads go through orchestrator/db/ui.py on the read-only connection, actions through
operations.py on the runtime connection: the same functions the pages call. Any principal
reads; only an operator acts. Payloads (event data, outputs, run state) reach a viewer only
when `log_payloads` is on; operators always see them.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import JSONResponse, Response

from orchestrator import tracecontext
from orchestrator.db import ui
from orchestrator.ui import deps
from orchestrator.ui.deps import HttpError, Principal

router = APIRouter()
HIDDEN = "[hidden: payloads are shown to operators only, unless log_payloads is on]"

Reader = Annotated[Principal, Depends(deps.api_principal)]
Actor = Annotated[Principal, Depends(deps.api_actor)]


class Login(BaseModel):
    name: str
    password: str


class CancelBody(BaseModel):
    reason: str = ""


class ForkBody(BaseModel):
    from_step: str = Field(description="the step to execute again from")
    data: dict[str, Any] | None = Field(
        default=None, description="new event data (default: the original event's)"
    )


class EventBody(BaseModel):
    name: str
    data: Any = Field(default_factory=dict)
    id: str | None = Field(default=None, description="for de-duplication (default: a UUID)")


def _shows_payloads(request: Request, p: Principal) -> bool:
    return p.is_operator or deps.settings(request).config.log_payloads


def _hide(item: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if item.get(key) is not None:
            item[key] = HIDDEN


def _plain(obj: Any) -> Any:
    """`obj` (dataclasses, lists, dicts, datetimes) as plain JSON values, as FastAPI's
    `jsonable_encoder` would make them, in a few milliseconds rather than a hundred for a
    1,000-step run: the C JSON encoder walks it, `_json_default` unpacks what it cannot."""
    return json.loads(json.dumps(obj, default=_json_default, allow_nan=False))


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set | frozenset):
        return list(value)
    return jsonable_encoder(value)


# -- who am I, logging in and out ---------------------------------------------------------


@router.post("/session", summary="Log in: sets the session cookie; returns the CSRF token")
async def login(request: Request) -> Response:
    name, password = await _credentials(request)
    cookie, session = deps.login(request, name, password)
    out = {"name": session.user_name, "role": session.role, "csrf_token": session.csrf_token}
    response = JSONResponse(out)
    deps.set_session_cookie(request, response, cookie)
    return response


async def _credentials(request: Request) -> tuple[str, str]:
    """(name, password) from a form or a JSON object."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = Login.model_validate_json(await request.body())
        except ValidationError:
            raise HttpError(422, "invalid_request", 'send {"name": ..., "password": ...}') from None
        return body.name, body.password
    form = await request.form()
    name, password = form.get("name"), form.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise HttpError(422, "invalid_request", "send the form fields name and password")
    return name, password


@router.delete("/session", summary="Log out: ends the session and clears the cookie")
async def logout(request: Request) -> Response:
    p = deps.api_principal(request)
    await deps.check_csrf(request, p)
    response = JSONResponse({"logged_out": True})
    deps.logout(request, response)
    return response


@router.get("/me", summary="Who is asking: name, role, and how authenticated")
def me(p: Reader) -> dict[str, Any]:
    return {"name": p.name, "role": p.role, "via": p.via, "is_operator": p.is_operator}


# -- runs ------------------------------------------------------------------------------------


@router.get("/runs", summary="Runs, newest first (keyset pages), with counts per status")
def list_runs(
    request: Request,
    p: Reader,
    *,
    function_id: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    event_name: str | None = None,
    id_prefix: Annotated[str | None, Query(description="run or event id prefix")] = None,
    data_path: Annotated[
        str | None, Query(description="SQL/JSON path predicate on event data: $.user_id == 7")
    ] = None,
    before: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    f = ui.RunFilter(
        function_id=function_id,
        status=status,
        since=since,
        until=until,
        event_name=event_name,
        id_prefix=id_prefix,
        data_path=data_path,
        before=before,
        limit=limit,
    )

    page, counts = deps.read_db(request).run(lambda conn: ui.runs_with_counts(conn, f))
    return {
        "runs": _plain(page.runs),
        "next_cursor": page.next_cursor,
        "counts": counts,
        "counts_cap": ui.COUNT_CAP,  # a count equal to it means "that many or more"
    }


@router.get(
    "/runs/{run_id}",
    summary="One run: steps, waits, lineage, actions, timeline",
    response_model=dict[str, Any],
)
def get_run(request: Request, p: Reader, run_id: str) -> Response:
    detail = deps.read_db(request).run(lambda conn: ui.run_detail(conn, run_id))
    if detail is None:
        raise HttpError(404, "run_not_found", f"no run {run_id!r}")
    out: dict[str, Any] = _plain(detail)
    if not _shows_payloads(request, p):
        _hide(out["run"], "output", "state", "events")
        for step in out["steps"]:
            _hide(step, "output")
        if out.get("event"):
            _hide(out["event"], "data")
    return JSONResponse(out)  # already plain: not encoded a second time


@router.post("/runs/{run_id}/cancel", summary="Cancel a run and its unfinished invoked runs")
def cancel_run(
    request: Request, p: Actor, run_id: str, body: CancelBody | None = None
) -> dict[str, Any]:
    done = deps.operations(request).cancel(p, run_id, body.reason if body else "")
    return {"id": done.id, "status": done.status, "changed": done.changed} | {
        "children_cancelled": done.children_cancelled
    }


@router.post("/runs/{run_id}/replay", summary="A new run from the same event(s)")
def replay_run(request: Request, p: Actor, run_id: str) -> dict[str, Any]:
    return {"id": deps.operations(request).replay(p, run_id)}


@router.post("/runs/{run_id}/resume", summary="Requeue a failed or cancelled run")
def resume_run(request: Request, p: Actor, run_id: str) -> dict[str, Any]:
    return {"id": deps.operations(request).resume(p, run_id)}


@router.post("/runs/{run_id}/fork", summary="A new run from one step on, with new data")
def fork_run(request: Request, p: Actor, run_id: str, body: ForkBody) -> dict[str, Any]:
    return {"id": deps.operations(request).fork(p, run_id, body.from_step, body.data)}


# -- events ----------------------------------------------------------------------------------


@router.post("/events", summary="Send an event (as app.send does)")
def send_event(request: Request, p: Actor, body: EventBody) -> dict[str, Any]:
    trace = tracecontext.from_headers(request.headers)  # the caller's traceparent, if any
    event_id, created = deps.operations(request).send(
        p, body.name, body.data, body.id, trace_context=trace
    )
    return {"id": event_id, "created": created}


@router.get("/events", summary="Recent events (or parked ones) and the runs they started")
def list_events(
    request: Request,
    p: Reader,
    *,
    name: str | None = None,
    parked: bool = False,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    found, cursor = deps.read_db(request).run(
        lambda conn: ui.list_events(conn, name=name, parked=parked, before=before, limit=limit)
    )
    items: list[dict[str, Any]] = _plain(found)
    if not _shows_payloads(request, p):
        for item in items:
            _hide(item, "data")
    return {"events": items, "next_cursor": cursor}


@router.get("/events/{event_id}", summary="One event and the runs it started")
def get_event(request: Request, p: Reader, event_id: str) -> dict[str, Any]:
    found = deps.read_db(request).run(lambda conn: ui.get_event(conn, event_id))
    if found is None:
        raise HttpError(404, "event_not_found", f"no event {event_id!r}")
    out: dict[str, Any] = _plain(found)
    if not _shows_payloads(request, p):
        _hide(out, "data")
    return out


# -- functions, queue, schedules, daemons -------------------------------------------------


@router.get("/functions", summary="Functions with counts, p50/p95 and throughput")
def list_functions(request: Request, p: Reader) -> list[Any]:
    found: list[Any] = _plain(deps.read_db(request).run(ui.functions_overview))
    return found


@router.get("/functions/{function_id}", summary="One function's triggers, options and stats")
def get_function(request: Request, p: Reader, function_id: str) -> Any:
    found = deps.read_db(request).run(lambda conn: ui.function_stats(conn, function_id))
    if found is None:
        raise HttpError(404, "function_not_found", f"no function {function_id!r}")
    return _plain(found)


@router.get("/queue", summary="Waiting runs by reason, concurrency keys, rate limiters")
def queue(request: Request, p: Reader) -> Any:
    return _plain(deps.read_db(request).run(ui.queue_overview))


@router.get("/schedules", summary="Cron schedules with their next fire times")
def schedules(request: Request, p: Reader) -> list[Any]:
    found: list[Any] = _plain(deps.read_db(request).run(ui.schedules))
    return found


@router.get("/daemons", summary="Daemons with version, heartbeat and load")
def daemons(request: Request, p: Reader) -> list[Any]:
    found: list[Any] = _plain(deps.read_db(request).run(ui.daemons))
    return found
