"""Event triggers against a live daemon: `if_` conditions, functions with several triggers,
and one event fanning out to every function it triggers, exactly once each.

One daemon serves the tests of this module (tests/e2e/shared.py): each test looks only at the
runs of its own events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import scalar, sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"
module_daemons, served = shared_daemons(APP, workers=1)


def send(url: str, name: str, data: dict[str, Any]) -> str:
    """Insert an event by plain SQL, as any producer would; returns its id."""
    return str(
        scalar(
            url,
            "INSERT INTO orchestrator.events (name, data) VALUES (%s, %s::jsonb) RETURNING id",
            (name, json.dumps(data)),
        )
    )


def runs_of_events(url: str, event_ids: list[str]) -> int:
    return int(
        scalar(
            url,
            "SELECT count(*) FROM orchestrator.runs WHERE event_id = ANY(%s)",
            (event_ids,),
        )
    )


def runs_of(url: str, event_id: str) -> list[tuple[str, str, Any]]:
    """(function, status, output) of every run event `event_id` started, by function."""
    return sql(
        url,
        "SELECT function_id, status, output FROM orchestrator.runs WHERE event_id = %s "
        'ORDER BY function_id COLLATE "C", id',
        (event_id,),
    )


def completed(url: str, event_id: str, functions: list[str]) -> list[tuple[str, str, Any]]:
    """Wait until the runs of `functions` for `event_id` have all completed; returns every
    run of the event (their ingest is one transaction, so no run of it can come later)."""

    def check() -> list[tuple[str, str, Any]] | None:
        rows = runs_of(url, event_id)
        done = {fid for fid, status, _ in rows if status == "completed"}
        return rows if done >= set(functions) else None

    return eventually(check, what=f"runs of {functions} for event {event_id} completed")


@pytest.mark.timeout(60)
def test_triggers__if_condition__filters_events(served: Served):
    e2e_url = served.url
    big = send(e2e_url, "shop/order", {"amount": 500})
    small = send(e2e_url, "shop/order", {"amount": 5})

    assert completed(e2e_url, big, ["big-orders", "any-order"]) == [
        ("any-order", "completed", "any"),
        ("big-orders", "completed", "big"),
    ]
    # its any-order run is the marker that the small order was ingested
    assert completed(e2e_url, small, ["any-order"]) == [("any-order", "completed", "any")]
    assert runs_of_events(e2e_url, [big, small]) == 3


@pytest.mark.timeout(60)
def test_triggers__two_triggers_match_one_event__function_runs_once(served: Served):
    e2e_url = served.url
    # any-order has two triggers on shop/order (one with `if_="true"`): both match each event
    sent = [send(e2e_url, "shop/order", {"amount": amount}) for amount in (1, 200, 3)]

    for event_id in sent:
        rows = completed(e2e_url, event_id, ["any-order"])
        assert [r for r in rows if r[0] == "any-order"] == [("any-order", "completed", "any")]
    assert sql(
        e2e_url,
        "SELECT event_id, count(*) FROM orchestrator.runs WHERE function_id = 'any-order' "
        'AND event_id = ANY(%s) GROUP BY event_id ORDER BY event_id COLLATE "C"',
        (sent,),
    ) == sorted((event_id, 1) for event_id in sent)


@pytest.mark.timeout(60)
def test_triggers__several_triggers__function_runs_for_each(served: Served):
    e2e_url = served.url
    a = send(e2e_url, "shop/a", {})
    b = send(e2e_url, "shop/b", {})

    assert completed(e2e_url, a, ["either"]) == [("either", "completed", "shop/a")]
    assert completed(e2e_url, b, ["either"]) == [("either", "completed", "shop/b")]
    assert runs_of_events(e2e_url, [a, b]) == 2


@pytest.mark.timeout(60)
def test_triggers__one_event_fans_out__once_each_even_if_sent_twice(served: Served):
    e2e_url = served.url
    first = "INSERT INTO orchestrator.events (id, name, data) VALUES (%s, 'shop/order', %s::jsonb)"
    insert = f"{first} ON CONFLICT (id) DO NOTHING RETURNING id"
    payload = json.dumps({"amount": 500})
    sql(e2e_url, first, ("order-42", payload))
    # the same event again, before and after its ingest: nothing is written
    assert sql(e2e_url, insert, ("order-42", payload)) == []

    expected = [("any-order", "completed", "any"), ("big-orders", "completed", "big")]
    assert completed(e2e_url, "order-42", ["big-orders", "any-order"]) == expected
    assert sql(e2e_url, insert, ("order-42", json.dumps({"amount": 900}))) == []

    # a later event's runs are the marker that the ingest went past anything sent before it
    later = send(e2e_url, "shop/order", {"amount": 7})
    completed(e2e_url, later, ["any-order"])
    assert runs_of(e2e_url, "order-42") == expected
    assert sql(e2e_url, "SELECT data FROM orchestrator.events WHERE id = 'order-42'") == [
        ({"amount": 500},)
    ]
    assert runs_of_events(e2e_url, ["order-42", later]) == 3
