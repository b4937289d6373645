"""Syncing an Inngest SDK app (orchestrator/inngest/sync.py) on a real database: each
function config option mapped to ours or refused with its reason; hostile payloads refused
with a typed error and nothing stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orchestrator.db import apps, functions
from orchestrator.db.database import Database
from orchestrator.errors import AppSyncError, InvalidAppError, SignatureError
from orchestrator.flow import FlowPolicy
from orchestrator.inngest import signing, sync, timestr
from tests.db.helpers import execute as sql

URL = "http://127.0.0.1:3000/api/inngest"


def fn(slug: str, **config: Any) -> dict[str, Any]:
    fid = f"shop-{slug}"
    return {
        "id": fid,
        "name": slug,
        "triggers": config.pop("triggers", [{"event": "shop/order.created"}]),
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http", "url": f"{URL}?fnId={fid}&stepId=step"},
                "retries": config.pop("retries", {"attempts": 5}),
            }
        },
        **config,
    }


def payload(*fns: dict[str, Any], app: str = "shop") -> dict[str, Any]:
    return {
        "url": URL,
        "deployType": "ping",
        "appName": app,
        "framework": "express",
        "sdk": "inngest-js:v3.54.2",
        "v": "0.1",
        "functions": list(fns),
    }


def registered(db: Database) -> dict[str, functions.FunctionRow]:
    with db.transaction() as conn:
        return {row.id: row for row in functions.list_all(conn)}


def refusals(answer: dict[str, Any], fid: str) -> list[dict[str, Any]]:
    return [r for r in answer["refused"] if r["function"] == fid]


def test_register__stores_the_app_and_its_functions(db: Database) -> None:
    answer = sync.register(db, payload(fn("welcome")), headers={})
    assert answer["ok"] is True and answer["modified"] is True and answer["refused"] == []
    row = registered(db)["shop-welcome"]
    assert row.triggers == [{"type": "event", "name": "shop/order.created", "if": None}]
    assert row.options["retries"] == 5
    assert row.options["inngest"] == {
        "app": "shop",
        "url": f"{URL}?fnId=shop-welcome&stepId=step",
        "name": "welcome",
    }
    with db.transaction() as conn:
        (app,) = apps.list_all(conn)
    assert (app.id, app.url, app.sdk, app.framework) == (
        "shop",
        URL,
        "inngest-js:v3.54.2",
        "express",
    )
    again = sync.register(db, payload(fn("welcome")), headers={})
    assert again["modified"] is False


def test_register__maps_triggers_with_expressions_and_cron_zones(db: Database) -> None:
    sync.register(
        db,
        payload(
            fn("big", triggers=[{"event": "shop/order.created", "expression": "event.data.n > 5"}]),
            fn("nightly", triggers=[{"cron": "TZ=Europe/Paris 0 3 * * *"}]),
        ),
        headers={},
    )
    rows = registered(db)
    assert rows["shop-big"].triggers[0]["if"] == "event.data.n > 5"
    cron = rows["shop-nightly"].triggers[0]
    assert (cron["expr"], cron["tz"]) == ("0 3 * * *", "Europe/Paris")


def test_register__maps_every_flow_control_option(db: Database) -> None:
    config = {
        "concurrency": [{"limit": 2, "key": "event.data.user"}, {"limit": 10, "scope": "fn"}],
        "throttle": {"limit": 5, "period": "1m", "key": "event.data.user", "burst": 2},
        "priority": {"run": "event.data.vip ? 100 : 0"},
        "idempotency": "event.data.order_id",
        "cancel": [
            {
                "event": "shop/order.cancelled",
                "if": "async.data.id == event.data.id",
                "timeout": "2h30m",
            }
        ],
        "timeouts": {"start": "10s", "finish": "1d"},
    }
    answer = sync.register(db, payload(fn("flow", **config)), headers={})
    assert answer["refused"] == []
    options = registered(db)["shop-flow"].options
    assert options["concurrency"] == [
        {"limit": 2, "key": "event.data.user"},
        {"limit": 10, "key": None},
    ]
    assert options["throttle"] == {"limit": 5, "period": 60.0, "key": "event.data.user", "burst": 2}
    assert options["priority"] == {"run": "event.data.vip ? 100 : 0"}
    assert options["idempotency"]["key"] == "event.data.order_id"
    assert options["cancel_on"] == [
        {
            "event": "shop/order.cancelled",
            "match": None,
            "if": "async.data.id == event.data.id",
            "timeout": 9000.0,
        }
    ]
    assert options["timeouts"] == {"start": 10.0, "finish": 86400.0}
    policy = FlowPolicy.from_options(options)  # what the daemon compiles from the row
    assert policy.claims and policy.throttle is not None and policy.priority is not None


def test_register__maps_rate_limit_debounce_batch_and_singleton(db: Database) -> None:
    answer = sync.register(
        db,
        payload(
            fn("limited", rateLimit={"limit": 3, "period": "1h", "key": "event.data.u"}),
            fn("debounced", debounce={"period": "30s", "key": "event.data.u", "timeout": "5m"}),
            fn("batched", batchEvents={"maxSize": 50, "timeout": "5s", "if": "event.data.x"}),
            fn("single", singleton={"key": "event.data.u", "mode": "cancel"}),
        ),
        headers={},
    )
    rows = registered(db)
    assert rows["shop-limited"].options["rate_limit"] == {
        "limit": 3,
        "period": 3600.0,
        "key": "event.data.u",
    }
    assert rows["shop-debounced"].options["debounce"] == {
        "period": 30.0,
        "key": "event.data.u",
        "timeout": 300.0,
    }
    assert rows["shop-batched"].options["batch_events"] == {
        "max_size": 50,
        "timeout": 5.0,
        "key": None,
    }
    assert rows["shop-single"].options["singleton"] == {"key": "event.data.u", "mode": "cancel"}
    # the batch's condition is dropped, said so, and the function kept
    (dropped,) = refusals(answer, "shop-batched")
    assert dropped["option"] == "batchEvents.if" and dropped["registered"] is True


@pytest.mark.parametrize(
    ("config", "option", "reason"),
    [
        ({"concurrency": [{"limit": 1, "scope": "account"}]}, "concurrency", "across functions"),
        ({"throttle": {"limit": 1, "period": "1 minute"}}, "throttle", "time string"),
        ({"triggers": [{"event": "a", "expression": "event.data.x >"}]}, "triggers", ""),
        ({"triggers": [{"cron": "not a cron"}]}, "triggers", "not valid"),
        ({"triggers": [{"cron": "TZ=Mars/Base 0 3 * * *"}]}, "triggers", "time zone"),
        (
            {"debounce": {"period": "1s"}, "rateLimit": {"limit": 1, "period": "1s"}},
            "flow control",
            "cannot be combined",
        ),
        ({"retries": {"attempts": 1000}}, "retries", "0-100"),
        ({"cancel": [{"event": "x", "timeout": "2030-01-01T00:00:00Z"}]}, "cancel", "time string"),
        ({"rateLimit": {"period": "1s"}}, "rateLimit", "rateLimit.limit is required"),
    ],
)
def test_register__refuses_a_function_it_cannot_run_safely(
    db: Database, config: dict[str, Any], option: str, reason: str
) -> None:
    answer = sync.register(db, payload(fn("ok"), fn("bad", **config)), headers={})
    (refused,) = refusals(answer, "shop-bad")
    assert refused["option"] == option and reason in refused["reason"]
    assert refused["registered"] is False
    assert set(registered(db)) == {"shop-ok"}  # the others are registered all the same
    with db.transaction() as conn:
        app = apps.get(conn, "shop")
    assert app is not None and app.refused == answer["refused"]  # kept for `apps list`


def test_register__drops_an_unknown_option_and_keeps_the_function(db: Database) -> None:
    answer = sync.register(db, payload(fn("odd", someFutureOption={"x": 1})), headers={})
    (dropped,) = refusals(answer, "shop-odd")
    assert dropped == {
        "function": "shop-odd",
        "option": "someFutureOption",
        "reason": "option 'someFutureOption' is not supported; ignored",
        "registered": True,
    }
    assert "shop-odd" in registered(db)


def test_register__refuses_a_step_url_off_the_apps_origin(db: Database) -> None:
    evil = fn("evil")
    evil["steps"]["step"]["runtime"]["url"] = "http://169.254.169.254/latest/meta-data"
    answer = sync.register(db, payload(evil), headers={})
    (refused,) = refusals(answer, "shop-evil")
    assert refused["option"] == "steps" and "origin" in refused["reason"]
    assert registered(db) == {}


def test_register__never_takes_over_a_python_function_or_another_apps(db: Database) -> None:
    with db.transaction() as conn:
        functions.upsert(conn, "shop-native", triggers=[], options={"retries": 3}, version="v")
    sync.register(db, payload(fn("a")), headers={})
    answer = sync.register(db, payload(fn("a"), fn("native")), headers={})
    (refused,) = refusals(answer, "shop-native")
    assert "Python function" in refused["reason"] and refused["registered"] is False
    assert registered(db)["shop-native"].options == {"retries": 3}
    stolen = sync.register(db, payload(fn("a"), app="other"), headers={})
    (refused,) = refusals(stolen, "shop-a")
    assert "app 'shop'" in refused["reason"]
    assert registered(db)["shop-a"].options["inngest"]["app"] == "shop"


def test_register__a_resync_removes_functions_the_app_dropped(db: Database) -> None:
    sync.register(db, payload(fn("a"), fn("b")), headers={})
    answer = sync.register(db, payload(fn("a")), headers={})
    assert answer["modified"] is True
    assert set(registered(db)) == {"shop-a"}


@pytest.mark.parametrize(
    "hostile",
    [
        None,
        [],
        "text",
        {"appName": "", "url": URL},
        {"appName": "a b", "url": URL},
        {"appName": "x" * 500, "url": URL},
        {"appName": "shop", "url": "file:///etc/passwd"},
        {"appName": "shop", "url": "http://" + "a" * 5000},
        {"appName": "shop", "url": URL, "functions": "all"},
        {"appName": "shop", "url": URL, "functions": [1]},
        {"appName": "shop", "url": URL, "functions": [{"id": 5}]},
        {"appName": "shop", "url": URL, "functions": [{"id": "a"}, {"id": "a"}]},
        {"appName": "shop", "url": URL, "functions": [{"id": "a"}] * 600},
        {"appName": "shop", "url": URL, "sdk": {"x": 1}},
    ],
)
def test_register__refuses_a_hostile_payload_and_stores_nothing(db: Database, hostile: Any) -> None:
    with pytest.raises(InvalidAppError):
        sync.register(db, hostile, headers={})
    assert sql(db, "SELECT count(*) FROM orchestrator.apps")[0][0] == 0
    assert registered(db) == {}


def test_register__a_function_id_with_odd_characters_is_refused_not_stored(db: Database) -> None:
    odd = fn("x")
    odd["id"] = "shop-x'; DROP TABLE orchestrator.runs; --"
    answer = sync.register(db, payload(odd), headers={})
    assert refusals(answer, odd["id"])[0]["option"] == "id"
    assert registered(db) == {}


@pytest.mark.parametrize("bad", ["shop-\x00", float("nan"), "\ud800"])
def test_register__what_jsonb_cannot_hold_is_refused_whole(db: Database, bad: Any) -> None:
    odd = fn("x", extra=bad)
    with pytest.raises(InvalidAppError):
        sync.register(db, payload(odd), headers={})
    assert sql(db, "SELECT count(*) FROM orchestrator.apps")[0][0] == 0


def test_register__with_a_signing_key_checks_the_bearer(db: Database) -> None:
    key = "signkey-test-" + "ab" * 32
    good = {"Authorization": f"Bearer signkey-test-{signing.hash_key(key)}"}
    with pytest.raises(SignatureError):
        sync.register(db, payload(fn("a")), headers={}, signing_keys=[key])
    with pytest.raises(SignatureError):
        sync.register(
            db, payload(fn("a")), headers={"authorization": "Bearer undefined"}, signing_keys=[key]
        )
    assert registered(db) == {}
    assert sync.register(db, payload(fn("a")), headers=good, signing_keys=[key])["ok"]
    # the fallback key is accepted too (a key rotation)
    other = "signkey-test-" + "cd" * 32
    fallback = {"authorization": f"Bearer signkey-test-{signing.hash_key(other)}"}
    assert sync.register(db, payload(fn("a")), headers=fallback, signing_keys=[key, other])["ok"]


def test_register__reads_the_python_sdks_spelling(db: Database) -> None:
    python = payload(fn("py"))
    python["appname"] = python.pop("appName")
    assert sync.register(db, python, headers={})["ok"]
    assert "shop-py" in registered(db)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1d", 86400), ("2h30m", 9000), ("1.5h", 5400), ("300ms", 0.3), ("1w", 604800)],
)
def test_timestr__reads_inngest_time_strings(text: str, seconds: float) -> None:
    assert timestr.seconds(text, what="t") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "-1s", "1 d", "1y", "s", "1d ", 30, None, "9" * 70])
def test_timestr__refuses_anything_else(text: Any) -> None:
    with pytest.raises(ValueError, match="time string"):
        timestr.seconds(text, what="t")


def test_sync_url__puts_to_the_app_and_types_its_failures() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "broken" in str(request.url):
            return httpx.Response(500, json={"message": "no route to us", "modified": False})
        return httpx.Response(200, json={"message": "Successfully synced.", "modified": True})

    transport = httpx.MockTransport(answer)
    said = sync.sync_url(URL + "?deployId=old", transport=transport)
    assert said == {"message": "Successfully synced.", "modified": True}
    assert seen[0].method == "PUT" and "deployId" not in str(seen[0].url)
    assert seen[0].headers["x-inngest-server-kind"] == "dev"
    with pytest.raises(AppSyncError, match="500"):
        sync.sync_url(URL + "/broken", transport=transport)
    with pytest.raises(AppSyncError, match="http"):
        sync.sync_url("ftp://x", transport=transport)
    with pytest.raises(AppSyncError, match="could not reach"):
        sync.sync_url("http://127.0.0.1:9/nothing", timeout=2.0)


def test_register__an_on_failure_handler_triggers_on_our_failed_event(db: Database) -> None:
    expression = "event.data.function_id == 'shop-pay'"
    trigger = {"event": "inngest/function.failed", "expression": expression}
    sync.register(db, payload(fn("pay-failure", triggers=[trigger])), headers={})
    (row,) = registered(db).values()
    assert row.triggers == [
        {"type": "event", "name": "orchestrator/function.failed", "if": expression}
    ]
