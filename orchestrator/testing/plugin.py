"""The pytest plugin (enabled on install through the `pytest11` entry point).

Fixtures:

- `orchestrator_env` (per test): a `TestEnv` of the app under test, on a fresh database;
- `orchestrator_app` (per test): the app, from `--orchestrator-app module:attr` or the
  `orchestrator_app` ini key; override the fixture to give it yourself;
- `orchestrator_server_url` and `orchestrator_databases` (per session): the test server
  ($ORCHESTRATOR_TEST_DATABASE_URL, else the embedded Postgres) and the clones of its
  migrated template, made ahead of need on a thread while the tests run.

With pytest-xdist every worker is a process of its own, with its own clones (and its own
virtual clock); the template is made once per server and schema, whichever worker comes
first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from orchestrator.app import Orchestrator
    from orchestrator.db.clones import Clones
    from orchestrator.testing.env import TestEnv

APP_KEY = "orchestrator_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    help_ = "the app the orchestrator_env fixture tests, as package.module:attr"
    parser.addini(APP_KEY, help_, default=None)
    parser.getgroup("orchestrator").addoption(
        "--orchestrator-app", dest=APP_KEY, default=None, metavar="MODULE:ATTR", help=help_
    )


@pytest.fixture(scope="session")
def orchestrator_server_url() -> str:
    """The Postgres server test databases are made on."""
    from orchestrator.testing.env import server_url

    return server_url()


@pytest.fixture(scope="session")
def orchestrator_databases(orchestrator_server_url: str) -> Iterator[Clones]:
    """Clones of the migrated template, made ahead of need; each is dropped after its test."""
    from orchestrator.db.clones import Clones, ensure_template

    pool = Clones(orchestrator_server_url, ensure_template(orchestrator_server_url))
    yield pool
    pool.close()


@pytest.fixture
def orchestrator_app(request: pytest.FixtureRequest) -> Orchestrator:
    """The app under test: `--orchestrator-app` or the `orchestrator_app` ini key."""
    from orchestrator.runtime.loader import load_app

    spec = request.config.getoption(APP_KEY) or request.config.getini(APP_KEY)
    if not spec:
        pytest.fail(
            "orchestrator_env needs the app under test: set `orchestrator_app = "
            '"package.module:app"` under [tool.pytest.ini_options] (or pass '
            "--orchestrator-app), or define an `orchestrator_app` fixture that returns it",
            pytrace=False,
        )
    return load_app(str(spec))


@pytest.fixture
def orchestrator_env(
    orchestrator_app: Orchestrator,
    orchestrator_databases: Clones,
    orchestrator_server_url: str,
) -> Iterator[TestEnv]:
    """A test environment of the app on a fresh database, closed (and dropped) afterwards."""
    from orchestrator.db.clones import with_database
    from orchestrator.testing.env import TestEnv

    def database() -> tuple[str, Callable[[], None]]:
        name = orchestrator_databases.take()
        url = with_database(orchestrator_server_url, name)
        return url, lambda: orchestrator_databases.give_back(name)

    env = TestEnv(orchestrator_app, database=database)
    try:
        yield env
    finally:
        env.close()
