from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Config, env_warnings, find_config_file, load_config, project_home
from orchestrator.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def test_defaults_without_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}) == Config()


def test_precedence__file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "o.toml"
    path.write_text('workers = 3\nconcurrency = 5\nlog_format = "json"\n')
    env = {"ORCHESTRATOR_CONCURRENCY": "7"}
    cfg = load_config(path, env=env, overrides={"workers": 9, "app": None})
    assert (cfg.workers, cfg.concurrency, cfg.log_format) == (9, 7, "json")


def test_file__orchestrator_table_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "o.toml"
    path.write_text('[orchestrator]\napp = "m:app"\n')
    assert load_config(path, env={}).app == "m:app"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORCHESTRATOR_WORKERS": "two"}, "workers (from ORCHESTRATOR_WORKERS): expected a number"),
        ({"ORCHESTRATOR_WORKERS": "0"}, "too small; use at least 1 worker process"),
        ({"ORCHESTRATOR_LOG_FORMAT": "xml"}, "not one of auto, json, console"),
        ({"ORCHESTRATOR_AUTO_MIGRATE": "maybe"}, "expected true or false"),
        ({"ORCHESTRATOR_WORKERS": "1.5"}, "expected a number"),
    ],
)
def test_invalid_values__name_the_key_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert message in str(info.value)


def test_unknown_key_in_file__lists_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "o.toml"
    path.write_text("wokers = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'wokers'.*workers"):
        load_config(path, env={})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    if not example.exists():
        pytest.fail("config.example.toml is missing")
    assert isinstance(load_config(example, env={}), Config)


def _config_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "orchestrator.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


PASSWORD_URL = 'database_url = "postgresql://app:s3cret@db:5432/app"\n'


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666])
def test_file_with_a_password__readable_by_others__refused(tmp_path: Path, mode: int) -> None:
    path = _config_file(tmp_path, PASSWORD_URL, mode)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert f"config file {path} holds a database password (database_url)" in message
    assert f"mode {mode:04o}" in message
    assert f"run `chmod o-r {path}`" in message
    assert "ORCHESTRATOR_DATABASE_URL" in message and "~/.pgpass" in message
    assert "s3cret" not in message


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_file_with_a_password__private__accepted(tmp_path: Path, mode: int) -> None:
    path = _config_file(tmp_path, PASSWORD_URL, mode)
    assert load_config(path, env={}).database_url == "postgresql://app:s3cret@db:5432/app"


@pytest.mark.parametrize(
    "text",
    [
        '[orchestrator]\ndatabase_url = "postgresql://app@db/app?password=s3cret"\n',
        'app = "m:app"\n[orchestrator]\napp = "m:app"\n[other]\nurl = "postgres://a:b@h/d"\n',
    ],
)
def test_file_with_a_password_anywhere__readable_by_others__refused(
    tmp_path: Path, text: str
) -> None:
    path = _config_file(tmp_path, text, 0o644)
    with pytest.raises(ConfigError, match="holds a database password"):
        load_config(path, env={})


def test_file_without_a_password__any_mode_is_fine(tmp_path: Path) -> None:
    path = _config_file(tmp_path, 'database_url = "postgresql://app@db:5432/app"\n', 0o644)
    assert load_config(path, env={}).database_url == "postgresql://app@db:5432/app"


def test_config_repr__never_shows_the_database_url() -> None:
    cfg = Config(database_url="postgresql://app:s3cret@db/app")
    assert "s3cret" not in repr(cfg)


def test_log_payloads__off_by_default_and_set_from_the_environment() -> None:
    assert Config().log_payloads is False
    assert load_config(env={"ORCHESTRATOR_LOG_PAYLOADS": "true"}).log_payloads is True


def test_env_typo__warned_with_the_nearest_key() -> None:
    env = {
        "ORCHESTRATOR_WOKERS": "3",
        "ORCHESTRATOR_WORKERS": "2",
        "ORCHESTRATOR_NOTHING_LIKE_IT": "1",
        "ORCHESTRATOR_TEST_DATABASE_URL": "postgresql://x/y",
        "ORCHESTRATOR_CONFIG": "o.toml",
        "PATH": "/bin",
    }

    assert env_warnings(env) == [
        "ORCHESTRATOR_NOTHING_LIKE_IT is not a configuration variable and is ignored; "
        "see config.example.toml for the keys",
        "ORCHESTRATOR_WOKERS is not a configuration variable and is ignored; "
        "did you mean ORCHESTRATOR_WORKERS?",
    ]
    assert load_config(env={"ORCHESTRATOR_WOKERS": "3"}).workers == Config().workers


def test_config_file__found_in_a_parent_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "orchestrator.toml").write_text("workers = 5\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (tmp_path / "a" / "orchestrator.toml").mkdir()  # a directory of that name is no config
    monkeypatch.chdir(deep)

    assert find_config_file(deep) == tmp_path / "orchestrator.toml"
    assert load_config(env={}).workers == 5
    assert project_home(None, {}) == tmp_path
    assert project_home("other.toml", {}) is None  # a file named explicitly: no project root
    assert project_home(None, {"ORCHESTRATOR_CONFIG": "other.toml"}) is None


def test_config_file__the_nearest_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "orchestrator.toml").write_text("workers = 5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "orchestrator.toml").write_text("workers = 6\n")
    monkeypatch.chdir(tmp_path / "sub")

    assert load_config(env={}).workers == 6
