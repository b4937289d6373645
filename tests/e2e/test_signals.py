"""Signals and run state against the real daemon: delivered in order and once each across a
kill -9, durable before the run waits, and state visible mid-flight and never ahead of the
steps after a kill -9."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import Orchestrator
from tests.conftest import eventually
from tests.e2e.harness import cli, effects, run_of, scalar, send, sql

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.signals:app"
RUNS = 100
TAKES = 10


@pytest.fixture
def client(e2e_url: str) -> Iterator[Orchestrator]:
    app = Orchestrator(e2e_url)
    yield app
    app.close()


def status(url: str, run_id: str) -> str:
    return str(scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def completed(url: str, run_ids: list[str]) -> bool:
    done = scalar(
        url,
        "SELECT count(*) FROM orchestrator.runs "
        "WHERE id = ANY(%s::uuid[]) AND status = 'completed'",
        (run_ids,),
    )
    return bool(done == len(run_ids))


@pytest.mark.timeout(150)
def test_signals__1000_to_100_runs_in_order_once_each_across_a_kill9(
    e2e_url: str, daemon_factory: Any, client: Orchestrator
) -> None:
    daemon = daemon_factory(APP)
    names = ["signals/collect", "signals/collect-async"]
    events = [send(e2e_url, names[i % 2], {"i": i}) for i in range(RUNS)]
    run_ids = [run_of(e2e_url, e) for e in events]
    # half of the signals go before any run waits, the rest while they take them
    for n in range(TAKES):
        if n == TAKES // 2:
            eventually(
                lambda: (
                    scalar(
                        e2e_url,
                        "SELECT count(*) FROM orchestrator.signals WHERE consumed_at IS NOT NULL",
                    )
                    >= 100
                ),
                what="runs taking signals",
            )
            daemon.kill9()  # in the middle of taking them
        for run_id in run_ids:
            client.signal(run_id, "item", {"n": n})
        if n == TAKES // 2:
            daemon = daemon_factory(APP)
    eventually(lambda: completed(e2e_url, run_ids), timeout=90, what="every run completed")

    rows = sql(
        e2e_url,
        "SELECT id::text, output, state FROM orchestrator.runs WHERE id = ANY(%s::uuid[])",
        (run_ids,),
    )
    expected = [{"n": n} for n in range(TAKES)]
    assert {run_id: output for run_id, output, _ in rows} == dict.fromkeys(run_ids, expected)
    assert all(state == {"taken": TAKES} for _, _, state in rows)
    taken = sql(
        e2e_url,
        "SELECT run_id::text, consumed_by, data FROM orchestrator.signals ORDER BY run_id, id",
    )
    assert len(taken) == RUNS * TAKES  # none lost, none left over
    steps = ["next"] + [f"next#{i}" for i in range(1, TAKES)]
    by_run: dict[str, list[tuple[str, Any]]] = {}
    for run_id, step, data in taken:
        by_run.setdefault(run_id, []).append((step, data))
    assert by_run == {r: list(zip(steps, expected, strict=True)) for r in run_ids}
    assert not daemon.problems()


@pytest.mark.timeout(60)
def test_signals__one_sent_before_the_run_waits_is_taken_by_the_later_wait(
    e2e_url: str, daemon_factory: Any, client: Orchestrator
) -> None:
    daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "signals/late"))
    eventually(lambda: status(e2e_url, run_id) == "running", what="run busy in its first step")
    client.signal(run_id, "approved", {"by": "ops"})
    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:busy",))
    eventually(lambda: status(e2e_url, run_id) == "completed", what="run completed")
    output = scalar(e2e_url, "SELECT output FROM orchestrator.runs WHERE id = %s", (run_id,))
    assert output == {"by": "ops"}


@pytest.mark.timeout(90)
def test_run_state__visible_mid_flight_and_not_ahead_of_the_steps_after_a_kill9(
    e2e_url: str, daemon_factory: Any, client: Orchestrator
) -> None:
    daemon = daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "signals/progress"))
    eventually(lambda: status(e2e_url, run_id) == "waiting", what="run waiting for 'go'")
    assert client.run_state(run_id) == {"phase": "one"}
    shown = json.loads(cli(e2e_url, "runs", "show", run_id, "--json").stdout)
    assert shown["state"] == {"phase": "one"}

    sent = json.loads(cli(e2e_url, "runs", "signal", run_id, "go", "--data", "{}", "--json").stdout)
    assert sent["run_id"] == run_id
    eventually(lambda: effects(e2e_url, run_id).get("two") == 1, what="step two running")
    daemon.kill9()  # inside step two's body: 'go' is recorded, 'two' is not
    # "two" is set before step two runs, and written with its checkpoint, which the kill
    # prevented: the state stays as the last write left it
    assert client.run_state(run_id) == {"phase": "one"}
    done = sql(
        e2e_url,
        "SELECT step_id FROM orchestrator.steps WHERE run_id = %s AND status = 'completed' "
        "ORDER BY position",
        (run_id,),
    )
    assert [row[0] for row in done] == ["one", "go"]

    daemon_factory(APP)
    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:two",))
    eventually(lambda: status(e2e_url, run_id) == "completed", timeout=60, what="run completed")
    assert client.run_state(run_id) == {"phase": "three"}
    assert effects(e2e_url, run_id) == {"one": 1, "two": 2, "three": 1}  # two: cut by the kill

    refused = cli(e2e_url, "runs", "signal", run_id, "go", "--json", check=False)
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["code"] == "run_finished"
