"""Tracing without a database: when the environment turns it on, how carriers are read and
written, the trace ids on log lines, and `app.send`'s PRODUCER span (in a subprocess, since it
needs the process's global tracer provider)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from orchestrator import log as logging
from orchestrator import tracecontext
from orchestrator.runtime import tracing
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(30)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        # an endpoint for metrics or logs alone, or an exporter named none, asks for nothing
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "TRUE"}, []),
    ],
)
def test_exporters__the_environment_decides(env: dict[str, str], wanted: list[str]) -> None:
    assert tracing.exporters(env) == wanted


def test_set_up__off_without_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    made = tracing.set_up(install=False)
    assert made.provider is None and made.problem is None
    assert made.tracer is tracing.NOTRACE


def test_set_up__an_unknown_exporter_is_named_and_the_others_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,zipkin")
    made = tracing.set_up(install=False)
    try:
        assert made.provider is not None
        assert made.problem is not None and "zipkin" in made.problem
        assert isinstance(made.tracer, tracing.OtelTracer)
    finally:
        made.shutdown()


def test_context_of__a_stored_carrier_or_nothing_for_junk() -> None:
    ctx = tracecontext.context_of({"traceparent": TRACEPARENT})
    assert ctx is not None
    span = trace.get_current_span(ctx).get_span_context()
    assert format(span.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    for junk in (None, "00-x", [], {}, {"traceparent": "garbage"}, {"traceparent": 7}):
        assert tracecontext.context_of(junk) is None


def test_current__none_without_a_span__the_spans_carrier_inside_one() -> None:
    assert tracecontext.current() is None
    assert tracecontext.current_json() is None
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("s") as span:
        carrier = tracecontext.current()
    ctx = span.get_span_context()
    assert carrier is not None
    assert carrier["traceparent"].startswith(
        f"00-{format(ctx.trace_id, '032x')}-{format(ctx.span_id, '016x')}-"
    )


def test_from_headers__the_requests_traceparent__else_nothing() -> None:
    carried = tracecontext.from_headers({"traceparent": TRACEPARENT})
    assert carried is not None and json.loads(carried)["traceparent"] == TRACEPARENT
    assert tracecontext.from_headers({}) is None
    assert tracecontext.from_headers({"traceparent": "nonsense"}) is None


def _line(**bound: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "x", **bound}
    return dict(logging.add_trace_ids(None, "info", event))


def test_log_lines__carry_trace_and_span_ids_inside_a_span_only() -> None:
    assert _line() == {"event": "x"}
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("s") as span:
        inside = _line()
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")


def test_log_lines__configured_logger_writes_the_ids(capsys: pytest.CaptureFixture[str]) -> None:
    logging.configure("json", "info")
    try:
        tracer = TracerProvider().get_tracer("tests")
        with tracer.start_as_current_span("s") as span:
            logging.get("test").info("inside")
        logging.get("test").info("outside")
    finally:
        structlog.reset_defaults()
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines()[-2:])
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "trace_id" not in outside and "span_id" not in outside


_PRODUCER = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from orchestrator import tracecontext

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with trace.get_tracer("app").start_as_current_span("request"):
    with tracecontext.sending("user/created"):
        carrier = tracecontext.current()
spans = {s.name: s for s in exporter.get_finished_spans()}
send, request = spans["send user/created"], spans["request"]
print(json.dumps({
    "kind": send.kind.name,
    "parent": send.parent.span_id == request.context.span_id,
    "carried": carrier["traceparent"].split("-")[2] == format(send.context.span_id, "016x"),
}))
"""


def test_sending__a_producer_span_when_a_provider_is_set_up__none_otherwise() -> None:
    with tracecontext.sending("x"):  # this process has no provider: nothing is made
        assert tracecontext.current() is None
    out = subprocess.run(
        [sys.executable, "-c", _PRODUCER],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"kind": "PRODUCER", "parent": True, "carried": True}


def test_set_up__without_the_sdk__off_with_a_problem_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    made = tracing.set_up(install=False)
    assert made.provider is None
    assert made.problem is not None and "orchestrator[otel]" in made.problem
    assert made.tracer is tracing.NOTRACE


def test_run_span__a_replay_links_to_the_originals_context_and_names_it() -> None:
    from datetime import UTC, datetime

    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestrator.engine.executor import Task

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.OtelTracer(provider.get_tracer("tests"))
    now = datetime.now(UTC)
    replay = Task(
        "new-run",
        "f",
        "token",
        [],
        1,
        now,
        now,
        origin="replay",
        origin_run_id="old-run",
        trace_context={"traceparent": TRACEPARENT},
    )
    run = tracer.run(replay)
    assert run is not None
    run.end("completed")
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["orchestrator.replay_of"] == "old-run"
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    (link,) = span.links
    assert format(link.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert dict(link.attributes or {}) == {"orchestrator.replay_of": "old-run"}


def test_from_environment__traceparent_of_the_process__else_nothing() -> None:
    carried = tracecontext.from_environment({"TRACEPARENT": TRACEPARENT, "TRACESTATE": "k=v"})
    assert carried is not None
    assert json.loads(carried) == {"traceparent": TRACEPARENT, "tracestate": "k=v"}
    assert tracecontext.from_environment({}) is None
    assert tracecontext.from_environment({"TRACEPARENT": "junk"}) is None
