"""Trace context on the rows (events.trace_context, runs.trace_context) and the spans of an
execution, on a real database: what sending records, what the ingest copies, what replays keep,
and what the engine's tracer makes of runs and steps (orchestrator/runtime/tracing.py).

The spans go to an SDK provider of the test's own with an in-memory exporter (never the
process's global provider, which other tests share).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import structlog
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator import AsyncContext, Context, Orchestrator
from orchestrator.db import functions, runs
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.recovery import Recovery
from orchestrator.runtime.ingest import Ingester
from orchestrator.runtime.tracing import OtelTracer
from tests.db.executing import Harness
from tests.db.helpers import execute

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def spans() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("tests"), exporter
    provider.shutdown()


def hex_ids(span: Any) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def names(span_context: Any) -> str:
    """The traceparent prefix (version, trace id, span id) a carrier of this span holds."""
    return f"00-{format(span_context.trace_id, '032x')}-{format(span_context.span_id, '016x')}-"


def event_trace(db: Database, event_id: str) -> Any:
    return execute(db, "SELECT trace_context FROM orchestrator.events WHERE id = :i", i=event_id)[
        0
    ][0]


def run_trace(db: Database, run_id: str) -> Any:
    return execute(
        db, "SELECT trace_context FROM orchestrator.runs WHERE id = CAST(:i AS uuid)", i=run_id
    )[0][0]


# -- what sending records --------------------------------------------------------------------


def test_send__inside_a_span__records_its_context__outside__null(
    db: Database, db_url: str, spans: Any
) -> None:
    tracer, _ = spans
    app = Orchestrator(db_url)
    try:
        with tracer.start_as_current_span("request") as request:
            inside = app.send("t/a", {"n": 1})
            batch = app.send_many([{"name": "t/b"}, {"name": "t/c"}])
        outside = app.send("t/a", {"n": 2})
    finally:
        app.close()
    prefix = names(request.get_span_context())
    for event_id in [inside, *batch]:
        carrier = event_trace(db, event_id)
        assert set(carrier) >= {"traceparent"}
        assert carrier["traceparent"].startswith(prefix)
    assert event_trace(db, outside) is None


def test_send__in_the_callers_transaction__records_the_callers_span(
    db: Database, db_url: str, spans: Any
) -> None:
    tracer, _ = spans
    app = Orchestrator(db_url)
    try:
        with psycopg.connect(db_url) as conn, tracer.start_as_current_span("handler") as span:
            event_id = app.send("t/outbox", {}, conn=conn)
            conn.commit()
    finally:
        app.close()
    assert event_trace(db, event_id)["traceparent"].startswith(names(span.get_span_context()))


def test_start__records_the_callers_span_on_the_run(db: Database, db_url: str, spans: Any) -> None:
    tracer, _ = spans
    app = Orchestrator(db_url)

    @app.function("started")
    def started(ctx: Context) -> None:
        return None

    try:
        with tracer.start_as_current_span("request") as span:
            handle = app.start("started", {"x": 1})
        plain = app.start("started", {"x": 2})
    finally:
        app.close()
    assert run_trace(db, handle.run_id)["traceparent"].startswith(names(span.get_span_context()))
    assert run_trace(db, plain.run_id) is None


# -- what the ingest copies, what replays keep -------------------------------------------------


@pytest.fixture
def ingester(db: Database) -> Iterator[Ingester]:
    with db.transaction() as conn:
        functions.upsert(
            conn, "f", triggers=[{"type": "event", "name": "a"}], options={}, version="1"
        )
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    yield Ingester(db, direct, batch_size=100, max_event_bytes=1024, log=structlog.get_logger())
    direct.close()


def runs_by_event(db: Database) -> dict[str, Any]:
    rows = execute(db, "SELECT event_id, trace_context FROM orchestrator.runs")
    return {str(event_id): carrier for event_id, carrier in rows}


def test_ingest__copies_the_events_trace_context_onto_its_runs(
    db: Database, ingester: Ingester
) -> None:
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, trace_context) VALUES "
        "('traced', 'a', CAST(:c AS jsonb)), ('plain', 'a', NULL), "
        # what a hand-written INSERT may hold: not an object; the run gets nothing from it
        "('odd', 'a', CAST('\"00-junk\"' AS jsonb))",
        c=json.dumps(carrier),
    )
    assert ingester.tick() == 3
    assert runs_by_event(db) == {"traced": carrier, "plain": None, "odd": None}


def test_claim__returns_the_runs_trace_context(db: Database, ingester: Ingester) -> None:
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    execute(
        db,
        "INSERT INTO orchestrator.events (name, trace_context) VALUES ('a', CAST(:c AS jsonb))",
        c=json.dumps(carrier),
    )
    ingester.tick()
    with db.transaction() as conn:
        (claimed,) = runs.claim_due(
            conn, owner=str(uuid.uuid4()), limit=1, lease_seconds=30, function_ids=["f"]
        )
    assert claimed.trace_context == carrier
    assert claimed.origin_run_id is None


def test_replay_and_fork__keep_the_originals_trace_context(
    db: Database, ingester: Ingester
) -> None:
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    execute(
        db,
        "INSERT INTO orchestrator.events (name, trace_context) VALUES ('a', CAST(:c AS jsonb))",
        c=json.dumps(carrier),
    )
    ingester.tick()
    (original,) = [str(r[0]) for r in execute(db, "SELECT id FROM orchestrator.runs")]
    execute(db, "UPDATE orchestrator.runs SET status = 'failed', finished_at = now()")
    recovery = Recovery(db)
    replayed = recovery.replay(original)
    assert run_trace(db, replayed) == carrier
    (origin,) = execute(
        db, "SELECT origin FROM orchestrator.runs WHERE id = CAST(:i AS uuid)", i=replayed
    )[0]
    assert origin == "replay"


# -- the spans of an execution -----------------------------------------------------------------


def finished(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    return by_name


def test_execution__run_and_step_spans__body_inside_its_step_span__sent_events_carry_it(
    harness: Harness, spans: Any
) -> None:
    tracer, exporter = spans
    harness.tracer = OtelTracer(tracer)
    seen: dict[str, Any] = {}

    def body() -> int:
        seen["current"] = trace.get_current_span().get_span_context()
        return 1

    @harness.app.function("traced")
    def traced(ctx: Context) -> int:
        seen["between"] = trace.get_current_span().get_span_context()
        ctx.step.run("work", body)
        ctx.step.send_event("notify", [{"name": "t/sent", "data": {}}])
        ctx.step.sleep("nap", timedelta(hours=1))
        return 2

    run_id = harness.start("traced")
    assert harness.step("traced").status == "suspended"

    got = finished(exporter)
    (run,) = got["run traced"]
    (work,) = got["step work"]
    (notify,) = got["step notify"]
    assert run.kind == trace.SpanKind.CONSUMER
    assert run.parent is None  # the run has no trace context: a new trace
    assert (
        dict(run.attributes or {}).items()
        >= {
            "orchestrator.function_id": "traced",
            "orchestrator.run_id": run_id,
            "orchestrator.attempt": 1,
            "orchestrator.status": "suspended",
        }.items()
    )
    assert [e.name for e in run.events] == ["sleep"]
    assert work.parent is not None and work.parent.span_id == run.context.span_id
    assert (work.attributes or {})["orchestrator.status"] == "completed"
    assert seen["current"].span_id == work.context.span_id  # the body ran inside its span
    assert seen["between"].span_id == run.context.span_id  # the function's code, in the run's
    (sent,) = execute(
        harness.db, "SELECT trace_context FROM orchestrator.events WHERE name = 't/sent'"
    )[0]
    assert sent["traceparent"].startswith(names(notify.context))


def test_execution__continues_the_runs_trace_context__failure_sets_error_type(
    harness: Harness, spans: Any
) -> None:
    tracer, exporter = spans
    harness.tracer = OtelTracer(tracer)

    def broken() -> None:
        raise ValueError("no")

    @harness.app.function("failing", retries=0)
    def failing(ctx: Context) -> None:
        ctx.step.run("broken", broken)

    harness.start("failing")
    with tracer.start_as_current_span("upstream") as upstream:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    execute(
        harness.db,
        "UPDATE orchestrator.runs SET trace_context = CAST(:c AS jsonb)",
        c=json.dumps(carrier),
    )
    assert harness.step("failing").status == "failed"

    got = finished(exporter)
    (run,) = got["run failing"]
    (step,) = got["step broken"]
    assert run.context.trace_id == upstream.get_span_context().trace_id
    assert run.parent is not None and run.parent.span_id == upstream.get_span_context().span_id
    assert (run.attributes or {})["error.type"] == "ValueError"  # the failing step's
    assert (run.attributes or {})["orchestrator.status"] == "failed"
    assert (step.attributes or {})["error.type"] == "ValueError"
    assert (step.attributes or {})["orchestrator.status"] == "failed"
    assert step.status.status_code == trace.StatusCode.ERROR


def test_execution__async_function__step_spans_too(harness: Harness, spans: Any) -> None:
    tracer, exporter = spans
    harness.tracer = OtelTracer(tracer)
    seen: dict[str, Any] = {}

    async def body() -> int:
        seen["current"] = trace.get_current_span().get_span_context()
        return 1

    @harness.app.function("traced-async")
    async def traced_async(ctx: AsyncContext) -> int:
        return int(await ctx.step.run("work", body))

    harness.start("traced-async")
    assert harness.step("traced-async").status == "completed"
    got = finished(exporter)
    (run,) = got["run traced-async"]
    (work,) = got["step work"]
    assert work.parent is not None and work.parent.span_id == run.context.span_id
    assert seen["current"].span_id == work.context.span_id


def test_execution__no_tracer__no_spans_and_no_trace_context(harness: Harness) -> None:
    @harness.app.function("untraced")
    def untraced(ctx: Context) -> None:
        ctx.step.send_event("notify", [{"name": "t/untraced", "data": {}}])

    harness.start("untraced")
    assert harness.step("untraced").status == "completed"
    (sent,) = execute(
        harness.db, "SELECT trace_context FROM orchestrator.events WHERE name = 't/untraced'"
    )[0]
    assert sent is None


def test_execution__parallel_branches__a_span_each_under_the_run(
    harness: Harness, spans: Any
) -> None:
    tracer, exporter = spans
    harness.tracer = OtelTracer(tracer)

    def broken() -> int:
        raise KeyError("gone")

    @harness.app.function("fan", retries=0)
    def fan(ctx: Context) -> list[int]:
        return list(ctx.step.parallel("fan", [("a", lambda: 1, ()), ("b", broken, ())]))

    harness.start("fan")
    assert harness.step("fan").status == "failed"
    got = finished(exporter)
    (run,) = got["run fan"]
    branches = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("step")}
    assert set(branches) == {"step fan[a]", "step fan[b]"}
    for span in branches.values():
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert (span.attributes or {})["orchestrator.step.kind"] == "parallel"
    assert (branches["step fan[a]"].attributes or {})["orchestrator.status"] == "completed"
    assert (branches["step fan[b]"].attributes or {})["error.type"] == "KeyError"
