from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.apps.common import ensure_schema
from tests.e2e.harness import DaemonProcess, close_connections, stop_all

pytestmark = pytest.mark.e2e


@pytest.fixture
def e2e_url(db_url: str) -> Iterator[str]:
    ensure_schema(db_url)
    yield db_url
    close_connections()


@pytest.fixture
def daemon_factory(e2e_url: str, tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(
        app: str = "tests.e2e.apps.flows:app", *, start: bool = True, **config: Any
    ) -> DaemonProcess:
        d = DaemonProcess(e2e_url, app, tmp_path / f"daemon-{len(started)}.log", **config)
        started.append(d)
        return d.start() if start else d

    yield make
    stop_all(started)
