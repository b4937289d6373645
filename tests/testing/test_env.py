"""The environment's own contract: errors that say what is wrong, a database given by URL
kept, and the process's clock and the app's binding given back at close()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from orchestrator import Context, Orchestrator, event
from orchestrator.db import clock
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.testing import TestEnv
from tests.conftest import with_database

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/not_a_database"
app = Orchestrator(UNREACHABLE)  # the env binds it to the test database meanwhile
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@app.function("greet", trigger=event("user/created"))
def greet(ctx: Context) -> str:
    return ctx.step.run("greet", lambda: f"hello {ctx.event.data['name']}")


@app.function("audit")
def audit(ctx: Context) -> None:
    return None


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def test_mock_step__unknown_function_names_the_registered_ones(orchestrator_env: TestEnv) -> None:
    with pytest.raises(KeyError, match=r"'gret' is not registered.*it has: audit, greet"):
        orchestrator_env.mock_step("gret", "greet", return_value="hi")
    with pytest.raises(KeyError, match="audit, greet"):
        orchestrator_env.fail_step("nope", "greet")


def test_clock__only_moves_forward(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    now = env.now
    with pytest.raises(ValueError, match="only moves forward"):
        env.advance(-1)
    with pytest.raises(ValueError, match="only moves forward"):
        env.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="already"):
        env.advance_to(now - timedelta(microseconds=1))
    assert env.now == now
    assert env.advance(0) == now
    assert env.advance_to(now + timedelta(hours=1)) == now + timedelta(hours=1)


def test_url__the_given_database_is_kept(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        env.send("user/created", {"name": "ada"})
        env.run_until_idle()
        (run,) = env.runs("greet")
        assert run.output == "hello ada"

    database = Database(db_url, pool_size=1)
    try:
        with database.transaction() as conn:
            rows = conn.execute(
                text("SELECT status, output FROM orchestrator.runs WHERE function_id = 'greet'")
            ).all()
    finally:
        database.dispose()
    assert [tuple(r) for r in rows] == [("completed", "hello ada")]


def test_close__gives_back_the_real_clock_and_the_apps_database(server_url: str) -> None:
    assert clock.current() is None
    assert app.database_url() == UNREACHABLE

    env = TestEnv(app, start=START)
    assert clock.current() == START
    assert libpq_url(app.database_url()) == env.url
    assert env.url != libpq_url(UNREACHABLE)
    env.close()

    assert clock.current() is None
    assert app.database_url() == UNREACHABLE
    with pytest.raises(RuntimeError, match="closed"):
        _ = env.now
    env.close()  # twice is harmless


def test_close__the_cloned_database_is_dropped(server_url: str) -> None:
    with TestEnv(app, start=START) as env:
        name = env.url.rsplit("/", 1)[1].split("?", 1)[0]
        assert name.startswith("orchestrator_test_")
    admin = Database(with_database(server_url, "postgres"), pool_size=1)
    try:
        with admin.transaction() as conn:
            found = conn.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
    finally:
        admin.dispose()
    assert found == 0


def test_open__a_second_environment_in_the_process_is_refused(
    orchestrator_env: TestEnv, db_url: str
) -> None:
    with pytest.raises(RuntimeError, match="another TestEnv is open"):
        TestEnv(app, url=db_url)
    # the open one keeps its clock and its database
    assert orchestrator_env.now == clock.current()
    orchestrator_env.send("user/created", {"name": "ada"})
    orchestrator_env.run_until_idle()
    assert [r.output for r in orchestrator_env.runs("greet")] == ["hello ada"]
