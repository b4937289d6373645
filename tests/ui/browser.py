"""Headless Chromium for the dashboard's browser tests, driven by Playwright.

The browser is Debian's `chromium` (`make browser` installs it); Playwright's own downloaded
browsers are not used. A missing browser fails the test that needs it: a dashboard nobody
tested in a browser is not tested.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright

CHROMIUM = os.environ.get("ORCHESTRATOR_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"
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
def new_page(browser: Browser, base_url: str) -> Iterator[Page]:
    """A page in a fresh context (its own cookies) that records what the console reports,
    so a test can check that the CSP refused nothing."""
    context = browser.new_context(base_url=base_url, viewport=VIEWPORT)
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
    """Save the whole page as docs/ui/<name>.png (committed; the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def console_problems(page: Page) -> list[str]:
    found: list[str] = page.console_problems  # type: ignore[attr-defined]
    return found


# -- the dashboard as a subprocess -------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
USERS = {"ada": ("operator", "pw-ada-123456"), "bob": ("viewer", "pw-bob-123456")}


@dataclass
class Dashboard:
    """A real `orchestrator ui` process on a loopback port, serving `db_url`."""

    url: str
    db_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict)  # role → API token

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def _cli(env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"orchestrator {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_dashboard(db_url: str, workdir: Path, timeout: float = 30.0) -> Dashboard:
    """Users `ada` (operator) and `bob` (viewer) and a token of each role, made with the CLI;
    then `orchestrator ui`, polled until its login page answers."""
    env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=db_url)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for name, (role, password) in USERS.items():
        _cli(
            env,
            workdir,
            "ui-user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            stdin=password + "\n",
        )
    tokens = {}
    for role in ("viewer", "operator"):
        out = _cli(env, workdir, "ui-token", "create", f"{role}-script", "--role", role)
        tokens[role] = out.strip().splitlines()[-1].strip()
    port = _free_port()
    log_path = workdir / "ui.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "ui", "--address", f"127.0.0.1:{port}"],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    dashboard = Dashboard(f"http://127.0.0.1:{port}", db_url, process, log_path, tokens)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"orchestrator ui exited with {process.returncode}: {dashboard.logs()}")
        try:
            with urllib.request.urlopen(dashboard.url + "/login", timeout=2) as response:
                if response.status == 200:
                    return dashboard
        except OSError:
            time.sleep(0.1)
    dashboard.stop()
    pytest.fail(f"orchestrator ui did not answer within {timeout}s: {dashboard.logs()}")
