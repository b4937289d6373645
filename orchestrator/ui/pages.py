"""The dashboard's pages: server-rendered HTML on the same reads and operations as the API.

Every page needs a session (or `ui_auth = false`); a viewer reads, an operator also acts.
Actions are plain HTML forms carrying the session's CSRF token, so everything works without
JavaScript: an action posted without `confirmed=yes` answers with a confirmation page, and
`ui.js` replaces that round trip with a `<dialog>`. The one thing that needs the script is the
runs table's live refresh (`GET /runs?fragment=1` every 2 s while the tab is visible).

Payloads (event data, step and run outputs, run state, what an action was given) are shown to
operators always and to viewers only when `log_payloads` is on, as in the API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from orchestrator import errors
from orchestrator.db import functions, ui
from orchestrator.db.replays import FINISHED, RESUMABLE
from orchestrator.statuses import RUN_STATUSES
from orchestrator.ui import charts, deps
from orchestrator.ui.auth import LoginFailed, TooManyAttempts
from orchestrator.ui.deps import Principal

router = APIRouter(include_in_schema=False)

NAV = [
    ("/runs", "Runs"),
    ("/functions", "Functions"),
    ("/events", "Events"),
    ("/queue", "Queue"),
    ("/schedules", "Schedules"),
    ("/daemons", "Daemons"),
]
COUNT_CAP = ui.COUNT_CAP  # status_counts stops counting there: "10000+"
DONE = {
    "cancel": "Cancel requested.",
    "replay": "Replayed: this is the new run.",
    "resume": "Resumed: the run is queued again.",
    "fork": "Forked: this is the new run.",
}


async def _viewer(request: Request) -> Principal:
    return deps.page_principal(request)


async def _actor(request: Request) -> Principal:
    """A logged-in operator whose form carries the session's CSRF token (403 otherwise)."""
    p = deps.page_principal(request)
    await deps.check_csrf(request, p)
    return deps.require_operator(p)


Viewer = Annotated[Principal, Depends(_viewer)]
Actor = Annotated[Principal, Depends(_actor)]


# -- rendering ---------------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours < 48 else f"{hours // 24}d {hours % 24}h"


def _trigger(t: dict[str, Any]) -> str:
    if t.get("type") == "cron":
        zone = f" ({t['tz']})" if t.get("tz") else ""
        return f"cron {t.get('expr')}{zone}"
    cond = f" if {t['if']}" if t.get("if") else ""
    return f"event {t.get('name')}{cond}"


def _wait_match(w: ui.WaitRow) -> str:
    parts = [f"match {w.match}" if w.match else "", f"if {w.expression}" if w.expression else ""]
    return "; ".join(p for p in parts if p) or "any"


_env = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(when=_when, duration=_duration, trigger=_trigger)
_env.globals.update(nav=NAV, w_match=_wait_match)


def _render(
    request: Request, template: str, p: Principal | None, *, status: int = 200, **ctx: Any
) -> HTMLResponse:
    ctx.setdefault("section", template.removesuffix(".html"))
    ctx.setdefault("page_title", ctx["section"].capitalize())
    html = _env.get_template(template).render(principal=p, request=request, **ctx)
    return HTMLResponse(html, status_code=status)


def _shows_payloads(request: Request, p: Principal) -> bool:
    return p.is_operator or deps.settings(request).config.log_payloads


def _error_page(request: Request, p: Principal, exc: Exception, back: str) -> HTMLResponse:
    status = 400
    if isinstance(exc, errors.RunNotFoundError | errors.StepNotFoundError):
        status = 404
    elif isinstance(exc, errors.RunStateError):
        status = 409
    elif isinstance(exc, errors.PayloadError | errors.InvalidEventError):
        status = 422
    message = errors.first_line(exc)
    return _render(
        request, "error.html", p, status=status, heading="Not done", message=message, back_url=back
    )


def _read(request: Request, fn: Callable[[Any], Any]) -> Any:
    return deps.read_db(request).run(fn)


# -- logging in and out --------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path on this site (not //host or /\\host) is a place to go after login."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/runs"


@router.get("/login")
def login_form(request: Request, next: str = "/runs") -> Response:
    return _render(
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
        return _render(
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
async def logout(request: Request) -> Response:
    p = deps.page_principal(request)
    await deps.check_csrf(request, p)
    response = RedirectResponse("/login", status_code=303)
    deps.logout(request, response)
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse("/runs", status_code=303)


# -- runs --------------------------------------------------------------------------------------


def _moment(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise errors.UsageError(
            f"{what} {text!r} is not a date and time (2026-12-06T08:30)"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


_FILTER_KEYS = ("function_id", "status", "since", "until", "event_name", "id_prefix", "data_path")


@router.get("/runs")
def runs_page(request: Request, p: Viewer) -> Response:
    q = {k: request.query_params.get(k, "").strip() for k in (*_FILTER_KEYS, "before")}
    fragment = request.query_params.get("fragment") == "1"
    error: str | None = None
    try:
        f = ui.RunFilter(
            function_id=q["function_id"] or None,
            status=q["status"] or None,
            since=_moment(q["since"], "since"),
            until=_moment(q["until"], "until"),
            event_name=q["event_name"] or None,
            id_prefix=q["id_prefix"] or None,
            data_path=q["data_path"] or None,
            before=q["before"] or None,
        )
        page, counts = _read(request, lambda c: (ui.list_runs(c, f), ui.status_counts(c, f)))
    except errors.OrchestratorError as exc:  # an invalid filter (date, JSON path, cursor)
        error = errors.first_line(exc)
        f = ui.RunFilter(function_id=q["function_id"] or None, status=q["status"] or None)
        page, counts = ui.RunPage([], None), {}
    ctx = _runs_context(request, q, f, page, counts)
    if fragment:
        return _render(request, "_runs_table.html", p, **ctx)
    ids = [fn.id for fn in _read(request, functions.list_all)]
    flash = {"kind": "error", "text": error} if error else None
    return _render(
        request,
        "runs.html",
        p,
        status=400 if error else 200,
        flash=flash,
        function_ids=ids,
        form=q,
        **ctx,
    )


def _runs_context(
    request: Request, q: dict[str, str], f: ui.RunFilter, page: ui.RunPage, counts: dict[str, int]
) -> dict[str, Any]:
    kept = {k: q[k] for k in _FILTER_KEYS if q[k]}

    def status_url(status: str | None) -> str:
        params = {k: v for k, v in kept.items() if k != "status"}
        if status:
            params["status"] = status
        return "/runs" + (f"?{urlencode(params)}" if params else "")

    newest = "/runs" + (f"?{urlencode(kept)}" if kept else "")
    older = "/runs?" + urlencode({**kept, "before": page.next_cursor or ""})
    visible = {s: n for s, n in counts.items() if not f.status or s == f.status}
    return {
        "f": f,
        "page": page,
        "counts": counts,
        "total": sum(visible.values()),
        "capped": any(n >= COUNT_CAP for n in visible.values()),
        "cap": COUNT_CAP,
        "statuses": RUN_STATUSES,
        "status_url": status_url,
        "newest_url": newest,
        "older_url": older,
        "fragment_url": "/runs?" + urlencode({**kept, "fragment": "1"}),
    }


@router.get("/runs/{run_id}")
def run_page(request: Request, p: Viewer, run_id: str) -> Response:
    return _run_detail(request, p, run_id)


def _run_detail(
    request: Request, p: Principal, run_id: str, *, status: int = 200, **extra: Any
) -> Response:
    d = _read(request, lambda c: ui.run_detail(c, run_id))
    if d is None:
        return _render(
            request,
            "error.html",
            p,
            status=404,
            heading="No such run",
            message=f"no run {run_id!r} (it may have been deleted by retention)",
            back_url="/runs",
        )
    run = d.run
    run_ms = None
    if run.started_at and run.finished_at:
        run_ms = (run.finished_at - run.started_at).total_seconds() * 1000
    fork_data = ""
    if len(run.events) == 1:
        fork_data = json.dumps(run.events[0].get("data"), indent=2, ensure_ascii=False)
    done = request.query_params.get("done", "")
    ctx: dict[str, Any] = {
        "d": d,
        "run_ms": run_ms,
        "gantt": charts.gantt(d.timeline),
        "finished": FINISHED,
        "resumable": RESUMABLE,
        "show_payloads": _shows_payloads(request, p),
        "fork_data": fork_data,
        "fork_step": None,
        "fork_open": False,
        "flash": {"kind": "ok", "text": DONE[done]} if done in DONE else None,
        "section": "runs",
        "page_title": f"Run {run.id[:8]}",
    }
    ctx.update(extra)
    return _render(request, "run.html", p, status=status, **ctx)


# -- actions on a run ----------------------------------------------------------------------------


def _confirm(
    request: Request, p: Principal, action: str, question: str, fields: dict[str, str]
) -> HTMLResponse:
    """The page that asks before acting, for browsers without the script's dialog."""
    run_id = request.path_params["run_id"]
    pairs = [("csrf_token", p.csrf or ""), *((k, v) for k, v in fields.items())]
    return _render(
        request,
        "confirm.html",
        p,
        section="runs",
        page_title=f"Confirm {action}",
        action=action,
        question=question,
        fields=pairs,
        action_url=str(request.url.path),
        back_url=f"/runs/{run_id}",
    )


def _after(run_id: str, done: str) -> Response:
    return RedirectResponse(f"/runs/{run_id}?done={done}", status_code=303)


Confirmed = Annotated[str, Form()]


@router.post("/runs/{run_id}/cancel")
def cancel(
    request: Request,
    p: Actor,
    run_id: str,
    reason: Annotated[str, Form()] = "",
    confirmed: Confirmed = "",
) -> Response:
    if confirmed != "yes":
        return _confirm(request, p, "cancel", f"Cancel run {run_id}?", {"reason": reason})
    try:
        done = deps.operations(request).cancel(p, run_id, reason)
    except errors.OrchestratorError as exc:
        return _error_page(request, p, exc, f"/runs/{run_id}")
    return _after(done.id, "cancel")


@router.post("/runs/{run_id}/replay")
def replay(request: Request, p: Actor, run_id: str, confirmed: Confirmed = "") -> Response:
    if confirmed != "yes":
        return _confirm(request, p, "replay", f"Start a new run from the event(s) of {run_id}?", {})
    try:
        new_id = deps.operations(request).replay(p, run_id)
    except errors.OrchestratorError as exc:
        return _error_page(request, p, exc, f"/runs/{run_id}")
    return _after(new_id, "replay")


@router.post("/runs/{run_id}/resume")
def resume(request: Request, p: Actor, run_id: str, confirmed: Confirmed = "") -> Response:
    if confirmed != "yes":
        return _confirm(request, p, "resume", f"Requeue run {run_id}, keeping its steps?", {})
    try:
        full = deps.operations(request).resume(p, run_id)
    except errors.OrchestratorError as exc:
        return _error_page(request, p, exc, f"/runs/{run_id}")
    return _after(full, "resume")


@router.post("/runs/{run_id}/fork")
def fork(
    request: Request,
    p: Actor,
    run_id: str,
    *,
    from_step: Annotated[str, Form()],
    data: Annotated[str | None, Form()] = None,
    confirmed: Confirmed = "",
) -> Response:
    edited, problem = _parse_object(data)
    if problem:
        return _run_detail(
            request,
            p,
            run_id,
            status=422,
            fork_open=True,
            fork_step=from_step,
            fork_data=data,
            flash={"kind": "error", "text": problem},
        )
    if confirmed != "yes":
        fields = {"from_step": from_step} | ({"data": data} if data is not None else {})
        question = f"Start a new run from step {from_step!r} of {run_id}, with this data?"
        return _confirm(request, p, "fork", question, fields)
    try:
        new_id = deps.operations(request).fork(p, run_id, from_step, edited)
    except errors.OrchestratorError as exc:
        return _error_page(request, p, exc, f"/runs/{run_id}")
    return _after(new_id, "fork")


def _parse_object(text: str | None) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object in `text`, "") or (None, what is wrong); no text: (None, "")."""
    if text is None or not text.strip():
        return None, ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"the data is not JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"the data must be a JSON object, not {type(value).__name__}"
    return value, ""


# -- functions, events, queue, schedules, daemons ------------------------------------------------


@router.get("/functions")
def functions_page(request: Request, p: Viewer) -> Response:
    return _render(request, "functions.html", p, functions=_read(request, ui.functions_overview))


@router.get("/functions/{function_id}")
def function_page(request: Request, p: Viewer, function_id: str) -> Response:
    fn = _read(request, lambda c: ui.function_stats(c, function_id))
    if fn is None:
        return _render(
            request,
            "error.html",
            p,
            status=404,
            section="functions",
            heading="No such function",
            message=f"no function {function_id!r}",
            back_url="/functions",
        )
    return _render(
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
    found, cursor = _read(
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
        "show_payloads": _shows_payloads(request, p),
        "send_open": False,
        "send_name": "",
        "send_data": "{}",
        "flash": {"kind": "ok", "text": f"Sent event {sent}."} if sent else None,
    }
    ctx.update(extra)
    return _render(request, "events.html", p, status=status, **ctx)


@router.post("/events")
def send_event(
    request: Request,
    p: Actor,
    name: Annotated[str, Form()],
    data: Annotated[str, Form()] = "{}",
) -> Response:
    value, problem = _parse_object(data)
    if not problem:
        try:
            event_id, _ = deps.operations(request).send(p, name.strip(), value or {})
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
    return _render(request, "queue.html", p, q=_read(request, ui.queue_overview))


@router.get("/schedules")
def schedules_page(request: Request, p: Viewer) -> Response:
    return _render(request, "schedules.html", p, schedules=_read(request, ui.schedules))


@router.get("/daemons")
def daemons_page(request: Request, p: Viewer) -> Response:
    return _render(request, "daemons.html", p, daemons=_read(request, ui.daemons))
