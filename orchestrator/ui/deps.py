"""Who is asking, and may they: the FastAPI dependencies the API and the pages share.

A request is authenticated by an API token (`Authorization: Bearer ...`, for scripts), or by
the session cookie a login set (for browsers); with `ui_auth = false` (loopback only) every
request is the operator `local`. Roles: a viewer reads, an operator also acts.

CSRF: a state-changing request authenticated by the cookie must carry the session's CSRF
token, in the form field `csrf_token` or the header `X-CSRF-Token`; and a request whose
`Origin` is another site is refused whatever it carries. Token-authenticated calls carry no
cookie a browser could attach on its own, so they are exempt. Without authentication a
JSON API call is exempt too (a page on another site cannot send JSON here without a CORS
preflight, which this server never answers), while a form needs the process's CSRF token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from orchestrator.config import Config
from orchestrator.ui import auth

if TYPE_CHECKING:
    from orchestrator.db.database import Database
    from orchestrator.db.ui_auth import UiSession
    from orchestrator.ui.operations import Operations

Via = Literal["session", "token", "local"]
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class UiSettings:
    """What the app is built from: the configuration and the two database handles (reads
    through the read-only role, actions and authentication through the runtime role)."""

    config: Config
    read_db: Database
    act_db: Database
    limiter: auth.LoginLimiter = field(default_factory=auth.LoginLimiter)
    local_csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: Via
    csrf: str | None
    is_operator: bool


class HttpError(Exception):
    """Answered as `{"error": {"code", "message"}}` under /api, as plain text elsewhere."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class LoginRequired(Exception):
    """A page needs a session: the app answers 303 to /login?next=<this page>."""


def settings(request: Request) -> UiSettings:
    found: UiSettings = request.app.state.settings
    return found


def read_db(request: Request) -> Database:
    return settings(request).read_db


def act_db(request: Request) -> Database:
    return settings(request).act_db


def operations(request: Request) -> Operations:
    from orchestrator.ui.operations import Operations

    cfg = settings(request).config
    return Operations(act_db(request), max_event_bytes=cfg.max_event_bytes)


def _local(request: Request) -> Principal | None:
    s = settings(request)
    if s.config.ui_auth:
        return None
    return Principal("local", "operator", "local", s.local_csrf, True)


def _from_session(request: Request) -> Principal | None:
    cookie = request.cookies.get(auth.COOKIE)
    if not cookie:
        return None
    session = auth.session_of(act_db(request), cookie)
    if session is None:
        return None
    role = session.role
    return Principal(session.user_name, role, "session", session.csrf_token, role == "operator")


def _from_token(request: Request) -> Principal | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    token = auth.token_of(act_db(request), value.strip())
    if token is None:
        raise HttpError(401, "unauthenticated", "the API token is unknown or revoked")
    return Principal(token.name, token.role, "token", None, token.role == "operator")


def api_principal(request: Request) -> Principal:
    """The token's or session's principal; 401 when there is neither."""
    found = _local(request) or _from_token(request) or _from_session(request)
    if found is None:
        raise HttpError(
            401,
            "unauthenticated",
            "log in (POST /api/v1/session) or send an API token as 'Authorization: Bearer ...'",
        )
    return found


def page_principal(request: Request) -> Principal:
    """The session's principal; `LoginRequired` (a redirect to /login) when there is none."""
    found = _local(request) or _from_session(request)
    if found is None:
        raise LoginRequired()
    return found


def require_operator(p: Principal) -> Principal:
    if not p.is_operator:
        raise HttpError(403, "forbidden", f"{p.name} is a viewer; only operators may act")
    return p


def check_origin(request: Request) -> None:
    """Refuse a request sent by a page of another site (whatever it carries)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HttpError(403, "csrf", f"cross-site request from {origin} refused")
    if origin == "null" or request.headers.get("sec-fetch-site") == "cross-site":
        raise HttpError(403, "csrf", "cross-site request refused")


async def check_csrf(request: Request, p: Principal) -> None:
    """403 unless a state-changing request proves it comes from our own pages."""
    if request.method in _SAFE_METHODS or p.via == "token":
        return
    check_origin(request)
    is_json = request.headers.get("content-type", "").startswith("application/json")
    if p.via == "local" and is_json and request.url.path.startswith("/api/"):
        return
    sent = request.headers.get("x-csrf-token") or await _form_field(request, "csrf_token")
    if not sent or not p.csrf or not hmac.compare_digest(sent.encode(), p.csrf.encode()):
        raise HttpError(403, "csrf", "the CSRF token is missing or wrong; reload the page")


async def _form_field(request: Request, name: str) -> str:
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return ""
    value = (await request.form()).get(name)
    return value if isinstance(value, str) else ""


async def api_actor(request: Request) -> Principal:
    """For the API's actions: an authenticated operator whose request passes the CSRF check."""
    p = api_principal(request)
    await check_csrf(request, p)
    return require_operator(p)


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def login(request: Request, name: str, password: str) -> tuple[str, UiSession]:
    """`auth.login` with this app's limiter and session lifetime; pages and API use it."""
    s = settings(request)
    check_origin(request)
    return auth.login(
        s.act_db,
        name,
        password,
        client_address(request),
        ttl_seconds=s.config.ui_session_ttl,
        limiter=s.limiter,
    )


def set_session_cookie(request: Request, response: Response, cookie: str) -> None:
    cfg = settings(request).config
    response.set_cookie(
        auth.COOKIE,
        cookie,
        max_age=int(cfg.ui_session_ttl),
        path="/",
        httponly=True,
        samesite="strict",
        secure=cfg.ui_cookie_secure,
    )


def logout(request: Request, response: Response) -> None:
    cookie = request.cookies.get(auth.COOKIE)
    if cookie:
        auth.logout(act_db(request), cookie)
    response.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict")
