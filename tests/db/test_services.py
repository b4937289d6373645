"""The daemon's services, each on its own against a migrated database: constructed, started,
ticked and stopped, repeatedly, and each tick doing its job. No daemon process runs here; the
worker pool, where a service needs one, is a stand-in that records what it was handed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestrator import Orchestrator, cancel_on, event
from orchestrator.config import Config
from orchestrator.db import daemons, functions, runs
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.executor import Task
from orchestrator.runtime.cancellations import Cancellations
from orchestrator.runtime.crashes import CrashRequeue
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.dispatcher import Dispatcher, IngestClaim
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.health import Health
from orchestrator.runtime.ingest import Ingester
from orchestrator.runtime.leadership import Leadership
from orchestrator.runtime.leases import LeaseRenewer
from orchestrator.runtime.metrics import DaemonMetrics
from orchestrator.runtime.pool import Handback
from orchestrator.runtime.rescue import Parking, Rescue
from orchestrator.runtime.rescuer import Rescuer
from orchestrator.runtime.retention import Policy, Retention
from orchestrator.runtime.service import Looper, Service, Ticker
from orchestrator.runtime.unserved import UnservedWatch
from orchestrator.runtime.upkeep import Upkeep
from tests.conftest import eventually
from tests.db.helpers import claim, execute, queue_runs

pytestmark = pytest.mark.timeout(30)

ME = "00000000-0000-0000-0000-0000000000a1"
OTHER = "00000000-0000-0000-0000-0000000000b2"


class _Log:
    """Records what was logged, by level."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda message="", *args, **fields: self.lines.append((level, message, fields))

    def said(self, message: str) -> list[dict[str, Any]]:
        return [fields for _, m, fields in self.lines if m == message]


class _Calls:
    """A callback that counts its calls and keeps their arguments."""

    def __init__(self) -> None:
        self.args: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.args.append(args)

    @property
    def count(self) -> int:
        return len(self.args)


class _Pool:
    """Stands in for the worker pool: `free` slots of plain functions, and what was submitted."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.tasks: list[Task] = []
        self.held: set[str] = set()

    def free_slots(
        self, *, quarantine: bool = False, is_async: bool = False, ahead: bool = True
    ) -> int:
        return 0 if quarantine or is_async else self.free - len(self.tasks)

    def submit(self, tasks: list[Task], *, quarantine: bool = False) -> None:
        self.tasks.extend(tasks)

    def held_leases(self) -> set[str]:
        return set(self.held)


def _metrics() -> DaemonMetrics:
    return DaemonMetrics(
        ["f"],
        app_version="test",
        health=Health.for_intervals(poll_interval=1.0, heartbeat_interval=1.0),
        leader=lambda: False,
        executing=lambda: 0,
        threads=1,
    )


def _register(db: Database, daemon_id: str) -> None:
    with db.transaction() as conn:
        daemons.register(
            conn, daemon_id, hostname="h", pid=1, app="m:app", version="v", workers=1, concurrency=1
        )


def _statuses(db: Database, ids: list[str]) -> list[str]:
    rows = execute(
        db,
        "SELECT status FROM orchestrator.runs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id",
        ids=sorted(ids),
    )
    return [str(r[0]) for r in rows]


def _lease_left(db: Database, run_id: str) -> float:
    rows = execute(
        db,
        "SELECT extract(epoch FROM lease_expires_at - now()) FROM orchestrator.runs "
        "WHERE id = CAST(:i AS uuid)",
        i=run_id,
    )
    return float(rows[0][0])


def _leadership(db: Database, daemon_id: str, log: Any, stopping: bool = False) -> Leadership:
    return Leadership(
        db,
        daemon_id=daemon_id,
        interval=1.0,
        ttl=60.0,
        stopping=lambda: stopping,
        on_beat=lambda: None,
        log=log,
    )


# -- the protocol and the ticker --------------------------------------------------------------


class _Counting(Looper):
    name = "counting"

    def __init__(self, interval: float | None) -> None:
        super().__init__()
        self.interval = interval
        self.ticks: list[float] = []

    def run(self, now: float) -> None:
        self.ticks.append(now)


def test_looper__start_and_stop_are_harmless_twice_and_a_stopped_tick_does_nothing() -> None:
    service = _Counting(None)
    service.tick(1.0)
    service.stop()
    service.start()
    service.start()
    service.tick(2.0)
    service.stop()
    service.stop()
    service.tick(3.0)
    assert service.ticks == [2.0]


def test_ticker__ticks_each_service_when_due_and_one_without_interval_every_time() -> None:
    clock = [100.0]
    every, often, stopped = _Counting(None), _Counting(10.0), _Counting(1.0)
    ticker = Ticker([every, often, stopped], clock=lambda: clock[0])
    every.start()
    often.start()
    for t in (100.0, 105.0, 110.0, 111.0):
        clock[0] = t
        ticker.tick()
    assert every.ticks == [100.0, 105.0, 110.0, 111.0]
    assert often.ticks == [100.0, 110.0]  # the first call, then each ten seconds
    assert stopped.ticks == []
    ticker.due_now(often)
    ticker.tick(only=[often])
    assert often.ticks == [100.0, 110.0, 111.0]
    assert every.ticks[-1] == 111.0 and len(every.ticks) == 4  # not in `only`


def test_ticker__an_error_skips_the_services_after_it_until_the_next_call() -> None:
    class Failing(_Counting):
        def run(self, now: float) -> None:
            super().run(now)
            raise RuntimeError("tick failed")

    failing, after = Failing(5.0), _Counting(5.0)
    clock = [0.0]
    ticker = Ticker([failing, after], clock=lambda: clock[0])
    failing.start()
    after.start()
    with pytest.raises(RuntimeError):
        ticker.tick()
    assert after.ticks == []
    clock[0] = 1.0
    ticker.tick()  # the failed one waits for its interval; the other is due
    assert (failing.ticks, after.ticks) == ([0.0], [1.0])


# -- leadership -------------------------------------------------------------------------------


def test_leadership__takes_the_lead_when_none_holds_it_and_reports_it(db: Database) -> None:
    _register(db, ME)
    _register(db, OTHER)
    log = _Log()
    mine, theirs = _leadership(db, ME, log), _leadership(db, OTHER, log)
    mine.start()
    theirs.start()
    mine.tick(time.monotonic())
    theirs.tick(time.monotonic())
    assert mine.is_leader
    assert not theirs.is_leader
    rows = execute(db, "SELECT id::text, is_leader, status FROM orchestrator.daemons ORDER BY id")
    assert [tuple(r) for r in rows] == [(ME, True, "running"), (OTHER, False, "running")]
    leader = execute(db, "SELECT daemon_id::text FROM orchestrator.leader")
    assert leader == [(ME,)]
    mine.stop()
    assert not mine.is_leader  # a stopped service leads nothing
    theirs.stop()


def test_leadership__while_stopping_heartbeats_stopping_and_does_not_lead(db: Database) -> None:
    _register(db, ME)
    service = _leadership(db, ME, _Log(), stopping=True)
    service.start()
    service.tick(time.monotonic())
    assert not service.is_leader
    rows = execute(db, "SELECT is_leader, status FROM orchestrator.daemons")
    assert [tuple(r) for r in rows] == [(False, "stopping")]
    assert execute(db, "SELECT count(*) FROM orchestrator.leader WHERE expires_at > now()") == [
        (0,)
    ]


def test_leadership__says_so_when_this_daemon_was_declared_dead(db: Database) -> None:
    _register(db, ME)
    with db.transaction() as conn:
        daemons.mark_dead(conn, ME)
    log = _Log()
    service = _leadership(db, ME, log)
    service.start()
    service.tick(time.monotonic())
    assert [level for level, m, _ in log.lines if "declared dead" in m] == ["error"]


def test_leadership__a_stopped_tick_writes_nothing(db: Database) -> None:
    _register(db, ME)
    service = _leadership(db, ME, _Log())
    service.tick(time.monotonic())
    assert not service.is_leader
    assert execute(db, "SELECT count(*) FROM orchestrator.leader") == [(0,)]


# -- lease renewal ----------------------------------------------------------------------------


def test_lease_renewer__extends_the_leases_it_holds_and_not_the_others(db: Database) -> None:
    queue_runs(db, 3)
    held, not_executing = (c.id for c in claim(db, ME, limit=2, lease=30))
    [theirs] = [c.id for c in claim(db, OTHER, limit=1, lease=30)]
    pool, log = _Pool(0), _Log()
    pool.held = {held, theirs}  # the pool thinks it executes another daemon's run: lost
    service = LeaseRenewer(db, owner=ME, lease_seconds=3600, held=pool.held_leases, log=log)
    assert service.interval == 1200
    service.start()
    service.tick(time.monotonic())
    assert _lease_left(db, held) > 3000
    assert _lease_left(db, not_executing) < 31
    assert _lease_left(db, theirs) < 31
    assert log.said("leases lost; their runs will be fenced") == [{"runs": 1}]


# -- cancellations ----------------------------------------------------------------------------


def test_cancellations__end_requested_runs_and_tell_the_pool_about_its_own(
    db: Database,
) -> None:
    queue_runs(db, 3)
    running, untouched, elsewhere = (c.id for c in claim(db, ME, limit=3))
    [idle] = queue_runs(db, 1)
    execute(
        db,
        "UPDATE orchestrator.runs SET cancel_requested_at = now() "
        "WHERE id IN (CAST(:a AS uuid), CAST(:b AS uuid), CAST(:c AS uuid))",
        a=idle,
        b=running,
        c=elsewhere,
    )
    stop_runs, log = _Calls(), _Log()
    service = Cancellations(
        db,
        interval=1.0,
        executing=lambda: {running, untouched},  # `elsewhere`: another daemon executes it
        stop_runs=stop_runs,
        metrics=_metrics(),
        log=log,
    )
    service.tick(time.monotonic())  # stopped: nothing happens
    assert _statuses(db, [idle]) == ["queued"]
    service.start()
    service.tick(time.monotonic())
    assert _statuses(db, [idle, running, untouched, elsewhere]) == sorted_statuses(
        {idle: "cancelled", running: "cancelled", untouched: "running", elsewhere: "cancelled"}
    )
    assert stop_runs.args == [({running},)]
    said = sorted(log.said("run cancelled"), key=lambda d: d["run_id"])
    assert said == [{"run_id": r, "function_id": "f"} for r in sorted([idle, running, elsewhere])]


def sorted_statuses(by_id: dict[str, str]) -> list[str]:
    return [by_id[i] for i in sorted(by_id)]


# -- crash requeue ----------------------------------------------------------------------------


def _crashes(db: Database, log: Any, suspects: _Calls, work: _Calls) -> CrashRequeue:
    return CrashRequeue(
        db, max_recoveries=5, metrics=_metrics(), on_suspects=suspects, on_work=work, log=log
    )


def test_crash_requeue__requeues_the_given_leases_at_once(db: Database) -> None:
    queue_runs(db, 3)
    crashed, interrupted, released = claim(db, ME, limit=3)
    suspects, work, log = _Calls(), _Calls(), _Log()
    service = _crashes(db, log, suspects, work)
    handback = Handback(
        crashed=[(crashed.id, crashed.lease_token)],
        interrupted=[(interrupted.id, interrupted.lease_token)],
        released=[(released.id, released.lease_token)],
    )
    service.requeue(1, handback)  # stopped: left to the lease rescue
    assert _statuses(db, [crashed.id]) == ["running"]
    service.start()
    service.requeue(1, handback)
    ids = [crashed.id, interrupted.id, released.id]
    assert _statuses(db, ids) == ["queued"] * 3
    rows = execute(
        db,
        "SELECT id::text, recoveries, crashes FROM orchestrator.runs "
        "WHERE id = ANY(CAST(:ids AS uuid[]))",
        ids=ids,
    )
    counts = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
    assert counts == {crashed.id: (1, 1), interrupted.id: (1, 0), released.id: (0, 0)}
    assert (suspects.count, work.count) == (1, 1)
    assert len(log.said("run requeued after worker crash")) == 3


# -- rescue and parking -----------------------------------------------------------------------


def _rescue(db: Database, leading: threading.Event, work: _Calls) -> Rescue:
    log = _Log()
    rescuer = Rescuer(db, daemon_id=ME, max_recoveries=5, dead_after=1.0, log=log)
    return Rescue(
        rescuer,
        interval=1.0,
        is_leader=leading.is_set,
        cron=CronScheduler(db, {}, log),
        upkeep=Upkeep(db, {}, log),
        unserved=UnservedWatch(db, warn_after=60, report=lambda found: None, log=log),
        metrics=_metrics(),
        on_work=work,
    )


def test_rescue__requeues_expired_leases_and_while_leading_a_dead_daemons_runs(
    db: Database,
) -> None:
    queue_runs(db, 2)
    [expired] = claim(db, OTHER, limit=1)
    execute(db, "UPDATE orchestrator.runs SET lease_expires_at = now() - interval '1 second'")
    dead = str(uuid.uuid4())
    _register(db, dead)
    execute(
        db,
        "UPDATE orchestrator.daemons SET heartbeat_at = now() - interval '1 minute' "
        "WHERE id = CAST(:d AS uuid)",
        d=dead,
    )
    [orphan] = claim(db, dead, limit=1)
    leading, work = threading.Event(), _Calls()
    service = _rescue(db, leading, work)
    service.start()
    service.tick(time.monotonic())
    assert _statuses(db, [expired.id]) == ["queued"]
    assert _statuses(db, [orphan.id]) == ["running"]  # only the leader rescues dead daemons
    assert work.count == 1
    leading.set()
    service.tick(time.monotonic())
    assert _statuses(db, [orphan.id]) == ["queued"]
    assert work.count == 2


def test_parking__fails_runs_of_unknown_functions_only_while_leading(db: Database) -> None:
    [run] = queue_runs(db, 1, function_id="nobody-registered-this")
    leading = threading.Event()
    rescuer = Rescuer(db, daemon_id=ME, max_recoveries=5, dead_after=1.0, log=_Log())
    service = Parking(rescuer, interval=5.0, is_leader=leading.is_set)
    service.start()
    service.tick(time.monotonic())
    assert _statuses(db, [run]) == ["queued"]
    leading.set()
    service.tick(time.monotonic())
    assert _statuses(db, [run]) == ["failed"]


# -- the dispatcher ---------------------------------------------------------------------------


@pytest.fixture
def direct(db: Database) -> Iterator[Direct]:
    conn = Direct(db.url, application_name="test-services", settings=runs.CLAIM_SETTINGS)
    yield conn
    conn.close()


def _dispatcher(
    db: Database, direct: Direct, pool: _Pool, *, cancelled_by: str | None = None
) -> Dispatcher:
    app = Orchestrator(database_url="postgresql://unused/x")
    cancels = [cancel_on(cancelled_by)] if cancelled_by else []
    app.function("f", trigger=event("a"), cancel_on=cancels)(lambda ctx: None)
    with db.transaction() as conn:
        desc = app.functions["f"].describe()
        functions.upsert(conn, "f", triggers=desc.pop("triggers"), options=desc, version="1")
    log = _Log()
    config = Config(poll_interval=3600.0, workers=1, concurrency=4)
    return Dispatcher(
        owner=ME,
        config=config,
        registry=app.functions,
        db=db,
        direct=direct,
        pool=pool,  # type: ignore[arg-type]  # the stand-in has the methods used
        ingester=Ingester(db, direct, batch_size=100, max_event_bytes=1024, log=log),
        flow=FlowClaimer(
            direct, app.functions, owner=ME, lease_seconds=30, poll_interval=3600, log=log
        ),
        metrics=_metrics(),
    )


def _send(db: Database, n: int) -> None:
    execute(
        db, "INSERT INTO orchestrator.events (name) SELECT 'a' FROM generate_series(1, :n)", n=n
    )


def _mine(db: Database) -> set[str]:
    rows = execute(
        db,
        "SELECT id::text FROM orchestrator.runs WHERE status = 'running' "
        "AND lease_owner = CAST(:o AS uuid)",
        o=ME,
    )
    return {str(r[0]) for r in rows}


def test_dispatcher__ingests_claims_and_hands_over_what_fits(db: Database, direct: Direct) -> None:
    pool = _Pool(free=4)
    service = _dispatcher(db, direct, pool)
    _send(db, 2)
    service.notified("orchestrator_events")  # what the events' trigger sends
    service.tick(time.monotonic())  # stopped: nothing ingested
    assert execute(db, "SELECT count(*) FROM orchestrator.runs") == [(0,)]

    service.start()
    service.tick(time.monotonic())  # it ingests; the ingest claims both runs
    assert {t.run_id for t in pool.tasks} == _mine(db)
    assert len(pool.tasks) == 2

    # a run made without an event is claimed by the dispatch, up to the free slots
    queue_runs(db, 3)
    service.tick(time.monotonic())
    assert len(pool.tasks) == 4
    assert {t.run_id for t in pool.tasks} == _mine(db)
    assert service.backlogged  # a lane was full with work left

    # told that events arrived, it ingests (the poll interval is an hour)
    pool.free = 10
    _send(db, 1)
    service.notified("orchestrator_events")
    service.tick(time.monotonic())
    assert len(pool.tasks) == 6
    assert execute(db, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL") == [
        (0,)
    ]
    assert not service.backlogged
    assert service.wait_limit() is None  # nothing more is due


def test_ingest_claim__claims_in_the_ingest_and_keeps_the_runs_for_later(
    db: Database, direct: Direct
) -> None:
    pool = _Pool(free=2)
    service = _dispatcher(db, direct, pool)
    _send(db, 3)
    along = IngestClaim(service)
    assert service.ingester.tick(then=along) == 3
    assert {c.id for c in along.claimed} == _mine(db)
    assert len(along.claimed) == 2  # the free slots
    assert pool.tasks == []  # handed over by the dispatcher, after the commit


def test_ingest_claim__a_batch_the_sql_ingest_leaves__claims_no_more_than_the_free_slots(
    db: Database, direct: Direct
) -> None:
    """A wait stored on the name makes the ingest in SQL leave the batch (its claim commits,
    of runs due before) and the Python ingest take it, claiming again: the two claims
    together take no more runs than there were free slots."""
    pool = _Pool(free=3)
    service = _dispatcher(db, direct, pool)
    with db.transaction() as conn:
        runs.create_many(conn, [runs.NewRun("f", [{}]), runs.NewRun("f", [{}])])  # due before
    execute(
        db,
        "INSERT INTO orchestrator.runs (id, function_id, status, due_at) VALUES "
        "('00000000-0000-0000-0000-0000000000aa', 'w', 'waiting', 'infinity')",
    )
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
        "match_value, since) VALUES ('00000000-0000-0000-0000-0000000000aa', 's', 'event', "
        "'a', '', '\"nothing\"', now())",
    )
    _send(db, 3)
    along = IngestClaim(service)
    assert service.ingester.tick(then=along) == 3
    assert len(along.claimed) == 3  # the two due before, then one of the new ones
    assert {c.id for c in along.claimed} == _mine(db)
    assert execute(db, "SELECT count(*) FROM orchestrator.runs WHERE status = 'queued'") == [(2,)]


def test_dispatcher__a_run_its_own_batch_cancels__ends_cancelled_and_never_starts(
    db: Database, direct: Direct
) -> None:
    pool = _Pool(free=4)
    service = _dispatcher(db, direct, pool, cancelled_by="b")
    execute(
        db,
        "INSERT INTO orchestrator.events (name, received_at) VALUES "
        "('a', now() - interval '1 second'), ('b', now())",
    )
    service.start()
    service.notified("orchestrator_events")
    service.tick(time.monotonic())  # ingests both; the claims after it find nothing due
    assert execute(db, "SELECT status FROM orchestrator.runs") == [("cancelled",)]
    assert pool.tasks == []


def test_dispatcher__sleeps_until_the_next_run_falls_due(db: Database, direct: Direct) -> None:
    pool = _Pool(free=4)
    service = _dispatcher(db, direct, pool)
    with db.transaction() as conn:
        runs.create_many(conn, [runs.NewRun("f", [{}])])
    execute(db, "UPDATE orchestrator.runs SET due_at = now() + interval '30 seconds'")
    service.start()
    service.tick(time.monotonic())
    limit = service.wait_limit()
    assert limit is not None and 20 < limit <= 31
    assert pool.tasks == []


# -- retention, on a thread of its own --------------------------------------------------------


def test_retention__a_tick_runs_a_pass_while_started_and_leading(db: Database, db_url: str) -> None:
    leading = threading.Event()
    log = _Log()
    policy = Policy(completed=None, failed=None, events=None, batch_size=10)
    service = Retention(db_url, policy, interval=3600, is_leader=leading.is_set, log=log)
    service.tick(time.monotonic())  # stopped
    leading.set()
    service.tick(time.monotonic())  # still stopped: the thread is what starts it
    assert log.said("retention pass") == []
    service.start()
    try:
        service.tick(time.monotonic())  # a tick from outside runs a pass on the caller's thread
        eventually(lambda: log.said("retention pass"), timeout=10, what="a retention pass")
    finally:
        service.stop()
    assert service._thread is None


# -- start and stop, over and over ------------------------------------------------------------


def _every_service(db: Database, db_url: str, direct: Direct) -> list[Service]:
    log, never = _Log(), threading.Event()
    rescuer = Rescuer(db, daemon_id=ME, max_recoveries=5, dead_after=1.0, log=log)
    return [
        _dispatcher(db, direct, _Pool(free=2)),
        _leadership(db, ME, log),
        LeaseRenewer(db, owner=ME, lease_seconds=30, held=set, log=log),
        _rescue(db, never, _Calls()),
        Parking(rescuer, interval=5.0, is_leader=never.is_set),
        Cancellations(
            db, interval=1.0, executing=set, stop_runs=_Calls(), metrics=_metrics(), log=log
        ),
        _crashes(db, log, _Calls(), _Calls()),
        Retention(db_url, Policy(None, None, None), interval=0.01, is_leader=never.is_set, log=log),
    ]


def test_services__start_tick_and_stop_repeatedly(
    db: Database, db_url: str, direct: Direct
) -> None:
    _register(db, ME)
    services = _every_service(db, db_url, direct)
    ticker = Ticker(services)
    for round_ in range(5):
        for service in services:
            service.start()
            if round_ % 2:
                service.start()  # twice: harmless
        ticker.tick()
        for service in services:
            ticker.due_now(service)
        ticker.tick()
        for service in reversed(services):
            service.stop()
            if round_ % 2:
                service.stop()  # twice: harmless
        ticker.tick()  # stopped services tick nothing
    assert {s.name for s in services} == {
        "dispatcher",
        "heartbeat",
        "leases",
        "rescue",
        "parking",
        "cancellations",
        "crash-requeue",
        "retention",
    }
    assert execute(db, "SELECT status FROM orchestrator.daemons") == [("running",)]
    assert not any(t.name == "retention" for t in threading.enumerate())
