"""`app.start` and `RunHandle.result` against the real daemon (tests/e2e/apps/handles.py):
a started run executes and its output comes back; a failed run raises its typed error; a
result that times out leaves the run to complete later; the async face does the same.

One daemon serves the tests of this module (tests/e2e/shared.py); each looks at its own runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from orchestrator import Orchestrator, RunFailedError, RunTimeoutError
from tests.e2e.harness import sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.handles:app"
module_daemons, served = shared_daemons(APP)


@pytest.fixture
def client(served: Served) -> Iterator[Orchestrator]:
    """A client app of its own, with none of the functions registered: it starts them by
    the ids the daemon registered."""
    app = Orchestrator(served.url)
    yield app
    app.close()


def test_start__result_returns_the_output_and_a_failure_raises(client: Orchestrator) -> None:
    handle = client.start("double", {"x": 21})
    assert handle.result(timeout=30) == {
        "doubled": 42,
        "event": "orchestrator/function.started",
        "event_id": f"start:{handle.run_id}",
    }
    assert handle.status() == "completed"

    failing = client.start("explode")
    with pytest.raises(RunFailedError, match="exploded on purpose") as caught:
        failing.result(timeout=30)
    assert caught.value.run_id == failing.run_id
    assert caught.value.error["type"] == "NonRetriableError"


def test_result__timeout_raises_and_the_run_completes_later(
    client: Orchestrator, served: Served
) -> None:
    gate = f"gate-{uuid.uuid4()}"
    handle = client.start("gated", {"gate": gate})
    with pytest.raises(RunTimeoutError):
        handle.result(timeout=1)
    assert handle.status() in ("queued", "running")
    sql(served.url, "INSERT INTO gates (name) VALUES (%s)", (gate,))
    assert handle.result(timeout=30) == "through"


def test_start__delayed_run_starts_when_due(client: Orchestrator, served: Served) -> None:
    handle = client.start("double", {"x": 1}, delay=1.5)
    assert handle.result(timeout=30)["doubled"] == 2
    delay, early = sql(
        served.url,
        "SELECT extract(epoch FROM due_at - created_at), started_at < due_at "
        "FROM orchestrator.runs WHERE id = %s",
        (handle.run_id,),
    )[0]
    assert (float(delay), early) == (1.5, False)  # due 1.5 s after it was made, not started before


def test_async__start_and_result(client: Orchestrator) -> None:
    async def scenario() -> list[object]:
        handles = [await client.start_async("double", {"x": x}) for x in range(3)]
        return await asyncio.gather(*(h.result_async(timeout=30) for h in handles))

    outputs = asyncio.run(scenario())
    assert [o["doubled"] for o in outputs] == [0, 2, 4]  # type: ignore[index]
