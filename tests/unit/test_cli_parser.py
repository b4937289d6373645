"""The command line's shape: every command and option explains itself, `--help` loads no
database driver, logging or engine code, and the public API still imports by name."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

import orchestrator
from orchestrator import cli
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)

HEAVY = ("sqlalchemy", "psycopg", "structlog", "alembic", "cel", "rich", "orchestrator.app")


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def parsers(parser: argparse.ArgumentParser, path: str = "orchestrator"):
    """(command path, parser) for the parser and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert name in helped, f"{path} {name} has no help text"
                yield from parsers(sub, f"{path} {name}")


def test_every_command_and_option__has_help_text():
    for path, parser in parsers(cli._parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{path}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["runs", "list", "--help"],
        ["runs", "list", "--limit", "-1"],
        ["runs", "list", "--status", "nope", "--json"],
        ["nosuchcommand"],
    ],
)
def test_help_and_usage_errors__load_no_driver_logging_or_engine(argv):
    code = f"""
import contextlib, io, json, sys
from orchestrator import cli
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        status = cli.main({argv!r})
    except SystemExit as exc:
        status = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m in {HEAVY!r})
print(json.dumps({{"status": status, "heavy": heavy, "said": out.getvalue() + err.getvalue()}}))
"""
    result = python(code)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] in (0, 2)
    assert report["said"]  # it did answer: help, or the usage error
    assert report["heavy"] == []


def test_public_api__every_name_imports_from_the_package():
    result = python(
        "import orchestrator, sys; "
        "before = 'orchestrator.app' in sys.modules; "
        "from orchestrator import Orchestrator, Context, event, cron, StepError; "
        "print(before, Orchestrator.__module__, event.__module__)"
    )

    assert result.stdout.split() == ["False", "orchestrator.app", "orchestrator.functions"]
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        orchestrator.Nope  # noqa: B018


def test_run_statuses__match_the_schema():
    from orchestrator.db.schema import RUN_STATUSES

    assert cli.RUN_STATUSES == RUN_STATUSES
