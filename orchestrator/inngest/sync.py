"""Syncing an Inngest SDK app: what its `POST /fn/register` payload becomes here.

An SDK syncs when its serve URL receives a `PUT` (from `orchestrator apps sync URL`, from
`orchestrator dev -u URL`, or from anyone): it posts its app id, its URL and its functions
to our gateway, which hands the payload to `register`. Each function becomes a row of
`orchestrator.functions` (`options.inngest` marks it remote: the app and the URL to call),
with its configuration mapped to ours (option by option: orchestrator/inngest/options.py):

| Inngest               | here                                                      |
|-----------------------|-----------------------------------------------------------|
| `triggers` `event` + `expression` | an event trigger with `if` (`inngest/function.failed`: ours) |
| `triggers` `cron` (`TZ=Zone ` prefix) | a cron trigger in that zone               |
| `steps.step.retries.attempts` | `retries` (retries after the first attempt)       |
| `concurrency` (limit, key, scope `fn`) | `Concurrency`                             |
| `throttle`, `rateLimit`, `debounce` | `Throttle`, `RateLimit`, `Debounce`         |
| `batchEvents` (maxSize, timeout, key) | `Batch`                                   |
| `priority.run`, `idempotency`, `singleton` | `Priority`, `Idempotency`, `Singleton` |
| `cancel` (event, `if`, timeout) | `cancel_on`                                     |
| `timeouts` (start, finish) | `Timeouts`                                           |

What cannot be honoured is listed in `apps.refused` with the reason. Where running without
it would be unsafe (a concurrency limit shared across functions, a trigger expression or a
key we cannot compile, a duration we cannot read) the function is not registered at all;
where it is harmless (an option we do not know, a batch's `if`) the function is registered
without it. A payload that is not an app at all raises `InvalidAppError` and stores nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from orchestrator import codec
from orchestrator.db import apps
from orchestrator.db import functions as function_rows
from orchestrator.db.database import Database
from orchestrator.errors import (
    AppSyncError,
    InvalidAppError,
    PayloadError,
    RegistrationError,
)
from orchestrator.flow import (
    flow_options,
)
from orchestrator.functions import (
    Backoff,
)
from orchestrator.inngest import options, signing

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
MAX_FUNCTIONS = 500
MAX_URL = 2048
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
DEFAULT_RETRIES = 3  # Inngest's default: 3 retries after the first attempt
MAX_RETRIES = 100
# the parts of a function's config that are its shape, not options
_STRUCTURE = {"id", "name", "triggers", "steps"}


@dataclass(frozen=True)
class Mapped:
    """One SDK function as it is registered here."""

    function_id: str
    triggers: list[dict[str, Any]]
    options: dict[str, Any]
    version: str
    dropped: list[dict[str, Any]] = field(default_factory=list)  # options left out, and why


@dataclass(frozen=True)
class AppSync:
    """A register payload, checked."""

    app_id: str
    url: str
    sdk: str | None
    framework: str | None
    functions: list[dict[str, Any]]


# -- the register endpoint ----------------------------------------------------------------


def register(
    db: Database,
    payload: Any,
    *,
    headers: Mapping[str, str],
    signing_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Store the app an SDK syncs; returns the JSON to answer it (`{"ok": true, "modified":
    ...}`). `signing_keys`: the signing key and its fallback; the SDK must then send one of
    them, hashed, as its bearer token (None: dev mode, no check). Raises `SignatureError`
    (answer 401) or `InvalidAppError` (answer 400 with `{"error": message}`)."""
    if signing_keys is not None:
        check_bearer(headers, signing_keys)
    app = parse_app(payload)
    mapped, refused = map_functions(app)
    modified, said = db.run(lambda conn: _store(conn, app, mapped, refused), retry_for=5.0)
    return {"ok": True, "status": 200, "modified": modified, "refused": said}


def check_bearer(headers: Mapping[str, str], keys: Sequence[str]) -> None:
    """The SDK's `Authorization: Bearer signkey-<env>-<sha256 of the key>` must name one of
    our signing keys (orchestrator/inngest/signing.py)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signing.verify_bearer(lowered.get("authorization"), [k for k in keys if k])


def _store(
    conn: Any, app: AppSync, mapped: list[Mapped], refused_before: list[dict[str, Any]]
) -> tuple[bool, list[dict[str, Any]]]:
    refused = list(refused_before)  # a retried transaction starts again from these
    ids = [m.function_id for m in mapped]
    taken = apps.owners(conn, ids)
    serving = []
    for m in mapped:
        owner = taken.get(m.function_id, app.app_id)
        if owner != app.app_id:
            who = "a Python function" if owner is None else f"app {owner!r}"
            refused.append(options.refusal(m.function_id, "id", f"the id is taken by {who}", False))
            continue
        function_rows.upsert(
            conn, m.function_id, triggers=m.triggers, options=m.options, version=m.version
        )
        serving.append(m.function_id)
    removed, kept = apps.remove_stale(conn, app.app_id, serving)
    for fid in kept:
        refused.append(
            options.refusal(fid, "id", "no longer in the app, kept until its active runs end", True)
        )
    modified = apps.upsert(
        conn,
        app.app_id,
        url=app.url,
        sdk=app.sdk,
        framework=app.framework,
        functions=app.functions,
        refused=refused,
    )
    apps.notify(conn)
    return modified or bool(removed), refused


# -- the payload --------------------------------------------------------------------------


def parse_app(payload: Any) -> AppSync:
    """Check the shape of a register payload; `InvalidAppError` names what is wrong."""
    if not isinstance(payload, dict):
        raise InvalidAppError("the sync payload must be a JSON object")
    try:  # what jsonb cannot hold (NUL, NaN, lone surrogates) is refused before anything
        codec.encode(payload, what="the sync payload", limit=MAX_PAYLOAD_BYTES)
    except PayloadError as exc:
        raise InvalidAppError(str(exc)) from None
    app_id = payload.get("appName") or payload.get("appname")  # JS, Python
    if not isinstance(app_id, str) or not _ID.match(app_id):
        raise InvalidAppError(
            f"appName {app_id!r} is invalid; use 1-128 letters, digits and . _ : / -"
        )
    url = check_url(payload.get("url"), "url")
    found = payload.get("functions")
    if found is None:
        found = []
    if not isinstance(found, list) or len(found) > MAX_FUNCTIONS:
        raise InvalidAppError(f"functions must be a list of at most {MAX_FUNCTIONS} objects")
    for i, fn in enumerate(found):
        if not isinstance(fn, dict) or not isinstance(fn.get("id"), str):
            raise InvalidAppError(f"functions[{i}] must be an object with a string id")
    if len({fn["id"] for fn in found}) != len(found):
        raise InvalidAppError("function ids must be unique within an app")
    return AppSync(
        app_id,
        url,
        _short(payload.get("sdk"), "sdk"),
        _short(payload.get("framework"), "framework"),
        found,
    )


def check_url(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise InvalidAppError(f"{what} must be an http(s) URL of at most {MAX_URL} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidAppError(f"{what} must be an absolute http(s) URL, got {value!r}")
    return value


def _short(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 128:
        raise InvalidAppError(f"{what} must be a string of at most 128 characters")
    return value


def map_functions(app: AppSync) -> tuple[list[Mapped], list[dict[str, Any]]]:
    """Each function mapped, and what was refused (whole functions and single options)."""
    mapped: list[Mapped] = []
    refused: list[dict[str, Any]] = []
    for fn in app.functions:
        try:
            m = map_function(app, fn)
        except options.Refused as exc:
            refused.append(options.refusal(fn["id"], exc.option, exc.reason, False))
            continue
        mapped.append(m)
        refused.extend(m.dropped)
    return mapped, refused


# -- one function -------------------------------------------------------------------------


def map_function(app: AppSync, fn: dict[str, Any]) -> Mapped:
    """Map one function's config, or raise `Refused`."""
    fid = fn["id"]
    if not _ID.match(fid):
        raise options.Refused(
            "id", f"function id {fid!r} is invalid; use 1-128 letters, digits and ._:/-"
        )
    dropped: list[dict[str, Any]] = []
    step_url, retries = _step(app, fn)
    triggers = options.triggers_of(fn.get("triggers"))
    cancels = options.guarded("cancel", lambda: options.cancels_of(fn.get("cancel"), fid, dropped))
    raw_flow = options.flow_of(fn, fid, dropped)
    try:
        flow = flow_options(fid, raw_flow, has_cancel_on=bool(cancels))
    except RegistrationError as exc:
        raise options.Refused("flow control", str(exc)) from None
    for key in sorted(set(fn) - _STRUCTURE - options.MAPPERS.keys() - {"cancel"}):
        dropped.append(options.refusal(fid, key, f"option {key!r} is not supported; ignored", True))
    backoff = Backoff()
    name = fn["name"] if isinstance(fn.get("name"), str) else fid
    recorded: dict[str, Any] = {
        "retries": retries,
        "backoff": {"base": backoff.base, "max": backoff.max},
        "cancel_on": [c.describe() for c in cancels],
        "on_failure": None,
        **flow.describe(),
        "inngest": {"app": app.app_id, "url": step_url, "name": name[:256]},
    }
    described = [t.describe() for t in triggers]
    version = json.dumps([described, recorded], sort_keys=True).encode()
    return Mapped(fid, described, recorded, hashlib.sha256(version).hexdigest()[:16], dropped)


def _step(app: AppSync, fn: dict[str, Any]) -> tuple[str, int]:
    """The URL to call the function at, and its retries."""
    steps = fn.get("steps")
    step = steps.get("step") if isinstance(steps, dict) else None
    if not isinstance(step, dict) and isinstance(steps, dict) and len(steps) == 1:
        step = next(iter(steps.values()))
    runtime = step.get("runtime") if isinstance(step, dict) else None
    url = runtime.get("url") if isinstance(runtime, dict) else None
    try:
        url = check_url(url, "steps.step.runtime.url")
    except InvalidAppError as exc:
        raise options.Refused("steps", str(exc)) from None
    if _origin(url) != _origin(app.url):
        raise options.Refused(
            "steps",
            f"the step URL {url!r} is not on the app's origin {_origin(app.url)!r}; an app "
            "is called only where it serves",
        )
    retries = DEFAULT_RETRIES
    spec = step.get("retries") if isinstance(step, dict) else None
    if isinstance(spec, dict) and spec.get("attempts") is not None:
        retries = spec["attempts"]
        if not isinstance(retries, int) or isinstance(retries, bool):
            raise options.Refused(
                "retries", f"retries.attempts must be a whole number, got {retries!r}"
            )
        if not 0 <= retries <= MAX_RETRIES:
            raise options.Refused(
                "retries", f"retries.attempts must be 0-{MAX_RETRIES}, got {retries}"
            )
    return url, retries


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- our side of a sync -------------------------------------------------------------------


def sync_url(
    url: str,
    *,
    server_kind: str = "dev",
    signing_key: str | None = None,
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Ask the app serving at `url` to sync with us: a `PUT` to its serve URL, upon which its
    SDK posts its functions to our register endpoint (the SDK must point at us:
    INNGEST_BASE_URL, or INNGEST_DEV=1 for the default address). Returns the SDK's answer
    (`{"message": ..., "modified": ...}`); `AppSyncError` when it cannot be reached or says
    the sync failed."""
    try:
        target = check_url(url, "the app URL")
    except InvalidAppError as exc:
        raise AppSyncError(str(exc)) from None
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "deployId"]
    target = urlunsplit(parts._replace(query=urlencode(query)))
    headers = {"X-Inngest-Server-Kind": server_kind, "Content-Type": "application/json"}
    if signing_key:  # an SDK in cloud mode may ask for a signed sync
        headers["X-Inngest-Signature"] = signing.sign(b"", signing_key)
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            response = client.put(target, headers=headers, content=b"")
    except httpx.HTTPError as exc:
        raise AppSyncError(f"could not reach the app at {url}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = {"message": response.text[:500]}
    if response.status_code >= 300:
        said = body.get("message") if isinstance(body, dict) else body
        raise AppSyncError(f"the app at {url} answered {response.status_code} to the sync: {said}")
    return body if isinstance(body, dict) else {"message": str(body)}
