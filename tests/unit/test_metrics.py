"""The worker-side tally, the daemon's series, and health."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import __version__
from orchestrator.runtime.health import Health
from orchestrator.runtime.metrics import STEP_BUCKETS, DaemonMetrics, StepTally, TallyDelta

pytestmark = pytest.mark.timeout(30)


# -- the worker's tally --------------------------------------------------------------------


def test_tally__counts_steps_retries_and_terminal_outcomes() -> None:
    tally = StepTally()
    assert tally.take() is None
    tally.step_ran("f", 0.003)
    tally.step_ran("f", 0.2)
    tally.steps_retrying("f", 2)
    tally.run_finished("f", "completed")
    tally.run_finished("f", "suspended")  # not an end
    tally.run_finished("f", "lease_lost")
    delta = tally.take()
    assert delta is not None
    counts, total = delta.steps["f"]
    assert counts[STEP_BUCKETS.index(0.005)] == 1
    assert counts[STEP_BUCKETS.index(0.25)] == 1
    assert sum(counts) == 2
    assert total == pytest.approx(0.203)
    assert delta.retries == {"f": 2}
    assert delta.finished == {("f", "completed"): 1}
    assert tally.take() is None  # taken


def test_tally__calls_on_stale_once_counts_waited_long_enough() -> None:
    now = [100.0]
    stale: list[TallyDelta | None] = []
    tally = StepTally(flush_every=5.0, clock=lambda: now[0])
    tally.on_stale = lambda: stale.append(tally.take())
    tally.step_ran("f", 0.1)
    now[0] += 4.9
    tally.step_ran("f", 0.1)
    assert stale == []
    now[0] += 0.2
    tally.step_ran("f", 0.1)
    assert len(stale) == 1 and stale[0] is not None
    assert sum(stale[0].steps["f"][0]) == 3


# -- the daemon's series -------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    function_id: str
    status: str


def _daemon_metrics(leader: bool = True) -> DaemonMetrics:
    health = Health(tick_within=10, heartbeat_within=5)
    return DaemonMetrics(
        ["a", "b"],
        app_version="abc",
        health=health,
        leader=lambda: leader,
        executing=lambda: 3,
        threads=9,
    )


def _value(metrics: DaemonMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_daemon_metrics__every_series_exists_at_zero_for_each_function() -> None:
    metrics = _daemon_metrics()
    for name, labels, expected in [
        ("orchestrator_build_info", {"version": __version__, "app_version": "abc"}, 1),
        ("orchestrator_daemon_up", {}, 1),
        ("orchestrator_daemon_leader", {}, 1),
        ("orchestrator_runs_executing", {}, 3),
        ("orchestrator_worker_threads", {}, 9),
        ("orchestrator_runs_started_total", {"function": "a"}, 0),
        ("orchestrator_runs_finished_total", {"function": "b", "status": "cancelled"}, 0),
        ("orchestrator_step_retries_total", {"function": "b"}, 0),
        ("orchestrator_step_duration_seconds_count", {"function": "a"}, 0),
        ("orchestrator_step_duration_seconds_bucket", {"function": "a", "le": "+Inf"}, 0),
        ("orchestrator_step_threads_abandoned", {"function": "b"}, 0),
        ("orchestrator_runs_rescued_total", {"reason": "worker_crash"}, 0),
        ("orchestrator_events_ingested_total", {}, 0),
        ("orchestrator_due_probe_timestamp_seconds", {}, 0),
    ]:
        assert _value(metrics, name, **labels) == expected, (name, labels)


def test_daemon_metrics__merges_worker_deltas_and_counts_ended_runs() -> None:
    metrics = _daemon_metrics()
    tally = StepTally()
    for _ in range(3):
        tally.step_ran("a", 0.01)
    tally.steps_retrying("a", 1)
    tally.run_finished("a", "failed")
    delta = tally.take()
    assert delta is not None
    metrics.merge(delta)
    metrics.rescued("expired_lease", [_Run("b", "queued"), _Run("b", "failed")])
    metrics.runs_ended([_Run("b", "cancelled"), _Run("b", "running")])
    metrics.events_ingested(4)
    metrics.run_started("a")
    assert _value(metrics, "orchestrator_step_duration_seconds_count", function="a") == 3
    assert _value(metrics, "orchestrator_step_retries_total", function="a") == 1
    assert _value(metrics, "orchestrator_runs_finished_total", function="a", status="failed") == 1
    assert _value(metrics, "orchestrator_runs_finished_total", function="b", status="failed") == 1
    finished = _value(metrics, "orchestrator_runs_finished_total", function="b", status="cancelled")
    assert finished == 1
    assert _value(metrics, "orchestrator_runs_rescued_total", reason="expired_lease") == 2
    assert _value(metrics, "orchestrator_events_ingested_total") == 4
    assert _value(metrics, "orchestrator_runs_started_total", function="a") == 1


def test_daemon_metrics__step_durations_keep_the_workers_buckets_and_sums() -> None:
    metrics = _daemon_metrics()
    for seconds in (0.005, 0.2, 400.0):  # a bound itself counts in its bucket (le)
        tally = StepTally()  # two workers' reports, merged
        tally.step_ran("a", seconds)
        tally.step_ran("a", seconds)
        delta = tally.take()
        assert delta is not None
        metrics.merge(delta)

    def bucket(le: str) -> float | None:
        return _value(metrics, "orchestrator_step_duration_seconds_bucket", function="a", le=le)

    assert bucket("0.005") == 2
    assert bucket("0.1") == 2
    assert bucket("0.25") == 4
    assert bucket("300.0") == 4
    assert bucket("+Inf") == 6
    assert _value(metrics, "orchestrator_step_duration_seconds_count", function="a") == 6
    total = _value(metrics, "orchestrator_step_duration_seconds_sum", function="a")
    assert total == pytest.approx(800.41)
    assert _value(metrics, "orchestrator_step_duration_seconds_count", function="b") == 0
    with pytest.raises(ValueError, match="expected 15 bucket counts, got 1"):
        metrics.step_seconds.merge("a", [1], 1.0)


def test_daemon_metrics__abandoned_threads_never_go_below_zero() -> None:
    metrics = _daemon_metrics()
    tally = StepTally()
    tally.abandoned_thread_ended("a")  # a report that outran the one it follows
    delta = tally.take()
    assert delta is not None
    metrics.merge(delta)
    assert _value(metrics, "orchestrator_step_threads_abandoned", function="a") == 0


def test_daemon_metrics__backlog_replaces_the_due_series() -> None:
    @dataclass(frozen=True)
    class Due:
        function_id: str
        depth: int
        lag_seconds: float

    metrics = _daemon_metrics()
    metrics.set_backlog([Due("a", 10000, 12.5), Due("b", 0, 0.0)], 1700000000.0)
    assert _value(metrics, "orchestrator_due_runs", function="a") == 10000
    assert _value(metrics, "orchestrator_due_lag_seconds", function="a") == 12.5
    assert _value(metrics, "orchestrator_due_runs", function="b") == 0
    assert _value(metrics, "orchestrator_due_probe_timestamp_seconds") == 1700000000
    metrics.set_backlog([Due("b", 2, 1.0)], 1700000005.0)
    assert _value(metrics, "orchestrator_due_runs", function="a") is None  # dropped out
    assert _value(metrics, "orchestrator_due_lag_seconds", function="a") is None
    assert _value(metrics, "orchestrator_due_runs", function="b") == 2


def test_daemon_metrics__concurrent_reports_and_scrapes_lose_nothing() -> None:
    metrics = _daemon_metrics()

    def report() -> None:
        for _ in range(500):
            tally = StepTally()
            tally.step_ran("a", 0.01)
            tally.run_finished("a", "completed")
            delta = tally.take()
            assert delta is not None
            metrics.merge(delta)
            metrics.run_started("a")

    scraped: list[int] = []

    def scrape() -> None:
        for _ in range(20):
            body, _ = metrics.exposition("")
            scraped.append(len(list(text_string_to_metric_families(body.decode()))))

    threads = [threading.Thread(target=report) for _ in range(4)]
    threads.append(threading.Thread(target=scrape))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert _value(metrics, "orchestrator_step_duration_seconds_count", function="a") == 2000
    assert _value(metrics, "orchestrator_step_duration_seconds_sum", function="a") == (
        pytest.approx(20.0)
    )
    finished = _value(metrics, "orchestrator_runs_finished_total", function="a", status="completed")
    assert finished == 2000
    assert _value(metrics, "orchestrator_runs_started_total", function="a") == 2000
    assert scraped == [21] * 20  # every scrape whole: the 21 documented families


def test_daemon_metrics__registries_of_two_daemons_are_apart() -> None:
    one, two = _daemon_metrics(), _daemon_metrics()
    one.run_started("a")
    assert _value(one, "orchestrator_runs_started_total", function="a") == 1
    assert _value(two, "orchestrator_runs_started_total", function="a") == 0


# -- health --------------------------------------------------------------------------------


def test_health__live_while_the_loop_turns_ready_while_the_database_answers() -> None:
    now = [1000.0]
    health = Health(tick_within=10, heartbeat_within=5, clock=lambda: now[0])
    assert health.live()[0] is False  # starting: the loop has not run
    assert health.ready() == (False, "starting: not taking work")
    health.ticked()
    health.serving()
    assert health.live()[0] is True
    assert health.ready()[0] is False  # no heartbeat yet
    health.heartbeat_ok()
    assert health.ready()[0] is True
    now[0] += 6
    health.ticked()
    health.database_error("connection refused")
    ready, why = health.ready()
    assert ready is False
    assert "6.0 s ago" in why and "connection refused" in why
    assert health.live()[0] is True
    health.heartbeat_ok()
    assert health.ready()[0] is True
    now[0] += 11  # the loop stopped turning
    assert health.live() == (False, "the scheduler loop last turned 11.0 s ago (limit 10 s)")
    assert health.ready()[0] is False
    health.ticked()
    health.stopping()
    assert health.live()[0] is True
    assert health.ready() == (False, "stopping: not taking work")


def test_health__limits_follow_the_intervals() -> None:
    assert Health.for_intervals(poll_interval=1, heartbeat_interval=1).tick_within == 15
    assert Health.for_intervals(poll_interval=10, heartbeat_interval=1).tick_within == 30
    assert Health.for_intervals(poll_interval=1, heartbeat_interval=1).heartbeat_within == 5
    assert Health.for_intervals(poll_interval=1, heartbeat_interval=4).heartbeat_within == 12
