"""Real Inngest SDK apps and our daemon as subprocesses, for tests/inngest/test_sdk_e2e.py and
bench/inngest.py.

The SDK apps are tests/inngest/sdk_apps/node/app_v3.mjs and app_v4.mjs (the official JS SDK
as `make inngest-sdks` installed it under .cache/inngest-sdks/) and
tests/inngest/sdk_apps/python_app.py (the official Python SDK from the dev extra). Each step
body appends a line to a count file, so a test can tell how many times it ran.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
SDK_APPS = ROOT / "tests" / "inngest" / "sdk_apps"
SDK_CACHE = ROOT / ".cache" / "inngest-sdks"
KINDS = ("v3", "v4", "python")
APP_IDS = {"v3": "e2e-node-v3", "v4": "e2e-node-v4", "python": "e2e-python"}


class MissingTool(RuntimeError):
    """A tool an SDK app needs is not installed; the message says how to install it."""


def check_tools(kind: str) -> None:
    """Raise MissingTool unless the SDK `kind` ("v3", "v4" or "python") can run here."""
    if kind == "python":
        if importlib.util.find_spec("inngest") is None:
            raise MissingTool(
                "the Inngest Python SDK is not installed: run `make install` "
                "(it is in the dev extra: pip install -e '.[dev]')"
            )
        return
    if shutil.which("node") is None:
        raise MissingTool("Node.js 20+ is not on PATH: install it, then run `make inngest-sdks`")
    if not (SDK_CACHE / kind / "node_modules" / "inngest" / "package.json").exists():
        raise MissingTool(
            f"the Inngest JS SDK {kind} is not installed in {SDK_CACHE / kind}: "
            "run `make inngest-sdks`"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sdk_env(
    kind: str,
    gateway: str,
    *,
    signing_key: str | None = None,
    event_key: str | None = None,
) -> dict[str, str]:
    """The environment that points an SDK app (or its sender) at our gateway: what a user
    changes to move an app from Inngest to us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INNGEST_")}
    env["INNGEST_BASE_URL"] = f"http://{gateway}"
    if signing_key is None:
        env["INNGEST_DEV"] = "1"
    else:
        env["INNGEST_DEV"] = "0"
        env["INNGEST_SIGNING_KEY"] = signing_key
    if event_key is not None:
        env["INNGEST_EVENT_KEY"] = event_key
    if kind != "python":
        env["SDK_DIR"] = str(SDK_CACHE / kind)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class SdkApp:
    """One SDK app served on a free port of 127.0.0.1."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        gateway: str,
        *,
        signing_key: str | None = None,
        app_id: str | None = None,
    ) -> None:
        check_tools(kind)
        self.kind = kind
        self.app_id = app_id or APP_IDS[kind]
        self.port = free_port()
        self.count_file = workdir / f"counts-{kind}-{self.port}.tsv"
        self.log_path = workdir / f"sdk-{kind}-{self.port}.log"
        self.env = sdk_env(kind, gateway, signing_key=signing_key) | {
            "PORT": str(self.port),
            "COUNT_FILE": str(self.count_file),
            "APP_ID": self.app_id,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/inngest"

    def command(self) -> list[str]:
        if self.kind == "python":
            return [sys.executable, "-m", "tests.inngest.sdk_apps.python_app"]
        return ["node", str(SDK_APPS / "node" / f"app_{self.kind}.mjs")]

    def start(self, timeout: float = 30.0) -> SdkApp:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SDK app {self.kind} exited:\n{self.logs()}")
            try:
                # 200 in dev mode; 401 for an unsigned GET in cloud mode: either way it answers
                if httpx.get(self.url, timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"SDK app {self.kind} did not answer in {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def counts(self, run_id: str) -> Counter[tuple[str, str]]:
        """How many times each (function, step) body ran for the run `run_id`."""
        if not self.count_file.exists():
            return Counter()
        out: Counter[tuple[str, str]] = Counter()
        for line in self.count_file.read_text().splitlines():
            fn, step, run, _attempt = line.split("\t")
            if run == run_id:
                out[(fn, step)] += 1
        return out

    def all_counts(self, fn: str) -> Counter[str]:
        """How many times each step body of function `fn` ran, over every run."""
        if not self.count_file.exists():
            return Counter()
        out: Counter[str] = Counter()
        for line in self.count_file.read_text().splitlines():
            name, step, _run, _attempt = line.split("\t")
            if name == fn:
                out[step] += 1
        return out


def sdk_send(
    kind: str,
    gateway: str,
    events: dict[str, Any] | Sequence[dict[str, Any]],
    *,
    signing_key: str | None = None,
    event_key: str | None = None,
) -> dict[str, Any]:
    """Send `events` with the SDK's own client (`inngest.send()` / `send_sync()`), pointed at
    our gateway. Returns {"ids": [...]} or {"error": "..."} (the SDK's own error message)."""
    check_tools(kind)
    env = sdk_env(kind, gateway, signing_key=signing_key, event_key=event_key)
    if kind == "python":
        cmd = [sys.executable, "-m", "tests.inngest.sdk_apps.python_send"]
    else:
        cmd = ["node", str(SDK_APPS / "node" / "send.mjs")]
    out = subprocess.run(
        [*cmd, json.dumps(events)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"sender printed nothing ({out.returncode}): {out.stderr}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
