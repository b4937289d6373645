"""Traces across send -> run -> steps -> invoked run, against the real daemon exporting over
OTLP/HTTP to a receiver the test runs (tests/e2e/otlp.py), and across a kill -9.

The test process traces with the OpenTelemetry SDK (an in-memory exporter, a provider of its
own rather than the global one) and sends the event inside its "request" span; the daemon,
configured by OTEL_* variables alone, must continue that trace in every run and step span.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator import Orchestrator
from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess, finished_run, scalar, sql, stop_all
from tests.e2e.otlp import ReceivedSpan, Receiver

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.traced:app"


class TracedDaemon(DaemonProcess):
    def __init__(self, db_url: str, log_path: Path, otel: dict[str, str]) -> None:
        super().__init__(db_url, APP, log_path)
        self.otel = otel

    def env(self) -> dict[str, str]:
        return super().env() | self.otel


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as made:
        yield made


@pytest.fixture
def daemons(e2e_url: str, tmp_path: Path, receiver: Receiver) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        log = tmp_path / f"daemon-{len(started)}.log"
        daemon = TracedDaemon(e2e_url, log, receiver.env())
        started.append(daemon)
        return daemon.start()

    yield start
    stop_all(started)


@pytest.fixture
def requests() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """The test process's tracer: an SDK provider with an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("tests.request"), exporter
    provider.shutdown()


def send_traced(url: str, tracer: Any, data: dict[str, Any]) -> tuple[str, str, str]:
    """`app.send` inside a "request" span; returns (event id, trace id, span id) in hex."""
    app = Orchestrator(url)
    try:
        with tracer.start_as_current_span("request") as request:
            event_id = app.send("trace/order", data)
    finally:
        app.close()
    ctx = request.get_span_context()
    return event_id, format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def of_run(spans: list[ReceivedSpan], run_id: str) -> list[ReceivedSpan]:
    """The run attempt spans of `run_id`."""
    return [s for s in spans if s.attributes.get("orchestrator.run_id") == run_id]


def steps_of(spans: list[ReceivedSpan], parents: set[str], step: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == f"step {step}" and s.parent_span_id in parents]


def child_run_id(url: str, parent_id: str) -> str:
    return str(
        scalar(url, "SELECT id::text FROM orchestrator.runs WHERE parent_run_id = %s", (parent_id,))
    )


def exported(receiver: Receiver, run_id: str, child_id: str) -> list[ReceivedSpan]:
    """Every span once the completed runs' last spans (the child's write step and the
    parent's final run span) have arrived."""

    def complete() -> list[ReceivedSpan] | None:
        spans = receiver.spans()
        done = [
            s for s in of_run(spans, run_id) if s.attributes["orchestrator.status"] == "completed"
        ]
        child = [
            s for s in of_run(spans, child_id) if s.attributes["orchestrator.status"] == "completed"
        ]
        return spans if done and child and any(s.name == "step write" for s in spans) else None

    found = eventually(complete, timeout=20, what="the runs' spans exported")
    assert found is not None
    return found


@pytest.mark.timeout(120)
def test_tracing__one_trace_from_send_through_steps_retries_and_invoke(
    e2e_url: str, daemons: Any, receiver: Receiver, requests: Any
) -> None:
    tracer, request_spans = requests
    daemon = daemons()
    event_id, trace_id, request_span = send_traced(e2e_url, tracer, {})

    run = finished_run(e2e_url, event_id, timeout=60)
    assert run["status"] == "completed", run
    child_id = child_run_id(e2e_url, run["id"])
    spans = exported(receiver, run["id"], child_id)

    assert [s.name for s in request_spans.get_finished_spans()] == ["request"]
    # the rows carry the context: the event the request's, the run the same, the child the
    # invoking step's
    event_tc = scalar(
        e2e_url, "SELECT trace_context FROM orchestrator.events WHERE id = %s", (event_id,)
    )
    assert event_tc["traceparent"].startswith(f"00-{trace_id}-{request_span}-")
    run_tc = scalar(
        e2e_url, "SELECT trace_context FROM orchestrator.runs WHERE id = %s", (run["id"],)
    )
    assert run_tc == event_tc

    runs = of_run(spans, run["id"])
    assert len(runs) >= 2  # it suspended for the retry back-off and for the invoke
    for span in runs:
        assert span.trace_id == trace_id
        assert span.parent_span_id == request_span  # each attempt continues the request
        assert span.name == "run traced-order"
        assert span.kind == "consumer"
        assert span.attributes["orchestrator.function_id"] == "traced-order"
        assert span.service == "orchestrator-test"
    assert sorted(s.attributes["orchestrator.attempt"] for s in runs) == list(
        range(1, len(runs) + 1)
    )
    run_spans = {s.span_id for s in runs}
    for step in ("reserve", "pack", "notify"):
        (one,) = steps_of(spans, run_spans, step)
        assert one.trace_id == trace_id
        assert one.attributes["orchestrator.attempt"] == 1
    charges = sorted(
        steps_of(spans, run_spans, "charge"), key=lambda s: s.attributes["orchestrator.attempt"]
    )
    assert [c.attributes["orchestrator.attempt"] for c in charges] == [1, 2]
    assert [c.attributes["orchestrator.status"] for c in charges] == ["retrying", "completed"]
    assert charges[0].attributes["error.type"] == "ConnectionError"
    assert "error.type" not in charges[1].attributes
    assert all(c.trace_id == trace_id for c in charges)
    (notify,) = steps_of(spans, run_spans, "notify")
    assert notify.attributes["orchestrator.step.kind"] == "invoke"

    # the child run continues the trace from the invoking step
    (child,) = of_run(spans, child_id)
    assert child.trace_id == trace_id
    assert child.parent_span_id == notify.span_id
    assert child.name == "run traced-child"
    (write,) = steps_of(spans, {child.span_id}, "write")
    assert write.trace_id == trace_id
    # the workers' log lines inside a span carry its ids; the daemon's own lines none
    retry = [e for e in daemon.log_events() if e.get("event") == "step will retry"]
    assert [(e["trace_id"], e["run_id"]) for e in retry] == [(trace_id, run["id"])]
    assert retry[0]["span_id"] in run_spans
    serving = [e for e in daemon.log_events() if e.get("event") == "daemon serving"]
    assert serving and "trace_id" not in serving[0]
    assert daemon.problems() == []
    child_tc = scalar(
        e2e_url, "SELECT trace_context FROM orchestrator.runs WHERE id = %s", (child_id,)
    )
    assert child_tc["traceparent"].startswith(f"00-{trace_id}-{notify.span_id}-")


@pytest.mark.timeout(150)
def test_tracing__kill9_mid_step__resumed_run_joins_the_same_trace(
    e2e_url: str, daemons: Any, receiver: Receiver, requests: Any
) -> None:
    tracer, _ = requests
    first = daemons()
    event_id, trace_id, request_span = send_traced(e2e_url, tracer, {"gate": "pack"})
    run_id = eventually(
        lambda: scalar(
            e2e_url, "SELECT id::text FROM orchestrator.runs WHERE event_id = %s", (event_id,)
        ),
        what="run created",
    )
    packs = "SELECT count(*) FROM effects WHERE run_id = %s AND step = 'pack'"
    eventually(lambda: scalar(e2e_url, packs, (run_id,)) == 1, timeout=30, what="pack blocked")

    first.kill9()
    before = {s.span_id for s in receiver.spans()}
    daemons()
    eventually(lambda: scalar(e2e_url, packs, (run_id,)) == 2, timeout=60, what="pack again")
    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:pack",))
    run = finished_run(e2e_url, event_id, timeout=60)
    assert run["status"] == "completed", run
    child_id = child_run_id(e2e_url, run_id)
    spans = exported(receiver, run_id, child_id)

    resumed = [s for s in of_run(spans, run_id) if s.span_id not in before]
    assert resumed, "no span of the resumed run"
    for span in resumed:
        assert span.trace_id == trace_id
        assert span.parent_span_id == request_span
    # the attempt the kill cut short never ended, so its span was never exported
    attempts = {s.attributes["orchestrator.attempt"] for s in of_run(spans, run_id)}
    assert min(s.attributes["orchestrator.attempt"] for s in resumed) >= 2
    assert 1 not in attempts or len(attempts) > 1
    (pack,) = steps_of(spans, {s.span_id for s in resumed}, "pack")
    assert pack.trace_id == trace_id
    assert pack.attributes["orchestrator.status"] == "completed"
    (child,) = of_run(spans, child_id)
    assert child.trace_id == trace_id


@pytest.mark.timeout(120)
def test_tracing__collector_down__runs_complete_logs_stay_json_and_the_daemon_stops(
    e2e_url: str, tmp_path: Path
) -> None:
    down = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",  # refused
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
    }
    daemon = TracedDaemon(e2e_url, tmp_path / "daemon.log", down).start()
    try:
        event_id = str(
            scalar(
                e2e_url,
                "INSERT INTO orchestrator.events (name) VALUES ('trace/order') RETURNING id",
            )
        )
        run = finished_run(e2e_url, event_id, timeout=60)
        assert run["status"] == "completed", run
        eventually(
            lambda: any(e.get("event") == "tracing problem" for e in daemon.log_events()),
            what="the failed export logged",
        )
        assert daemon.terminate() == 0
    finally:
        stop_all([daemon])
    assert daemon.problems() == []  # every line JSON, nothing at error level
