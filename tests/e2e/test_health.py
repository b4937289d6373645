"""/readyz follows the database through an outage; /healthz and /metrics stay up through it.

The daemon serves against a private PostgreSQL cluster that the test stops and starts
(tests/chaos/cluster.py), so this test owns its server whatever
ORCHESTRATOR_TEST_DATABASE_URL says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.runtime.backlog import PROBE_EVERY
from tests.chaos.cluster import PrivateCluster
from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess
from tests.e2e.scrape import families, fetch, listening, scrape, value
from tests.metrics_docs import NONE, differences, documented

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

APP = "tests.e2e.apps.metered:app"


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    pg = PrivateCluster(max_connections=50).init()
    pg.start()
    yield pg
    pg.destroy()


def test_readyz__503_while_the_database_is_down_200_once_it_is_back(
    cluster: PrivateCluster, tmp_path: Path
) -> None:
    daemon = DaemonProcess(
        cluster.url, APP, tmp_path / "daemon.log", workers=1, http_address="127.0.0.1:0"
    )
    daemon.start()
    try:
        base = listening(daemon)
        liveness: list[tuple[int, str]] = []

        def readyz(expected: int) -> str | None:
            liveness.append(fetch(base + "/healthz"))
            status, body = fetch(base + "/readyz")
            return body if status == expected else None

        eventually(lambda: readyz(200), timeout=30, interval=0.2, what="/readyz 200")
        liveness.clear()  # from here on the loop is turning
        eventually(
            lambda: value(scrape(base), "orchestrator_due_probe_timestamp_seconds"),
            what="the due queue measured",
        )

        cluster.stop("fast")
        down = eventually(lambda: readyz(503), timeout=30, interval=0.2, what="/readyz 503")
        assert "database not reached: last successful heartbeat" in down
        assert "last error:" in down  # the heartbeat's failure is recorded

        # a scrape reads only the daemon's memory: it answers while the database is down,
        # and the due-queue probe's timestamp stops moving
        assert differences(families(base), documented()) == NONE
        assert differences(families(base, openmetrics=True), documented()) == NONE
        probed = value(scrape(base), "orchestrator_due_probe_timestamp_seconds")
        assert probed is not None and probed > 0
        seen = set()
        deadline = time.monotonic() + PROBE_EVERY + 1  # more than one probe's interval
        while time.monotonic() < deadline:
            seen.add(value(scrape(base), "orchestrator_due_probe_timestamp_seconds"))
            time.sleep(0.5)
        assert seen == {probed}

        cluster.start()
        eventually(lambda: readyz(200), timeout=30, interval=0.2, what="/readyz 200 again")

        # the scheduler loop kept turning (retrying) while the database was gone
        assert {status for status, _ in liveness} == {200}, liveness
    finally:
        daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, daemon.logs()
