from __future__ import annotations

import pytest

from tests.conftest import eventually
from tests.e2e.harness import scalar, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_three_steps__sql_insert_runs_to_completion(e2e_url, daemon_factory):
    daemon_factory()
    sql(e2e_url, "INSERT INTO orchestrator.events (name, data) VALUES ('test/three', '{}')")
    eventually(
        lambda: (
            scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status='completed'") == 1
        ),
        what="run completed",
    )
    output = scalar(e2e_url, "SELECT output FROM orchestrator.runs")
    assert output == {"steps": ["one", "two", "three"]}
    effects = sql(e2e_url, "SELECT step, count(*) FROM effects GROUP BY step ORDER BY step")
    assert effects == [("one", 1), ("three", 1), ("two", 1)]
