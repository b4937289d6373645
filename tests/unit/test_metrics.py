"""The Prometheus registry and text format, the worker-side tally, and the daemon's series."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import pytest

from orchestrator import __version__
from orchestrator.runtime.health import Health
from orchestrator.runtime.metrics import STEP_BUCKETS, DaemonMetrics, StepTally, TallyDelta
from orchestrator.runtime.prometheus import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

pytestmark = pytest.mark.timeout(30)


# -- exposition format ---------------------------------------------------------------------


def test_render__counter_with_help_type_and_sorted_series() -> None:
    registry = Registry()
    jobs = registry.counter("jobs_total", "Jobs done.", ("queue",))
    jobs.inc("b", by=2)
    jobs.inc("a")
    assert registry.render() == (
        "# HELP jobs_total Jobs done.\n"
        "# TYPE jobs_total counter\n"
        'jobs_total{queue="a"} 1\n'
        'jobs_total{queue="b"} 2\n'
    )


def test_render__label_values_are_escaped() -> None:
    registry = Registry()
    counter = registry.counter("odd_total", "Odd labels.", ("name",))
    counter.inc('back\\slash "quoted"\nnewline')
    assert 'odd_total{name="back\\\\slash \\"quoted\\"\\nnewline"} 1\n' in registry.render()


def test_render__help_text_is_escaped() -> None:
    registry = Registry()
    registry.gauge("g", "line one\nline two with a \\", read=lambda: 1)
    assert "# HELP g line one\\nline two with a \\\\\n" in registry.render()


def test_render__numbers_in_go_float_syntax() -> None:
    registry = Registry()
    gauge = registry.gauge("values", "Values.", ("kind",))
    for kind, value in [
        ("int", 3.0),
        ("frac", 0.25),
        ("tiny", 1e-7),
        ("huge", 1e20),
        ("inf", math.inf),
        ("ninf", -math.inf),
        ("nan", math.nan),
    ]:
        gauge.set(value, kind)
    lines = dict(line.rsplit(" ", 1) for line in registry.render().splitlines()[2:])
    assert lines == {
        'values{kind="frac"}': "0.25",
        'values{kind="huge"}': "1e+20",
        'values{kind="inf"}': "+Inf",
        'values{kind="int"}': "3",
        'values{kind="nan"}': "NaN",
        'values{kind="ninf"}': "-Inf",
        'values{kind="tiny"}': "1e-07",
    }
    for text in lines.values():
        float(text.replace("Inf", "inf"))  # every value parses as a float


def test_render__histogram_buckets_cumulative_with_inf_sum_and_count() -> None:
    registry = Registry()
    hist = registry.histogram("took_seconds", "Durations.", ("fn",), buckets=(0.1, 1))
    for value in (0.05, 0.1, 0.5, 2.0):
        hist.observe(value, "f")
    assert registry.render() == (
        "# HELP took_seconds Durations.\n"
        "# TYPE took_seconds histogram\n"
        'took_seconds_bucket{fn="f",le="0.1"} 2\n'  # le is inclusive: 0.1 counts
        'took_seconds_bucket{fn="f",le="1"} 3\n'
        'took_seconds_bucket{fn="f",le="+Inf"} 4\n'
        'took_seconds_sum{fn="f"} 2.65\n'
        'took_seconds_count{fn="f"} 4\n'
    )


def test_render__families_in_registration_order_and_content_type() -> None:
    registry = Registry()
    registry.gauge("zeta", "Z.", read=lambda: 1)
    registry.counter("alpha_total", "A.").touch()
    text = registry.render()
    assert text.index("zeta") < text.index("alpha_total")
    assert text.endswith("\n")
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# -- the registry --------------------------------------------------------------------------


def test_registry__refuses_bad_names_and_duplicates() -> None:
    registry = Registry()
    registry.counter("ok_total", "Fine.")
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("ok_total", "Again.")
    with pytest.raises(ValueError, match="metric name"):
        registry.counter("2bad", "Starts with a digit.")
    with pytest.raises(ValueError, match="label name"):
        registry.counter("c_total", "Reserved label.", ("__name",))
    with pytest.raises(ValueError, match="reserved"):
        registry.histogram("h", "le is the histogram's.", ("le",), buckets=(1,))
    with pytest.raises(ValueError, match="increasing"):
        registry.histogram("h2", "Unsorted.", buckets=(2, 1))


def test_counter__goes_up_only_and_checks_label_count() -> None:
    counter = Counter("c_total", "C.", ("a", "b"))
    counter.inc("x", "y", by=2.5)
    assert counter.value("x", "y") == 2.5
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc("x", "y", by=-1)
    with pytest.raises(ValueError, match="takes 2 label values"):
        counter.inc("x")


def test_gauge__callback_read_at_render_and_replace_drops_old_series() -> None:
    state = {"n": 1.0}
    read = Gauge("live", "Live.", read=lambda: state["n"])
    state["n"] = 7
    assert read.value() == 7
    per_fn = Gauge("depth", "Depth.", ("fn",))
    per_fn.set(3, "a")
    per_fn.replace({("b",): 4})
    assert per_fn.value("a") is None
    assert per_fn.value("b") == 4


def test_histogram__merge_adds_precounted_observations() -> None:
    hist = Histogram("h_seconds", "H.", ("fn",), buckets=(1, 2))
    hist.observe(0.5, "f")
    hist.merge(("f",), [1, 2, 3], 20.0)
    samples = {(s, v[-1] if s == "_bucket" else ""): val for s, _, v, val in hist.samples()}
    assert samples[("_bucket", "1")] == 2
    assert samples[("_bucket", "2")] == 4
    assert samples[("_bucket", "+Inf")] == 7
    assert samples[("_sum", "")] == 20.5
    assert hist.count("f") == 7
    with pytest.raises(ValueError, match="bucket counts"):
        hist.merge(("f",), [1], 1.0)


def test_registry__concurrent_increments_are_not_lost() -> None:
    counter = Counter("c_total", "C.", ("t",))

    def work() -> None:
        for _ in range(5000):
            counter.inc("x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value("x") == 20000


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


def test_daemon_metrics__every_series_exists_at_zero_for_each_function() -> None:
    text = _daemon_metrics().render()
    for line in [
        f'orchestrator_build_info{{version="{__version__}",app_version="abc"}} 1',
        "orchestrator_daemon_up 1",
        "orchestrator_daemon_leader 1",
        "orchestrator_runs_executing 3",
        "orchestrator_worker_threads 9",
        'orchestrator_runs_started_total{function="a"} 0',
        'orchestrator_runs_finished_total{function="b",status="cancelled"} 0',
        'orchestrator_step_retries_total{function="b"} 0',
        'orchestrator_step_duration_seconds_count{function="a"} 0',
        'orchestrator_runs_rescued_total{reason="worker_crash"} 0',
        "orchestrator_events_ingested_total 0",
        "orchestrator_due_probe_timestamp_seconds 0",
    ]:
        assert line in text.splitlines(), line


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
    lines = metrics.render().splitlines()
    assert 'orchestrator_step_duration_seconds_count{function="a"} 3' in lines
    assert 'orchestrator_step_retries_total{function="a"} 1' in lines
    assert 'orchestrator_runs_finished_total{function="a",status="failed"} 1' in lines
    assert 'orchestrator_runs_finished_total{function="b",status="failed"} 1' in lines
    assert 'orchestrator_runs_finished_total{function="b",status="cancelled"} 1' in lines
    assert 'orchestrator_runs_rescued_total{reason="expired_lease"} 2' in lines
    assert "orchestrator_events_ingested_total 4" in lines
    assert 'orchestrator_runs_started_total{function="a"} 1' in lines


def test_daemon_metrics__backlog_replaces_the_due_series() -> None:
    @dataclass(frozen=True)
    class Due:
        function_id: str
        depth: int
        lag_seconds: float

    metrics = _daemon_metrics()
    metrics.set_backlog([Due("a", 10000, 12.5), Due("b", 0, 0.0)], 1700000000.0)
    lines = metrics.render().splitlines()
    assert 'orchestrator_due_runs{function="a"} 10000' in lines
    assert 'orchestrator_due_lag_seconds{function="a"} 12.5' in lines
    assert 'orchestrator_due_runs{function="b"} 0' in lines
    assert "orchestrator_due_probe_timestamp_seconds 1700000000" in lines


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
