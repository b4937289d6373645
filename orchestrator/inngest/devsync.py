"""`orchestrator dev -u URL`: sync each app once it answers, and again when it comes back.

A thread looks at each URL every INTERVAL seconds (an introspection `GET`); an app seen up
that was not synced since it last went away is asked to sync (`sync_url`). Failures are
printed and tried again; they never stop the daemon.
"""

from __future__ import annotations

import sys
import threading

import httpx

from orchestrator.errors import AppSyncError
from orchestrator.inngest.sync import sync_url

INTERVAL = 2.0


class DevSync:
    def __init__(self, urls: list[str], *, timeout: float = 10.0) -> None:
        self.urls = list(urls)
        self.timeout = timeout
        self.synced: set[str] = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dev-sync", daemon=True)

    def start(self) -> None:
        if self.urls:
            self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            for url in self.urls:
                self.look(url)
            self.stopping.wait(INTERVAL)

    def look(self, url: str) -> None:
        """Sync `url` if it is up and not synced since it came up."""
        if not _up(url, self.timeout):
            self.synced.discard(url)
            return
        if url in self.synced:
            return
        try:
            said = sync_url(url, server_kind="dev", timeout=self.timeout)
        except AppSyncError as exc:
            print(f"sync of {url} failed: {exc}; trying again", file=sys.stderr)
            return
        self.synced.add(url)
        print(f"synced {url}: {said.get('message') or 'ok'}", file=sys.stderr)


def _up(url: str, timeout: float) -> bool:
    try:
        return httpx.get(url, timeout=min(timeout, 5.0)).status_code < 500
    except httpx.HTTPError:
        return False
