"""OpenTelemetry traces of the daemon's runs: set-up from the `OTEL_*` environment, and the
spans of each run attempt and step attempt (the engine's `Tracer`, engine/tracer.py).

Off by default. A process sets up a tracer provider only when the environment asks for an
exporter, and the SDK (the `otel` extra) is installed:

- `OTEL_SDK_DISABLED=true` turns it off, whatever else is set;
- `OTEL_TRACES_EXPORTER` set and not `none` turns it on (`otlp`, `console`, or both,
  comma-separated); or, with it unset, an OTLP endpoint
  (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`) means `otlp`.

Everything else is the SDK's own reading of the standard variables: `OTEL_SERVICE_NAME`
(default here: `orchestrator`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
`OTEL_BSP_*` (the batch processor's delay and sizes), the exporter's endpoint, headers and
timeout. The OTLP exporter speaks HTTP/protobuf (the only protocol the extra installs).

Worker processes are forked: each sets up its own provider after the fork (runtime/worker.py)
and flushes it when it stops; a `kill -9` loses only the spans not exported yet. A run's spans
are children of `runs.trace_context`, so a run resumed after a crash joins the same trace.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from orchestrator import log as orchestrator_log
from orchestrator import tracecontext
from orchestrator.engine.tracer import NOTRACE, RunSpan, StepSpan, Traced, Tracer

TRACER_NAME = "orchestrator"
EXTRA_HINT = "pip install 'orchestrator[otel]'"


def exporters(env: dict[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for (empty: tracing is off)."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER")
    if named is None or not named.strip():
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in named.split(",") if n.strip()]
    return [n for n in names if n != "none"]


class Setup:
    """This process's tracer provider, if the environment asked for one."""

    def __init__(self, provider: Any = None, problem: str | None = None) -> None:
        self.provider = provider
        self.problem = problem  # why tracing is off although asked for (to log)

    @property
    def tracer(self) -> Tracer:
        if self.provider is None:
            return NOTRACE
        return OtelTracer(self.provider.get_tracer(TRACER_NAME))

    def shutdown(self) -> None:
        """Export what is left and stop the exporter (a worker's, a daemon's stop)."""
        if self.provider is not None:
            self.provider.shutdown()


def set_up(*, install: bool = True) -> Setup:
    """Set up a tracer provider as the environment asks (see the module docstring); with
    `install`, it becomes the process's global one (user code's own spans join it)."""
    wanted = exporters()
    if not wanted:
        return Setup()
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return Setup(problem=f"OTEL_* asks for traces but the SDK is missing: {EXTRA_HINT}")
    provider = TracerProvider(resource=_resource(Resource))
    problems = []
    for name in wanted:
        exporter, problem = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if problem is not None:
            problems.append(problem)
    if install:
        trace.set_tracer_provider(provider)
    _log_through_structlog()
    return Setup(provider, "; ".join(problems) or None)


class _Forward(logging.Handler):
    """The SDK's own complaints (an export that failed, a full queue) as log lines of ours,
    one JSON object per line like every other (orchestrator/log.py); warnings, since losing
    spans loses no work."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().splitlines()
        detail = orchestrator_log.scrub_secrets(lines[0] if lines else "")
        orchestrator_log.get("tracing").warning("tracing problem", detail=detail)


def _log_through_structlog() -> None:
    sdk = logging.getLogger("opentelemetry")
    if not any(isinstance(h, _Forward) for h in sdk.handlers):
        sdk.addHandler(_Forward(logging.WARNING))
        sdk.propagate = False


def _resource(resource: Any) -> Any:
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "orchestrator"}
    return resource.create(attributes)


def _exporter(name: str) -> tuple[Any, str | None]:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), None
    if name != "otlp":
        return None, f"unknown OTEL_TRACES_EXPORTER {name!r} ignored; use otlp or console"
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        return None, f"the OTLP exporter is missing: {EXTRA_HINT}"
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    problem = None
    if protocol != "http/protobuf":
        problem = f"OTLP protocol {protocol!r} is not installed; exporting with http/protobuf"
    return OTLPSpanExporter(), problem


class OtelTracer:
    """The engine's tracer on an OpenTelemetry tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def run(self, task: Traced) -> RunSpan | None:
        parent = tracecontext.context_of(task.trace_context)
        attributes: dict[str, Any] = {
            "orchestrator.function_id": task.function_id,
            "orchestrator.run_id": task.run_id,
            "orchestrator.attempt": task.attempts,
        }
        links = []
        if task.origin in ("replay", "fork") and task.origin_run_id is not None:
            said = {f"orchestrator.{task.origin}_of": task.origin_run_id}
            attributes |= said
            if parent is not None:  # the original's context: it kept it
                links.append(trace.Link(trace.get_current_span(parent).get_span_context(), said))
        span = self._tracer.start_span(
            f"run {task.function_id}",
            context=parent or otel_context.Context(),  # never the worker's current context
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        return OtelRun(self._tracer, span)


class _Current:
    """Making a span current, and back."""

    span: trace.Span

    def enter(self) -> object:
        return otel_context.attach(trace.set_span_in_context(self.span))

    def leave(self, token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]  # attach's token, opaque here


class OtelRun(_Current):
    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self.span = span
        self._context = trace.set_span_in_context(span)

    def step(self, step_id: str, kind: str, attempt: int) -> StepSpan:
        span = self._tracer.start_span(
            f"step {step_id}",
            context=self._context,
            attributes={
                "orchestrator.step": step_id,
                "orchestrator.step.kind": kind,
                "orchestrator.attempt": attempt,
            },
        )
        return OtelStep(span)

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        self.span.add_event(name, attributes)

    def failed(self, error_type: str) -> None:
        self.span.set_attribute("error.type", error_type)

    def end(self, status: str) -> None:
        _close(self.span, status)


class OtelStep(_Current):
    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def carrier(self) -> str | None:
        return tracecontext.encode(tracecontext.of_context(trace.set_span_in_context(self.span)))

    def end(self, status: str, error_type: str | None = None) -> None:
        if error_type is not None:
            self.span.set_attribute("error.type", error_type)
        _close(self.span, status)


def _close(span: trace.Span, status: str) -> None:
    span.set_attribute("orchestrator.status", status)
    if status in {"failed", "retrying"}:
        span.set_status(trace.StatusCode.ERROR)
    span.end()
