"""Headless Chromium for the dashboard's browser tests, driven by Playwright.

The browser is Debian's `chromium` (`make browser` installs it); Playwright's own downloaded
browsers are not used. A missing browser fails the test that needs it: a dashboard nobody
tested in a browser is not tested.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright

CHROMIUM = os.environ.get("ORCHESTRATOR_TEST_CHROMIUM", "/usr/bin/chromium")
# The README's screenshots (docs/ui) are rewritten only when asked, with
# ORCHESTRATOR_UI_SCREENSHOTS=1: a test run must not change tracked files. Otherwise they go
# to a directory of the session's own, and are still taken (a page that cannot be rendered
# fails the test all the same).
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"
SCREENSHOTS = (
    DOCS_SCREENSHOTS
    if os.environ.get("ORCHESTRATOR_UI_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / f"orchestrator-ui-screenshots-{os.getpid()}"
)
VIEWPORT = {"width": 1400, "height": 900}


@contextmanager
def chromium() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM}: run `make browser` "
            "(apt-get install -y chromium, as root)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser: Browser, base_url: str, *, javascript: bool = True) -> Iterator[Page]:
    """A page in a fresh context (its own cookies) that records what the console reports,
    so a test can check that the CSP refused nothing."""
    context = browser.new_context(
        base_url=base_url, viewport=VIEWPORT, java_script_enabled=javascript
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        # an error status of a page itself (401 after a wrong password, a forged POST's 403)
        # is reported as "Failed to load resource"; what matters is what the CSP refused
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    def asset(response: Response) -> None:
        if "/static/" in response.url and response.status != 200:
            problems.append(f"{response.url}: HTTP {response.status}")

    page.on("console", console)
    page.on("response", asset)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.console_problems = problems  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()


def log_in(page: Page, name: str, password: str, *, then: str = "/runs") -> None:
    page.goto(f"/login?next={then}")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{then}*")


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as <name>.png (under docs/ui when asked: see SCREENSHOTS)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def console_problems(page: Page) -> list[str]:
    found: list[str] = page.console_problems  # type: ignore[attr-defined]
    return found
