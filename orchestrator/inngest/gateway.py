"""The Inngest-facing HTTP server: what an app written with an official Inngest SDK calls.

Served with `inngest = true` on `inngest_address` (default 127.0.0.1:8288, where the SDKs
look for a dev server), on a thread of the daemon.

- `POST /e/{event_key}`: one event or an array, in Inngest's format (`name`, `data`, `id`,
  `ts` in ms since the epoch, `user`, `v`). Answered `{"ids": [...], "status": 200}`, the ids
  in the order sent, as the SDKs expect. The events go in through the insert of `app.send`
  (orchestrator/client.py), so they trigger Python functions as well as SDK functions. An
  event's `id` is its id here, so a repeated id is a duplicate that creates nothing; without
  one, the id is derived from the SDK's `x-inngest-event-id-seed` header and the event's
  position, so that an SDK retrying a send creates nothing twice. `user` and `v` are kept in
  `events.extra`. An unknown or revoked key is 401 and writes nothing; a body that is not
  JSON, an event without a name, data that is not an object, … are 400, and an oversize body
  413, all writing nothing (a batch is all or nothing), answered
  `{"ids": [], "status": <code>, "error": <message>, "code": <error code>}`.
- `POST /fn/register`: an SDK syncing its app; handed to `orchestrator.inngest.sync`. Outside
  dev mode the SDK must send `Authorization: Bearer <hashed signing key>` of one of our keys.
- `GET /dev`: the probe the JS SDK makes to find a dev server (dev mode only).

Dev mode (`inngest_dev = true`) is for a developer's own machine: any event key is accepted
and nothing is signed, so it is refused unless `inngest_address` is a loopback address.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.codec import encode
from orchestrator.config import Config, parse_http_address
from orchestrator.errors import (
    ConfigError,
    EventKeyError,
    InvalidEventError,
    OrchestratorError,
    PayloadTooLargeError,
    SignatureError,
)
from orchestrator.http_thread import ThreadedServer, is_loopback

if TYPE_CHECKING:
    from orchestrator.db import events
    from orchestrator.db.database import Database

POOL_SIZE = 4
RESERVED_PREFIXES = ("orchestrator/", "inngest/")  # the engine's and Inngest's own events
_MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True)
class GatewaySettings:
    config: Config
    db: Database

    @property
    def dev(self) -> bool:
        return self.config.inngest_dev

    @property
    def signing_keys(self) -> list[str]:
        cfg = self.config
        return [k for k in (cfg.inngest_signing_key, cfg.inngest_signing_key_fallback) if k]


def create_app(settings: GatewaySettings) -> Starlette:
    async def send_events(request: Request) -> JSONResponse:
        return await _send_events(settings, request)

    async def register(request: Request) -> JSONResponse:
        return await _register(settings, request)

    async def dev_info(request: Request) -> JSONResponse:
        return _dev_info(settings)

    return Starlette(
        routes=[
            Route("/e/{event_key:path}", send_events, methods=["POST"]),
            Route("/fn/register", register, methods=["POST"]),
            Route("/dev", dev_info, methods=["GET"]),
        ],
    )


# -- POST /e/{event_key} --------------------------------------------------------------------


async def _send_events(settings: GatewaySettings, request: Request) -> JSONResponse:
    from orchestrator.db import event_keys

    key = None if settings.dev else request.path_params["event_key"]
    try:
        body = await _read_body(request, settings.config.inngest_max_event_bytes)
        parsed: Parsed | OrchestratorError = await run_in_threadpool(
            parse_events, body, request.headers, settings.config.max_event_bytes
        )
    except OrchestratorError as exc:
        parsed = exc  # reported after the key is checked: a stranger learns nothing

    def record(conn: Any) -> list[str]:
        if isinstance(parsed, OrchestratorError):
            raise parsed
        return parsed.record(conn)

    try:
        ids = await run_in_threadpool(
            settings.db.run, lambda conn: event_keys.run_with(conn, key, record)
        )
    except EventKeyError as exc:
        return _event_error(401, exc)
    except OrchestratorError as exc:
        return _event_error(_status_of(exc), exc)
    return JSONResponse({"ids": ids, "status": 200})


@dataclass(frozen=True)
class Parsed:
    """The checked events of one request, and the extra fields (`user`, `v`) of those that
    have some, by id (JSON object text)."""

    batch: list[events.NewEvent]
    extra: dict[str, str]

    def record(self, conn: Any) -> list[str]:
        """Insert the events in `conn`'s transaction, as `app.send_many` does; their ids."""
        from orchestrator.db import outbox

        result: list[str] = outbox.run(self._op(), conn)
        return result

    def _op(self) -> Any:
        from orchestrator import client
        from orchestrator.db import events

        created: set[str] = set()
        for part in client.batches(self.batch):
            created |= yield from events.insert_op(part)
        yield from events.set_extra_op({i: x for i, x in self.extra.items() if i in created})
        return [e.id for e in self.batch]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is larger than inngest_max_event_bytes ({limit} bytes); send "
        "fewer or smaller events per request"
    )


def parse_events(body: bytes, headers: Mapping[str, str], max_data_bytes: int) -> Parsed:
    """The events of a `POST /e/` body, checked (InvalidEventError or PayloadError naming the
    first bad one), and the extra fields (`user`, `v`) of those that have some, by id."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidEventError(f"the body is not JSON: {exc}") from None
    items = decoded if isinstance(decoded, list) else [decoded]
    ids = _SeededIds(headers.get("x-inngest-event-id-seed"))
    batch: list[events.NewEvent] = []
    extra: dict[str, str] = {}
    for index, item in enumerate(items):
        try:
            event, fields = _event(item, ids.next(), max_data_bytes)
        except OrchestratorError as exc:
            where = f"events[{index}]" if isinstance(decoded, list) else "the event"
            raise type(exc)(f"{where}: {exc}") from None
        batch.append(event)
        if fields and event.id not in extra:
            extra[event.id] = encode(fields, what=f"event '{event.name}' user and v")
    return Parsed(batch, extra)


def _event(
    item: Any, default_id: str, max_data_bytes: int
) -> tuple[events.NewEvent, dict[str, Any]]:
    from orchestrator import client

    if not isinstance(item, dict):
        raise InvalidEventError(f"an event is a JSON object with a 'name', got {_kind(item)}")
    name = item.get("name")
    if isinstance(name, str) and name.startswith(RESERVED_PREFIXES):
        raise InvalidEventError(
            f"event name {name!r} is reserved ('{name.split('/')[0]}/' events are the engine's own)"
        )
    data = item.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidEventError(f"event data must be a JSON object, got {_kind(data)}")
    event_id = item.get("id") or default_id
    event = client.new_event(name, data, event_id, _ts(item.get("ts")), max_data_bytes)
    return event, _fields(item)


def _fields(item: dict[str, Any]) -> dict[str, Any]:
    """`user` (an object) and `v` (a string), the fields of Inngest's format with no column."""
    fields: dict[str, Any] = {}
    user, version = item.get("user"), item.get("v")
    if user is not None:
        if not isinstance(user, dict):
            raise InvalidEventError(f"event user must be a JSON object, got {_kind(user)}")
        fields["user"] = user
    if version is not None:
        if not isinstance(version, str) or len(version) > 256:
            raise InvalidEventError("event v must be a string of at most 256 characters")
        fields["v"] = version
    return fields


def _ts(raw: Any) -> datetime | None:
    """An Inngest `ts` (milliseconds since the epoch; 0 or absent: now)."""
    if raw is None or raw == 0:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise InvalidEventError(f"event ts must be milliseconds since the epoch, got {raw!r}")
    if not 0 < raw <= _MAX_TS_MS:
        raise InvalidEventError(f"event ts {raw!r} is out of range (milliseconds since 1970)")
    return datetime.fromtimestamp(raw / 1000, UTC)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


class _SeededIds:
    """Event ids for events sent without one: ULIDs made from the SDK's
    `x-inngest-event-id-seed` (`<ms>,<base64 of 10 random bytes>`) plus the event's index, so
    that the same request retried yields the same ids; random ULIDs without a usable seed."""

    def __init__(self, seed: str | None) -> None:
        parsed = _parse_seed(seed)
        self.millis = parsed[0] if parsed else int(time.time() * 1000)
        self.entropy: int | None = parsed[1] if parsed else None
        self.index = 0

    def next(self) -> str:
        entropy: int | None = self.entropy
        value = int.from_bytes(os.urandom(10)) if entropy is None else entropy + self.index
        self.index += 1
        return _ulid(self.millis, value % (1 << 80))


def _parse_seed(seed: str | None) -> tuple[int, int] | None:
    millis, _, encoded = (seed or "").partition(",")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        return None
    if not millis.isascii() or not millis.isdigit() or len(raw) != 10 or int(millis) >= 1 << 48:
        return None
    return int(millis), int.from_bytes(raw)


def _ulid(millis: int, entropy: int) -> str:
    value = (millis << 80) | entropy
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _status_of(exc: OrchestratorError) -> int:
    return 413 if isinstance(exc, PayloadTooLargeError) else 400


def _event_error(status: int, exc: OrchestratorError) -> JSONResponse:
    body = {"ids": [], "status": status, "error": str(exc), "code": exc.code}
    return JSONResponse(body, status_code=status)


# -- POST /fn/register, GET /dev ------------------------------------------------------------


async def _register(settings: GatewaySettings, request: Request) -> JSONResponse:
    if not settings.dev:
        from orchestrator.inngest.signing import verify_bearer

        try:
            verify_bearer(request.headers.get("authorization"), settings.signing_keys)
        except SignatureError as exc:
            return _error(401, exc)
    try:
        from orchestrator.inngest import sync  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        message = "syncing an app (POST /fn/register) is not available in this build"
        return JSONResponse({"error": message, "code": "not_implemented"}, status_code=501)
    payload = await _json_object(request, settings.config.inngest_max_event_bytes)
    if isinstance(payload, JSONResponse):
        return payload
    try:
        answer = await run_in_threadpool(
            sync.register, settings.db, payload, headers=dict(request.headers)
        )
    except OrchestratorError as exc:
        return _error(400, exc)
    return JSONResponse(answer)


async def _json_object(request: Request, limit: int) -> dict[str, Any] | JSONResponse:
    try:
        payload = json.loads(await _read_body(request, limit))
    except OrchestratorError as exc:
        return _error(413, exc)
    except (ValueError, RecursionError) as exc:
        return _error(400, InvalidEventError(f"the body is not JSON: {exc}"))
    if not isinstance(payload, dict):
        return _error(400, InvalidEventError("the body must be a JSON object"))
    return payload


def _error(status: int, exc: OrchestratorError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "code": exc.code}, status_code=status)


def _dev_info(settings: GatewaySettings) -> JSONResponse:
    if not settings.dev:
        return JSONResponse(
            {"error": "not a dev server (inngest_dev = false)", "code": "not_found"},
            status_code=404,
        )
    from orchestrator import __version__

    return JSONResponse({"version": __version__, "mode": "dev", "server": "orchestrator"})


# -- serving --------------------------------------------------------------------------------


def check_config(config: Config, host: str) -> None:
    """ConfigError when dev mode would listen beyond loopback, or signed mode has no key."""
    if config.inngest_dev and not is_loopback(host):
        raise ConfigError(
            "inngest_dev = true (no signatures, any event key) is allowed only on a loopback "
            f"address, and inngest_address listens on {host or 'every interface'}; listen on "
            "127.0.0.1, or turn inngest_dev off and set inngest_signing_key"
        )
    if not config.inngest_dev and not config.inngest_signing_key:
        raise ConfigError(
            "inngest = true needs inngest_signing_key (or INNGEST_SIGNING_KEY), the key the "
            "SDK apps are given as INNGEST_SIGNING_KEY; or inngest_dev = true on a developer's "
            "machine"
        )


def start_in_thread(config: Config, *, database_url: str = "") -> ThreadedServer:
    """The daemon's gateway, on `inngest_address`, on a thread; `stop()` ends it."""
    from orchestrator.db.database import Database

    host, port = parse_http_address(config.inngest_address, "inngest_address")
    check_config(config, host)
    db = Database(
        database_url or config.database_url,
        pool_size=POOL_SIZE,
        application_name="orchestrator-inngest",
    )
    try:
        server = ThreadedServer(
            create_app(GatewaySettings(config, db)),
            host,
            port,
            where="inngest_address",
            name="orchestrator-inngest",
            on_close=db.dispose,
        )
    except BaseException:
        db.dispose()
        raise
    return server.start()


def new_seed() -> str:
    """An `x-inngest-event-id-seed` value as the SDKs make it (for tests and tools)."""
    return f"{int(time.time() * 1000)},{base64.b64encode(secrets.token_bytes(10)).decode()}"
