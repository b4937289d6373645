"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright, against
a real `orchestrator ui` process on a database whose runs were made by the engine itself
(orchestrator.testing's TestEnv: real ingest, claims and executions, on a virtual clock).

Each test saves a screenshot of the page it ends on (under docs/ui/, which the README shows,
when ORCHESTRATOR_UI_SCREENSHOTS=1).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, expect

from orchestrator import Context, NonRetriableError, Orchestrator, Throttle, cron, event
from orchestrator.testing import TestEnv
from tests.e2e.harness import DaemonProcess, scalar, sql, stop_all
from tests.ui.browser import chromium, console_problems, log_in, new_page, screenshot
from tests.ui.conftest import ADA, BOB, UiProcess

pytestmark = pytest.mark.timeout(300)

app = Orchestrator()
APP = f"{__name__}:app"  # what the daemon imports


@app.function("process-order", trigger=event("order/created"), retries=2)
def process_order(ctx: Context) -> dict[str, Any]:
    order = ctx.event.data
    ctx.step.run("validate", lambda: {"ok": True, "items": order.get("items", 1)})
    charge = ctx.step.run("charge", lambda: {"charge_id": f"ch_{order['order_id']}"})
    ctx.step.sleep("cool-off", timedelta(hours=1))
    ctx.step.run("ship", lambda: {"parcel": f"p_{order['order_id']}"})
    return {"charge": charge["charge_id"]}


@app.function("import-file", trigger=event("import/requested"))
def import_file(ctx: Context) -> dict[str, Any]:
    rows = ctx.step.run("fetch", lambda: ctx.event.data.get("rows", []))

    def parse() -> int:
        if any(not isinstance(r, int) for r in rows):
            raise NonRetriableError(f"row {rows!r} is not a number")
        return sum(rows)

    return {"total": ctx.step.run("parse", parse)}


@app.function("await-approval", trigger=event("expense/submitted"))
def await_approval(ctx: Context) -> dict[str, Any]:
    ctx.step.run("notify-approver", lambda: {"notified": True})
    got = ctx.step.wait_for_event(
        "approval", event="expense/approved", match="data.expense_id", timeout=timedelta(days=2)
    )
    return {"approved": got is not None}


@app.function(
    "sync-crm",
    trigger=event("crm/changed"),
    throttle=Throttle(limit=1, period=timedelta(hours=1)),
)
def sync_crm(ctx: Context) -> dict[str, Any]:
    return ctx.step.run("push", lambda: {"pushed": ctx.event.data["contact"]})


@app.function("nightly-report", trigger=cron("0 3 * * *", tz="UTC"))
def nightly_report(ctx: Context) -> dict[str, Any]:
    return {"rows": 0}


class Runs:
    """The ids of the runs the module's database was filled with, by kind."""

    def __init__(self) -> None:
        self.completed: list[str] = []
        self.sleeping: list[str] = []
        self.failed: list[str] = []
        self.waiting: list[str] = []
        self.throttled: list[str] = []


def _fill(db_url: str) -> Runs:
    made = Runs()
    with TestEnv(app, url=db_url) as env:
        env.fail_step("process-order", "charge", times=1)  # one retried charge, for the timeline
        for n in range(3):
            env.send("order/created", {"order_id": 100 + n, "user_id": 7, "items": n + 1})
        env.run_until_idle()
        env.advance(timedelta(hours=1, minutes=1))
        made.completed = [r.id for r in env.runs("process-order", status="completed")]
        for n in range(4):
            env.send("order/created", {"order_id": 200 + n, "user_id": 8 + n % 2, "items": 1})
        env.send("import/requested", {"rows": [1, 2, "three"], "source": "s3://bucket/a.csv"})
        env.send("import/requested", {"rows": [4, 5], "source": "s3://bucket/b.csv"})
        env.send("expense/submitted", {"expense_id": "e-1", "amount": 120})
        for contact in ("c-1", "c-2", "c-3"):  # one an hour: two wait for the throttle
            env.send("crm/changed", {"contact": contact})
        env.run_until_idle()
        made.sleeping = [r.id for r in env.runs("process-order", status="sleeping")]
        made.failed = [r.id for r in env.runs("import-file", status="failed")]
        made.waiting = [r.id for r in env.runs("await-approval", status="waiting")]
        made.throttled = [r.id for r in env.runs("sync-crm", status="queued")]
    assert len(made.completed) == 3 and len(made.sleeping) == 4, vars(made)
    assert len(made.failed) == 1 and len(made.waiting) == 1, vars(made)
    assert len(made.throttled) == 2, vars(made)
    return made


@pytest.fixture(scope="module")
def made(ui_db: str) -> Runs:
    return _fill(ui_db)


@pytest.fixture(scope="module")
def dashboard(
    ui_server: UiProcess, made: Runs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UiProcess]:
    """The shared `orchestrator ui` process (tests/ui/conftest.py), once the runs are made,
    with a real daemon serving this module's app beside it (the daemons page, "served by")."""
    daemon = DaemonProcess(
        ui_server.db_url, APP, tmp_path_factory.mktemp("daemon") / "daemon.log", workers=1
    )
    daemon.start()
    yield ui_server
    stop_all([daemon])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def operator(browser: Browser, dashboard: UiProcess) -> Iterator[Page]:
    with new_page(browser, dashboard.url) as page:
        log_in(page, "ada", ADA[1])
        yield page
        assert console_problems(page) == []  # nothing refused by the CSP, no script error


@pytest.fixture
def viewer(browser: Browser, dashboard: UiProcess) -> Iterator[Page]:
    with new_page(browser, dashboard.url) as page:
        log_in(page, "bob", BOB[1])
        yield page
        assert console_problems(page) == []


def status_of(db_url: str, run_id: str) -> str:
    return str(scalar(db_url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def rows(page: Page) -> list[str]:
    return [
        r.get_attribute("data-run") or "" for r in page.locator("table.runs tr[data-run]").all()
    ]


# -- logging in ----------------------------------------------------------------------------------


def test_login__a_wrong_password_is_refused_and_the_right_one_opens_the_runs(
    browser: Browser, dashboard: UiProcess
) -> None:
    with new_page(browser, dashboard.url) as page:
        page.goto("/runs")
        expect(page).to_have_url(f"{dashboard.url}/login?next=%2Fruns")
        page.fill("input[name=name]", "ada")
        page.fill("input[name=password]", "not-the-password")
        page.click("button[type=submit]")
        expect(page.locator(".notice.error")).to_have_text("Wrong name or password.")
        page.fill("input[name=password]", ADA[1])
        screenshot(page, "login")
        page.click("button[type=submit]")
        page.wait_for_url(f"{dashboard.url}/runs")
        expect(page.locator(".topbar .who")).to_contain_text("ada · operator")
        cookie = next(c for c in page.context.cookies() if c["name"] == "orchestrator_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        page.click(".topbar button:has-text('Log out')")
        page.wait_for_url(f"{dashboard.url}/login")
        page.context.add_cookies([cookie])  # the old cookie back: its session is gone too
        page.goto("/runs")
        expect(page).to_have_url(f"{dashboard.url}/login?next=%2Fruns")
        assert console_problems(page) == []


# -- the runs list -------------------------------------------------------------------------------


def test_runs__filters_by_function_status_and_event_data(operator: Page, made: Runs) -> None:
    page = operator
    assert set(made.completed + made.sleeping + made.failed) <= set(rows(page))
    page.select_option("select[name=function_id]", "process-order")
    page.select_option("select[name=status]", "sleeping")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**status=sleeping**")
    assert set(rows(page)) >= set(made.sleeping)
    for row in page.locator("table.runs tr[data-run]").all():
        expect(row.locator(".status")).to_have_text("sleeping")
        expect(row).to_contain_text("process-order")
    assert not set(rows(page)) & set(made.completed + made.failed)

    page.goto("/runs")
    page.fill("input[name=data_path]", "$.user_id == 7")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**data_path=**")
    assert set(rows(page)) == set(made.completed)  # only the first orders were for user 7
    expect(page.locator(".counts a.on")).to_contain_text("all")

    page.fill("input[name=data_path]", "$.user_id ==")  # not a JSON path: said, not a crash
    page.click("form.filters button[type=submit]")
    expect(page.locator(".notice.error")).to_be_visible()
    assert rows(page) == []

    page.goto("/runs")
    screenshot(page, "runs")


def test_runs__pages_back_by_keyset_without_overlap(operator: Page, made: Runs) -> None:
    page = operator
    page.goto("/runs?limit=4")
    first = rows(page)
    assert len(first) == 4
    assert page.locator("#runs-live[data-live]").count() == 1  # the newest page is live
    page.click("a[rel=next]")
    page.wait_for_url("**before=**")
    second = rows(page)
    assert len(second) == 4 and not set(first) & set(second)
    assert page.locator("#runs-live[data-live]").count() == 0  # an older page stays still
    page.click("a:has-text('newest')")
    page.wait_for_url("**/runs?limit=4")
    assert rows(page)[:1] == first[:1]
    every = set(made.completed + made.sleeping + made.failed + made.waiting)
    page.goto("/runs?limit=500")
    assert every <= set(rows(page))


def test_runs__the_table_refreshes_itself_with_a_new_run(
    operator: Page, dashboard: UiProcess
) -> None:
    page = operator
    refreshed_before = page.locator("#runs-live").get_attribute("data-refreshed")
    with TestEnv(app, url=dashboard.db_url) as env:
        new_id = env.start("nightly-report", {"scheduled_at": "manual"})
    # no reload: ui.js fetches /runs?fragment=1 every 2 s and swaps the table in
    expect(page.locator(f"tr[data-run='{new_id}']")).to_be_visible(timeout=15_000)
    assert page.locator("#runs-live").get_attribute("data-refreshed") != refreshed_before


# -- a run's page ------------------------------------------------------------------------------


def test_run_detail__shows_each_step_on_the_timeline(operator: Page, made: Runs) -> None:
    page = operator
    run_id = made.completed[0]
    page.goto(f"/runs/{run_id}")
    expect(page.locator("h1")).to_contain_text(run_id)
    labels = page.locator("#timeline td.label").all_inner_texts()
    for step in ("validate", "charge", "cool-off", "ship"):
        assert any(label.startswith(step) for label in labels), labels
    kinds = {r.get_attribute("data-kind") for r in page.locator("#timeline rect").all()}
    assert {"sleeping", "completed"} <= kinds, kinds
    steps = page.locator("table.steps td.mono").all_inner_texts()
    assert steps[:4] == ["validate", "charge", "cool-off", "ship"]
    expect(page.locator("h2", has_text="Event")).to_be_visible()
    screenshot(page, "run-detail")


def test_run_detail__the_timeline_shows_a_retried_steps_earlier_attempt(
    operator: Page, made: Runs
) -> None:
    page = operator
    retried = []
    for run_id in made.completed:  # the first charge of the fill failed once
        page.goto(f"/runs/{run_id}")
        row = page.locator("#timeline tr", has_text="charge (attempt 2)")
        if row.count():
            retried.append(run_id)
            titles = row.locator("rect title").all_text_contents()
            assert titles[0].startswith("charge (attempt 2): retrying (attempt 1 failed), "), titles
            assert titles[1].startswith("charge (attempt 2): completed, "), titles
    assert len(retried) == 1, retried


def test_cancel__a_sleeping_run_from_its_page(
    operator: Page, dashboard: UiProcess, made: Runs
) -> None:
    page = operator
    run_id = made.sleeping[0]
    page.goto(f"/runs/{run_id}")
    page.fill("input[name=reason]", "customer asked")
    page.click("button:has-text('Cancel run')")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()  # ui.js asks first
    assert status_of(dashboard.db_url, run_id) == "sleeping"
    dialog.locator("button[value=ok]").click()
    expect(page.locator(".notice.ok")).to_have_text("Cancel requested.")
    assert status_of(dashboard.db_url, run_id) == "cancelled"
    audit = sql(
        dashboard.db_url,
        "SELECT actor, via, action, detail->>'reason' FROM orchestrator.ui_actions "
        "WHERE run_id = %s",
        (run_id,),
    )
    assert audit == [("ada", "session", "cancel", "customer asked")]
    expect(page.locator("table.audit")).to_contain_text("ada")
    expect(page.locator("h1 .status")).to_have_text("cancelled")


def test_cancel__without_javascript_asks_on_a_confirmation_page(
    browser: Browser, dashboard: UiProcess, made: Runs
) -> None:
    run_id = made.sleeping[3]
    with new_page(browser, dashboard.url, javascript=False) as page:
        log_in(page, *ADA)
        page.goto(f"/runs/{run_id}")
        page.click("button:has-text('Cancel run')")
        expect(page.locator("h1")).to_have_text("Confirm: cancel")
        assert status_of(dashboard.db_url, run_id) == "sleeping"
        page.click("button:has-text('Confirm cancel')")
        expect(page.locator(".notice.ok")).to_have_text("Cancel requested.")
        assert status_of(dashboard.db_url, run_id) == "cancelled"


def test_fork__a_failed_run_with_edited_data(
    operator: Page, dashboard: UiProcess, made: Runs
) -> None:
    page = operator
    failed = made.failed[0]
    page.goto(f"/runs/{failed}")
    expect(page.locator("table.steps")).to_contain_text("NonRetriableError")
    page.click("#fork summary")
    page.select_option("select[name=from_step]", "fetch")
    edited = {"rows": [1, 2, 3], "source": "s3://bucket/a-fixed.csv"}
    page.fill("textarea[name=data]", json.dumps(edited))
    page.click("#fork button[type=submit]")
    page.locator("#confirm-dialog button[value=ok]").click()
    expect(page.locator(".notice.ok")).to_have_text("Forked: this is the new run.")
    new_id = page.url.split("/runs/")[1].split("?")[0]
    assert new_id != failed
    (row,) = sql(
        dashboard.db_url,
        "SELECT origin, origin_run_id::text, events->0->'data', status "
        "FROM orchestrator.runs WHERE id = %s",
        (new_id,),
    )
    assert row[:3] == ("fork", failed, edited)
    assert status_of(dashboard.db_url, failed) == "failed"  # the original stays as it was
    expect(page.locator("text=Fork of")).to_be_visible()


def test_fork__data_that_is_not_json_is_refused_on_the_page(
    operator: Page, dashboard: UiProcess, made: Runs
) -> None:
    page = operator
    before = scalar(dashboard.db_url, "SELECT count(*) FROM orchestrator.runs")
    page.goto(f"/runs/{made.failed[0]}")
    page.click("#fork summary")
    page.fill("textarea[name=data]", "{not json")
    page.click("#fork button[type=submit]")
    page.locator("#confirm-dialog button[value=ok]").click()
    expect(page.locator(".notice.error")).to_contain_text("not JSON")
    assert scalar(dashboard.db_url, "SELECT count(*) FROM orchestrator.runs") == before


# -- who may act -------------------------------------------------------------------------------


def test_viewer__sees_no_actions_and_a_forged_cancel_gets_403(
    viewer: Page, dashboard: UiProcess, made: Runs
) -> None:
    page = viewer
    run_id = made.sleeping[1]
    page.goto(f"/runs/{run_id}")
    expect(page.locator(".topbar .who")).to_contain_text("bob · viewer")
    expect(page.locator("h1")).to_contain_text(run_id)
    assert page.locator("form[action$='/cancel']").count() == 0
    assert page.locator("#fork").count() == 0
    # payloads are hidden from viewers (log_payloads is off)
    expect(page.locator("h2:has-text('Event') + .panel .redacted")).to_be_visible()
    assert "order_id" not in page.content()
    page.goto("/events")
    expect(page.locator("table.events .redacted").first).to_have_text("hidden from viewers")
    assert page.locator("#send").count() == 0  # no form to send an event either
    csrf = page.locator(".topbar input[name=csrf_token]").input_value()
    assert csrf  # the forged request carries the viewer's own valid token
    response = page.request.post(
        f"/runs/{run_id}/cancel", form={"csrf_token": csrf, "confirmed": "yes"}
    )
    assert response.status == 403
    assert status_of(dashboard.db_url, run_id) == "sleeping"


def test_viewer__sees_payloads_when_log_payloads_is_on(
    browser: Browser, dashboard: UiProcess, made: Runs, tmp_path: Path
) -> None:
    shown = UiProcess(dashboard.db_url, tmp_path / "ui.log").start(log_payloads="true")
    try:
        with new_page(browser, shown.url) as page:
            log_in(page, *BOB)
            page.goto(f"/runs/{made.completed[0]}")
            event_panel = page.locator("h2:has-text('Event') + .panel")
            expect(event_panel).to_contain_text('"user_id": 7')  # every first order's
            assert event_panel.locator(".redacted").count() == 0
            assert page.locator("form[action$='/replay']").count() == 0  # still a viewer
    finally:
        shown.stop()


def test_post_without_the_csrf_token__is_refused(
    operator: Page, dashboard: UiProcess, made: Runs
) -> None:
    page = operator
    run_id = made.sleeping[2]
    page.goto(f"/runs/{run_id}")
    response = page.request.post(f"/runs/{run_id}/cancel", form={"confirmed": "yes"})
    assert response.status == 403
    wrong = page.request.post(
        f"/runs/{run_id}/cancel", form={"csrf_token": "x" * 43, "confirmed": "yes"}
    )
    assert wrong.status == 403
    assert status_of(dashboard.db_url, run_id) == "sleeping"
    assert not sql(
        dashboard.db_url, "SELECT 1 FROM orchestrator.ui_actions WHERE run_id = %s", (run_id,)
    )


def test_api__an_unauthenticated_call_gets_401(browser: Browser, dashboard: UiProcess) -> None:
    with new_page(browser, dashboard.url) as page:  # a fresh context: no cookie
        response = page.request.get("/api/v1/runs")
        assert response.status == 401
        assert response.json()["error"]["code"] == "unauthenticated"
        token = page.request.get(
            "/api/v1/runs", headers={"Authorization": f"Bearer {dashboard.tokens['viewer']}"}
        )
        assert token.status == 200 and token.json()["runs"]


# -- the other pages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "heading", "shows"),
    [
        ("/functions", "Functions", "process-order"),
        ("/events", "Events", "order/created"),
        ("/queue", "Queue", "sync-crm"),
        ("/schedules", "Cron schedules", "0 3 * * *"),
        ("/daemons", "Daemons", "leader"),
    ],
)
def test_page__renders_for_an_operator(operator: Page, path: str, heading: str, shows: str) -> None:
    page = operator
    response = page.goto(path)
    assert response is not None and response.status == 200
    expect(page.locator("h1")).to_have_text(heading)
    expect(page.locator("main")).to_contain_text(shows)
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    screenshot(page, path.strip("/"))


def test_function_page__shows_its_throughput_chart(operator: Page, made: Runs) -> None:
    page = operator
    page.goto("/functions")
    page.click("a:has-text('process-order')")
    expect(page.locator("h1")).to_contain_text("process-order")
    expect(page.locator("svg.chart")).to_be_visible()


def test_events__send_a_test_event_from_the_form(operator: Page, dashboard: UiProcess) -> None:
    page = operator
    page.goto("/events")
    page.click("#send summary")
    page.fill("#send input[name=name]", "order/created")
    marker = uuid.uuid4().hex
    page.fill("#send textarea[name=data]", json.dumps({"order_id": 900, "note": marker}))
    page.click("#send button[type=submit]")
    expect(page.locator(".notice.ok")).to_contain_text("Sent event")
    stored = sql(
        dashboard.db_url,
        "SELECT name FROM orchestrator.events WHERE data->>'note' = %s",
        (marker,),
    )
    assert stored == [("order/created",)]
    (audit,) = sql(
        dashboard.db_url,
        "SELECT actor, action FROM orchestrator.ui_actions WHERE action = 'send' "
        "ORDER BY id DESC LIMIT 1",
    )
    assert audit == ("ada", "send")


def test_payloads__are_shown_as_text_never_as_markup(operator: Page, dashboard: UiProcess) -> None:
    page = operator
    hostile = '</span><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    with TestEnv(app, url=dashboard.db_url) as env:
        event_id = env.send("import/requested", {"rows": [1], "source": hostile, hostile: 1})
    page.goto(f"/events?{urlencode({'name': 'import/requested'})}")
    row = page.locator("table.events tr", has_text=event_id[:12])
    row.locator("summary", has_text="data").click()
    expect(row.locator(".json .s", has_text="<script>")).to_have_text(json.dumps(hostile))
    expect(row.locator(".json .k", has_text="onerror")).to_have_text(json.dumps(hostile))
    assert page.evaluate("window.pwned") is None
    assert page.locator("table.events script, table.events img").count() == 0
