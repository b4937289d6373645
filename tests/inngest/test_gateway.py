"""The Inngest gateway's HTTP API (`POST /e/{key}`, `POST /fn/register`, `GET /dev`) against
real Postgres, through its ASGI app, and once through a real uvicorn thread with the official
Python SDK's own client."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import inngest
import pytest
from inngest._internal import errors as sdk_errors
from inngest._internal import transforms
from sqlalchemy import text

from orchestrator.config import Config, load_config
from orchestrator.db import event_keys
from orchestrator.db.database import Database
from orchestrator.errors import ConfigError
from orchestrator.inngest import gateway as gw
from orchestrator.inngest import signing
from tests.inngest.conftest import SIGNING_KEY, MakeClient


def _rows(db: Database) -> list[dict[str, Any]]:
    def read(conn: Any) -> list[dict[str, Any]]:
        result = conn.execute(
            text(
                "SELECT id, name, data, ts, extra, ingested_at FROM orchestrator.events "
                "ORDER BY seq"
            )
        )
        return [dict(row._mapping) for row in result]

    return db.run(read)


def _key(db: Database, name: str = "app") -> str:
    return db.run(lambda conn: event_keys.create(conn, name))


def test_one_event__recorded_as_sent_and_answered_as_the_sdks_expect(
    db: Database, gateway: MakeClient
) -> None:
    key = _key(db)
    event = {
        "name": "app/user.signup",
        "data": {"email": "a@example.com", "n": 1},
        "id": "evt-1",
        "ts": 1_765_000_000_123,
        "user": {"external_id": "u1"},
        "v": "2024-01-01.1",
    }
    response = gateway().post(f"/e/{key}", json=event)
    assert response.status_code == 200, response.text
    assert response.json() == {"ids": ["evt-1"], "status": 200}
    [row] = _rows(db)
    assert (row["id"], row["name"], row["data"]) == ("evt-1", "app/user.signup", event["data"])
    assert row["ts"] == datetime(2025, 12, 6, 5, 46, 40, 123000, tzinfo=UTC)
    assert row["extra"] == {"user": {"external_id": "u1"}, "v": "2024-01-01.1"}
    assert row["ingested_at"] is None  # pending for the ingest, like any app.send event
    assert db.run(lambda conn: gw_extras(conn, ["evt-1"])) == {"evt-1": row["extra"]}


def gw_extras(conn: Any, ids: list[str]) -> dict[str, Any]:
    from orchestrator.db import events

    return events.extras(conn, ids)


def test_array__ids_in_order_and_an_event_without_data_gets_an_empty_object(
    db: Database, gateway: MakeClient
) -> None:
    key = _key(db)
    body = [{"name": "a", "id": "1"}, {"name": "b", "data": None, "id": "2"}, {"name": "c"}]
    response = gateway().post(f"/e/{key}", json=body)
    assert response.status_code == 200, response.text
    ids = response.json()["ids"]
    assert ids[:2] == ["1", "2"] and len(ids) == 3 and len(ids[2]) == 26  # a ULID
    rows = _rows(db)
    assert [(r["id"], r["name"], r["data"], r["extra"]) for r in rows] == [
        ("1", "a", {}, None),
        ("2", "b", {}, None),
        (ids[2], "c", {}, None),
    ]


def test_empty_array__no_events_and_ok(db: Database, gateway: MakeClient) -> None:
    response = gateway().post(f"/e/{_key(db)}", json=[])
    assert response.json() == {"ids": [], "status": 200}
    assert _rows(db) == []


def test_retried_send__the_id_seed_makes_it_create_nothing_twice(
    db: Database, gateway: MakeClient
) -> None:
    key, client = _key(db), gateway()
    seed = {"x-inngest-event-id-seed": gw.new_seed()}
    body = [{"name": "a", "data": {}}, {"name": "a", "data": {}}]
    first = client.post(f"/e/{key}", json=body, headers=seed).json()["ids"]
    again = client.post(f"/e/{key}", json=body, headers=seed).json()["ids"]
    other = client.post(f"/e/{key}", json=body, headers={"x-inngest-event-id-seed": gw.new_seed()})
    assert first == again and len(set(first)) == 2
    assert set(other.json()["ids"]).isdisjoint(first)
    assert len(_rows(db)) == 4


def test_sdk_id__is_the_event_id_a_repeat_creates_nothing(
    db: Database, gateway: MakeClient
) -> None:
    key, client = _key(db), gateway()
    first = client.post(f"/e/{key}", json={"name": "a", "id": "same", "data": {"n": 1}})
    second = client.post(f"/e/{key}", json={"name": "a", "id": "same", "data": {"n": 2}})
    assert first.json()["ids"] == second.json()["ids"] == ["same"]
    assert [(r["id"], r["data"]) for r in _rows(db)] == [("same", {"n": 1})]


@pytest.mark.parametrize("kind", ["unknown", "revoked", "empty", "huge", "hostile"])
def test_bad_key__401_and_nothing_written(db: Database, gateway: MakeClient, kind: str) -> None:
    key = _key(db)
    if kind == "revoked":
        db.run(lambda conn: event_keys.revoke(conn, "app"))
    presented = {
        "unknown": "not-a-key",
        "revoked": key,
        "empty": "",
        "huge": "k" * 20_000,
        "hostile": "%00%ff/../ключ' OR 1=1 --",
    }[kind]
    response = gateway().post(f"/e/{presented}", json={"name": "a", "data": {}})
    assert response.status_code == 401 if kind != "empty" else response.status_code in (401, 404)
    if response.status_code == 401:
        assert response.json()["code"] == "invalid_event_key"
        assert response.json()["status"] == 401 and response.json()["ids"] == []
    assert _rows(db) == []


def test_bad_key__is_reported_before_a_bad_body(db: Database, gateway: MakeClient) -> None:
    response = gateway().post("/e/nope", content=b"{not json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'{"data": {}}', "name must be"),
        (b'{"name": 5}', "name must be"),
        (b'{"name": ""}', "name must be"),
        (json.dumps({"name": "x" * 257}).encode(), "name must be"),
        (b'{"name": "a\\u0000b"}', "name must be"),
        (b'{"name": "\\ud800"}', "name must be"),
        (b'{"name": "orchestrator/function.finished"}', "reserved"),
        (b'{"name": "inngest/function.failed"}', "reserved"),
        (b'{"name": "a", "data": [1]}', "data must be a JSON object"),
        (b'{"name": "a", "data": "x"}', "data must be a JSON object"),
        (b'{"name": "a", "data": {"x": NaN}}', "NaN"),
        (b'{"name": "a", "data": {"x": "\\u0000"}}', "NUL"),
        (b'{"name": "a", "id": 7}', "id must be"),
        (b'{"name": "a", "ts": "yesterday"}', "ts must be"),
        (b'{"name": "a", "ts": -5}', "out of range"),
        (b'{"name": "a", "ts": 1e300}', "out of range"),
        (b'{"name": "a", "user": "ada"}', "user must be"),
        (b'{"name": "a", "v": 2}', "v must be"),
        (b'{"name": "a", "user": {"x": NaN}}', "NaN"),
        (b'{"name": "a", "user": {"x": "\\u0000"}}', "NUL"),
        (b"42", "a JSON object"),
        (b'[{"name": "ok"}, {"name": "a", "data": 1}]', "events[1]"),
    ],
)
def test_malformed__400_names_the_problem_and_writes_nothing(
    db: Database, gateway: MakeClient, body: bytes, fragment: str
) -> None:
    response = gateway().post(f"/e/{_key(db)}", content=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["status"] == 400 and answer["ids"] == []
    assert answer["code"] in ("invalid_event", "payload_not_json")
    assert fragment in answer["error"]
    assert _rows(db) == []


def test_oversize__413_and_nothing_written(db: Database, gateway: MakeClient) -> None:
    client = gateway(inngest_max_event_bytes=1000)
    key = _key(db)
    big = [{"name": "a", "data": {"pad": "x" * 600}}, {"name": "b", "data": {"pad": "y" * 600}}]
    response = client.post(f"/e/{key}", json=big)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert "inngest_max_event_bytes" in response.json()["error"]
    streamed = client.post(
        f"/e/{key}", content=iter([b'{"name": "a", "data": {"p": "', b"z" * 2000])
    )
    assert streamed.status_code == 413
    over_data = gateway(max_event_bytes=100).post(
        f"/e/{key}", json={"name": "a", "data": {"pad": "x" * 200}}
    )
    assert over_data.status_code == 413 and "events" not in over_data.json()["error"]
    assert _rows(db) == []


def test_dev_mode__any_key_is_accepted_and_dev_answers(db: Database, gateway: MakeClient) -> None:
    client = gateway(inngest_dev=True, inngest_signing_key="")
    response = client.post("/e/NO_EVENT_KEY_SET", json=[{"name": "a", "data": {}}])
    assert response.status_code == 200 and len(response.json()["ids"]) == 1
    info = client.get("/dev")
    assert info.status_code == 200 and info.json()["mode"] == "dev"
    assert gateway().get("/dev").status_code == 404  # signed mode is not a dev server
    assert len(_rows(db)) == 1


def test_register__needs_the_hashed_signing_key_outside_dev_mode(gateway: MakeClient) -> None:
    client = gateway()
    for header in (None, "Bearer undefined", f"Bearer {'0' * 64}"):
        headers = {"authorization": header} if header else {}
        refused = client.post("/fn/register", json={}, headers=headers)
        assert refused.status_code == 401 and refused.json()["code"] == "invalid_signature"
    for token in (
        transforms.hash_signing_key(SIGNING_KEY),
        f"signkey-test-{signing.hash_key(SIGNING_KEY)}",
    ):
        passed = client.post("/fn/register", json={}, headers={"authorization": f"Bearer {token}"})
        assert passed.status_code != 401, passed.text
    dev = gateway(inngest_dev=True, inngest_signing_key="")
    assert dev.post("/fn/register", json={}).status_code != 401


def test_check_config__dev_mode_only_on_loopback_and_signed_mode_needs_a_key() -> None:
    dev = Config(inngest=True, inngest_dev=True)
    gw.check_config(dev, "127.0.0.1")
    gw.check_config(dev, "::1")
    for host in ("0.0.0.0", "", "10.1.2.3"):
        with pytest.raises(ConfigError, match="only on a loopback"):
            gw.check_config(dev, host)
    with pytest.raises(ConfigError, match="needs inngest_signing_key"):
        gw.check_config(Config(inngest=True), "127.0.0.1")
    with pytest.raises(ConfigError, match="only on a loopback"):
        gw.start_in_thread(dataclasses.replace(dev, inngest_address="0.0.0.0:0"))


def test_config__signing_keys_from_the_sdk_variables_and_checked() -> None:
    env = {"INNGEST_SIGNING_KEY": SIGNING_KEY, "INNGEST_SIGNING_KEY_FALLBACK": "signkey-p-00ff"}
    cfg = load_config(env=env)
    assert (cfg.inngest_signing_key, cfg.inngest_signing_key_fallback) == (
        SIGNING_KEY,
        "signkey-p-00ff",
    )
    own = load_config(env={**env, "ORCHESTRATOR_INNGEST_SIGNING_KEY": "signkey-o-abcd"})
    assert own.inngest_signing_key == "signkey-o-abcd"
    assert SIGNING_KEY not in repr(cfg)
    with pytest.raises(ConfigError, match=r"inngest_signing_key \(from INNGEST_SIGNING_KEY\)"):
        load_config(env={"INNGEST_SIGNING_KEY": "not-hex"})
    with pytest.raises(ConfigError, match="inngest_address"):
        load_config(env={"ORCHESTRATOR_INNGEST_ADDRESS": "nowhere"})


def _sdk_client(url: str, key: str) -> inngest.Inngest:
    return inngest.Inngest(
        app_id="shop",
        event_api_base_url=url,
        event_key=key,
        is_production=True,
        signing_key=SIGNING_KEY,
    )


def _close(client: inngest.Inngest) -> None:
    """The SDK's client keeps its kept-alive connections open until collected: close them."""
    client._http_client._http_client_sync.close()


def test_official_python_sdk__sends_through_a_real_server(db: Database, db_url: str) -> None:
    key = _key(db)
    cfg = Config(database_url=db_url, inngest=True, inngest_signing_key=SIGNING_KEY)
    server = gw.start_in_thread(dataclasses.replace(cfg, inngest_address="127.0.0.1:0"))
    good, bad = _sdk_client(server.url, key), _sdk_client(server.url, "wrong")
    try:
        ids = good.send_sync(
            [inngest.Event(name="shop/order", data={"n": 1}), inngest.Event(name="shop/x", id="k")]
        )
        with pytest.raises(sdk_errors.SendEventsError, match="unknown or revoked"):
            bad.send_sync(inngest.Event(name="shop/order"))
        taken = httpx.get(f"{server.url}dev", timeout=10)
    finally:
        _close(good)
        _close(bad)
        server.stop()
    assert ids[1] == "k" and [r["id"] for r in _rows(db)] == ids
    assert taken.status_code == 404


def test_start_in_thread__a_taken_port_is_a_config_error_naming_the_key(db_url: str) -> None:
    cfg = Config(database_url=db_url, inngest=True, inngest_dev=True)
    first = gw.start_in_thread(dataclasses.replace(cfg, inngest_address="127.0.0.1:0"))
    try:
        taken = first.url.rstrip("/").removeprefix("http://")
        with pytest.raises(ConfigError, match="inngest_address: cannot listen"):
            gw.start_in_thread(dataclasses.replace(cfg, inngest_address=taken))
    finally:
        first.stop()
    assert first.thread is not None and not first.thread.is_alive()
