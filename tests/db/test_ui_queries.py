"""The dashboard's reads (db/ui.py) and accounts (db/ui_auth.py), on rows arranged in SQL."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, text

from orchestrator.db import clock, daemons, events, functions, ui, ui_auth
from orchestrator.db.database import Database
from orchestrator.errors import InvalidFilterError, UsageError, UserExistsError

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2031, 3, 4, 2, 0, tzinfo=UTC)


@pytest.fixture
def pinned() -> Iterator[datetime]:
    clock.set(T0)
    yield T0
    clock.reset()


def add_run(
    conn: Connection,
    *,
    function_id: str = "f",
    status: str = "completed",
    created_at: datetime = T0,
    event_name: str | None = "shop/order",
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
    run_id: str | None = None,
    **columns: Any,
) -> str:
    """A run row as the engine leaves it; `columns` sets more (parent_run_id, error ...)."""
    rid = run_id or str(uuid.uuid4())
    trigger = [{"id": event_id, "name": event_name, "data": data or {}}] if event_name else []
    values = {
        "id": rid,
        "function_id": function_id,
        "status": status,
        "event_id": event_id,
        "events": json.dumps(trigger),
        "created_at": created_at,
        "due_at": created_at,
        **columns,
    }
    casts = {"events": "jsonb", "error": "jsonb", "id": "uuid", "parent_run_id": "uuid",
             "origin_run_id": "uuid"}  # fmt: skip
    conn.execute(
        text(
            f"INSERT INTO orchestrator.runs ({', '.join(values)}) VALUES ("
            + ", ".join(f"CAST(:{k} AS {casts[k]})" if k in casts else f":{k}" for k in values)
            + ")"
        ),
        {k: json.dumps(v) if k == "error" else v for k, v in values.items()},
    )
    return rid


def page_ids(page: ui.RunPage) -> list[str]:
    return [r.id for r in page.runs]


def all_pages(conn: Connection, f: ui.RunFilter) -> list[str]:
    seen, before = [], None
    for _ in range(1000):
        page = ui.list_runs(conn, ui.RunFilter(**{**f.__dict__, "before": before}))
        seen += page_ids(page)
        if page.next_cursor is None:
            return seen
        before = page.next_cursor
    raise AssertionError("the pages never ended")


# -- the runs list --------------------------------------------------------------------------


def test_list_runs__pages_cover_every_run_once_newest_first_despite_equal_times(
    db: Database,
) -> None:
    with db.transaction() as conn:
        made = [add_run(conn, created_at=T0 + timedelta(seconds=i // 3)) for i in range(20)]
        pages = all_pages(conn, ui.RunFilter(limit=4))
        first = ui.list_runs(conn, ui.RunFilter(limit=4))
    newest_first = sorted(made, key=lambda r: (made.index(r) // 3, uuid.UUID(r)), reverse=True)
    assert pages == newest_first
    assert len(first.runs) == 4 and first.next_cursor is not None


def test_list_runs__the_last_page_has_no_cursor(db: Database) -> None:
    with db.transaction() as conn:
        for i in range(3):
            add_run(conn, created_at=T0 + timedelta(seconds=i))
        assert ui.list_runs(conn, ui.RunFilter(limit=3)).next_cursor is None
        assert ui.list_runs(conn, ui.RunFilter(limit=2)).next_cursor is not None


def test_list_runs__each_filter_keeps_only_its_runs(db: Database) -> None:
    with db.transaction() as conn:
        a = add_run(conn, function_id="a", status="failed", event_id="evt-aa1",
                    data={"user_id": 7}, error={"type": "ValueError"})  # fmt: skip
        b = add_run(conn, function_id="b", created_at=T0 + timedelta(hours=1),
                    event_name="shop/refund", event_id="evt-bb2", data={"user_id": 8})  # fmt: skip
        c = add_run(conn, function_id="a", created_at=T0 + timedelta(hours=2), event_name=None)

        def ids(**given: Any) -> set[str]:
            return set(page_ids(ui.list_runs(conn, ui.RunFilter(**given))))

        assert ids() == {a, b, c}
        assert ids(function_id="a") == {a, c}
        assert ids(status="failed") == {a}
        assert ids(function_id="a", status="completed") == {c}
        assert ids(since=T0 + timedelta(hours=1)) == {b, c}
        assert ids(until=T0 + timedelta(hours=1)) == {a}
        assert ids(event_name="shop/refund") == {b}
        assert ids(id_prefix=b[:8]) == {b}
        assert ids(id_prefix=c.replace("-", "")[:12].upper()) == {c}
        assert ids(id_prefix="evt-a") == {a}
        assert ids(id_prefix="evt-") == {a, b}
        assert ids(id_prefix="evt_") == set()  # LIKE's wildcards are taken literally
        assert ids(data_path="$.user_id == 7") == {a}
        assert ids(data_path="$.user_id") == {a, b}
        assert ids(data_path="$.user_id ? (@ > 7)") == {b}
        [failed] = ui.list_runs(conn, ui.RunFilter(status="failed")).runs
    assert (failed.function_id, failed.event_id, failed.event_name) == (
        "a",
        "evt-aa1",
        "shop/order",
    )
    assert failed.error_type == "ValueError"


def test_list_runs__summary_has_the_duration(db: Database) -> None:
    with db.transaction() as conn:
        add_run(conn, started_at=T0, finished_at=T0 + timedelta(seconds=1.5))
        add_run(conn, status="queued", created_at=T0 + timedelta(seconds=1))
        queued, done = ui.list_runs(conn, ui.RunFilter()).runs
    assert (done.duration_ms, queued.duration_ms) == (1500, None)


@pytest.mark.parametrize(
    "given",
    [
        {"data_path": "$.user_id ==="},
        {"status": "done"},
        {"limit": 0},
        {"limit": 501},
        {"before": "not a cursor"},
        {"before": "MjAzMS0wMy0wNHxub3QtYS11dWlk"},  # a date and no uuid
    ],
)
def test_list_runs__a_malformed_filter_is_an_invalid_filter_error(
    db: Database, given: dict[str, Any]
) -> None:
    with db.transaction() as conn:
        add_run(conn)
        with pytest.raises(InvalidFilterError) as info:
            ui.list_runs(conn, ui.RunFilter(**given))
        assert info.value.code == "invalid_filter"
        assert len(ui.list_runs(conn, ui.RunFilter()).runs) == 1  # the transaction goes on


def test_list_runs__a_data_path_examines_a_window_per_page_and_goes_on_after_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui, "SCAN_WINDOW", 4)
    with db.transaction() as conn:
        made = [
            add_run(conn, created_at=T0 + timedelta(seconds=i), data={"hit": i % 5 == 0})
            for i in range(20)
        ]
        first = ui.list_runs(conn, ui.RunFilter(data_path="$.hit", limit=3))
        every = all_pages(conn, ui.RunFilter(data_path="$.hit", limit=3))
    hits = [made[i] for i in (15, 10, 5, 0)]
    assert (page_ids(first), first.next_cursor is not None) == ([], True)  # 19..16: no hit
    assert every == hits


def test_status_counts__per_status_under_the_filter_but_its_status(db: Database) -> None:
    with db.transaction() as conn:
        for status in ("failed", "failed", "completed", "queued"):
            add_run(conn, function_id="a", status=status)
        add_run(conn, function_id="b", status="failed")
        counts = ui.status_counts(conn, ui.RunFilter(function_id="a", status="queued"))
        by_path = ui.status_counts(conn, ui.RunFilter(data_path="$.x"))
    assert counts == {**dict.fromkeys(counts, 0), "failed": 2, "completed": 1, "queued": 1}
    assert set(counts) == set(ui.RUN_STATUSES)
    assert by_path == dict.fromkeys(ui.RUN_STATUSES, 0)


def test_status_counts__stop_at_the_cap(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui, "COUNT_CAP", 3)
    with db.transaction() as conn:
        for _ in range(5):
            add_run(conn, status="failed")
        add_run(conn, status="queued")
        counts = ui.status_counts(conn, ui.RunFilter())
    assert (counts["failed"], counts["queued"]) == (3, 1)


# -- one run --------------------------------------------------------------------------------


def add_step(conn: Connection, run_id: str, step_id: str, position: int, **columns: Any) -> None:
    values = {"run_id": run_id, "step_id": step_id, "position": position, "kind": "run",
              "status": "completed", **columns}  # fmt: skip
    conn.execute(
        text(
            f"INSERT INTO orchestrator.steps ({', '.join(values)}) VALUES ("
            + ", ".join(f"CAST(:{k} AS uuid)" if k == "run_id" else f":{k}" for k in values)
            + ")"
        ),
        values,
    )


def test_run_detail__the_run_with_steps_waits_lineage_event_and_actions(db: Database) -> None:
    with db.transaction() as conn:
        events.insert(conn, "shop/order", '{"n": 1}', event_id="e-1", ts=T0)
        parent = add_run(conn, status="running")
        rid = add_run(conn, status="waiting", event_id="e-1", parent_run_id=parent,
                      created_at=T0 + timedelta(seconds=1))  # fmt: skip
        child = add_run(conn, parent_run_id=rid, created_at=T0 + timedelta(seconds=2))
        copy = add_run(conn, origin="replay", origin_run_id=rid, created_at=T0 + timedelta(3))
        add_step(conn, rid, "charge", 0, duration_ms=250, updated_at=T0 + timedelta(seconds=5))
        add_step(conn, rid, "approval", 1, kind="wait", status="waiting",
                 created_at=T0 + timedelta(seconds=6))  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
                "match_value, since, expires_at) VALUES (CAST(:r AS uuid), 'approval', 'event', "
                "'shop/approved', 'data.order', '42', :t, :t)"
            ),
            {"r": rid, "t": T0},
        )
        ui.record_action(conn, actor="ada", via="session", action="cancel", run_id=rid,
                         detail={"reason": "test"})  # fmt: skip
        detail = ui.run_detail(conn, rid)
    assert detail is not None
    assert detail.run.id == rid and [s.step_id for s in detail.steps] == ["charge", "approval"]
    assert [(w.step_id, w.event_name, w.match) for w in detail.waits] == [
        ("approval", "shop/approved", "data.order == 42")
    ]
    assert detail.parent is not None and detail.parent.id == parent
    assert [c.id for c in detail.children] == [child]
    assert detail.origin is None and [c.id for c in detail.copies] == [copy]
    assert detail.event is not None and detail.event.data == {"n": 1}
    assert [(a.actor, a.action, a.detail) for a in detail.actions] == [
        ("ada", "cancel", {"reason": "test"})
    ]
    assert [(b.label, b.kind) for b in detail.timeline] == [
        ("queued", "queued"),
        ("charge", "completed"),
        ("approval", "waiting"),
    ]
    charge = detail.timeline[1]
    assert charge.end == T0 + timedelta(seconds=5)
    assert charge.start == charge.end - timedelta(milliseconds=250)
    with db.transaction() as conn:
        copy_detail = ui.run_detail(conn, copy)
    assert copy_detail is not None and copy_detail.origin is not None
    assert copy_detail.origin.id == rid


@pytest.mark.parametrize("run_id", ["not-a-uuid", str(uuid.UUID(int=1)), ""])
def test_run_detail__none_for_an_unknown_or_malformed_id(db: Database, run_id: str) -> None:
    with db.transaction() as conn:
        assert ui.run_detail(conn, run_id) is None
        assert ui.actions_for(conn, run_id) == []


def test_timeline__a_retrying_step_shows_its_attempts_and_back_off(db: Database) -> None:
    wake = T0 + timedelta(minutes=1)
    at = [T0 + timedelta(seconds=n) for n in range(10)]
    with db.transaction() as conn:
        rid = add_run(conn, status="sleeping", started_at=at[1])
        add_step(conn, rid, "flaky", 0, status="retrying", attempt=2, duration_ms=1000,
                 created_at=at[1], updated_at=at[3], wake_at=wake)  # fmt: skip
        add_step(conn, rid, "nap", 1, kind="sleep", status="completed",
                 created_at=at[4], updated_at=at[9])  # fmt: skip
        detail = ui.run_detail(conn, rid)
    assert detail is not None
    assert [(b.label, b.kind, b.start, b.end, b.note) for b in detail.timeline] == [
        ("queued", "queued", T0, at[1], ""),
        ("flaky (attempt 2)", "retrying", at[1], at[2], "attempt 1 failed"),
        ("flaky (attempt 2)", "failed", at[2], at[3], ""),
        ("flaky (attempt 2)", "retrying", at[3], wake, "back-off before attempt 3"),
        ("nap", "sleeping", at[4], at[9], ""),
    ]
    [flaky, nap] = ui.attempts(detail.steps)
    assert (flaky.attempt, flaky.started_at, nap.started_at) == (
        2,
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=4),
    )


def test_timeline__the_run_stood_queued_between_a_suspension_and_its_next_step(
    db: Database,
) -> None:
    at = [T0 + timedelta(seconds=n) for n in range(100)]
    with db.transaction() as conn:
        rid = add_run(conn, started_at=at[1], finished_at=at[90])
        # a body, then user code for 4 s (running, not queued), then another body
        add_step(conn, rid, "fetch", 0, duration_ms=1000, created_at=at[2], updated_at=at[2])
        add_step(conn, rid, "parse", 1, duration_ms=1000, created_at=at[7], updated_at=at[7])
        # a sleep until 61 s, written completed when a worker replayed it at 70 s
        add_step(conn, rid, "nap", 2, kind="sleep", wake_at=at[61],
                 created_at=at[8], updated_at=at[70])  # fmt: skip
        add_step(conn, rid, "ship", 3, duration_ms=500, created_at=at[71], updated_at=at[71])
        # a wait whose event came at 80 s; the next step began at 85 s
        add_step(conn, rid, "approval", 4, kind="wait", wake_at=at[99],
                 created_at=at[72], updated_at=at[80])  # fmt: skip
        add_step(conn, rid, "file", 5, duration_ms=2000, created_at=at[87], updated_at=at[87])
        detail = ui.run_detail(conn, rid)
    assert detail is not None
    half = timedelta(milliseconds=500)
    assert [(b.label, b.kind, b.start, b.end) for b in detail.timeline] == [
        ("queued", "queued", T0, at[1]),
        ("fetch", "completed", at[1], at[2]),
        ("parse", "completed", at[6], at[7]),
        ("nap", "sleeping", at[8], at[61]),
        ("ship", "queued", at[61], at[71] - half),
        ("ship", "completed", at[71] - half, at[71]),
        ("approval", "waiting", at[72], at[80]),
        ("file", "queued", at[80], at[85]),
        ("file", "completed", at[85], at[87]),
    ]


def test_timeline__a_step_that_failed_twice_then_succeeded_made_by_the_engine(
    db_url: str, db: Database
) -> None:
    from orchestrator import Context, Orchestrator, RetryAfterError, event
    from orchestrator.testing import TestEnv

    app = Orchestrator()

    @app.function("flow", trigger=event("go"))
    def flow(ctx: Context) -> int:
        ctx.step.run("prep", lambda: 1)
        ctx.step.run("flaky", lambda: 2)
        ctx.step.sleep("nap", timedelta(minutes=5))
        return int(ctx.step.run("after", lambda: 3))

    # RetryAfterError: back-offs of exactly 10 s (no jitter), so the times are known
    with TestEnv(app, url=db_url, start=T0) as env:
        env.fail_step("flow", "flaky", times=2, error=RetryAfterError(10))
        rid = env.start("flow", {})
        env.advance(timedelta(minutes=10))
        assert [(c.attempt, c.at) for c in env.calls("flow", "flaky")] == [
            (1, T0), (2, T0 + timedelta(seconds=10)), (3, T0 + timedelta(seconds=20))
        ]  # fmt: skip
        assert env.run(rid).status == "completed"
    with db.transaction() as conn:
        detail = ui.run_detail(conn, rid)
    assert detail is not None
    woke = T0 + timedelta(seconds=20, minutes=5)
    assert [(b.label, b.kind, b.start, b.end, b.note) for b in detail.timeline] == [
        ("queued", "queued", T0, T0, ""),
        ("prep", "completed", T0, T0, ""),
        ("flaky (attempt 3)", "retrying", T0, T0 + timedelta(seconds=20), "attempts 1-2 failed"),
        ("flaky (attempt 3)", "completed", T0 + timedelta(seconds=20),
         T0 + timedelta(seconds=20), ""),
        ("nap", "sleeping", T0 + timedelta(seconds=20), woke, ""),
        ("after", "completed", woke, woke, ""),
    ]  # fmt: skip


# -- functions, events, queue, schedules, daemons -------------------------------------------


def test_function_stats__counts_durations_throughput_and_servers(
    db: Database, pinned: datetime
) -> None:
    with db.transaction() as conn:
        functions.upsert(conn, "f", triggers=[{"event": "shop/order"}],
                         options={"retries": 3}, version="v1")  # fmt: skip
        for n, ms in enumerate((100, 200, 300, 400)):
            end = pinned - timedelta(minutes=n * 10 + 1)
            add_run(conn, started_at=end - timedelta(milliseconds=ms), finished_at=end,
                    created_at=end - timedelta(seconds=1))  # fmt: skip
        old = pinned - timedelta(hours=2)
        add_run(conn, started_at=old, finished_at=old + timedelta(seconds=60), created_at=old)
        add_run(conn, status="failed")
        daemons.register(conn, str(uuid.uuid4()), hostname="h1", pid=12, app="a", version="1",
                         workers=1, concurrency=4, functions=["f"])  # fmt: skip
        daemons.register(conn, str(uuid.uuid4()), hostname="h2", pid=13, app="a", version="1",
                         workers=1, concurrency=4, functions=["g"])  # fmt: skip
        stats = ui.function_stats(conn, "f")
        overview = ui.functions_overview(conn)
        assert ui.function_stats(conn, "nope") is None
    assert stats is not None and overview == [stats]
    assert (stats.triggers, stats.options, stats.version) == (
        [{"event": "shop/order"}],
        {"retries": 3},
        "v1",
    )
    assert stats.served_by == ["h1:12"]
    assert (stats.counts["completed"], stats.counts["failed"]) == (5, 1)
    assert stats.p50_ms == pytest.approx(250) and stats.p95_ms == pytest.approx(385)
    assert len(stats.per_minute) == 60 and sum(n for _, n in stats.per_minute) == 4
    assert stats.per_minute[-1][0] == pinned.replace(second=0, microsecond=0)
    assert dict(stats.per_minute)[pinned - timedelta(minutes=31)] == 1


def test_list_events__newest_first_by_name_parked_with_their_runs_and_pages(
    db: Database,
) -> None:
    with db.transaction() as conn:
        for i in range(5):
            events.insert(conn, f"shop/{'a' if i % 2 else 'b'}", "{}", event_id=f"e{i}", ts=T0)
        events.park(conn, "e3", "no function subscribes")
        run = add_run(conn, event_id="e1")
        first, cursor = ui.list_events(conn, limit=2)
        second, last = ui.list_events(conn, limit=2, before=cursor)
        third, end = ui.list_events(conn, limit=2, before=last)
        named, _ = ui.list_events(conn, name="shop/a")
        parked, _ = ui.list_events(conn, parked=True)
        one = ui.get_event(conn, "e1")
        with pytest.raises(InvalidFilterError):
            ui.list_events(conn, before="x")
        assert ui.get_event(conn, "none") is None
    assert [e.id for e in first + second + third] == ["e4", "e3", "e2", "e1", "e0"]
    assert end is None
    assert [e.id for e in named] == ["e3", "e1"]
    assert [(e.id, e.error) for e in parked] == [("e3", "no function subscribes")]
    assert one is not None and one.run_ids == [run]


def test_queue_overview__reasons_concurrency_and_limiters(db: Database, pinned: datetime) -> None:
    with db.transaction() as conn:
        functions.upsert(conn, "f", triggers=[], options={"concurrency": [{"limit": 2,
                         "key": "event.data.user"}]}, version="")  # fmt: skip
        # the run_queue view reads the real clock (db/clock.py): a run due in the past
        add_run(conn, status="queued", created_at=datetime(2020, 1, 1, tzinfo=UTC))
        add_run(conn, status="running", concurrency_keys=["u1"])
        add_run(conn, status="running", concurrency_keys=["u1"])
        conn.execute(
            text(
                "INSERT INTO orchestrator.limiters (function_id, kind, key, tat) VALUES "
                "('f', 'throttle', 'k', :later), ('f', 'rate_limit', 'old', :earlier)"
            ),
            {"later": pinned + timedelta(minutes=1), "earlier": pinned - timedelta(minutes=1)},
        )
        overview = ui.queue_overview(conn)
    assert sum(overview.by_reason.values()) == 1  # the due queued run, whatever holds it
    assert overview.concurrency == [("f", "u1", 2, 2)]
    assert overview.limiters == [("f", "throttle", "k", pinned + timedelta(minutes=1))]


def test_schedules_and_daemons(db: Database) -> None:
    did = str(uuid.uuid4())
    with db.transaction() as conn:
        functions.upsert(conn, "nightly", triggers=[], options={}, version="")
        functions.upsert_schedule(conn, "nightly", cron="0 3 * * *", tz="UTC", next_fire_at=T0)
        daemons.register(conn, did, hostname="h", pid=7, app="a", version="9.9",
                         workers=2, concurrency=8)  # fmt: skip
        add_run(conn, status="running", lease_owner=did)
        add_run(conn, status="running")
        [schedule] = ui.schedules(conn)
        [daemon] = ui.daemons(conn)
    assert (schedule.function_id, schedule.cron, schedule.next_fire_at) == (
        "nightly",
        "0 3 * * *",
        T0,
    )
    assert (daemon.id, daemon.hostname, daemon.version, daemon.running_runs) == (did, "h", "9.9", 1)
    assert (daemon.workers, daemon.concurrency, daemon.leader) == (2, 8, False)


def test_record_action__every_field_oldest_first(db: Database, pinned: datetime) -> None:
    rid, new = str(uuid.uuid4()), str(uuid.uuid4())  # no run rows: history outlives them
    with db.transaction() as conn:
        ui.record_action(conn, actor="ada", via="token", action="fork", run_id=rid,
                         new_run_id=new, detail={"from_step": "charge"})  # fmt: skip
        ui.record_action(conn, actor="cli", via="cli", action="replay", run_id=rid)
        ui.record_action(conn, actor="ada", via="session", action="send", event_id="e-9")
        actions = ui.actions_for(conn, rid.upper())
    assert [(a.actor, a.via, a.action, a.new_run_id, a.detail, a.at) for a in actions] == [
        ("ada", "token", "fork", new, {"from_step": "charge"}, pinned),
        ("cli", "cli", "replay", None, {}, pinned),
    ]


# -- accounts -------------------------------------------------------------------------------


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def test_users__add_change_list_remove(db: Database) -> None:
    with db.transaction() as conn:
        ui_auth.add_user(conn, "ada", "$argon2id$1", "operator")
        ui_auth.add_user(conn, "bob", "$argon2id$2", "viewer")
        with pytest.raises(UserExistsError) as info:
            ui_auth.add_user(conn, "ada", "$argon2id$3", "viewer")
        assert info.value.code == "ui_user_exists"
        assert ui_auth.set_password(conn, "bob", "$argon2id$4")
        assert ui_auth.set_role(conn, "bob", "operator")
        assert not ui_auth.set_password(conn, "nobody", "x")
        users = ui_auth.list_users(conn)
        assert ui_auth.count_users(conn) == 2
        assert ui_auth.remove_user(conn, "ada") and not ui_auth.remove_user(conn, "ada")
        assert ui_auth.get_user(conn, "ada") is None
    assert [(u.name, u.role, u.password_hash) for u in users] == [
        ("ada", "operator", "$argon2id$1"),
        ("bob", "operator", "$argon2id$4"),
    ]


@pytest.mark.parametrize(("name", "role"), [("Ada", "viewer"), ("-x", "viewer"), ("ok", "admin")])
def test_users__a_bad_name_or_role_is_refused(db: Database, name: str, role: str) -> None:
    with db.transaction() as conn, pytest.raises(UsageError):
        ui_auth.add_user(conn, name, "h", role)


def test_sessions__live_until_they_expire_and_go_with_their_user(
    db: Database, pinned: datetime
) -> None:
    with db.transaction() as conn:
        ui_auth.add_user(conn, "ada", "h", "viewer")
        ui_auth.create_session(conn, digest("s1"), "ada", "csrf-1", ttl_seconds=3600)
        ui_auth.create_session(conn, digest("s2"), "ada", "csrf-2", ttl_seconds=60)
        session = ui_auth.get_session(conn, digest("s1"))
        assert ui_auth.get_session(conn, digest("unknown")) is None
    assert session == ui_auth.UiSession("ada", "viewer", "csrf-1", pinned + timedelta(hours=1))
    clock.set(pinned + timedelta(seconds=61))
    with db.transaction() as conn:
        assert ui_auth.get_session(conn, digest("s2")) is None
        assert ui_auth.purge_sessions(conn) == 1
        ui_auth.set_role(conn, "ada", "operator")
        live = ui_auth.get_session(conn, digest("s1"))
        assert live is not None and live.role == "operator"  # the role as it is now
        ui_auth.delete_session(conn, digest("s1"))
        assert ui_auth.get_session(conn, digest("s1")) is None
        ui_auth.create_session(conn, digest("s3"), "ada", "csrf-3", ttl_seconds=60)
        ui_auth.remove_user(conn, "ada")
        assert ui_auth.get_session(conn, digest("s3")) is None


def seen(db: Database, table: str, column: str) -> list[Any]:
    with db.transaction() as conn:
        return list(conn.execute(text(f"SELECT {column} FROM orchestrator.{table}")).scalars())


def test_sessions__last_seen_moves_at_most_once_a_minute(db: Database, pinned: datetime) -> None:
    with db.transaction() as conn:
        ui_auth.add_user(conn, "ada", "h", "viewer")
        ui_auth.create_session(conn, digest("s"), "ada", "c", ttl_seconds=3600)
    for later, expected in ((30, 0), (59, 0), (61, 61), (100, 61), (122, 122)):
        clock.set(pinned + timedelta(seconds=later))
        with db.transaction() as conn:
            assert ui_auth.get_session(conn, digest("s")) is not None
        assert seen(db, "ui_sessions", "last_seen_at") == [pinned + timedelta(seconds=expected)]


def test_tokens__found_by_hash_until_revoked(db: Database, pinned: datetime) -> None:
    with db.transaction() as conn:
        tid = ui_auth.create_token(conn, "ci", digest("t1"), "operator")
        with pytest.raises(UserExistsError):
            ui_auth.create_token(conn, "ci", digest("t2"), "viewer")
        token = ui_auth.token_by_hash(conn, digest("t1"))
        assert ui_auth.token_by_hash(conn, digest("t2")) is None
    assert token is not None and (token.id, token.name, token.role) == (tid, "ci", "operator")
    assert seen(db, "ui_tokens", "last_used_at") == [pinned]
    with db.transaction() as conn:
        assert ui_auth.revoke_token(conn, "ci") and not ui_auth.revoke_token(conn, "ci")
        assert ui_auth.token_by_hash(conn, digest("t1")) is None
        [listed] = ui_auth.list_tokens(conn)
    assert (listed.name, listed.revoked_at) == ("ci", pinned)
