"""The async methods on the app's own connections: any event loop, never blocked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from orchestrator import Orchestrator
from orchestrator.db.database import Database
from orchestrator.errors import RunNotFoundError
from tests.conftest import eventually
from tests.db.helpers import claim, execute, queue_runs, wait_until_blocked

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(db_url: str) -> Iterator[Orchestrator]:
    app = Orchestrator(db_url)
    yield app
    asyncio.run(app.aclose())
    app.close()


def _data(db: Database, event_id: str) -> object:
    rows = execute(db, "SELECT data FROM orchestrator.events WHERE id = :i", i=event_id)
    return rows[0][0] if rows else None


def _client_connections(db: Database) -> int:
    rows = execute(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'orchestrator-client'",
    )
    return int(rows[0][0])


def test_send_async_and_cancel_async__from_one_event_loop_after_another(
    app: Orchestrator, db: Database
) -> None:
    queued = queue_runs(db, 2)

    async def use(i: int) -> tuple[str, list[str], str]:
        event_id = await app.send_async("async/a", {"loop": i})
        many = await app.send_many_async([{"name": "async/b", "data": {"loop": i}}])
        return event_id, many, await app.cancel_async(queued[i])

    for i in range(2):  # asyncio.run returns (nothing is left running on its loop) each time
        event_id, [other], status = asyncio.run(use(i))
        assert (_data(db, event_id), _data(db, other), status) == (
            {"loop": i},
            {"loop": i},
            "cancelled",
        )


def test_cancel_async__the_same_answers_as_cancel(app: Orchestrator, db: Database) -> None:
    queued = queue_runs(db, 4)
    claim(db, "00000000-0000-0000-0000-000000000001", limit=2)  # the first two are running

    async def cancel_async(run_id: str) -> str:
        return await app.cancel_async(run_id, reason="async")

    statuses = [app.cancel(queued[0]), asyncio.run(cancel_async(queued[1]))]
    statuses += [app.cancel(queued[2]), asyncio.run(cancel_async(queued[3]))]
    assert statuses == ["cancelled"] * 4  # running ones too
    assert asyncio.run(cancel_async(queued[3])) == "cancelled"  # ended: left as it is
    for unknown in ["00000000-0000-0000-0000-0000000000ff", "not-an-id"]:
        with pytest.raises(RunNotFoundError, match="no run with id"):
            app.cancel(unknown)
        with pytest.raises(RunNotFoundError, match="no run with id"):
            asyncio.run(cancel_async(unknown))


def test_cancel_async__children_false_leaves_invoked_runs(app: Orchestrator, db: Database) -> None:
    from orchestrator.db import runs

    [parent, other] = queue_runs(db, 2)
    with db.transaction() as conn:
        children = runs.create_many(
            conn, [runs.NewRun("f", [{}], parent_run_id=p) for p in (parent, other)]
        )

    async def both() -> tuple[str, str]:
        alone = await app.cancel_async(parent, children=False)
        return alone, await app.cancel_async(other)

    assert asyncio.run(both()) == ("cancelled", "cancelled")
    statuses = execute(
        db,
        "SELECT status FROM orchestrator.runs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY "
        "array_position(CAST(:ids AS uuid[]), id)",
        ids=children,
    )
    assert statuses == [("queued",), ("cancelled",)]


def test_send_async__does_not_block_the_event_loop(
    app: Orchestrator, db: Database, db_url: str
) -> None:
    async def scenario(blocker: psycopg.Connection[object]) -> tuple[int, int, str]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        send = asyncio.create_task(app.send_async("async/a", {"n": 1}, id="contended"))
        pid = blocker.info.backend_pid
        await asyncio.to_thread(wait_until_blocked, db, pid, "the send to wait for the lock")
        during = ticks

        async def ticked_on() -> None:  # the send is still waiting: the loop must go on ticking
            while ticks < during + 3:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(ticked_on(), 10)
        assert not send.done()
        blocker.rollback()
        event_id = await send
        ticker.cancel()
        return during, ticks, event_id

    with psycopg.connect(db_url) as blocker:  # an uncommitted insert of the same id
        blocker.execute("INSERT INTO orchestrator.events (id, name) VALUES ('contended', 'x')")
        during, after, event_id = asyncio.run(scenario(blocker))
    assert after > during > 0
    assert (event_id, _data(db, event_id)) == ("contended", {"n": 1})


def test_send_async__cancelled_while_waiting_writes_nothing_and_the_pool_still_serves(
    app: Orchestrator, db: Database, db_url: str
) -> None:
    async def scenario(blocker: psycopg.Connection[object]) -> str:
        send = asyncio.create_task(app.send_async("async/a", id="cancelled-send"))
        pid = blocker.info.backend_pid
        await asyncio.to_thread(wait_until_blocked, db, pid, "the send to wait for the lock")
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send
        blocker.rollback()
        return await app.send_async("async/a", id="after")

    with psycopg.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE orchestrator.events IN EXCLUSIVE MODE")
        assert asyncio.run(scenario(blocker)) == "after"
    assert _data(db, "cancelled-send") is None
    assert _data(db, "after") == {}


def test_aclose__closes_the_connections_and_a_later_call_opens_new_ones(
    app: Orchestrator, db: Database
) -> None:
    async def send_then_close() -> None:
        await app.send_async("async/a")
        await app.aclose()

    asyncio.run(send_then_close())
    eventually(lambda: _client_connections(db) == 0, timeout=10, what="the pool to close")
    asyncio.run(app.send_async("async/a", id="reopened"))
    assert _data(db, "reopened") == {}
    assert _client_connections(db) >= 1
