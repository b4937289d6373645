"""Which database the `orchestrator` command uses when no URL is configured: the embedded
one found in `.orchestrator/pgdata` here or in a parent directory, created only by `migrate`
and `run`, and said on stderr."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import run_cli

pytestmark = [pytest.mark.e2e]


def orchestrator(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command in `cwd`, with no ORCHESTRATOR_* variable but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    return run_cli(args, clean | env, cwd)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "command",
    [["runs", "list"], ["send", "user/created"], ["functions"], ["gc", "--dry-run"]],
    ids=lambda c: c[0],
)
def test_no_database_found__says_where_it_looked_and_creates_nothing(tmp_path, command):
    here = tmp_path / "somewhere" / "else"
    here.mkdir(parents=True)

    result = orchestrator(here, *command)

    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no database: "), lines[0]
    assert f"in {here} or its parents" in lines[0]
    assert "run `orchestrator migrate` in the project directory" in lines[0]
    assert "ORCHESTRATOR_DATABASE_URL" in lines[0]
    assert tree(tmp_path) == ["somewhere", "somewhere/else"]  # no new database anywhere


@pytest.mark.timeout(60)
def test_no_database_found__json_error_on_stdout(tmp_path):
    result = orchestrator(tmp_path, "runs", "list", "--json")

    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "no_database"
    assert error["message"].startswith("no database: ")
    assert not (tmp_path / ".orchestrator").exists()


@pytest.mark.timeout(60)
def test_absolute_data_dir_missing__named_in_the_error(tmp_path):
    missing = tmp_path / "var" / "pgdata"

    result = orchestrator(tmp_path, "runs", "list", ORCHESTRATOR_EMBEDDED_DATA_DIR=str(missing))

    assert result.returncode == 1
    assert f"no embedded database in {missing} (embedded_data_dir)" in result.stderr
    assert not missing.exists()


@pytest.mark.timeout(240)
def test_migrate_creates_it_here__commands_in_subdirectories_find_it(tmp_path, db_url):
    project = tmp_path / "project"
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    data = project / ".orchestrator" / "pgdata"

    created = orchestrator(project, "migrate")
    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines()[0] == f"creating a new embedded database in {data}"
    assert created.stdout.startswith("schema created at ")
    assert (data / "PG_VERSION").is_file()

    again = orchestrator(deep, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[0] == f"using the embedded database in {data}"
    assert again.stdout.endswith("; nothing to do\n")

    sent = orchestrator(deep, "send", "user/created", "--data", '{"n": 1}', "--id", "e-1")
    assert (sent.returncode, sent.stdout) == (0, "e-1\n"), sent.stderr
    listed = orchestrator(deep, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []  # stdout is the JSON alone
    assert listed.stderr.splitlines() == [f"using the embedded database in {data}"]
    assert not (deep / ".orchestrator").exists()
    assert not (project / "src" / ".orchestrator").exists()

    configured = orchestrator(deep, "runs", "list", "--json", ORCHESTRATOR_DATABASE_URL=db_url)
    assert (configured.returncode, configured.stderr) == (0, "")  # a configured URL wins
    assert json.loads(configured.stdout) == []


@pytest.mark.timeout(240)
def test_config_file_in_a_parent__read_from_subdirectories(tmp_path):
    project = tmp_path / "project"
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    (project / "orchestrator.toml").write_text('embedded_data_dir = "db/pg"\n')

    created = orchestrator(deep, "migrate")  # a new database goes beside the config file

    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines()[0] == (
        f"creating a new embedded database in {project / 'db' / 'pg'}"
    )
    listed = orchestrator(project, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines() == [f"using the embedded database in {project / 'db' / 'pg'}"]
    assert tree(deep) == []
