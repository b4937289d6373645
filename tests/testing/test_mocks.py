"""`mock_step`: return values, side effects, the calls' arguments, and a mocked result that
is recorded and replayed like a real one."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from orchestrator import Context, Orchestrator, event
from orchestrator.testing import TestEnv

app = Orchestrator()
real_calls: list[str] = []


def geocode(address: str, *, country: str) -> dict[str, Any]:
    real_calls.append(address)
    return {"lat": 0.0, "lon": 0.0}


@app.function("locate", trigger=event("address/added"), retries=2)
def locate(ctx: Context) -> dict[str, Any]:
    where = ctx.step.run("geocode", geocode, ctx.event.data["address"], country="FR")
    ctx.step.sleep("settle", timedelta(hours=1))
    return {"where": where}


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


@pytest.fixture(autouse=True)
def _no_real_calls() -> None:
    real_calls.clear()


def test_mock__return_value_is_recorded_and_replayed(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    mock = env.mock_step("locate", "geocode", return_value={"lat": 48.85, "lon": 2.35})
    env.send("address/added", {"address": "1 rue de Rivoli"})
    env.run_until_idle()
    env.advance(timedelta(hours=1))  # the run resumes, replaying the mocked step

    (run,) = env.runs("locate")
    assert run.status == "completed"
    assert run.step("geocode").output == {"lat": 48.85, "lon": 2.35}
    assert run.output == {"where": {"lat": 48.85, "lon": 2.35}}
    assert len(mock.calls) == 1  # not called again on the replay after the sleep
    assert mock.calls[0].args == ("1 rue de Rivoli",)
    assert mock.calls[0].kwargs == {"country": "FR"}
    assert real_calls == []


def test_mock__side_effect_iterable_raises_then_returns(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    mock = env.mock_step(
        "locate", "geocode", side_effect=[TimeoutError("geocoder slow"), {"lat": 1.0, "lon": 2.0}]
    )
    env.send("address/added", {"address": "2 rue de Rivoli"})
    env.advance(timedelta(hours=2))

    (run,) = env.runs("locate")
    assert run.status == "completed"
    assert run.step("geocode").attempts == 2
    assert run.step("geocode").output == {"lat": 1.0, "lon": 2.0}
    assert len(mock.calls) == 2
    assert mock.calls[1].at > mock.calls[0].at  # the retry came after a back-off
    assert real_calls == []


def test_mock__side_effect_callable_gets_the_arguments(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    mock = env.mock_step(
        "locate", "geocode", side_effect=lambda address, country: {"echo": f"{address}/{country}"}
    )
    env.send("address/added", {"address": "3 rue de Rivoli"})
    env.advance(timedelta(hours=1))

    (run,) = env.runs("locate")
    assert run.output == {"where": {"echo": "3 rue de Rivoli/FR"}}
    assert mock.called and len(mock.calls) == 1
    assert real_calls == []


def test_mock__exception_side_effect_exhausts_the_retries(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    mock = env.mock_step("locate", "geocode", side_effect=ValueError("no such street"))
    env.send("address/added", {"address": "nowhere"})
    env.advance(timedelta(days=1))

    (run,) = env.runs("locate")
    assert run.status == "failed"
    assert len(mock.calls) == 3  # retries=2: three attempts
    error = run.step("geocode").error
    assert error is not None and error["message"] == "no such street"


@app.function("geocode-all", trigger=event("addresses/added"))
def geocode_all(ctx: Context) -> list[Any]:
    return [
        ctx.step.run("geocode", geocode, address, country="FR")
        for address in ctx.event.data["addresses"]
    ]


def test_mock__one_call_of_a_repeated_step(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    mock = env.mock_step("geocode-all", "geocode#1", return_value={"mocked": True})
    env.send("addresses/added", {"addresses": ["a", "b", "c"]})
    env.run_until_idle()

    (run,) = env.runs("geocode-all")
    assert run.output == [{"lat": 0.0, "lon": 0.0}, {"mocked": True}, {"lat": 0.0, "lon": 0.0}]
    assert real_calls == ["a", "c"]
    assert [c.args for c in mock.calls] == [("b",)]
    assert [c.step_id for c in env.calls("geocode-all", "geocode")] == [
        "geocode",
        "geocode#1",
        "geocode#2",
    ]
