"""A freshly started daemon is ready before its first run: each worker process has opened
its commit connection (and planned the group statement) before it reports ready, so the
first step's checkpoint does not pay for connecting (bench/first_checkpoint.py measures it)."""

from __future__ import annotations

import pytest

from tests.conftest import eventually
from tests.e2e.harness import scalar

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_workers__open_their_commit_connections_before_the_first_run(e2e_url, daemon_factory):
    daemon_factory(workers=2)

    def commit_connections() -> int:
        return int(
            scalar(
                e2e_url,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() "
                "AND application_name LIKE 'orchestrator-worker-%%-commit'",
            )
        )

    # two regular workers (and the quarantine process, which starts as they do)
    eventually(lambda: commit_connections() >= 2, timeout=30, what="commit connections open")
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs") == 0  # no run did it
