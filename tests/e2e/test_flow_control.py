"""Flow control against two live daemons sharing one database: every limit holds across both.

The app is tests/e2e/apps/flowcontrol.py (one function per option). Limits are observed from
outside the engine: a sampler thread reads the running runs every 10 ms on its own
connection, start and end times come from `orchestrator.runs`, and step-body executions from
`public.effects` (written by the body itself).

Most tests share one pair of daemons (tests/e2e/shared.py): each uses functions no other of
them uses and looks only at their runs, events and buffers. The two tests that need other
settings or another app start daemons of their own, first.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from orchestrator import Orchestrator
from tests.conftest import eventually
from tests.e2e.apps.slowcron import BODY_SECONDS
from tests.e2e.harness import DaemonProcess, count, scalar, send, sql, start_both
from tests.e2e.shared import Served, shared_daemons

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

APP = "tests.e2e.apps.flowcontrol:app"
module_daemons, served = shared_daemons(APP, n=2)


# -- helpers ------------------------------------------------------------------------------


def insert_events(url: str, name: str, n: int, data_sql: str) -> None:
    """`n` events in one INSERT; `data_sql` builds each one's data from `g` (1..n)."""
    sql(
        url,
        f"INSERT INTO orchestrator.events (name, data) "
        f"SELECT %s, {data_sql} FROM generate_series(1, %s) AS g ORDER BY g",
        (name, n),
    )


def all_ingested(url: str, timeout: float = 30.0) -> None:
    eventually(
        lambda: (
            count(url, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL") == 0
        ),
        timeout=timeout,
        what="every event ingested",
    )


def statuses(url: str, function_id: str) -> dict[str, int]:
    rows = sql(
        url,
        "SELECT status, count(*) FROM orchestrator.runs WHERE function_id = %s GROUP BY 1",
        (function_id,),
    )
    return {status: int(n) for status, n in rows}


def wait_completed(url: str, function_id: str, n: int, timeout: float = 60.0) -> None:
    eventually(
        lambda: statuses(url, function_id).get("completed", 0) >= n,
        timeout=timeout,
        interval=0.2,
        what=f"{n} runs of {function_id} completed",
    )


def effects_of(url: str, function_id: str) -> list[tuple[str, int, datetime]]:
    """The step bodies recorded by runs of `function_id`, as (run id, pid, at)."""
    rows = sql(
        url,
        "SELECT e.run_id, e.pid, e.at FROM effects e "
        "JOIN orchestrator.runs r ON r.id::text = e.run_id WHERE r.function_id = %s",
        (function_id,),
    )
    return [(run_id, pid, at) for run_id, pid, at in rows]


def buffered(url: str, function_id: str) -> int:
    return count(
        url,
        "SELECT count(*) FROM orchestrator.buffered_events WHERE function_id = %s",
        (function_id,),
    )


def open_gate(url: str, name: str) -> None:
    sql(url, "INSERT INTO gates (name) VALUES (%s)", (name,))


def daemon_of_pids(daemons: list[DaemonProcess]) -> dict[int, int]:
    """Worker process id → index of the daemon it belongs to."""
    return {pid: i for i, d in enumerate(daemons) for pid in d.worker_pids()}


class Sampler:
    """Runs `query` every `every` seconds on its own connection, in a thread, and keeps every
    result (used as a context manager around the phase being watched)."""

    def __init__(self, url: str, query: str, params: Any = None, every: float = 0.01) -> None:
        self.url = url
        self.query = query
        self.params = params
        self.every = every
        self.samples: list[list[tuple[Any, ...]]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    self.samples.append(conn.execute(self.query, self.params).fetchall())
                    self._stop.wait(self.every)
        except BaseException as exc:  # reported by __exit__, in the test's thread
            self.error = exc

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise AssertionError(f"the sampler failed: {self.error!r}") from self.error


def send_concurrently(url: str, name: str, data: dict[str, Any], n: int, threads: int = 20) -> None:
    """`n` sends at once from `threads` threads, each with its own client (so its own
    connection), released together by a barrier."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def sender(share: int) -> None:
        client = Orchestrator(url)
        try:
            barrier.wait(30)
            for _ in range(share):
                client.send(name, data)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    shares = [n // threads + (i < n % threads) for i in range(threads)]
    workers = [threading.Thread(target=sender, args=(share,)) for share in shares]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors
    assert count(url, "SELECT count(*) FROM orchestrator.events WHERE name = %s", (name,)) == n


# -- daemons of their own (before the shared pair starts) ---------------------------------


@pytest.mark.timeout(150)
def test_concurrency__1000_runs__never_more_than_3_running_across_two_daemons(
    e2e_url, daemon_factory
):
    # two threads each: together 4, over the limit of 3, so only the shared limit keeps it
    # at 3, and neither daemon can take all 3 slots by itself
    daemons = start_both(daemon_factory, APP, workers=1, concurrency=2)
    total = 1000
    with Sampler(
        e2e_url,
        "SELECT lease_owner::text, count(*) FROM orchestrator.runs "
        "WHERE function_id = 'limited' AND status = 'running' GROUP BY 1",
    ) as sampler:
        insert_events(e2e_url, "fc/limited", total, "jsonb_build_object('n', g, 'hold', 0.01)")
        wait_completed(e2e_url, "limited", total, timeout=120)

    running = [sum(int(n) for _, n in sample) for sample in sampler.samples]
    assert len(running) > 100, "the sampler barely ran"
    histogram = Counter(running)
    assert max(running) <= 3, f"more than 3 running at once: {histogram}"
    assert max(running) == 3, f"never 3 at once, the check proves nothing: {histogram}"
    # both daemons executed runs of it, at times at the same moment: the limit is shared
    assert any(len(sample) == 2 for sample in sampler.samples), "never both daemons at once"

    assert statuses(e2e_url, "limited") == {"completed": total}
    effects = effects_of(e2e_url, "limited")
    assert len({run_id for run_id, _, _ in effects}) == len(effects) == total, (
        "a step body ran twice or never"
    )
    daemon_of = daemon_of_pids(daemons)
    executed_by = Counter(daemon_of.get(pid) for _, pid, _ in effects)
    assert set(executed_by) == {0, 1}, f"runs by daemon: {executed_by}"


@pytest.mark.timeout(90)
def test_cron_overlap_skip__every_second_with_1_5s_body__runs_never_overlap(
    e2e_url, daemon_factory
):
    daemons = start_both(daemon_factory, "tests.e2e.apps.slowcron:app")
    eventually(
        lambda: statuses(e2e_url, "slow-cron").get("completed", 0) >= 2,
        timeout=40,
        interval=0.2,
        what="two slow-cron runs completed",
    )
    runs = sql(
        e2e_url,
        "SELECT id::text, status, started_at, finished_at FROM orchestrator.runs "
        "WHERE function_id = 'slow-cron' AND started_at IS NOT NULL ORDER BY started_at",
    )
    assert {status for _, status, _, _ in runs} <= {"completed", "running"}, runs
    for (_, _, _, prev_end), (_, _, start, _) in itertools.pairwise(runs):
        assert prev_end is not None and start >= prev_end, f"overlapping runs: {runs}"
    # nothing else was created for the skipped ticks (no run queued behind the active one)
    assert set(statuses(e2e_url, "slow-cron")) <= {"completed", "running"}
    # each body ran once, inside its own run's interval
    recorded = effects_of(e2e_url, "slow-cron")
    effects = {run_id: at for run_id, _, at in recorded}
    assert len(recorded) == len(effects), "a cron body ran twice"
    for run_id, _, start, end in runs:
        assert start <= effects[run_id] and (end is None or effects[run_id] <= end)
    bodies = sorted(effects.values())
    assert all(b - a >= timedelta(seconds=BODY_SECONDS) for a, b in itertools.pairwise(bodies))
    skipped = sum(
        1
        for d in daemons
        for e in d.log_events()
        if str(e.get("event")).startswith("cron tick skipped")
    )
    assert skipped >= 1, "the every-second schedule never met an active run"


# -- concurrency keys ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_concurrency_key__one_per_key__busy_key_does_not_starve_the_others(served: Served):
    e2e_url = served.url
    keys, per_key, busy_extra = 50, 6, 100
    hold = "0.02"
    with Sampler(
        e2e_url,
        "SELECT concurrency_keys[2], count(*) FROM orchestrator.runs "
        "WHERE function_id = 'per-key' AND status = 'running' GROUP BY 1",
    ) as sampler:
        # the busy key's backlog first: it is ahead of every other key's runs in the queue
        insert_events(
            e2e_url, "fc/per-key", busy_extra, f"jsonb_build_object('key', 0, 'hold', {hold})"
        )
        all_ingested(e2e_url)
        insert_events(
            e2e_url,
            "fc/per-key",
            keys * per_key,
            f"jsonb_build_object('key', (g - 1) %% {keys}, 'hold', {hold})",
        )
        wait_completed(e2e_url, "per-key", keys * per_key + busy_extra, timeout=100)

    per_key_max: dict[str, int] = defaultdict(int)
    totals = []
    for sample in sampler.samples:
        totals.append(sum(int(n) for _, n in sample))
        for key, n in sample:
            per_key_max[key] = max(per_key_max[key], int(n))
    over = {k: n for k, n in per_key_max.items() if n > 1}
    assert not over, f"more than one run of a key at once: {over}"
    assert max(totals) <= 10, f"over the global limit: {Counter(totals)}"
    assert max(totals) >= 5, f"runs of different keys never overlapped: {Counter(totals)}"
    assert len(per_key_max) == keys, "the sampler missed whole keys"

    assert statuses(e2e_url, "per-key") == {"completed": keys * per_key + busy_extra}
    rows = sql(
        e2e_url,
        "SELECT concurrency_keys[2], created_at, started_at, finished_at FROM orchestrator.runs "
        "WHERE function_id = 'per-key'",
    )
    created: dict[str, list[datetime]] = defaultdict(list)
    starts: dict[str, list[datetime]] = defaultdict(list)
    ends: dict[str, list[datetime]] = defaultdict(list)
    for key, created_at, started_at, finished_at in rows:
        created[key].append(created_at)
        starts[key].append(started_at)
        ends[key].append(finished_at)
    for times in starts.values():
        times.sort()
    busy = starts.pop("0")
    # the busy key ran alone until the other keys' runs existed: count from there
    others_from = min(min(created[k]) for k in starts)
    busy = [s for s in busy if s >= others_from]
    others_done = max(max(ends[k]) for k in starts)
    # the busy key took one slot at a time while the other 49 keys shared the rest: all of
    # them were done (so every one had started) while most of the busy key's queue waited
    busy_left = sum(1 for s in busy if s > others_done)
    assert busy_left >= len(busy) // 2, (
        f"only {busy_left} of the busy key's {len(busy)} runs started after every other key "
        f"was done; the busy key's run count at each key's first start: "
        f"{sorted(sum(1 for b in busy if b <= s[0]) for s in starts.values())}"
    )


# -- throttle and rate limit --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_throttle__10_per_second__40_runs_spread_over_3s_never_more_than_10_in_1s(served: Served):
    e2e_url = served.url
    n = 40
    insert_events(e2e_url, "fc/throttled", n, "jsonb_build_object('n', g)")
    wait_completed(e2e_url, "throttled", n, timeout=90)

    assert statuses(e2e_url, "throttled") == {"completed": n}
    starts = sorted(
        s
        for (s,) in sql(
            e2e_url, "SELECT started_at FROM orchestrator.runs WHERE function_id = 'throttled'"
        )
    )
    spread = (starts[-1] - starts[0]).total_seconds()
    # spread evenly, one every 0.1 s: 3.9 s from first to last (bound: less a second)
    assert spread >= (n - 10) / 10, f"{n} runs at 10/s started within {spread:.2f}s"
    second = timedelta(seconds=1)
    busiest = max(sum(1 for u in starts[i:] if u < t + second) for i, t in enumerate(starts))
    assert busiest <= 10, f"{busiest} runs started within one second"
    assert len({run_id for run_id, _, _ in effects_of(e2e_url, "throttled")}) == n


@pytest.mark.timeout(90)
def test_rate_limit__5_per_minute__20_events__5_run_15_skipped(served: Served):
    e2e_url = served.url
    # one statement per event, so that both daemons take part in ingesting them
    for n in range(20):
        send(e2e_url, "fc/rate-limited", {"n": n})
    all_ingested(e2e_url)
    ended = eventually(
        lambda: (
            (st := statuses(e2e_url, "rate-limited"))
            and sum(st.values()) == 20
            and set(st) <= {"completed", "skipped"}
            and st
        ),
        what="a run for every event, each ended",
        interval=0.1,
    )
    assert ended == {"completed": 5, "skipped": 15}
    codes = sql(
        e2e_url,
        "SELECT error->>'code', count(*), count(started_at), count(finished_at) "
        "FROM orchestrator.runs WHERE function_id = 'rate-limited' AND status = 'skipped' "
        "GROUP BY 1",
    )
    assert codes == [("rate_limited", 15, 0, 15)]
    message = scalar(
        e2e_url,
        "SELECT error->>'message' FROM orchestrator.runs "
        "WHERE function_id = 'rate-limited' AND status = 'skipped' LIMIT 1",
    )
    assert "rate limit" in message
    # the skipped runs never executed anything
    completed = {
        i
        for (i,) in sql(
            e2e_url,
            "SELECT id::text FROM orchestrator.runs "
            "WHERE function_id = 'rate-limited' AND status = 'completed'",
        )
    }
    assert sorted(run_id for run_id, _, _ in effects_of(e2e_url, "rate-limited")) == sorted(
        completed
    )


# -- debounce and batch -------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_debounce__50_events_in_half_a_second__one_run_with_the_last_event_1s_later(served: Served):
    e2e_url = served.url
    sent = []
    for n in range(50):
        sent.append(send(e2e_url, "fc/debounced", {"n": n}))
        time.sleep(0.01)  # pacing the producer, not waiting for the engine
    last_id = sent[-1]

    run = eventually(
        lambda: sql(
            e2e_url,
            "SELECT id::text, event_id, events, output, started_at FROM orchestrator.runs "
            "WHERE function_id = 'debounced' AND status = 'completed'",
        ),
        what="the debounced run completed",
    )
    all_ingested(e2e_url)
    eventually(lambda: buffered(e2e_url, "debounced") == 0, what="nothing left buffered")
    assert statuses(e2e_url, "debounced") == {"completed": 1}
    run_id, event_id, events, output, started_at = run[0]
    assert event_id == last_id
    assert len(events) == 1
    assert events[0]["id"] == last_id
    assert events[0]["data"] == {"n": 49}
    assert output == {"events": 1, "data": {"n": 49}}
    last_received = scalar(
        e2e_url, "SELECT received_at FROM orchestrator.events WHERE id = %s", (last_id,)
    )
    assert started_at >= last_received + timedelta(seconds=1), (started_at, last_received)
    assert [r for r, _, _ in effects_of(e2e_url, "debounced")] == [run_id]


@pytest.mark.timeout(90)
def test_batch__250_events__runs_of_100_100_and_50_after_the_timeout(served: Served):
    e2e_url = served.url
    mark = served.event_mark()
    insert_events(e2e_url, "fc/batched", 250, "jsonb_build_object('n', g)")
    ids, received = sql(
        e2e_url,
        "SELECT array_agg(id), max(received_at) FROM orchestrator.events WHERE seq > %s",
        (mark,),
    )[0]
    ids = set(ids)

    wait_completed(e2e_url, "batched", 3, timeout=30)
    assert statuses(e2e_url, "batched") == {"completed": 3}
    assert buffered(e2e_url, "batched") == 0
    rows = sql(
        e2e_url,
        "SELECT jsonb_array_length(events), (output->>'events')::int, started_at, "
        "ARRAY(SELECT e->>'id' FROM jsonb_array_elements(events) AS e) "
        "FROM orchestrator.runs WHERE function_id = 'batched' ORDER BY started_at",
    )
    assert sorted(size for size, *_ in rows) == [50, 100, 100]
    for size, output_events, _, _ in rows:
        assert output_events == size, "ctx.events did not hold the run's whole batch"
    batched = Counter(i for *_, event_ids in rows for i in event_ids)
    assert set(batched) == ids
    assert set(batched.values()) == {1}, "an event was in two batches"
    # the rest waits for the batch timeout (2 s); that full batches are made at once, without
    # it, is tests/db/test_flow.py::test_batch__full_batches_are_made_at_once__the_rest_waits...
    [(_, _, partial_started, _)] = [row for row in rows if row[0] == 50]
    assert partial_started >= received + timedelta(seconds=2)


# -- idempotency and singleton ------------------------------------------------------------


@pytest.mark.timeout(90)
def test_idempotency__100_concurrent_sends_of_one_order__exactly_one_run(served: Served):
    e2e_url = served.url
    send_concurrently(e2e_url, "fc/idempotent", {"order_id": "order-1"}, 100)
    all_ingested(e2e_url)
    wait_completed(e2e_url, "idempotent", 1)

    assert statuses(e2e_url, "idempotent") == {"completed": 1}
    assert len(effects_of(e2e_url, "idempotent")) == 1
    keys = sql(
        e2e_url,
        "SELECT function_id, key FROM orchestrator.idempotency_keys WHERE function_id = %s",
        ("idempotent",),
    )
    assert keys == [("idempotent", "order-1")]
    # another order is not held back by the first
    send(e2e_url, "fc/idempotent", {"order_id": "order-2"})
    wait_completed(e2e_url, "idempotent", 2)
    assert statuses(e2e_url, "idempotent") == {"completed": 2}


@pytest.mark.timeout(90)
def test_singleton_skip__100_concurrent_sends_while_active__one_run_99_skipped(served: Served):
    e2e_url = served.url
    mark = served.event_mark()
    send_concurrently(e2e_url, "fc/singleton", {"user": "u1", "hold": 3.0}, 100)
    all_ingested(e2e_url)
    # the premise: every event was ingested while the first run was still active
    last_ingest = scalar(
        e2e_url, "SELECT max(ingested_at) FROM orchestrator.events WHERE seq > %s", (mark,)
    )
    wait_completed(e2e_url, "singleton", 1, timeout=30)
    (finished,) = sql(
        e2e_url,
        "SELECT finished_at FROM orchestrator.runs "
        "WHERE function_id = 'singleton' AND status = 'completed'",
    )[0]
    assert finished > last_ingest, "the run ended before all events were in: no overlap"

    assert statuses(e2e_url, "singleton") == {"completed": 1, "skipped": 99}
    codes = sql(
        e2e_url,
        "SELECT error->>'code', count(*) FROM orchestrator.runs "
        "WHERE function_id = 'singleton' AND status = 'skipped' GROUP BY 1",
    )
    assert codes == [("singleton", 99)]
    assert len(effects_of(e2e_url, "singleton")) == 1
    # once it is over, the same key runs again
    send(e2e_url, "fc/singleton", {"user": "u1", "hold": 0})
    wait_completed(e2e_url, "singleton", 2)


@pytest.mark.timeout(90)
def test_singleton_cancel__new_event_cancels_the_active_run__new_run_completes(served: Served):
    e2e_url = served.url
    first_event = send(e2e_url, "fc/singleton-cancel", {"user": "u1", "ticks": 300})
    first = eventually(
        lambda: scalar(
            e2e_url,
            "SELECT id::text FROM orchestrator.runs WHERE event_id = %s AND status = 'running'",
            (first_event,),
        ),
        what="the first run executing",
    )
    eventually(
        lambda: (
            count(e2e_url, "SELECT count(*) FROM orchestrator.steps WHERE run_id = %s", (first,))
            >= 2
        ),
        what="the first run a few steps in",
    )
    other_key = send(e2e_url, "fc/singleton-cancel", {"user": "u2", "ticks": 0})
    second_event = send(e2e_url, "fc/singleton-cancel", {"user": "u1", "ticks": 0})

    def ended(event_id: str) -> tuple[Any, ...] | None:
        rows = sql(
            e2e_url,
            "SELECT id::text, status, error FROM orchestrator.runs "
            "WHERE event_id = %s AND status IN ('completed', 'failed', 'cancelled', 'skipped')",
            (event_id,),
        )
        return rows[0] if rows else None

    second = eventually(lambda: ended(second_event), what="the second run ended")
    cancelled = eventually(lambda: ended(first_event), timeout=30, what="the first run ended")
    assert second[1] == "completed"
    assert cancelled[1] == "cancelled", cancelled
    # the cancellation was requested by the ingest that created the new run
    requested, replacement_created = sql(
        e2e_url,
        "SELECT (SELECT cancel_requested_at FROM orchestrator.runs WHERE id = %s), "
        "(SELECT created_at FROM orchestrator.runs WHERE id = %s)",
        (first, second[0]),
    )[0]
    assert requested == replacement_created
    ticks = count(e2e_url, "SELECT count(*) FROM orchestrator.steps WHERE run_id = %s", (first,))
    assert ticks < 300, "the first run was not stopped"
    assert first not in {r for r, _, _ in effects_of(e2e_url, "singleton-cancel")}
    # another key is its own singleton: untouched
    assert eventually(lambda: ended(other_key), what="the other key's run ended")[1] == "completed"
    # the cancelled run says why
    assert "replaced" in cancelled[2]["message"], cancelled[2]


# -- timeouts -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_timeouts__finish_cancels_a_long_run__start_cancels_runs_queued_behind_it(served: Served):
    e2e_url = served.url
    daemons = served.daemons
    long_event = send(e2e_url, "fc/timed", {"hold": 5})
    long_run = eventually(
        lambda: scalar(
            e2e_url,
            "SELECT id::text FROM orchestrator.runs WHERE event_id = %s AND status = 'running'",
            (long_event,),
        ),
        what="the long run executing",
    )
    queued_events = [send(e2e_url, "fc/timed", {"hold": 0, "n": n}) for n in range(3)]

    def ended(event_id: str) -> list[tuple[Any, ...]]:
        return sql(
            e2e_url,
            "SELECT status, error, created_at, started_at, finished_at, cancel_requested_at "
            "FROM orchestrator.runs WHERE event_id = %s "
            "AND status IN ('completed', 'failed', 'cancelled')",
            (event_id,),
        )

    for event_id in queued_events:
        status, error, created, started, finished, _ = eventually(
            lambda e=event_id: ended(e), what="a queued run timed out"
        )[0]
        assert status == "cancelled"
        assert "timeouts.start" in error["message"], error
        assert started is None
        assert finished - created >= timedelta(seconds=1)

    status, error, _, started, finished, requested = eventually(
        lambda: ended(long_event), timeout=30, what="the long run timed out"
    )[0]
    assert status == "cancelled"
    assert requested - started >= timedelta(seconds=2)
    # it ended at its timeout, while its 5 s step body still ran (its slot free at once)
    assert finished - started < timedelta(seconds=5)
    assert effects_of(e2e_url, "timed") == []

    # a run within both timeouts completes
    done = send(e2e_url, "fc/timed", {"hold": 0})
    assert eventually(lambda: ended(done), what="a quick run ended")[0][0] == "completed"
    assert long_run not in {r for r, _, _ in effects_of(e2e_url, "timed")}
    timed_out = {
        (e.get("run_id"), e.get("timeout"))
        for d in daemons
        for e in d.log_events()
        if e.get("event") == "run timed out"
    }
    assert (long_run, "finish") in timed_out, timed_out
    # the long run says why it was cancelled
    assert "timeouts.finish" in error["message"], error


# -- visibility ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_run_queue__shows_concurrency_limited_throttled_debouncing_and_batching(served: Served):
    e2e_url = served.url

    def reasons(function_id: str) -> list[tuple[Any, ...]]:
        return sql(
            e2e_url,
            "SELECT reason, status, key, events FROM orchestrator.run_queue WHERE function_id = %s",
            (function_id,),
        )

    # concurrency: 3 runs hold the limit until the gate opens; 2 more wait
    insert_events(e2e_url, "fc/queue-limited", 3, "jsonb_build_object('gate', 'queue-limited')")
    eventually(lambda: statuses(e2e_url, "queue-limited") == {"running": 3}, what="3 runs holding")
    insert_events(e2e_url, "fc/queue-limited", 2, "jsonb_build_object('n', g)")
    eventually(
        lambda: reasons("queue-limited") == [("concurrency_limited", "queued", None, 1)] * 2,
        what="two runs of 'queue-limited' shown concurrency_limited",
    )

    # throttle: 10 per second, so most of 40 runs wait for their slot
    insert_events(e2e_url, "fc/queue-throttled", 40, "jsonb_build_object('n', g)")
    eventually(
        lambda: "throttled" in {r[0] for r in reasons("queue-throttled")},
        what="a run of 'throttled' shown throttled",
    )

    # debounce: gathering for 1 s after the last event
    send(e2e_url, "fc/queue-debounced", {"n": 1})
    assert eventually(lambda: reasons("queue-debounced"), what="the debounce shown") == [
        ("debouncing", "buffered", "", 1)
    ]

    # batch: 10 events wait for more, or for the 2 s timeout
    insert_events(e2e_url, "fc/queue-batched", 10, "jsonb_build_object('n', g)")
    assert eventually(lambda: reasons("queue-batched"), what="the batch shown") == [
        ("batching", "buffered", "", 10)
    ]

    open_gate(e2e_url, "queue-limited")
    wait_completed(e2e_url, "queue-limited", 5)
    wait_completed(e2e_url, "queue-batched", 1)
    wait_completed(e2e_url, "queue-throttled", 40, timeout=30)
    eventually(
        lambda: (
            count(
                e2e_url,
                "SELECT count(*) FROM orchestrator.run_queue WHERE function_id = ANY(%s)",
                (["queue-limited", "queue-throttled", "queue-debounced", "queue-batched"],),
            )
            == 0
        ),
        what="the queue empty",
    )


# -- priority -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_priority__pro_run_is_claimed_before_500_queued_low_priority_runs(served: Served):
    e2e_url = served.url
    holder_event = send(e2e_url, "fc/prioritized", {"plan": "free", "gate": "priority"})
    holder = eventually(
        lambda: scalar(
            e2e_url,
            "SELECT id::text FROM orchestrator.runs WHERE event_id = %s AND status = 'running'",
            (holder_event,),
        ),
        what="the first run holding the only slot",
    )
    insert_events(e2e_url, "fc/prioritized", 500, "jsonb_build_object('plan', 'free', 'n', g)")
    eventually(
        lambda: statuses(e2e_url, "prioritized") == {"running": 1, "queued": 500},
        what="500 low-priority runs queued",
    )
    # the pro event, and (in the same statement, so at the same instant) the runs queued
    pro_event, queued = sql(
        e2e_url,
        "WITH ev AS (INSERT INTO orchestrator.events (name, data) "
        "            VALUES ('fc/prioritized', %s) RETURNING id) "
        "SELECT (SELECT id FROM ev), ARRAY(SELECT id::text FROM orchestrator.runs "
        "        WHERE function_id = 'prioritized' AND status = 'queued')",
        (Jsonb({"plan": "pro"}),),
    )[0]
    assert len(queued) == 500
    pro = eventually(
        lambda: scalar(
            e2e_url, "SELECT id::text FROM orchestrator.runs WHERE event_id = %s", (pro_event,)
        ),
        what="the pro run created",
    )
    assert scalar(e2e_url, "SELECT priority FROM orchestrator.runs WHERE id = %s", (pro,)) == 100
    assert statuses(e2e_url, "prioritized") == {"running": 1, "queued": 501}

    open_gate(e2e_url, "priority")
    pro_started = eventually(
        lambda: scalar(
            e2e_url,
            "SELECT started_at FROM orchestrator.runs WHERE id = %s AND status = 'completed'",
            (pro,),
        ),
        what="the pro run completed",
    )
    holder_finished = scalar(
        e2e_url, "SELECT finished_at FROM orchestrator.runs WHERE id = %s", (holder,)
    )
    assert pro_started >= holder_finished
    before_pro = sql(
        e2e_url,
        "SELECT id::text, started_at FROM orchestrator.runs "
        "WHERE id = ANY(%s::uuid[]) AND started_at <= %s",
        (queued, pro_started),
    )
    assert before_pro == [], "low-priority runs started before the pro run"
    # the shared daemons need not work through the low-priority backlog for the next test
    sql(
        e2e_url,
        "UPDATE orchestrator.runs SET cancel_requested_at = now() "
        "WHERE function_id = 'prioritized' AND status = 'queued'",
    )
