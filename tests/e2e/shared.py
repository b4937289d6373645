"""Daemons shared by the tests of one module.

Starting a daemon costs about two seconds (imports, the schema check, the fork server), and
stopping it and dropping its database half a second more: paid once per module instead of
once per test, that is most of the end-to-end suite's time. The price is shared state, so a
test that uses these daemons looks only at its own events and runs (by id, or by a sequence
mark taken when it starts), never at whole tables; and each test checks, before and after,
that every daemon is still serving, so one test's bad input cannot pass unnoticed by the next.

    module_daemons, served = shared_daemons("tests.e2e.apps.badinput:app", workers=1)

    def test_something(served: Served) -> None:
        send(served.url, ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import clone_template, drop_database, with_database
from tests.e2e.apps.common import ensure_schema
from tests.e2e.harness import DaemonProcess, close_connections, scalar, stop_all


@dataclass(frozen=True)
class Served:
    """The database and the daemons serving it."""

    url: str
    daemons: list[DaemonProcess]

    def check_serving(self) -> None:
        for daemon in self.daemons:
            assert daemon.proc is not None
            code = daemon.proc.poll()
            assert code is None, f"a shared daemon exited with {code}:\n{daemon.logs()}"

    def event_mark(self) -> int:
        """The highest event sequence number so far: events after it are the caller's."""
        return int(scalar(self.url, "SELECT coalesce(max(seq), 0) FROM orchestrator.events"))


def shared_daemons(app: str, *, n: int = 1, **config: Any) -> tuple[Any, Any]:
    """Two fixtures for a test module: `module_daemons`, `n` daemons serving `app` (with
    `config`) on a database of their own for the whole module, and `served`, the same for
    one test, checked to be serving before and after it."""

    @pytest.fixture(scope="module", name="module_daemons")
    def module_daemons(
        server_url: str, template_name: str, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Served]:
        name = clone_template(server_url, template_name)
        url = with_database(server_url, name)
        ensure_schema(url)
        logs = tmp_path_factory.mktemp("shared-daemons")
        daemons = [DaemonProcess(url, app, logs / f"daemon-{i}.log", **config) for i in range(n)]
        try:
            for daemon in daemons:
                daemon.start(wait=False)
            for daemon in daemons:
                daemon.wait_serving()
            yield Served(url, daemons)
        finally:
            stop_all(daemons)
            close_connections()
            drop_database(server_url, name)

    @pytest.fixture(name="served")
    def served(module_daemons: Served) -> Iterator[Served]:
        module_daemons.check_serving()
        yield module_daemons
        module_daemons.check_serving()

    return module_daemons, served
