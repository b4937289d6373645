"""Serving SDK-served functions: their definitions read from the rows a sync wrote
(inngest/remote.py), the daemon's refresh (runtime/apps.py), and the services taking
functions on and dropping them as apps sync again."""

from __future__ import annotations

from typing import Any

from orchestrator import log as logging
from orchestrator.db import runs
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.functions import FunctionDef
from orchestrator.inngest import calls, sync
from orchestrator.inngest.driver import Driver
from orchestrator.inngest.remote import Policies, RemoteFunctions
from orchestrator.runtime.apps import AppsRefresh
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.upkeep import Upkeep

URL = "http://127.0.0.1:3000/api/inngest"


def fn(slug: str, **config: Any) -> dict[str, Any]:
    fid = f"shop-{slug}"
    step = {"runtime": {"type": "http", "url": f"{URL}?fnId={fid}&stepId=step"}}
    return {"id": fid, "triggers": [{"event": "shop/x"}], "steps": {"step": step}, **config}


def sync_app(db: Database, *fns: dict[str, Any]) -> None:
    sync.register(db, {"appName": "shop", "url": URL, "functions": list(fns)}, headers={})


def test_remote_functions__builds_drivers_from_rows_and_follows_resyncs(db: Database) -> None:
    remote = RemoteFunctions(db, calls.Settings(), ttl=0.0)
    assert remote.get("shop-a") is None
    sync_app(db, fn("a", concurrency=2))
    first = remote.get("shop-a")
    assert first is not None and first.is_async and isinstance(first.fn, Driver)
    assert first.flow.concurrency[0].limit == 2 and first.retries == 3
    assert remote.get("shop-a") is first  # same version: the same definition
    sync_app(db, fn("a", concurrency=5))
    second = remote.get("shop-a")
    assert second is not None and second is not first
    assert second.flow.concurrency[0].limit == 5
    sync_app(db, fn("b"))
    assert remote.get("shop-a") is None and set(remote.load_all()) == {"shop-b"}


def test_policies__fall_back_to_the_sdk_served_functions(db: Database) -> None:
    sync_app(db, fn("a", concurrency=[{"limit": 1, "key": "event.data.user"}]))
    policies = Policies({}, RemoteFunctions(db, calls.Settings()))
    policy = policies.get("shop-a")
    assert policy is not None and policy.claims
    assert policies.get("shop-unknown") is None


def test_apps_refresh__adopts_new_and_changed_functions_and_drops_gone_ones(db: Database) -> None:
    told: list[tuple[list[str], list[str]]] = []

    def adopt(changed: dict[str, FunctionDef], gone: list[str]) -> None:
        told.append((sorted(changed), gone))

    refresh = AppsRefresh(
        RemoteFunctions(db, calls.Settings(), ttl=0.0), adopt=adopt, log=logging.get("test")
    )
    assert refresh.refresh() is False and told == []
    sync_app(db, fn("a"), fn("b"))
    assert refresh.refresh() is True and told[-1] == (["shop-a", "shop-b"], [])
    assert refresh.refresh() is False  # nothing changed since
    sync_app(db, fn("a", concurrency=3))
    assert refresh.refresh() is True
    assert told[-1] == (["shop-a"], ["shop-b"])


def test_services_take_functions_on_and_drop_them(db: Database, db_url: str) -> None:
    sync_app(
        db,
        fn("limited", concurrency=1, timeouts={"finish": "1h"}),
        fn("nightly", triggers=[{"cron": "0 3 * * *"}]),
    )
    found = RemoteFunctions(db, calls.Settings()).load_all()
    direct = Direct(db_url, application_name="test", settings=runs.CLAIM_SETTINGS)
    log = logging.get("test")
    try:
        flow = FlowClaimer(direct, {}, owner="me", lease_seconds=5, poll_interval=1, log=log)
        assert flow.serve("shop-limited", found["shop-limited"]) is True
        assert flow.serve("shop-nightly", found["shop-nightly"]) is False  # not limited
        assert flow.function_ids == ["shop-limited"]
        flow.forget("shop-limited")
        assert flow.function_ids == []
    finally:
        direct.close()
    cron = CronScheduler(db, {}, log)
    cron.serve("shop-nightly", found["shop-nightly"])
    cron.register()
    assert list(cron.crons) == ["shop-nightly"]
    cron.forget("shop-nightly")
    assert cron.crons == {}
    upkeep = Upkeep(db, {}, log)
    upkeep.serve("shop-limited", found["shop-limited"])
    assert upkeep.timeouts["shop-limited"].finish == 3600.0
