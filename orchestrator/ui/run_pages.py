"""The runs list (filters, counts, keyset pages, a fragment for live refresh), a run's page
(its step timeline, steps, payloads, lineage, waits, audit) and the actions on a run
(cancel, replay, resume, fork), each confirmed before it is done."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from orchestrator import errors
from orchestrator.db import functions, ui
from orchestrator.db.replays import FINISHED, RESUMABLE
from orchestrator.statuses import RUN_STATUSES
from orchestrator.ui import charts, deps
from orchestrator.ui.deps import Principal
from orchestrator.ui.views import (
    COUNT_CAP,
    Actor,
    Viewer,
    error_page,
    parse_object,
    read,
    render,
    shows_payloads,
)

router = APIRouter(include_in_schema=False)
DONE = {
    "cancel": "Cancel requested.",
    "replay": "Replayed: this is the new run.",
    "resume": "Resumed: the run is queued again.",
    "fork": "Forked: this is the new run.",
}

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


# what the runs page keeps in its links (its form's fields, and the page size)
_FILTER_KEYS = (
    "function_id",
    "status",
    "since",
    "until",
    "event_name",
    "id_prefix",
    "data_path",
    "limit",
)


def _run_filter(q: dict[str, str]) -> ui.RunFilter:
    if q["limit"] and not q["limit"].isdigit():
        raise errors.UsageError(f"limit {q['limit']!r} is not a number of runs")
    return ui.RunFilter(
        function_id=q["function_id"] or None,
        status=q["status"] or None,
        since=_moment(q["since"], "since"),
        until=_moment(q["until"], "until"),
        event_name=q["event_name"] or None,
        id_prefix=q["id_prefix"] or None,
        data_path=q["data_path"] or None,
        before=q["before"] or None,
        limit=int(q["limit"] or 50),
    )


@router.get("/runs")
def runs_page(request: Request, p: Viewer) -> Response:
    q = {k: request.query_params.get(k, "").strip() for k in (*_FILTER_KEYS, "before")}
    fragment = request.query_params.get("fragment") == "1"
    error: str | None = None
    try:
        f = _run_filter(q)
        page, counts = read(request, lambda c: ui.runs_with_counts(c, f))
    except errors.OrchestratorError as exc:  # an invalid filter (date, JSON path, cursor)
        error = errors.first_line(exc)
        f = ui.RunFilter(function_id=q["function_id"] or None, status=q["status"] or None)
        page, counts = ui.RunPage([], None), {}
    ctx = _runs_context(request, q, f, page, counts)
    if fragment:
        return render(request, "_runs_table.html", p, **ctx)
    ids = [fn.id for fn in read(request, functions.list_all)]
    flash = {"kind": "error", "text": error} if error else None
    return render(
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
    d = read(request, lambda c: ui.run_detail(c, run_id))
    if d is None:
        return render(
            request,
            "error.html",
            p,
            status=404,
            heading="No such run",
            message=f"no run {run_id!r} (it may have been deleted by retention)",
            back_url="/runs",
        )
    done = request.query_params.get("done", "")
    ctx = run_context(d, show_payloads=shows_payloads(request, p))
    ctx["flash"] = {"kind": "ok", "text": DONE[done]} if done in DONE else None
    ctx.update(extra)
    return render(request, "run.html", p, status=status, **ctx)


def run_context(d: ui.RunDetail, *, show_payloads: bool) -> dict[str, Any]:
    """What run.html is rendered with, from the run's detail (bench/ui.py times it)."""
    run = d.run
    run_ms = None
    if run.started_at and run.finished_at:
        run_ms = (run.finished_at - run.started_at).total_seconds() * 1000
    fork_data = ""
    if len(run.events) == 1:
        fork_data = json.dumps(run.events[0].get("data"), indent=2, ensure_ascii=False)
    return {
        "d": d,
        "run_ms": run_ms,
        "gantt": charts.gantt(d.timeline),
        "finished": FINISHED,
        "resumable": RESUMABLE,
        "show_payloads": show_payloads,
        "fork_data": fork_data,
        "fork_step": None,
        "fork_open": False,
        "flash": None,
        "section": "runs",
        "page_title": f"Run {run.id[:8]}",
    }


# -- actions on a run ----------------------------------------------------------------------------


def _confirm(
    request: Request, p: Principal, action: str, question: str, fields: dict[str, str]
) -> HTMLResponse:
    """The page that asks before acting, for browsers without the script's dialog."""
    run_id = request.path_params["run_id"]
    pairs = [("csrf_token", p.csrf or ""), *((k, v) for k, v in fields.items())]
    return render(
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
        return error_page(request, p, exc, f"/runs/{run_id}")
    return _after(done.id, "cancel")


@router.post("/runs/{run_id}/replay")
def replay(request: Request, p: Actor, run_id: str, confirmed: Confirmed = "") -> Response:
    if confirmed != "yes":
        return _confirm(request, p, "replay", f"Start a new run from the event(s) of {run_id}?", {})
    try:
        new_id = deps.operations(request).replay(p, run_id)
    except errors.OrchestratorError as exc:
        return error_page(request, p, exc, f"/runs/{run_id}")
    return _after(new_id, "replay")


@router.post("/runs/{run_id}/resume")
def resume(request: Request, p: Actor, run_id: str, confirmed: Confirmed = "") -> Response:
    if confirmed != "yes":
        return _confirm(request, p, "resume", f"Requeue run {run_id}, keeping its steps?", {})
    try:
        full = deps.operations(request).resume(p, run_id)
    except errors.OrchestratorError as exc:
        return error_page(request, p, exc, f"/runs/{run_id}")
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
    edited, problem = parse_object(data)
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
        return error_page(request, p, exc, f"/runs/{run_id}")
    return _after(new_id, "fork")
