"""Calls to Inngest SDK apps: one HTTP POST of a call request, and its answer, checked.

The request body is canonical JSON (RFC 8785), signed with the signing key unless in dev
mode (`X-Inngest-Signature`); `X-Inngest-Server-Kind` says which kind of server we are. The
answer is read up to `max_response_bytes`, within `timeout` seconds for the whole call, and
its signature is checked over its exact bytes when we sign. A 200 or 206 answer is returned;
any other becomes the error the engine's retry policy judges: `X-Inngest-No-Retry: true` or
a 4xx fails without retry, `Retry-After` (seconds, an RFC 3339 date or an HTTP date) asks for
a retry then, a 5xx is retried by the function's policy, a 401 means the app refused our
signature.
"""

from __future__ import annotations

import asyncio
import json
import math
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from orchestrator.errors import RetryAfterError, SdkResponseError
from orchestrator.inngest import signing, timestr

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """How calls to SDK apps are made (from the config: `inngest_call_timeout`,
    `inngest_max_response_bytes`, `inngest_signing_key` and its fallback, `inngest_dev`)."""

    timeout: float = DEFAULT_TIMEOUT
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    signing_keys: tuple[str, ...] = ()  # the first signs; each may verify an answer
    dev: bool = True
    transport: httpx.AsyncBaseTransport | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, cfg: Any) -> Settings:
        keys = (
            getattr(cfg, "inngest_signing_key", ""),
            getattr(cfg, "inngest_signing_key_fallback", ""),
        )
        return cls(
            timeout=float(getattr(cfg, "inngest_call_timeout", DEFAULT_TIMEOUT)),
            max_response_bytes=int(
                getattr(cfg, "inngest_max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
            ),
            signing_keys=tuple(k for k in keys if k),
            dev=bool(getattr(cfg, "inngest_dev", False)),
        )

    @property
    def signs(self) -> bool:
        return bool(self.signing_keys) and not self.dev


class SdkError(Exception):
    """An error the SDK app reported (a step's or the function's), or its answer to a call
    that failed. `code` is the SDK's error name; `non_retriable` says no retry may help."""

    def __init__(
        self, error: Any, *, non_retriable: bool = False, status: int | None = None
    ) -> None:
        error = error if isinstance(error, dict) else {"message": str(error)}
        self.code = str(error.get("name") or "Error")[:200]
        self.error_message = str(error.get("message") or "")[:4000]
        self.non_retriable = non_retriable
        self.status = status
        said = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{self.error_message}{said}")  # the SDK's name is `code`


class SdkRetryAfter(RetryAfterError):
    """The SDK asked for a retry after `delay` seconds (`Retry-After`)."""


@dataclass(frozen=True)
class Reply:
    """A 200 (the function's output) or 206 (ops) answer."""

    status: int
    headers: httpx.Headers
    body: Any


async def call(url: str, request: dict[str, Any], s: Settings) -> Reply:
    """POST a call request to an app (signed unless in dev mode) and return its answer,
    checked: `SdkError`/`SdkRetryAfter` for a failed call, `SignatureError` for an answer
    whose signature is wrong, `SdkResponseError` for one that is not the protocol."""
    body = signing.canonical_json(request)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "orchestrator",
        "X-Inngest-Server-Kind": "dev" if s.dev else "cloud",
    }
    if s.signs:
        headers["X-Inngest-Signature"] = signing.sign(body, s.signing_keys[0])
    try:
        async with asyncio.timeout(s.timeout):
            status, answer_headers, raw = await _post(url, body, headers, s)
    except (TimeoutError, httpx.TimeoutException):
        raise SdkError(
            {"name": "SdkTimeout", "message": f"no answer from {url} within {s.timeout:g}s"}
        ) from None
    except httpx.HTTPError as exc:
        raise SdkError({"name": "SdkUnreachable", "message": f"{url}: {exc}"}) from None
    return judge(status, answer_headers, raw, s)


# One client (its connection pool) per event loop and settings: a worker's runs share its
# loop's connections to the apps; a loop that is gone takes its clients with it.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Settings, httpx.AsyncClient]]
_CLIENTS = weakref.WeakKeyDictionary()


def _client(s: Settings) -> httpx.AsyncClient:
    clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(s)
    if client is None:
        client = clients[s] = httpx.AsyncClient(timeout=s.timeout, transport=s.transport)
    return client


async def _post(
    url: str, body: bytes, headers: dict[str, str], s: Settings
) -> tuple[int, httpx.Headers, bytes]:
    client = _client(s)
    async with client.stream("POST", url, content=body, headers=headers) as response:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > s.max_response_bytes:
                raise SdkResponseError(
                    f"the app's answer from {url} is over {s.max_response_bytes} bytes "
                    "(inngest_max_response_bytes); return less from the step, or raise the limit"
                )
            chunks.append(chunk)
        return response.status_code, response.headers, b"".join(chunks)


def judge(status: int, headers: httpx.Headers, raw: bytes, s: Settings) -> Reply:
    """The answer, checked: its signature, its status, its body."""
    if status == 401:
        raise SdkError(
            {
                "name": "Unauthorized",
                "message": "the app refused our signature; set its "
                "INNGEST_SIGNING_KEY to this server's inngest_signing_key",
            },
            non_retriable=True,
            status=status,
        )
    if s.signs:
        signing.verify(raw, headers.get("x-inngest-signature"), s.signing_keys)
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = {"name": "InvalidJSON", "message": raw[:500].decode("utf-8", "replace")}
        if status in (200, 206):
            raise SdkResponseError(
                f"the app answered {status} with a body that is not JSON"
            ) from None
    if status in (200, 206):
        return Reply(status, headers, body)
    retry_in = retry_after(headers)
    if retry_in is not None and not no_retry(headers):
        raise SdkRetryAfter(retry_in, str(SdkError(body, status=status)))
    if no_retry(headers) or 400 <= status < 500:
        raise SdkError(body, non_retriable=True, status=status)
    raise SdkError(body, status=status)


def no_retry(headers: httpx.Headers) -> bool:
    return str(headers.get("x-inngest-no-retry", "")).strip().lower() == "true"


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from `Retry-After` (seconds, an RFC 3339 date, or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = instant(value, "Retry-After")
        except SdkResponseError:
            try:
                moment = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def instant(value: Any, what: str) -> datetime:
    try:
        return timestr.instant(value, what=what)
    except ValueError as exc:
        raise SdkResponseError(str(exc)) from None


def with_step(url: str, step_id: str) -> str:
    """The function's URL with `stepId` set (`step`: no step in particular)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "stepId"]
    query.append(("stepId", step_id))
    return urlunsplit(parts._replace(query=urlencode(query)))
