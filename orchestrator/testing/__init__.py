"""Testing an app's functions: in-process runs on a real Postgres, by virtual time.

    from orchestrator.testing import TestEnv

    def test_welcome():
        with TestEnv(app) as env:
            env.send("user/created", {"user_id": 7})
            env.run_until_idle()
            env.advance(timedelta(days=1))
            (run,) = env.runs("send-welcome")
            assert run.status == "completed"

With pytest, the `orchestrator_env` fixture (the plugin in orchestrator/testing/plugin.py,
enabled on install) gives each test its environment on a database cloned ahead of need.
"""

from orchestrator.db.inspection import EventRow
from orchestrator.testing.env import NotIdleError, TestEnv
from orchestrator.testing.results import RunResult, StepResult
from orchestrator.testing.stand_ins import InjectedFailure, SimulatedCrash, StepCall, StepMock

__all__ = [
    "EventRow",
    "InjectedFailure",
    "NotIdleError",
    "RunResult",
    "SimulatedCrash",
    "StepCall",
    "StepMock",
    "StepResult",
    "TestEnv",
]
