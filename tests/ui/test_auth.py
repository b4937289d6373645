"""Logins, sessions, CSRF, roles, tokens and the loopback rule, against a real `orchestrator
ui` over HTTP."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.ui.conftest import ADA, BOB, UiProcess, add_user, new_token, ui_cli
from tests.ui.helpers import actions, queued_run, status


def login(ui: UiProcess, name: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = ui.client()
    return client, client.post("/api/v1/session", data={"name": name, "password": password})


def test_login__a_form_post_sets_an_httponly_samesite_session_cookie(
    ui_server: UiProcess,
) -> None:
    client, response = login(ui_server, *ADA)
    with closing(client):
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "ada" and response.json()["role"] == "operator"
        assert response.json()["csrf_token"]
        [cookie] = response.headers.get_list("set-cookie")
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert attributes[0].startswith("orchestrator_session=")
        assert "httponly" in attributes and "samesite=strict" in attributes
        assert "path=/" in attributes and "secure" not in attributes  # ui_cookie_secure off
        me = client.get("/api/v1/me")
    assert me.json() == {"name": "ada", "role": "operator", "via": "session", "is_operator": True}


def test_cookie_post__refused_without_the_csrf_token_or_from_another_site(
    ui_server: UiProcess,
) -> None:
    db = ui_server.db_url
    run_id = queued_run(db)
    client, response = login(ui_server, *ADA)
    csrf = response.json()["csrf_token"]
    cancel = f"/api/v1/runs/{run_id}/cancel"
    with closing(client):
        missing = client.post(cancel)
        wrong = client.post(cancel, headers={"X-CSRF-Token": csrf[:-2] + "xx"})
        cross_site = client.post(
            cancel, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
        )
        assert [r.status_code for r in (missing, wrong, cross_site)] == [403, 403, 403]
        assert {r.json()["error"]["code"] for r in (missing, wrong, cross_site)} == {"csrf"}
        assert status(db, run_id) == "queued"
        done = client.post(cancel, headers={"X-CSRF-Token": csrf, "Origin": ui_server.url})
    assert done.status_code == 200, done.text
    assert status(db, run_id) == "cancelled"
    assert actions(db, run_id=run_id) == [("ada", "session", "cancel", run_id, None, None)]


def test_viewer_session__may_read_but_not_act(ui_server: UiProcess) -> None:
    db = ui_server.db_url
    run_id = queued_run(db)
    client, response = login(ui_server, *BOB)
    with closing(client):
        csrf = response.json()["csrf_token"]
        read = client.get(f"/api/v1/runs/{run_id}")
        refused = client.post(f"/api/v1/runs/{run_id}/cancel", headers={"X-CSRF-Token": csrf})
    assert read.status_code == 200
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert status(db, run_id) == "queued"


def test_login__refused_with_429_after_repeated_failures_even_with_the_right_password(
    ui_server: UiProcess,
) -> None:
    add_user(ui_server.db_url, "carol", "pw-carol-123456", "viewer")
    failures = [login(ui_server, "carol", f"wrong-password-{i}") for i in range(5)]
    right_after = login(ui_server, "carol", "pw-carol-123456")
    other_user = login(ui_server, *ADA)  # the limit is per name (and client)
    for client, _ in [*failures, right_after, other_user]:
        client.close()
    assert [r.status_code for _, r in failures] == [401] * 5
    assert {r.json()["error"]["code"] for _, r in failures} == {"login_failed"}
    assert right_after[1].status_code == 429
    assert right_after[1].json()["error"]["code"] == "too_many_attempts"
    assert not right_after[1].headers.get_list("set-cookie")
    assert other_user[1].status_code == 200


def test_logout__ends_the_session(ui_server: UiProcess) -> None:
    client, response = login(ui_server, *ADA)
    cookie = client.cookies.get("orchestrator_session")
    with closing(client):
        csrf = response.json()["csrf_token"]
        assert client.delete("/api/v1/session").status_code == 403  # CSRF here too
        out = client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    with ui_server.client() as replayer:
        replayer.cookies.set("orchestrator_session", cookie)
        assert replayer.get("/api/v1/me").status_code == 401


def test_token__revoked_is_refused(ui_server: UiProcess) -> None:
    token = new_token(ui_server.db_url, "short-lived", "viewer")
    with ui_server.client(token) as client:
        before = client.get("/api/v1/me")
        revoked = ui_cli(ui_server.db_url, "ui-token", "revoke", "short-lived")
        after = client.get("/api/v1/me")
    assert before.status_code == 200 and revoked.returncode == 0
    assert after.status_code == 401


def test_ui__refuses_to_start_off_loopback_without_authentication(ui_db: str) -> None:
    result = ui_cli(ui_db, "ui", "--address", "0.0.0.0:0", ui_auth="false")
    assert result.returncode == 1  # as every configuration error (cli.py)
    assert "ui_auth = false is allowed only on a loopback address" in result.stderr
    assert "dashboard at" not in result.stderr


def test_ui_user__short_passwords_and_unknown_users_are_refused(ui_db: str) -> None:
    short = ui_cli(
        ui_db, "ui-user", "add", "dan", "--role", "viewer", "--password-stdin", stdin="short\n"
    )
    unknown = ui_cli(ui_db, "ui-user", "role", "nobody", "operator")
    listed = ui_cli(ui_db, "ui-user", "list", "--json")
    assert short.returncode == 1 and "at least 12" in short.stderr
    assert unknown.returncode == 1 and "no user named 'nobody'" in unknown.stderr
    assert "dan" not in listed.stdout


def test_without_authentication__everyone_is_the_operator_local_but_forms_need_csrf(
    ui_db: str, tmp_path: Path
) -> None:
    ui = UiProcess(ui_db, tmp_path / "local.log").start(ui_auth="false")
    try:
        run_id, other = queued_run(ui_db), queued_run(ui_db)
        with ui.client() as client:
            me = client.get("/api/v1/me").json()
            form = client.post(f"/api/v1/runs/{other}/cancel", data={"reason": "x"})
            cross_site = client.post(
                f"/api/v1/runs/{other}/cancel", json={}, headers={"Origin": "http://evil.example"}
            )
            done = client.post(f"/api/v1/runs/{run_id}/cancel", json={})
    finally:
        ui.stop()
    assert me == {"name": "local", "role": "operator", "via": "local", "is_operator": True}
    assert (form.status_code, cross_site.status_code) == (403, 403)
    assert status(ui_db, other) == "queued"
    assert done.status_code == 200 and status(ui_db, run_id) == "cancelled"
    assert actions(ui_db, run_id=run_id) == [("local", "session", "cancel", run_id, None, None)]


def test_config__ui_keys_are_checked_when_loaded() -> None:
    from orchestrator.config import load_config
    from orchestrator.errors import ConfigError

    loaded = load_config(env={"ORCHESTRATOR_UI": "true", "ORCHESTRATOR_UI_LOGIN_LIMIT": "3"})
    assert (loaded.ui, loaded.ui_login_limit, loaded.ui_address) == (True, 3, "127.0.0.1:8484")
    for key, value, says in [
        ("UI_ADDRESS", "8484", "is not host:port"),
        ("UI_LOGIN_LIMIT", "0", "too small"),
        ("UI_SESSION_TTL", "5", "too small"),
        ("UI_AUTH", "maybe", "expected true or false"),
    ]:
        with pytest.raises(ConfigError, match=says):
            load_config(env={f"ORCHESTRATOR_{key}": value})


def test_login__takes_json_too_and_refuses_malformed_bodies(ui_server: UiProcess) -> None:
    with ui_server.client() as client:
        as_json = client.post("/api/v1/session", json={"name": BOB[0], "password": BOB[1]})
        garbage = client.post(
            "/api/v1/session", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        no_fields = client.post("/api/v1/session", data={"user": "bob"})
    assert as_json.status_code == 200 and as_json.json()["role"] == "viewer"
    assert [r.status_code for r in (garbage, no_fields)] == [422, 422]
    assert {r.json()["error"]["code"] for r in (garbage, no_fields)} == {"invalid_request"}
