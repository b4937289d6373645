"""The dashboard's pages: server-rendered HTML on the same reads and operations as the API.

Every page needs a session (or `ui_auth = false`); a viewer reads, an operator also acts.
Actions are plain HTML forms carrying the session's CSRF token, so everything works without
JavaScript: an action posted without `confirmed=yes` answers with a confirmation page, and
`ui.js` replaces that round trip with a `<dialog>`. The one thing that needs the script is the
runs table's live refresh (`GET /runs?fragment=1` every 2 s while the tab is visible).

This module serves logging in and out, functions, events (and sending one), the queue,
schedules and daemons; run_pages.py the runs list, a run's page and the actions on a run;
views.py what they share.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from orchestrator import errors, tracecontext
from orchestrator.db import ui
from orchestrator.ui import charts, deps, run_pages
from orchestrator.ui.auth import LoginFailed, TooManyAttempts
from orchestrator.ui.deps import Principal
from orchestrator.ui.views import Actor, Poster, Viewer, parse_object, read, render, shows_payloads

router = APIRouter(include_in_schema=False)
router.include_router(run_pages.router)

# -- logging in and out --------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path on this site (not //host or /\\host) is a place to go after login."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/runs"


@router.get("/login")
def login_form(request: Request, next: str = "/runs") -> Response:
    return render(
        request,
        "login.html",
        None,
        section="",
        page_title="Sign in",
        next=_safe_next(next),
        name="",
        error=None,
    )


@router.post("/login")
def login(
    request: Request,
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/runs",
) -> Response:
    target = _safe_next(next)
    try:
        cookie, _ = deps.login(request, name, password)
    except (LoginFailed, TooManyAttempts) as exc:
        status = 429 if isinstance(exc, TooManyAttempts) else 401
        text = errors.first_line(exc) if status == 429 else "Wrong name or password."
        return render(
            request,
            "login.html",
            None,
            status=status,
            section="",
            page_title="Sign in",
            next=target,
            name=name,
            error=text,
        )
    response = RedirectResponse(target, status_code=303)
    deps.set_session_cookie(request, response, cookie)
    return response


@router.post("/logout")
def logout(request: Request, p: Poster) -> Response:
    response = RedirectResponse("/login", status_code=303)
    deps.logout(request, response)
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse("/runs", status_code=303)


# -- functions, events, queue, schedules, daemons ------------------------------------------------


@router.get("/functions")
def functions_page(request: Request, p: Viewer) -> Response:
    return render(request, "functions.html", p, functions=read(request, ui.functions_overview))


@router.get("/functions/{function_id}")
def function_page(request: Request, p: Viewer, function_id: str) -> Response:
    fn = read(request, lambda c: ui.function_stats(c, function_id))
    if fn is None:
        return render(
            request,
            "error.html",
            p,
            status=404,
            section="functions",
            heading="No such function",
            message=f"no function {function_id!r}",
            back_url="/functions",
        )
    return render(
        request,
        "function.html",
        p,
        section="functions",
        page_title=fn.id,
        fn=fn,
        chart=charts.throughput(fn.per_minute),
    )


@router.get("/events")
def events_page(request: Request, p: Viewer) -> Response:
    return _events(request, p)


def _events(request: Request, p: Principal, *, status: int = 200, **extra: Any) -> Response:
    name = request.query_params.get("name", "").strip() or None
    parked = request.query_params.get("parked") == "1"
    before = request.query_params.get("before") or None
    found, cursor = read(
        request, lambda c: ui.list_events(c, name=name, parked=parked, before=before)
    )
    kept = {k: v for k, v in (("name", name), ("parked", "1" if parked else None)) if v}
    sent = request.query_params.get("sent")
    ctx: dict[str, Any] = {
        "events": found,
        "name": name,
        "parked": parked,
        "before": before,
        "next_cursor": cursor,
        "newest_url": "/events" + (f"?{urlencode(kept)}" if kept else ""),
        "older_url": "/events?" + urlencode({**kept, "before": cursor or ""}),
        "show_payloads": shows_payloads(request, p),
        "send_open": False,
        "send_name": "",
        "send_data": "{}",
        "flash": {"kind": "ok", "text": f"Sent event {sent}."} if sent else None,
    }
    ctx.update(extra)
    return render(request, "events.html", p, status=status, **ctx)


@router.post("/events")
def send_event(
    request: Request,
    p: Actor,
    name: Annotated[str, Form()],
    data: Annotated[str, Form()] = "{}",
) -> Response:
    value, problem = parse_object(data)
    if not problem:
        try:
            trace = tracecontext.from_headers(request.headers)
            event_id, _ = deps.operations(request).send(
                p, name.strip(), value or {}, trace_context=trace
            )
        except errors.OrchestratorError as exc:
            problem = errors.first_line(exc)
        else:
            return RedirectResponse(f"/events?{urlencode({'sent': event_id})}", status_code=303)
    return _events(
        request,
        p,
        status=422,
        send_open=True,
        send_name=name,
        send_data=data,
        flash={"kind": "error", "text": problem},
    )


@router.get("/queue")
def queue_page(request: Request, p: Viewer) -> Response:
    return render(request, "queue.html", p, q=read(request, ui.queue_overview))


@router.get("/schedules")
def schedules_page(request: Request, p: Viewer) -> Response:
    return render(request, "schedules.html", p, schedules=read(request, ui.schedules))


@router.get("/daemons")
def daemons_page(request: Request, p: Viewer) -> Response:
    return render(request, "daemons.html", p, daemons=read(request, ui.daemons))
