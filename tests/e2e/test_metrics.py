"""/metrics, /healthz and /readyz of the real daemon, with a workload whose counts are known."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

import orchestrator
from tests.conftest import eventually
from tests.e2e.apps.metered import SLOW_STEP
from tests.e2e.harness import count, run_of, scalar, send, sql
from tests.e2e.scrape import Samples, families, fetch, listening, scrape, value
from tests.metrics_docs import NONE, differences, documented

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.metered:app"
ANY_PORT = "127.0.0.1:0"
# events sent, and what each run does: (function, events, step executions, step retries)
WORKLOAD = [
    ("ok", 5, 2, 0),  # two steps each, both succeed
    ("flaky", 2, 2, 1),  # one step: fails once, retried, succeeds
    ("fails", 3, 3, 2),  # one step, retries=2: three executions, then the run fails
]


def send_many(url: str, name: str, n: int) -> None:
    sql(
        url,
        "INSERT INTO orchestrator.events (name, data) SELECT %s, '{}' FROM generate_series(1, %s)",
        (name, n),
    )


def scrape_until(
    base: str, expected: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> Samples:
    """Scrape until every expected series has its value (counts reach the daemon moments
    after the runs end in the database); fail with the differences otherwise."""
    last: dict[str, Any] = {}

    def matches() -> Samples | None:
        samples = scrape(base)
        last["diff"] = {k: (samples.get(k), v) for k, v in expected.items() if samples.get(k) != v}
        return samples if not last["diff"] else None

    try:
        return eventually(matches, timeout=20, interval=0.1, what="the expected counts")
    except BaseException:
        print("differences (got, expected):", last.get("diff"))
        raise


def series(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def test_metrics__counts_of_a_known_workload_are_exact(e2e_url, daemon_factory):
    daemon = daemon_factory(APP, http_address=ANY_PORT)
    base = listening(daemon)
    for fn, n, _, _ in WORKLOAD:
        send_many(e2e_url, f"metered/{fn}", n)
    total = sum(n for _, n, _, _ in WORKLOAD)
    eventually(
        lambda: (
            count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE finished_at IS NOT NULL")
            == total
        ),
        timeout=30,
        what="the workload finished",
    )

    # each failed run also records the engine's own event orchestrator/function.failed
    failed = sum(n for fn, n, _, _ in WORKLOAD if fn == "fails")
    expected = {series("orchestrator_events_ingested_total"): total + failed}
    for fn, n, executions, retries in WORKLOAD:
        function = f"metered-{fn}"
        status = "failed" if fn == "fails" else "completed"
        expected |= {
            series("orchestrator_runs_started_total", function=function): n,
            series("orchestrator_runs_finished_total", function=function, status=status): n,
            series("orchestrator_step_retries_total", function=function): n * retries,
            series("orchestrator_step_duration_seconds_count", function=function): n * executions,
        }
        other = {"completed", "failed", "cancelled"} - {status}
        for s in other:
            expected[series("orchestrator_runs_finished_total", function=function, status=s)] = 0
    for reason in ("expired_lease", "dead_daemon", "worker_crash", "abandoned"):
        expected[series("orchestrator_runs_rescued_total", reason=reason)] = 0
    samples = scrape_until(base, expected)

    # the histogram agrees with the steps table: a step's attempt counts its executions
    executed = dict(
        sql(
            e2e_url,
            "SELECT r.function_id, sum(s.attempt)::int FROM orchestrator.steps s "
            "JOIN orchestrator.runs r ON r.id = s.run_id WHERE s.kind = 'run' GROUP BY 1",
        )
    )
    for fn, n, executions, _ in WORKLOAD:
        function = f"metered-{fn}"
        assert executed[function] == n * executions
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (name, labels), v in samples.items()
            if name == "orchestrator_step_duration_seconds_bucket"
            and dict(labels)["function"] == function
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), "buckets are cumulative"
        assert buckets[-1] == (float("inf"), n * executions)
    ok_sum = value(samples, "orchestrator_step_duration_seconds_sum", function="metered-ok")
    assert ok_sum is not None and ok_sum >= 5 * SLOW_STEP
    slow_enough = value(
        samples, "orchestrator_step_duration_seconds_bucket", function="metered-ok", le="0.05"
    )
    assert slow_enough is not None and slow_enough <= 5  # the slow steps are above 50 ms

    # the daemon exports the documented families, in both formats
    assert differences(families(base), documented()) == NONE
    assert differences(families(base, openmetrics=True), documented()) == NONE

    assert value(samples, "orchestrator_daemon_up") == 1
    assert value(samples, "orchestrator_worker_threads") == 2 * 4 + 1
    assert (
        "orchestrator_build_info",
        (("app_version", _version(e2e_url)), ("version", orchestrator.__version__)),
    ) in samples
    beat = value(samples, "orchestrator_daemon_last_heartbeat_timestamp_seconds")
    tick = value(samples, "orchestrator_daemon_last_tick_timestamp_seconds")
    assert beat is not None and tick is not None
    assert abs(time.time() - beat) < 10 and abs(time.time() - tick) < 10
    eventually(
        lambda: value(scrape(base), "orchestrator_daemon_leader") == 1, what="the only daemon leads"
    )
    eventually(
        lambda: value(scrape(base), "orchestrator_runs_executing") == 0, what="nothing executing"
    )

    # a sleeping run cancelled by SQL ends on the daemon, not in a worker
    run_id = run_of(e2e_url, send(e2e_url, "metered/sleeper"))
    eventually(
        lambda: (
            scalar(e2e_url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,))
            == "sleeping"
        ),
        what="the sleeper sleeping",
    )
    sql(
        e2e_url, "UPDATE orchestrator.runs SET cancel_requested_at = now() WHERE id = %s", (run_id,)
    )
    scrape_until(
        base,
        {
            series(
                "orchestrator_runs_finished_total", function="metered-sleeper", status="cancelled"
            ): 1,
            series("orchestrator_runs_started_total", function="metered-sleeper"): 1,
            series("orchestrator_step_duration_seconds_count", function="metered-sleeper"): 0,
        },
    )

    # a worker process dying inside a step body: one rescue, then the run completes
    send(e2e_url, "metered/crash")
    scrape_until(
        base,
        {
            series("orchestrator_runs_rescued_total", reason="worker_crash"): 1,
            series(
                "orchestrator_runs_finished_total", function="metered-crash", status="completed"
            ): 1,
            series("orchestrator_runs_started_total", function="metered-crash"): 1,
            series("orchestrator_events_ingested_total"): total + failed + 2,
        },
    )


def _version(url: str) -> str:
    return str(scalar(url, "SELECT version FROM orchestrator.daemons LIMIT 1"))


def test_metrics__due_queue_depth_and_lag_come_from_the_background_probe(e2e_url, daemon_factory):
    daemon = daemon_factory(APP, http_address=ANY_PORT)
    base = listening(daemon)
    # ready once the loop has run its first pass, heartbeat included
    eventually(lambda: fetch(base + "/readyz")[0] == 200, what="/readyz 200")
    status, body = fetch(base + "/healthz")
    assert status == 200, body
    assert body.startswith("ok: serving")
    assert fetch(base + "/nothing-here")[0] == 404

    # one run at a time (concurrency 1), held at a gate: the other four wait, due
    send_many(e2e_url, "metered/gated", 5)

    def four_due() -> Samples | None:
        samples = scrape(base)
        return (
            samples
            if value(samples, "orchestrator_due_runs", function="metered-gated") == 4
            else None
        )

    held = eventually(four_due, timeout=20, interval=0.2, what="four runs due in the queue")
    lag = value(held, "orchestrator_due_lag_seconds", function="metered-gated")
    assert lag is not None and lag > 0
    assert value(held, "orchestrator_due_runs", function="metered-ok") == 0
    probed = value(held, "orchestrator_due_probe_timestamp_seconds")
    assert probed is not None and abs(time.time() - probed) < 10

    sql(e2e_url, "INSERT INTO gates (name) VALUES ('metered')")
    eventually(
        lambda: value(scrape(base), "orchestrator_due_runs", function="metered-gated") == 0,
        timeout=20,
        interval=0.2,
        what="the queue drained",
    )
    # the queue is empty once the last run is claimed; it completes a moment later
    eventually(
        lambda: (
            count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status = 'completed'") == 5
        ),
        timeout=20,
        what="the five runs completed",
    )


def test_metrics__a_taken_port_stops_the_daemon_with_a_clear_error(e2e_url, daemon_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = daemon_factory(APP, start=False, http_address=f"127.0.0.1:{port}")
        daemon.start(wait=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == 1
    assert f"error: http_address 127.0.0.1:{port}: cannot listen" in daemon.logs()
    assert count(e2e_url, "SELECT count(*) FROM orchestrator.daemons") == 0  # before anything
