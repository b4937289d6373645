"""The FastAPI application: routers, error shapes and security headers.

Every response carries a Content-Security-Policy that allows only this origin's scripts,
styles and images (no inline script), refuses framing, and keeps forms on this origin; with
X-Frame-Options, X-Content-Type-Options and Referrer-Policy for older browsers. Errors under
/api are JSON `{"error": {"code", "message"}}`; a page that needs a login redirects to it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import errors
from orchestrator import log as logging
from orchestrator.db.database import DatabaseError, is_transient
from orchestrator.ui import api, pages
from orchestrator.ui.auth import LoginFailed, TooManyAttempts
from orchestrator.ui.deps import HttpError, LoginRequired, UiSettings

__all__ = ["UiSettings", "create_app"]

_log = logging.get("ui")
STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
# engine errors by HTTP status; anything else an OrchestratorError is 400
_STATUS: list[tuple[type[errors.OrchestratorError], int]] = [
    (errors.RunNotFoundError, 404),
    (errors.StepNotFoundError, 404),
    (errors.RunStateError, 409),
    (errors.UnknownFunctionError, 409),
    (errors.PayloadTooLargeError, 413),
    (errors.InvalidEventError, 422),
    (errors.PayloadError, 422),
    (LoginFailed, 401),
    (TooManyAttempts, 429),
]


def create_app(settings: UiSettings) -> FastAPI:
    app = FastAPI(
        title="orchestrator",
        summary="Runs, events, functions and the queue of an orchestrator database.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN, which the CSP (rightly) refuses
        redoc_url=None,
    )
    app.state.settings = settings
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    app.include_router(api.router, prefix="/api/v1")
    app.include_router(pages.router)
    _add_error_handlers(app)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)
    return app


class HeadAsGet:
    """Answers HEAD like GET, without the body (uptime checks and proxies send HEAD; the
    routes are declared for GET only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name for name, _ in SECURITY_HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + SECURITY_HEADERS
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # a bug: logged, and answered 500 here with the headers (raised further, the
            # server would answer without them, or drop the client's kept-alive connection)
            _log.exception("request failed", path=scope.get("path"))
            if started:
                raise
            request = Request(scope)
            response = error_response(request, 500, "internal_error", "internal error")
            await response(scope, receive, send_with_headers)


def error_response(request: Request, status: int, code: str, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if request.url.path.startswith("/api/"):
        body = {"error": {"code": code, "message": message}}
        return JSONResponse(body, status_code=status, headers=headers)
    return PlainTextResponse(f"{status}: {message}\n", status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return error_response(request, exc.status, exc.code, exc.message)

    async def login_required(request: Request, exc: Exception) -> Response:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)

    async def engine_error(request: Request, exc: Exception) -> Response:
        status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 400)
        code = getattr(exc, "code", "error")
        return error_response(request, status, code, errors.first_line(exc))

    async def starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error_response(request, 422, "invalid_request", problems)

    async def database_error(request: Request, exc: Exception) -> Response:
        if is_transient(exc):
            return error_response(request, 503, "database_unavailable", "database unavailable")
        return error_response(request, 500, "database_error", "database error")

    app.add_exception_handler(HttpError, http_error)
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(errors.OrchestratorError, engine_error)
    app.add_exception_handler(StarletteHTTPException, starlette_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    for kind in DatabaseError:
        app.add_exception_handler(kind, database_error)
