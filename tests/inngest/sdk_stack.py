"""Our daemon plus one official-SDK app, started as subprocesses on a database of their own:
the stacks tests/inngest/test_sdk_e2e*.py run their scenarios against.

`dev_stack(kind, ...)`: `orchestrator dev -u <app url>` (dev mode), the app with
INNGEST_DEV=1. `signed_stack(kind, ...)`: `orchestrator run` with `inngest = true` and a
signing key, an event key made with `orchestrator event-keys create`, the app (same key,
INNGEST_DEV=0) synced with `orchestrator apps sync`. A missing SDK or Node fails the test,
naming `make inngest-sdks`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import clone_template, drop_database, eventually, with_database
from tests.e2e.harness import (
    DaemonProcess,
    cli,
    close_connections,
    run_cli,
    scalar,
    sql,
    stop_all,
)
from tests.inngest.sdk_harness import (
    ROOT,
    MissingTool,
    SdkApp,
    check_tools,
    free_port,
    sdk_send,
)

NATIVE_APP = "tests.inngest.sdk_apps.native_app:app"
TERMINAL = ("completed", "failed", "cancelled")


def step_hash(step_id: str) -> str:
    """The step id the SDKs use on the wire (and we store): sha1 of the user's id."""
    return hashlib.sha1(step_id.encode()).hexdigest()


class Daemon(DaemonProcess):
    """The harness's daemon with any `orchestrator` subcommand (dev -u, run --app)."""

    def __init__(self, db_url: str, args: list[str], log_path: Path, **config: Any) -> None:
        super().__init__(db_url, "", log_path, **config)
        self.args = args

    def start(self, *, wait: bool = True) -> Daemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *self.args],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_serving()
        return self


@dataclass
class Stack:
    """A database, our daemon with its Inngest gateway, and one SDK app synced to it."""

    kind: str
    url: str
    gateway: str
    daemon: Daemon
    app: SdkApp
    signing_key: str | None = None
    event_key: str | None = None

    def fn(self, slug: str) -> str:
        return f"{self.app.app_id}-{slug}"

    def send(self, name: str, data: dict[str, Any], *, key: str | None = None) -> str:
        """Send one event with the SDK's own client; returns its id."""
        result = sdk_send(
            self.kind,
            self.gateway,
            {"name": name, "data": data},
            signing_key=self.signing_key,
            event_key=key or self.event_key,
        )
        assert "ids" in result, f"the SDK could not send: {result}"
        assert len(result["ids"]) == 1, result
        return str(result["ids"][0])

    def run_of(self, event_id: str, function_id: str) -> str:
        return str(
            eventually(
                lambda: scalar(
                    self.url,
                    "SELECT id::text FROM orchestrator.runs WHERE event_id = %s "
                    "AND function_id = %s",
                    (event_id, function_id),
                ),
                timeout=30,
                what=f"a run of {function_id} for event {event_id}",
            )
        )

    def finished(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        def check() -> list[tuple[Any, ...]]:
            self.check_alive()
            return sql(
                self.url,
                "SELECT status, output, error FROM orchestrator.runs "
                "WHERE id = %s AND status = ANY(%s)",
                (run_id, list(TERMINAL)),
            )

        deadline = time.monotonic() + timeout
        while not (rows := check()):
            if time.monotonic() > deadline:
                raise AssertionError(self.diagnose(run_id, f"run {run_id} not done in {timeout}s"))
            time.sleep(0.05)
        status, output, error = rows[0]
        return {"status": status, "output": output, "error": error}

    def diagnose(self, run_id: str, what: str) -> str:
        run = sql(
            self.url,
            "SELECT status, attempts, error FROM orchestrator.runs WHERE id = %s",
            (run_id,),
        )
        return (
            f"{what}\nrun: {run}\nsteps: {self.steps(run_id)}\ncounts: {self.app.counts(run_id)}"
            f"\n--- daemon log (tail) ---\n{self.daemon.logs()[-5000:]}"
            f"\n--- SDK app log (tail) ---\n{self.app.logs()[-3000:]}"
        )

    def status(self, run_id: str) -> str:
        return str(
            scalar(self.url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,))
        )

    def steps(self, run_id: str) -> dict[str, tuple[str, str, Any]]:
        rows = sql(
            self.url,
            "SELECT step_id, kind, status, output FROM orchestrator.steps WHERE run_id = %s",
            (run_id,),
        )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def check_alive(self) -> None:
        for name, proc in (("daemon", self.daemon.proc), ("SDK app", self.app.proc)):
            assert proc is not None
            code = proc.poll()
            if code is not None:
                logs = self.daemon.logs() if name == "daemon" else self.app.logs()
                raise AssertionError(f"the {name} exited with {code}:\n{logs[-6000:]}")

    def wait_synced(self) -> None:
        """Until the daemon serves the app's functions (its sync reached the daemons)."""
        wanted = self.fn("send-welcome")

        def served() -> bool:
            self.check_alive()
            rows = sql(
                self.url,
                "SELECT 1 FROM orchestrator.daemons WHERE status = 'running' "
                "AND %s = ANY(functions)",
                (wanted,),
            )
            return bool(rows)

        eventually(served, timeout=60, what=f"a daemon serving {wanted}")

    def logged_errors(self) -> list[dict[str, Any]]:
        """The daemon's log lines at error level or worse (a healthy stack writes none, even
        across the kill -9 and restart, the failing run and the refused requests)."""
        bad = ("error", "critical", "exception")
        return [e for e in self.daemon.log_events() if e.get("level") in bad]

    def stop(self) -> None:
        self.app.stop()
        stop_all([self.daemon])


def tools_or_fail(kind: str) -> None:
    try:
        check_tools(kind)
    except MissingTool as exc:
        pytest.fail(str(exc))


DAEMON_CONFIG: dict[str, Any] = {"workers": 1, "concurrency": 8}


@contextmanager
def dev_stack(kind: str, server_url: str, template_name: str, work: Path) -> Iterator[Stack]:
    """Dev mode: `orchestrator dev -u <app url>`, the app with INNGEST_DEV=1."""
    tools_or_fail(kind)
    name = clone_template(server_url, template_name)
    url = with_database(server_url, name)
    gateway = f"127.0.0.1:{free_port()}"
    app = SdkApp(kind, work, gateway).start()
    daemon = Daemon(
        url,
        ["dev", "-u", app.url, "--app", NATIVE_APP],
        work / "daemon.log",
        inngest_address=gateway,
        **DAEMON_CONFIG,
    )
    stack = Stack(kind, url, gateway, daemon, app)
    try:
        daemon.start()
        stack.wait_synced()
        yield stack
        assert not stack.logged_errors(), stack.logged_errors()
    finally:
        stack.stop()
        close_connections()
        drop_database(server_url, name)


@contextmanager
def signed_stack(kind: str, server_url: str, template_name: str, work: Path) -> Iterator[Stack]:
    """Signed mode: `orchestrator run` with inngest on and a signing key, an event key made
    with `orchestrator event-keys create`, the app synced with `orchestrator apps sync`."""
    tools_or_fail(kind)
    name = clone_template(server_url, template_name)
    url = with_database(server_url, name)
    gateway = f"127.0.0.1:{free_port()}"
    signing_key = f"signkey-test-{secrets.token_hex(32)}"
    app: SdkApp | None = None
    try:
        created = cli(url, "event-keys", "create", "e2e", "--json")
        event_key = json.loads(created.stdout)["key"]
        app = SdkApp(kind, work, gateway, signing_key=signing_key).start()
        daemon = Daemon(
            url,
            ["run", "--app", NATIVE_APP],
            work / "daemon.log",
            inngest=True,
            inngest_address=gateway,
            inngest_signing_key=signing_key,
            **DAEMON_CONFIG,
        )
        stack = Stack(kind, url, gateway, daemon, app, signing_key=signing_key, event_key=event_key)
        try:
            daemon.start()
            synced = run_cli(
                ("apps", "sync", app.url),
                dict(
                    os.environ,
                    ORCHESTRATOR_DATABASE_URL=url,
                    ORCHESTRATOR_INNGEST_SIGNING_KEY=signing_key,
                ),
            )
            assert synced.returncode == 0, f"apps sync failed: {synced.stdout}{synced.stderr}"
            stack.wait_synced()
            yield stack
            assert not stack.logged_errors(), stack.logged_errors()
        finally:
            stack.stop()
    finally:
        if app is not None:
            app.stop()
        close_connections()
        drop_database(server_url, name)
