"""The daemon and the CLI under the least-privileged roles of `orchestrator roles`: the daemon
connects as the runtime role, starts on a schema at head without trying to change it, and
serves a flow that uses every table; the read-only role reads and cannot write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.db import roles
from tests.conftest import eventually
from tests.db_roles import as_role, drop_roles, unique_roles
from tests.e2e.harness import DaemonProcess, cli, count, finished_run, run_of, scalar, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

APP = "tests.e2e.apps.checkout:app"


@pytest.fixture
def made(e2e_url: str) -> Iterator[roles.Roles]:
    names = unique_roles()
    try:
        result = cli(
            e2e_url,
            "roles",
            "--apply",
            "--login",
            *("--owner", names.owner, "--runtime", names.runtime, "--readonly", names.readonly),
        )
        assert "set their passwords" in result.stdout, result.stdout
        yield names
    finally:
        drop_roles(e2e_url, names)


@pytest.fixture
def runtime_daemon(made: roles.Roles, e2e_url: str, tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(as_role(e2e_url, made.runtime), APP, tmp_path / "runtime.log")
    yield daemon
    daemon.stop()


def send(url: str, name: str, data: dict[str, Any]) -> str:
    return cli(url, "send", name, "--data", json.dumps(data)).stdout.strip()


def status(url: str, run_id: str) -> str:
    return str(scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def test_daemon__as_the_runtime_role__serves_every_kind_of_step(made, e2e_url, runtime_daemon):
    runtime_url = as_role(e2e_url, made.runtime)
    runtime_daemon.start()
    connected_as = sql(
        e2e_url,
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'orchestrator-%%'",
    )
    assert connected_as == [(made.runtime,)]

    checkout = send(runtime_url, "shop/checkout", {"card": "tok_1", "order": "o-1"})
    run_id = run_of(e2e_url, checkout)
    eventually(lambda: status(e2e_url, run_id) == "waiting", timeout=30, what="waiting")
    send(runtime_url, "shop/paid", {"order": "o-1"})
    run = finished_run(e2e_url, checkout, timeout=60)
    assert run["status"] == "completed", run
    assert run["output"]["paid"] is True
    assert run["output"]["receipt"] == "receipt for tok_1"

    # the sent event's run: debounced (buffered_events), throttled (limiters), idempotent
    eventually(
        lambda: (
            scalar(e2e_url, "SELECT status FROM orchestrator.runs WHERE function_id = 'audit'")
            == "completed"
        ),
        timeout=30,
        what="audit run completed",
    )
    assert count(e2e_url, "SELECT count(*) FROM orchestrator.idempotency_keys") == 1
    assert count(e2e_url, "SELECT count(*) FROM orchestrator.limiters") == 1
    # cron, fired by the leader (schedules, leader)
    eventually(
        lambda: count(
            e2e_url,
            "SELECT count(*) FROM orchestrator.runs "
            "WHERE function_id = 'heartbeat' AND status = 'completed'",
        ),
        timeout=30,
        what="a cron run completed",
    )
    declined = send(runtime_url, "shop/declined", {"card": "tok_2"})
    assert finished_run(e2e_url, declined)["status"] == "failed"

    assert runtime_daemon.terminate() == 0
    logs = runtime_daemon.logs()
    assert "permission denied" not in logs
    assert runtime_daemon.problems() == [], logs
    assert scalar(e2e_url, "SELECT status FROM orchestrator.daemons") == "stopped"


def test_daemon__as_the_runtime_role__schema_behind_head__exits_saying_what_to_do(
    made, e2e_url, runtime_daemon
):
    sql(e2e_url, "UPDATE orchestrator.alembic_version SET version_num = '0001'")

    runtime_daemon.start(wait=False)
    assert runtime_daemon.proc is not None
    assert runtime_daemon.proc.wait(60) == 1
    logs = runtime_daemon.logs()
    assert f"role '{made.runtime}' may not change it" in logs
    assert "run `orchestrator migrate` as the role that owns the schema" in logs
    assert scalar(e2e_url, "SELECT version_num FROM orchestrator.alembic_version") == "0001"


def test_cli__as_the_readonly_role__reads_but_cannot_send(made, e2e_url):
    readonly_url = as_role(e2e_url, made.readonly)
    sent = send(as_role(e2e_url, made.runtime), "shop/declined", {"card": "tok_3"})

    assert cli(readonly_url, "runs", "list").returncode == 0
    assert json.loads(cli(readonly_url, "functions", "--json").stdout) == []
    result = cli(readonly_url, "send", "shop/declined", "--data", "{}", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: database:")
    assert "read-only transaction" in result.stderr
    assert sql(e2e_url, "SELECT id FROM orchestrator.events") == [(sent,)]
