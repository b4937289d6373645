"""A real `orchestrator ui` on a free loopback port against a cloned database, shared by a
module's tests: the operator `ada` and the viewer `bob` (made with the CLI), and an API
token of each role."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.db import clones
from tests.conftest import ROOT, eventually, with_database
from tests.e2e.conftest import daemon_factory, e2e_url  # the daemon hook's test
from tests.e2e.harness import close_connections

__all__ = ["daemon_factory", "e2e_url"]

ADA = ("ada", "pw-ada-123456")
BOB = ("bob", "pw-bob-123456")
_URL = re.compile(r"dashboard at (http://\S+?)/?$", re.M)


def cli_env(db_url: str, **config: Any) -> dict[str, str]:
    env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=db_url)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in config.items()})
    return env


def ui_cli(
    db_url: str, *args: str, stdin: str = "", **config: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=ROOT,
        env=cli_env(db_url, **config),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def add_user(db_url: str, name: str, password: str, role: str) -> None:
    done = ui_cli(
        db_url, "ui-user", "add", name, "--role", role, "--password-stdin", stdin=password + "\n"
    )
    assert done.returncode == 0, done.stderr


def new_token(db_url: str, name: str, role: str) -> str:
    done = ui_cli(db_url, "ui-token", "create", name, "--role", role, "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["token"])


@dataclass
class UiProcess:
    db_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)

    def start(self, **config: Any) -> UiProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "ui", "--address", "127.0.0.1:0"],
                cwd=ROOT,
                env=cli_env(self.db_url, **config),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = eventually(self._announced, timeout=30, what="the dashboard's address")
        eventually(self._answers, timeout=30, what="the dashboard answering")
        return self

    def _announced(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"ui exited with {self.proc.returncode}:\n{self.logs()}")
        found = _URL.search(self.logs())
        return found.group(1) if found else ""

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v1/openapi.json", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


@pytest.fixture(scope="module")
def ui_db(server_url: str, clone_pool: clones.Clones) -> Iterator[str]:
    name = clone_pool.take()
    url = with_database(server_url, name)
    yield url
    close_connections()
    clone_pool.give_back(name)


@pytest.fixture(scope="module")
def ui_server(ui_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiProcess]:
    add_user(ui_db, *ADA, "operator")
    add_user(ui_db, *BOB, "viewer")
    ui = UiProcess(ui_db, tmp_path_factory.mktemp("ui") / "ui.log")
    ui.tokens = {
        "operator": new_token(ui_db, "ada-script", "operator"),
        "viewer": new_token(ui_db, "bob-script", "viewer"),
    }
    ui.start()
    yield ui
    ui.stop()
