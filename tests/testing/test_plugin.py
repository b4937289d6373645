"""The pytest plugin, in a pytest of its own: a tiny project whose tests use
`orchestrator_env` with the app named in its ini file, with and without pytest-xdist, and
the message when no app is configured."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

APP = """
from datetime import timedelta

from orchestrator import Context, Orchestrator, event

app = Orchestrator()


@app.function("ping", trigger=event("ping"))
def ping(ctx: Context) -> str:
    ctx.step.sleep("nap", timedelta(hours=1))
    return ctx.step.run("pong", lambda: "pong")
"""

TESTS = """
from datetime import UTC, datetime, timedelta

import pytest


def test_ping_pongs_after_an_hour(orchestrator_env):
    orchestrator_env.send("ping")
    orchestrator_env.advance(timedelta(hours=1))
    (run,) = orchestrator_env.runs("ping")
    assert run.status == "completed" and run.output == "pong"


def test_each_test_has_a_fresh_database(orchestrator_env):
    assert orchestrator_env.runs() == []
    orchestrator_env.send("ping")
    orchestrator_env.run_until_idle()
    assert [r.status for r in orchestrator_env.runs()] == ["sleeping"]


@pytest.mark.orchestrator_env(start=datetime(2030, 1, 1, 9, tzinfo=UTC))
def test_the_clock_starts_where_the_marker_says(orchestrator_env):
    assert orchestrator_env.now == datetime(2030, 1, 1, 9, tzinfo=UTC)
    orchestrator_env.send("ping")
    orchestrator_env.advance(timedelta(hours=1))
    (run,) = orchestrator_env.runs("ping")
    assert run.finished_at == datetime(2030, 1, 1, 10, tzinfo=UTC)
"""

INI = """
[pytest]
orchestrator_app = pingapp:app
filterwarnings = error
"""


@pytest.fixture
def project(pytester: pytest.Pytester, server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_TEST_DATABASE_URL", server_url)
    pytester.makepyfile(pingapp=APP, test_ping=TESTS)


def test_plugin__runs_a_projects_tests(pytester: pytest.Pytester, project: None) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_plugin__runs_them_under_xdist(pytester: pytest.Pytester, project: None) -> None:
    pytester.makeini(INI)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=3)


def test_plugin__app_from_the_command_line(pytester: pytest.Pytester, project: None) -> None:
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--orchestrator-app", "pingapp:app"
    )
    result.assert_outcomes(passed=3)


def test_plugin__without_an_app_names_the_setting(pytester: pytest.Pytester, project: None) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*orchestrator_env needs the app under test*orchestrator_app*"])
