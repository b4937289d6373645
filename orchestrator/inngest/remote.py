"""SDK-served functions as the engine runs them: read from their rows, built once per version.

A daemon with `inngest = true` serves every function of every synced app (`load_all`, at
start and on each refresh); its worker processes build the driver of a run's function when
they are handed one (`get`), and read its row again at most every `ttl` seconds, so that a
re-sync reaches them without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.db import apps
from orchestrator.db.database import Database
from orchestrator.db.functions import FunctionRow
from orchestrator.flow import OPTION_KINDS, Concurrency, FlowOptions, FlowPolicy
from orchestrator.functions import (
    Backoff,
    CancelOn,
    CronTrigger,
    EventTrigger,
    FunctionDef,
    Trigger,
)
from orchestrator.inngest.calls import Settings
from orchestrator.inngest.driver import Driver

DEFAULT_TTL = 2.0


def function_def(row: FunctionRow, settings: Settings) -> FunctionDef:
    """The definition the engine runs an SDK-served function by, from its row."""
    o = row.options
    backoff = o.get("backoff") or {}
    return FunctionDef(
        row.id,
        Driver(row.id, str(o["inngest"]["url"]), settings),
        tuple(_trigger(t) for t in row.triggers),
        int(o.get("retries", 3)),
        Backoff(float(backoff.get("base", 1.0)), float(backoff.get("max", 600.0))),
        tuple(
            CancelOn(c["event"], c.get("match"), c.get("if"), c.get("timeout"))
            for c in o.get("cancel_on") or ()
        ),
        None,
        flow_of(o),
    )


def _trigger(t: dict[str, Any]) -> Trigger:
    if t.get("type") == "cron":
        return CronTrigger(
            t["expr"], t.get("tz"), t.get("overlap", "allow"), t.get("catch_up", "latest")
        )
    return EventTrigger(t["name"], t.get("if"))


def flow_of(options: dict[str, Any]) -> FlowOptions:
    """The flow options a row's `options` recorded (FlowOptions.describe, read back)."""
    built = {k: kind(**options[k]) for k, kind in OPTION_KINDS.items() if options.get(k)}
    concurrency = tuple(Concurrency(**c) for c in options.get("concurrency") or ())
    return FlowOptions(concurrency, **built)


def is_remote(options: dict[str, Any]) -> bool:
    return isinstance(options.get("inngest"), dict)


class RemoteFunctions:
    """The SDK-served functions of a database, cached by id and version."""

    def __init__(self, db: Database, settings: Settings, *, ttl: float = DEFAULT_TTL) -> None:
        self.db = db
        self.settings = settings
        self.ttl = ttl
        self._lock = threading.Lock()
        self._built: dict[str, tuple[str, FunctionDef]] = {}  # id → (version, definition)
        self._read_at: dict[str, float] = {}

    def load_all(self) -> dict[str, FunctionDef]:
        """Every SDK-served function now registered."""
        rows = self.db.run(apps.remote_functions, retry_for=5.0)
        now = time.monotonic()
        with self._lock:
            found = {row.id: self._build(row, now) for row in rows}
            for gone in set(self._built) - set(found):
                del self._built[gone]
        return found

    def get(self, function_id: str) -> FunctionDef | None:
        """The function's definition (None: no SDK app serves it), read again after `ttl`."""
        with self._lock:
            cached = self._built.get(function_id)
            fresh = time.monotonic() - self._read_at.get(function_id, -self.ttl) < self.ttl
            if cached is not None and fresh:
                return cached[1]
        row = self.db.run(lambda conn: apps.remote_function(conn, function_id), retry_for=5.0)
        with self._lock:
            if row is None:
                self._built.pop(function_id, None)
                return None
            return self._build(row, time.monotonic())

    def cached(self, function_id: str) -> FunctionDef | None:
        """The definition last built, without reading the database."""
        with self._lock:
            cached = self._built.get(function_id)
        return None if cached is None else cached[1]

    def _build(self, row: FunctionRow, now: float) -> FunctionDef:
        self._read_at[row.id] = now
        cached = self._built.get(row.id)
        if cached is not None and cached[0] == row.version:
            return cached[1]
        fdef = function_def(row, self.settings)
        self._built[row.id] = (row.version, fdef)
        return fdef


class Policies(Mapping[str, FlowPolicy]):
    """The flow policies of the app's own functions, then of the SDK-served ones: what an
    invoke applies to the child run it starts (its concurrency keys, priority, ...)."""

    def __init__(self, local: Mapping[str, FlowPolicy], remote: RemoteFunctions) -> None:
        self.local = local
        self.remote = remote

    def __getitem__(self, function_id: str) -> FlowPolicy:
        if function_id in self.local:
            return self.local[function_id]
        fdef = self.remote.get(function_id)
        if fdef is None:
            raise KeyError(function_id)
        return fdef.policy()

    def __iter__(self) -> Iterator[str]:
        return iter(self.local)

    def __len__(self) -> int:
        return len(self.local)
