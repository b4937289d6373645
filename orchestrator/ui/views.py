"""What the dashboard's pages share: the templates and their filters, who is asking, and
whether they may see payloads.

Templates live in orchestrator/ui/templates (Jinja2, autoescaped). Payloads (event data, step
and run outputs, run state, what an action was given) are shown to operators always and to
viewers only when `log_payloads` is on, as in the API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse

from orchestrator import errors
from orchestrator.db import ui
from orchestrator.ui import deps
from orchestrator.ui.deps import Principal

NAV = [
    ("/runs", "Runs"),
    ("/functions", "Functions"),
    ("/events", "Events"),
    ("/queue", "Queue"),
    ("/schedules", "Schedules"),
    ("/daemons", "Daemons"),
]
COUNT_CAP = ui.COUNT_CAP  # status_counts stops counting there: "10000+"


def viewer_principal(request: Request) -> Principal:
    return deps.page_principal(request)  # a sync dependency: FastAPI runs it on a thread


async def poster_principal(request: Request) -> Principal:
    """A logged-in user whose form carries the session's CSRF token (403 otherwise)."""
    p = await run_in_threadpool(deps.page_principal, request)  # reads the session row
    await deps.check_csrf(request, p)
    return p


def actor_principal(p: Annotated[Principal, Depends(poster_principal)]) -> Principal:
    """An operator posting a form of ours (403 for a viewer)."""
    return deps.require_operator(p)


Viewer = Annotated[Principal, Depends(viewer_principal)]
Poster = Annotated[Principal, Depends(poster_principal)]
Actor = Annotated[Principal, Depends(actor_principal)]


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


MAX_DEPTH = 64  # deeper JSON is shown as compact text: no recursion without bound
OPEN_DEPTH = 3  # objects and arrays this deep start unfolded


def json_tree(value: Any) -> Markup:
    """A JSON value as HTML whose objects and arrays fold (<details>); every piece of text
    goes through `escape`. Built in Python: a recursive Jinja macro took most of a
    1,000-step run's page time."""
    out: list[str] = []
    _json_node(value, 0, out)
    return Markup("".join(out))


def _json_node(value: Any, depth: int, out: list[str]) -> None:
    if isinstance(value, dict | list) and value and depth < MAX_DEPTH:
        what = "key" if isinstance(value, dict) else "item"
        n = len(value)
        brackets = "{}" if isinstance(value, dict) else "[]"
        opened = " open" if depth < OPEN_DEPTH else ""
        out.append(f"<details{opened}><summary>{brackets[0]} {n} {what}{'s' if n != 1 else ''} ")
        out.append(f'{brackets[1]}</summary><div class="kids">')
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for key, item in items:
            out.append("<div>")
            if key is not None:
                out.append(
                    f'<span class="k">{escape(json.dumps(key, ensure_ascii=False))}</span>: '
                )
            _json_node(item, depth + 1, out)
            out.append("</div>")
        out.append("</div></details>")
        return
    out.append(f'<span class="{_json_class(value)}">')
    out.append(str(escape(json.dumps(value, ensure_ascii=False, default=str))))
    out.append("</span>")


def _json_class(value: Any) -> str:
    if isinstance(value, str):
        return "s"
    if isinstance(value, bool):
        return "b"
    if value is None or isinstance(value, dict | list):
        return "z"
    return "n"


_env = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(when=_when, duration=_duration, trigger=_trigger, json_tree=json_tree)
_env.globals.update(nav=NAV, w_match=_wait_match)


def render(
    request: Request, template: str, p: Principal | None, *, status: int = 200, **ctx: Any
) -> HTMLResponse:
    return HTMLResponse(render_html(template, p, request=request, **ctx), status_code=status)


def render_html(template: str, p: Principal | None, **ctx: Any) -> str:
    ctx.setdefault("section", template.removesuffix(".html"))
    ctx.setdefault("page_title", ctx["section"].capitalize())
    return _env.get_template(template).render(principal=p, **ctx)


def shows_payloads(request: Request, p: Principal) -> bool:
    return p.is_operator or deps.settings(request).config.log_payloads


def error_page(request: Request, p: Principal, exc: Exception, back: str) -> HTMLResponse:
    status = 400
    if isinstance(exc, errors.RunNotFoundError | errors.StepNotFoundError):
        status = 404
    elif isinstance(exc, errors.RunStateError):
        status = 409
    elif isinstance(exc, errors.PayloadError | errors.InvalidEventError):
        status = 422
    message = errors.first_line(exc)
    return render(
        request, "error.html", p, status=status, heading="Not done", message=message, back_url=back
    )


def read(request: Request, fn: Callable[[Any], Any]) -> Any:
    return deps.read_db(request).run(fn)


def parse_object(text: str | None) -> tuple[dict[str, Any] | None, str]:
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
