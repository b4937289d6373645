"""What the daemon and the CLI write: ids and sizes, never payloads (unless `log_payloads`
at the debug level), and never the database password."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from orchestrator.db.connect import libpq_url
from tests.conftest import ROOT, eventually
from tests.e2e.harness import DaemonProcess, finished_run, run_cli, run_of, scalar, send

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

APP = "tests.e2e.apps.checkout:app"


def checkout_and_decline(url: str, secret: str) -> None:
    """A run that completes with the secret in its event, step output and return value, and
    one that fails with it in its error message."""
    checkout = send(url, "shop/checkout", {"card": secret, "order": "o-1"})
    run_id = run_of(url, checkout)
    eventually(
        lambda: (
            scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,))
            == "waiting"
        ),
        what="checkout waiting for payment",
    )
    send(url, "shop/paid", {"order": "o-1"})
    assert finished_run(url, checkout)["output"]["card"] == secret
    declined = send(url, "shop/declined", {"card": secret})
    assert secret in finished_run(url, declined)["error"]["message"]


@pytest.mark.parametrize(("level", "payloads"), [("info", False), ("debug", False), ("info", True)])
def test_daemon_logs__carry_no_payloads(e2e_url, daemon_factory, level, payloads):
    secret = f"tok_{uuid.uuid4().hex}"
    daemon = daemon_factory(APP, workers=1, log_level=level, log_payloads=payloads)

    checkout_and_decline(e2e_url, secret)

    assert daemon.terminate() == 0
    lines = daemon.log_events()
    assert secret not in daemon.logs()
    completed = [e for e in lines if e["event"] == "run completed" and e.get("output_bytes")]
    assert completed, "the completed runs were logged with their sizes"
    failed = [e for e in lines if e["event"] == "run failed"]
    assert failed == [failed[0]] and failed[0]["error_type"] == "NonRetriableError"
    assert failed[0]["level"] == "warning"
    assert failed[0]["error"] == "the card was declined"  # the first line, not the token
    assert "error_message" not in failed[0]
    step = next(e for e in lines if e["event"] == "step failed")
    assert (step["level"], step["error_type"]) == ("warning", "NonRetriableError")
    assert step["error"] == "the card was declined"


def test_daemon_logs__payloads_with_log_payloads_at_debug(e2e_url, daemon_factory):
    secret = f"tok_{uuid.uuid4().hex}"
    daemon = daemon_factory(APP, workers=1, log_level="debug", log_payloads=True)

    checkout_and_decline(e2e_url, secret)

    assert daemon.terminate() == 0
    lines = daemon.log_events()
    steps = [e for e in lines if e["event"] == "step completed" and e.get("step") == "charge"]
    assert secret in steps[0]["output"]
    runs = [e for e in lines if e["event"] == "run completed" and e["function_id"] == "checkout"]
    assert secret in runs[0]["output"]
    failed = next(e for e in lines if e["event"] == "run failed")
    assert failed["error_message"] == f"the card was declined\ncard: {secret}"


# -- passwords -----------------------------------------------------------------------------


def with_password(url: str, password: str, **parts: Any) -> str:
    changed = make_url(url).set(password=password, **parts)
    return libpq_url(changed.render_as_string(hide_password=False))


def orchestrator(
    *args: str, url: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_LOG_FORMAT"] = "json"
    if url is not None:
        env["ORCHESTRATOR_DATABASE_URL"] = url
    return run_cli(args, env, cwd)


COMMANDS = [
    ["migrate"],
    ["runs", "list"],
    ["send", "shop/declined"],
    ["roles", "--apply"],
    ["run", "--app", APP],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_unreachable_database__clear_error_without_the_password(command):
    password = f"Pw-{uuid.uuid4().hex}"
    url = f"postgresql://postgres:{password}@127.0.0.1:1/orchestrator"

    for result in (orchestrator(*command, url=url), orchestrator(*command, "--database-url", url)):
        assert result.returncode == 1, result
        assert password not in result.stdout + result.stderr
        assert result.stderr.startswith("error: database: "), result.stderr
        assert 'connection to server at "127.0.0.1", port 1 failed' in result.stderr


@pytest.mark.parametrize("command", COMMANDS[:2] + COMMANDS[-1:], ids=lambda c: c[0])
def test_wrong_database__clear_error_without_the_password(server_url, command):
    password = f"Pw-{uuid.uuid4().hex}"
    url = with_password(server_url, password, database="no_such_database")

    result = orchestrator(*command, url=url)

    assert result.returncode == 1, result
    assert password not in result.stdout + result.stderr
    assert 'database "no_such_database" does not exist' in result.stderr


def test_config_file__password_in_a_private_file__never_shown(tmp_path):
    password = f"Pw-{uuid.uuid4().hex}"
    config = tmp_path / "orchestrator.toml"
    config.write_text(f'database_url = "postgresql://app:{password}@127.0.0.1:1/app"\n')
    config.chmod(0o600)

    result = orchestrator("--config", str(config), "runs", "list")

    assert result.returncode == 1
    assert password not in result.stdout + result.stderr
    assert "port 1 failed" in result.stderr

    config.chmod(0o644)
    result = orchestrator("--config", str(config), "runs", "list")
    assert result.returncode == 1
    assert password not in result.stderr
    assert f"run `chmod o-r {config}`" in result.stderr


def test_daemon_start_up__shows_the_database_with_the_password_masked(db_url, tmp_path):
    # the test servers trust local connections, so the password is accepted and ignored
    password = f"Pw-{uuid.uuid4().hex}"
    daemon = DaemonProcess(
        with_password(db_url, password), APP, tmp_path / "daemon.log", log_level="debug"
    )
    try:
        daemon.start()
    finally:
        daemon.stop()
    serving = next(e for e in daemon.log_events() if e["event"] == "daemon serving")
    assert ":***@" in serving["database"]
    assert password not in daemon.logs()
