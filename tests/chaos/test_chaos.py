"""The fault scenarios at CI size: each breaks something on purpose and checks that nothing is
lost or done twice. `make soak` runs the same scenarios larger and prints their figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos import scenarios
from tests.chaos.harness import ChaosEnv

pytestmark = pytest.mark.chaos

CI_SIZES: dict[str, dict[str, Any]] = {
    "worker_kills": {"runs": 300, "every": 1.0},
    "daemon_kills": {"kills": 2, "runs": 300},
    "postgres_restarts": {"runs": 300, "restarts": 1},
    "terminate_backends": {"runs": 300},
    "sigstop": {"runs": 60},
    "timers": {"timers": 400, "daemons": 4, "lead": 8},
    # throughput against a control is a benchmark figure: `make soak` judges it, CI does not
    "poison": {"runs": 1000, "repeats": 1},
    "hostile_input": {"huge_mib": 64},
    "sigterm_in_flight": {"in_flight": 40, "grace": 5},
    "migrate_under_load": {"runs": 300, "migrations": 3},
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario__nothing_lost_nothing_done_twice(chaos: ChaosEnv, name: str) -> None:
    scenario: Callable[..., scenarios.Result] = scenarios.SCENARIOS[name]
    result = scenario(chaos, **CI_SIZES[name])
    print(result.row(), result.figures)
    assert result.report.lost == 0, result.explain()
    assert result.report.non_terminal == 0, result.explain()
    assert result.report.duplicate_runs == 0, result.explain()
    assert result.report.duplicated_results == 0, result.explain()
    assert result.passed, result.explain()
