"""The trace context that events and runs carry (W3C Trace Context, through OpenTelemetry).

`events.trace_context` and `runs.trace_context` hold a carrier object, the headers a W3C
propagator writes (`{"traceparent": "00-<trace id>-<span id>-01", "tracestate": ...}`), so
that the spans of a run continue the trace of whoever sent its event or started it, in
whatever process and however much later. This module reads and writes those carriers with the
OpenTelemetry API alone (a runtime dependency, a no-op without an SDK): sending code records
the caller's current span, if there is a valid one; NULL otherwise.

With an SDK set up in the sending process (the caller's, or the daemon's: docs/tracing.md),
`app.send` opens a short PRODUCER span `send <event name>` and records that instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

Carrier = dict[str, str]


def current() -> Carrier | None:
    """The caller's current trace context as a carrier, or None when no valid span is
    current (nothing traced: the column stays NULL)."""
    return of_context(None)


def of_context(ctx: otel_context.Context | None) -> Carrier | None:
    """The carrier of `ctx` (None: the current context), or None without a valid span."""
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    carrier: Carrier = {}
    propagate.inject(carrier, context=ctx)
    return carrier or None


def current_json() -> str | None:
    """`current()` as JSON text, as the statements bind it."""
    carrier = current()
    return None if carrier is None else encode(carrier)


def encode(carrier: Mapping[str, str] | None) -> str | None:
    return None if not carrier else json.dumps(dict(carrier), separators=(",", ":"))


def from_headers(headers: Mapping[str, str]) -> str | None:
    """The trace context an HTTP request carries (its `traceparent` and `tracestate`
    headers) as JSON text; else the current one (an instrumented server's span)."""
    extracted = propagate.extract(headers)
    carrier = of_context(extracted)
    return encode(carrier) if carrier is not None else current_json()


def from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The trace context a process was started with (`TRACEPARENT` and `TRACESTATE`, the
    environment carrier of OpenTelemetry's specification, as a CI job or a traced shell
    script sets them) as JSON text; else the current one."""
    env = os.environ if environ is None else environ
    headers = {k.lower(): env[k] for k in ("TRACEPARENT", "TRACESTATE") if env.get(k)}
    return from_headers(headers)


def context_of(carrier: Any) -> otel_context.Context | None:
    """The context a stored carrier names (its span as the parent), or None if it names
    none (NULL, or anything malformed that a plain INSERT put there)."""
    if not isinstance(carrier, dict) or not carrier:
        return None
    clean = {str(k): str(v) for k, v in carrier.items() if isinstance(v, str)}
    extracted = propagate.extract(clean)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def tracing_active() -> bool:
    """Whether this process set up a tracer provider (an SDK's): only then does sending
    open a span of its own."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def sending(name: str) -> Iterator[None]:
    """Around `app.send` (and `send_many`, as `events`): a PRODUCER span `send <name>` if a
    provider is active, current while the events are recorded (so `current_json` names it);
    nothing otherwise."""
    if not tracing_active():
        yield
        return
    tracer = trace.get_tracer("orchestrator")
    attributes = {"messaging.operation.name": "send", "messaging.destination.name": name}
    with tracer.start_as_current_span(
        f"send {name}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    ):
        yield
