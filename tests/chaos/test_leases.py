"""Leases against a real daemon: a daemon renews only the leases of the runs it executes."""

from __future__ import annotations

import json

import pytest

from tests.chaos.harness import ChaosEnv
from tests.conftest import eventually

pytestmark = pytest.mark.chaos


@pytest.mark.timeout(90)
def test_lease__run_leased_to_a_daemon_that_does_not_execute_it_is_rescued(
    chaos: ChaosEnv,
) -> None:
    # A claim can commit while the connection drops before its answer arrives (a Postgres
    # restart at that instant): the run is then leased to the daemon in the database, but the
    # daemon never started it. Its renewals must not keep that lease alive forever.
    daemon = chaos.start_daemon()
    daemon_id = chaos.scalar(
        "SELECT id::text FROM orchestrator.daemons WHERE pid = %s AND status = 'running'",
        (daemon.pid,),
    )
    event = {
        "id": "orphan",
        "name": "chaos/flow",
        "data": {"steps": 1},
        "ts": "2026-01-01T00:00:00+00:00",
    }
    run_id = chaos.scalar(
        "INSERT INTO orchestrator.runs (function_id, events, status, attempts, started_at, "
        "lease_owner, lease_token, lease_expires_at) VALUES ('chaos-flow', %s, 'running', 1, "
        "now(), CAST(%s AS uuid), gen_random_uuid(), now() + make_interval(secs => %s)) "
        "RETURNING id::text",
        (json.dumps([event]), daemon_id, chaos.config["lease_duration"]),
    )

    def finished() -> tuple[str, int] | None:
        row = chaos.sql(
            "SELECT status, recoveries FROM orchestrator.runs WHERE id = CAST(%s AS uuid) "
            "AND status <> 'running'",
            (run_id,),
        )
        return row[0] if row and row[0][0] == "completed" else None

    # its lease expires (4 s), a rescue requeues it, and a daemon executes it
    status, recoveries = eventually(finished, timeout=30, what="the orphaned run completed")
    assert (status, recoveries) == ("completed", 1)
