"""Retention settings: defaults, 0 keeps forever, and the smallest ages accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.runtime.retention import Policy

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./orchestrator.toml


def test_policy__defaults_keep_completed_and_events_a_week_failed_a_month() -> None:
    policy = Policy.from_config(load_config(env={}))
    assert (policy.completed, policy.failed, policy.events) == (604800, 2592000, 604800)
    assert (policy.daemons, policy.batch_size) == (86400, 50)


def test_policy__zero_keeps_forever() -> None:
    env = {"ORCHESTRATOR_RETAIN_COMPLETED": "0", "ORCHESTRATOR_RETAIN_EVENTS": "0"}
    policy = Policy.from_config(load_config(env=env))
    assert (policy.completed, policy.failed, policy.events) == (None, 2592000, None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("RETAIN_EVENTS", "600", "0 (keep forever) or at least 3600 seconds"),
        ("RETAIN_COMPLETED", "30", "0 (keep forever) or at least 60 seconds"),
        ("RETAIN_FAILED", "-1", "0 (keep forever) or at least 60 seconds"),
        ("RETENTION_BATCH_SIZE", "0", "at least 1"),
        ("RETENTION_INTERVAL", "0", "a positive number of seconds"),
    ],
)
def test_config__ages_too_small_are_refused_with_the_rule(
    key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"retain|retention") as err:
        load_config(env={f"ORCHESTRATOR_{key}": value})
    assert message in str(err.value)


def test_config__the_smallest_ages_are_accepted() -> None:
    env = {"ORCHESTRATOR_RETAIN_EVENTS": "3600", "ORCHESTRATOR_RETAIN_FAILED": "60"}
    cfg = load_config(env=env)
    assert (cfg.retain_events, cfg.retain_failed) == (3600, 60)
