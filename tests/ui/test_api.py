"""The JSON API of a real `orchestrator ui` (and of a daemon with `ui = true`), over HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import eventually
from tests.e2e.harness import count, run_of, scalar, sql
from tests.ui.conftest import UiProcess, new_token
from tests.ui.helpers import actions, queued_run, status

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
HIDDEN_PREFIX = "[hidden"


def test_api__unauthenticated_call_is_401_and_writes_nothing(ui_server: UiProcess) -> None:
    with ui_server.client() as anonymous:
        listing = anonymous.get("/api/v1/runs")
        sent = anonymous.post("/api/v1/events", json={"name": "ui/anonymous", "data": {}})
    with ui_server.client("not-a-token") as forged:
        forged_send = forged.post("/api/v1/events", json={"name": "ui/anonymous"})
    for response in (listing, sent, forged_send):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"
    db = ui_server.db_url
    assert count(db, "SELECT count(*) FROM orchestrator.events WHERE name = 'ui/anonymous'") == 0


def test_api__security_headers_on_every_response(ui_server: UiProcess) -> None:
    with ui_server.client(ui_server.tokens["viewer"]) as viewer, ui_server.client() as anon:
        responses = [
            anon.get("/api/v1/openapi.json"),  # 200
            anon.get("/api/v1/me"),  # 401
            anon.get("/no/such/page"),  # 404
            anon.post("/api/v1/session", data={"name": "nobody", "password": "x" * 12}),
            viewer.get("/api/v1/me"),  # 200
            viewer.post("/api/v1/events", json={"name": "ui/viewer"}),  # 403
            viewer.get("/api/v1/runs", params={"limit": 0}),  # 422
            anon.head("/login"),  # 200, as GET without the body
            anon.head("/api/v1/me"),  # 401
        ]
    assert [r.status_code for r in responses] == [200, 401, 404, 401, 200, 403, 422, 200, 401]
    assert responses[-2].content == b"" and "text/html" in responses[-2].headers["content-type"]
    for r in responses:
        assert r.headers["content-security-policy"] == CSP, r.request.url
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"


def test_api__openapi_schema_lists_the_routes(ui_server: UiProcess) -> None:
    with ui_server.client() as anon:
        schema = anon.get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/runs", "get"),
        ("/api/v1/runs/{run_id}", "get"),
        ("/api/v1/runs/{run_id}/cancel", "post"),
        ("/api/v1/runs/{run_id}/replay", "post"),
        ("/api/v1/runs/{run_id}/resume", "post"),
        ("/api/v1/runs/{run_id}/fork", "post"),
        ("/api/v1/events", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/events/{event_id}", "get"),
        ("/api/v1/functions", "get"),
        ("/api/v1/functions/{function_id}", "get"),
        ("/api/v1/queue", "get"),
        ("/api/v1/schedules", "get"),
        ("/api/v1/daemons", "get"),
        ("/api/v1/me", "get"),
        ("/api/v1/session", "post"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing"


def test_cancel__a_viewer_is_refused_an_operator_cancels_and_is_recorded(
    ui_server: UiProcess,
) -> None:
    db = ui_server.db_url
    run_id = queued_run(db)
    with ui_server.client(ui_server.tokens["viewer"]) as viewer:
        refused = viewer.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "no"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert status(db, run_id) == "queued"
    assert actions(db, run_id=run_id) == []

    with ui_server.client(ui_server.tokens["operator"]) as operator:
        done = operator.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "testing"})
        again = operator.post(f"/api/v1/runs/{run_id}/cancel")
    assert done.status_code == 200, done.text
    assert done.json() == {"id": run_id, "status": "cancelled", "changed": True} | {
        "children_cancelled": 0
    }
    assert status(db, run_id) == "cancelled"
    assert again.json()["changed"] is False  # finished already: nothing done, nothing recorded
    assert actions(db, run_id=run_id) == [("ada-script", "token", "cancel", run_id, None, None)]
    reason = scalar(
        db, "SELECT detail->>'reason' FROM orchestrator.ui_actions WHERE run_id = %s", (run_id,)
    )
    assert reason == "testing"


def test_send__stores_the_event_and_records_who_sent_it(ui_server: UiProcess) -> None:
    db = ui_server.db_url
    with ui_server.client(ui_server.tokens["operator"]) as operator:
        sent = operator.post("/api/v1/events", json={"name": "ui/sent", "data": {"x": 1}})
        duplicate = operator.post(
            "/api/v1/events", json={"name": "ui/sent", "id": sent.json()["id"]}
        )
        bad = operator.post("/api/v1/events", json={"name": "", "data": {}})
    assert sent.status_code == 200, sent.text
    event_id = sent.json()["id"]
    assert sent.json()["created"] is True and duplicate.json() == {"id": event_id, "created": False}
    assert sql(db, "SELECT name, data FROM orchestrator.events WHERE id = %s", (event_id,)) == [
        ("ui/sent", {"x": 1})
    ]
    assert actions(db, event_id=event_id) == [("ada-script", "token", "send", None, None, event_id)]
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_event"


def test_runs__listed_and_detailed_with_payloads_hidden_from_viewers(
    ui_server: UiProcess,
) -> None:
    run_id = queued_run(ui_server.db_url, {"card": "4242"})
    with ui_server.client(ui_server.tokens["viewer"]) as viewer:
        listing = viewer.get("/api/v1/runs", params={"id_prefix": run_id[:13]})
        seen_by_viewer = viewer.get(f"/api/v1/runs/{run_id}")
        missing = viewer.get("/api/v1/runs/00000000-0000-0000-0000-000000000000")
    with ui_server.client(ui_server.tokens["operator"]) as operator:
        seen_by_operator = operator.get(f"/api/v1/runs/{run_id}")
    assert listing.status_code == 200, listing.text
    assert [r["id"] for r in listing.json()["runs"]] == [run_id]
    assert listing.json()["counts"].get("queued") == 1
    assert listing.json()["counts_cap"] == 10_000
    assert seen_by_operator.json()["run"]["events"][0]["data"] == {"card": "4242"}
    assert str(seen_by_viewer.json()["run"]["events"]).startswith(HIDDEN_PREFIX)
    assert "4242" not in seen_by_viewer.text
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"


def test_reads__functions_queue_schedules_daemons_events_answer(ui_server: UiProcess) -> None:
    with ui_server.client(ui_server.tokens["viewer"]) as viewer:
        answers = {
            path: viewer.get(f"/api/v1/{path}")
            for path in ("functions", "queue", "schedules", "daemons", "events")
        }
        bad_filter = viewer.get("/api/v1/runs", params={"data_path": "$$ not a path"})
    for path, response in answers.items():
        assert response.status_code == 200, (path, response.text)
    assert bad_filter.status_code == 400
    assert bad_filter.json()["error"]["code"] == "invalid_filter"


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_daemon_with_ui__serves_the_api_and_forks_a_run_with_edited_data(
    e2e_url: str, daemon_factory
) -> None:
    token = new_token(e2e_url, "deployer", "operator")
    daemon = daemon_factory(
        "tests.e2e.apps.pipeline_v2:app", workers=1, ui="true", ui_address="127.0.0.1:0"
    )

    def dashboard() -> str | None:
        lines = [e for e in daemon.log_events() if e.get("event") == "dashboard serving"]
        return str(lines[0]["url"]).rstrip("/") if lines else None

    url = eventually(dashboard, what="the daemon's dashboard address")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
        assert api.get("/api/v1/me").json() == {
            "name": "deployer",
            "role": "operator",
            "via": "token",
            "is_operator": True,
        }
        event_id = api.post("/api/v1/events", json={"name": "pipeline/start", "data": {"n": 1}})
        original = run_of(e2e_url, event_id.json()["id"])
        completed = "SELECT status = 'completed' FROM orchestrator.runs WHERE id = %s"
        eventually(lambda: scalar(e2e_url, completed, (original,)), timeout=60, what="original")
        forked = api.post(
            f"/api/v1/runs/{original}/fork",
            json={"from_step": "transform", "data": {"n": 50, "bonus": 7}},
        )
        assert forked.status_code == 200, forked.text
        fork_id = forked.json()["id"]
        eventually(lambda: scalar(e2e_url, completed, (fork_id,)), timeout=60, what="the fork")
        no_step = api.post(f"/api/v1/runs/{original}/fork", json={"from_step": "nope"})
    row = sql(
        e2e_url,
        "SELECT origin, origin_run_id::text, output FROM orchestrator.runs WHERE id = %s",
        (fork_id,),
    )
    assert row == [("fork", original, {"stored": 2 + 7})]  # enrich reused, new data after it
    assert no_step.status_code == 404 and no_step.json()["error"]["code"] == "step_not_found"
    assert daemon.terminate() == 0  # the dashboard's thread stops with the daemon
    assert daemon.problems() == []
    assert [a[2:5] for a in actions(e2e_url, actor="deployer")] == [
        ("send", None, None),
        ("fork", original, fork_id),
    ]


def test_send__records_the_requests_traceparent_on_the_event(ui_server: UiProcess) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with ui_server.client(ui_server.tokens["operator"]) as operator:
        traced = operator.post(
            "/api/v1/events",
            json={"name": "ui/traced", "data": {}},
            headers={"traceparent": traceparent},
        )
        plain = operator.post("/api/v1/events", json={"name": "ui/traced", "data": {}})
    assert traced.status_code == plain.status_code == 200, traced.text
    db = ui_server.db_url
    query = "SELECT trace_context FROM orchestrator.events WHERE id = %s"
    assert scalar(db, query, (traced.json()["id"],)) == {"traceparent": traceparent}
    assert scalar(db, query, (plain.json()["id"],)) is None
