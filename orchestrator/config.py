"""Configuration: defaults < TOML file < ORCHESTRATOR_* environment < CLI flags.

Every key is documented in `config.example.toml`. Values are validated when loaded; an error
names the key, what was wrong and how to fix it. The file is `--config PATH`, else
`ORCHESTRATOR_CONFIG`, else the nearest `orchestrator.toml` in the working directory or one
of its parents (so commands work from anywhere in the project, as git does).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.redact import url_password

ENV_PREFIX = "ORCHESTRATOR_"
DEFAULT_CONFIG_FILE = "orchestrator.toml"
# ORCHESTRATOR_* variables that are not configuration keys, so not typos either
OTHER_ENV_VARS = frozenset(
    {"ORCHESTRATOR_CONFIG", "ORCHESTRATOR_TEST_DATABASE_URL", "ORCHESTRATOR_BENCH_DATABASE_URL"}
)


@dataclass(frozen=True)
class Config:
    database_url: str = dataclasses.field(default="", repr=False)  # may hold a password
    embedded_data_dir: str = ".orchestrator/pgdata"
    app: str = ""
    auto_migrate: bool = True
    workers: int = 2
    concurrency: int = 32
    async_concurrency: int = 500
    prefetch: int = 0
    poll_interval: float = 1.0
    lease_duration: float = 15.0
    heartbeat_interval: float = 1.0
    rescue_interval: float = 1.0
    leader_ttl: float = 5.0
    dead_daemon_after: float = 3.0
    shutdown_grace: float = 30.0
    max_recoveries: int = 5
    max_step_output_bytes: int = 4 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024
    max_state_bytes: int = 64 * 1024  # a run's ctx.set_state object, as JSON
    inngest_call_timeout: float = 30.0  # seconds one call to an Inngest SDK app may take
    inngest_max_response_bytes: int = 4 * 1024 * 1024  # an SDK app's answer to one call
    ingest_batch_size: int = 500
    retain_completed: float = 7 * 86400.0
    retain_failed: float = 30 * 86400.0
    retain_events: float = 7 * 86400.0
    retention_interval: float = 60.0
    retention_batch_size: int = 50
    log_format: str = "auto"
    log_level: str = "info"
    log_payloads: bool = False
    version: str = ""
    http_address: str = ""
    unserved_warning_after: float = 60.0
    ui: bool = False  # the daemon also serves the dashboard on ui_address
    ui_address: str = "127.0.0.1:8484"
    ui_auth: bool = True  # False only on a loopback address: everyone is operator 'local'
    ui_read_database_url: str = dataclasses.field(default="", repr=False)  # "": database_url
    ui_act_database_url: str = dataclasses.field(default="", repr=False)  # "": database_url
    ui_session_ttl: float = 43200.0
    ui_cookie_secure: bool = False
    ui_login_limit: int = 5  # failed logins per name and client in 15 minutes
    inngest: bool = False  # the daemon also serves Inngest's protocol on inngest_address
    inngest_address: str = "127.0.0.1:8288"  # the port the Inngest SDKs look for
    inngest_dev: bool = False  # dev mode: no signatures, any event key; loopback only
    # "": INNGEST_SIGNING_KEY / INNGEST_SIGNING_KEY_FALLBACK from the environment
    inngest_signing_key: str = dataclasses.field(default="", repr=False)
    inngest_signing_key_fallback: str = dataclasses.field(default="", repr=False)
    inngest_max_event_bytes: int = 3 * 1024 * 1024  # one POST /e/ body (an event or a batch)


_RULES: dict[str, tuple[float | None, str]] = {
    "workers": (1, "at least 1 worker process"),
    "concurrency": (1, "at least 1 thread per worker"),
    "async_concurrency": (1, "at least 1 async run per worker"),
    "prefetch": (0, "zero or more runs per worker"),
    "poll_interval": (0.01, "a positive number of seconds (e.g. 1.0)"),
    "lease_duration": (1.0, "at least 1 second (e.g. 15)"),
    "heartbeat_interval": (0.05, "a positive number of seconds (e.g. 1.0)"),
    "rescue_interval": (0.05, "a positive number of seconds (e.g. 1.0)"),
    "leader_ttl": (0.5, "at least 0.5 seconds (e.g. 5)"),
    "dead_daemon_after": (0.1, "a positive number of seconds (e.g. 3)"),
    "shutdown_grace": (0.0, "zero or more seconds (e.g. 30)"),
    "max_recoveries": (0, "zero or more"),
    "max_step_output_bytes": (1, "a positive number of bytes"),
    "max_event_bytes": (1, "a positive number of bytes"),
    "max_state_bytes": (1, "a positive number of bytes"),
    "inngest_call_timeout": (0.1, "a positive number of seconds (e.g. 30)"),
    "inngest_max_response_bytes": (1, "a positive number of bytes"),
    "ingest_batch_size": (1, "at least 1"),
    "retain_completed": (0.0, "0 (keep forever) or at least 60 seconds"),
    "retain_failed": (0.0, "0 (keep forever) or at least 60 seconds"),
    "retain_events": (0.0, "0 (keep forever) or at least 3600 seconds"),
    "retention_interval": (0.1, "a positive number of seconds (e.g. 60)"),
    "retention_batch_size": (1, "at least 1 (e.g. 50)"),
    "unserved_warning_after": (0.1, "a positive number of seconds (e.g. 60)"),
    "ui_session_ttl": (60.0, "at least 60 seconds (e.g. 43200, 12 hours)"),
    "ui_login_limit": (1, "at least 1 failed login (e.g. 5)"),
    "inngest_max_event_bytes": (1, "a positive number of bytes (e.g. 3145728)"),
}
# Retention ages: 0 keeps forever, and a smaller age than this is refused. A finished run's
# row is what makes a second attempt at creating it a no-op (its idempotency key); an event
# must outlive the look-back of the waits that may still need it (a wait sees the events
# received since its previous step began) and is the window of de-duplication by event id.
_FLOORS = {"retain_completed": 60.0, "retain_failed": 60.0, "retain_events": 3600.0}
_CHOICES = {
    "log_format": ("auto", "json", "console"),
    "log_level": ("debug", "info", "warning", "error"),
}
_FIELDS = {f.name: f for f in fields(Config)}
_SIGNING_KEYS = ("inngest_signing_key", "inngest_signing_key_fallback")


def _coerce(key: str, raw: Any, source: str) -> Any:
    kind = _FIELDS[key].type
    where = f"{key} (from {source})"
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no"):
            return raw.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if kind in ("int", "float"):
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        try:
            value: int | float = int(raw) if kind == "int" else float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
        if kind == "int" and isinstance(raw, float) and raw != int(raw):
            raise ConfigError(f"{where}: expected a whole number, got {raw!r}")
        minimum, hint = _RULES.get(key, (None, ""))
        if minimum is not None and value < minimum:
            raise ConfigError(f"{where}: {value!r} is too small; use {hint}")
        if 0 < value < _FLOORS.get(key, 0):
            raise ConfigError(f"{where}: {value!r} is too small; use {hint}")
        return value
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    return _string(key, raw, where)


def _string(key: str, raw: str, where: str) -> str:
    if key in ("http_address", "ui_address", "inngest_address") and (raw or key != "http_address"):
        parse_http_address(raw, where)
    if key in _SIGNING_KEYS and raw:
        _check_signing_key(raw, where)
    choices = _CHOICES.get(key)
    if choices and raw.lower() not in choices:
        raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(choices)}")
    return raw.lower() if choices else raw


def _check_signing_key(raw: str, where: str) -> None:
    from orchestrator.inngest.signing import check_key

    try:
        check_key(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("orchestrator", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [orchestrator] must be a table")
    _refuse_exposed_password(path, data)
    return section


def _password_keys(table: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys (dotted, at any depth) whose value is a URL with a password in it."""
    found: list[str] = []
    for key, value in table.items():
        if isinstance(value, dict):
            found += _password_keys(value, f"{prefix}{key}.")
        elif isinstance(value, str) and url_password(value):
            found.append(prefix + key)
    return found


def _refuse_exposed_password(path: Path, data: dict[str, Any]) -> None:
    """A file that holds a database password must not be readable by every user."""
    holders = _password_keys(data)
    if not holders or os.name != "posix":
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o004:
        raise ConfigError(
            f"config file {path} holds a database password ({holders[0]}) and is readable "
            f"by every user (mode {mode:04o}); run `chmod o-r {path}` (0600 or 0640 are fine), "
            "or take the password out of the file: set ORCHESTRATOR_DATABASE_URL, or use "
            "~/.pgpass (or PGPASSFILE)"
        )


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a `Config` from the file, the environment and explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file_path = path or env.get(ENV_PREFIX + "CONFIG") or find_config_file(_cwd())
    if file_path:
        for key, raw in _read_file(Path(file_path)).items():
            if key not in _FIELDS:
                known = ", ".join(sorted(_FIELDS))
                raise ConfigError(f"config file {file_path}: unknown key {key!r}; known: {known}")
            values[key] = _coerce(key, raw, str(file_path))
    for key in _FIELDS:
        env_key = ENV_PREFIX + key.upper()
        if env_key in env:
            values[key] = _coerce(key, env[env_key], env_key)
    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key] = _coerce(key, raw, "command line")
    for key in _SIGNING_KEYS:  # the variables the Inngest SDKs read, for the same key
        if not values.get(key) and env.get(key.upper()):
            values[key] = _coerce(key, env[key.upper()], key.upper())
    cfg = dataclasses.replace(Config(), **values)
    if cfg.leader_ttl < 2 * cfg.heartbeat_interval:
        raise ConfigError(
            f"leader_ttl ({cfg.leader_ttl}) must be at least twice heartbeat_interval "
            f"({cfg.heartbeat_interval}): the leader renews its term on every heartbeat"
        )
    return cfg


def find_config_file(start: Path) -> Path | None:
    """The nearest `orchestrator.toml` in `start` or one of its parents (as git finds `.git`),
    so that commands run from a subdirectory of the project read the project's config."""
    try:
        start = start.resolve(strict=True)
    except OSError:  # the working directory was deleted: there is nothing to find upward
        return None
    for folder in (start, *start.parents):
        candidate = folder / DEFAULT_CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def project_home(path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """The directory of the config file found by searching upward (None when a file was
    named with --config or ORCHESTRATOR_CONFIG, or none was found): the project's root."""
    if path or env.get(ENV_PREFIX + "CONFIG"):
        return None
    found = find_config_file(_cwd())
    return found.parent if found else None


def _cwd() -> Path:
    """The working directory; a deleted one raises a ConfigError that says so, not a
    traceback."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise ConfigError(
            "the working directory no longer exists; cd to the project directory and run the "
            "command again"
        ) from None


def env_warnings(env: Mapping[str, str]) -> list[str]:
    """A warning for each ORCHESTRATOR_* variable that is no configuration key (a typo is
    otherwise ignored without a word), with the nearest key when one is close."""
    import difflib

    known = {ENV_PREFIX + key.upper() for key in _FIELDS} | OTHER_ENV_VARS
    out = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        key = name.removeprefix(ENV_PREFIX).lower()  # compared without the shared prefix
        close = difflib.get_close_matches(key, _FIELDS, n=1)
        hint = (
            f"did you mean {ENV_PREFIX}{close[0].upper()}?"
            if close
            else "see config.example.toml for the keys"
        )
        out.append(f"{name} is not a configuration variable and is ignored; {hint}")
    return out


def parse_http_address(value: str, where: str = "http_address") -> tuple[str, int]:
    """(host, port) of a listen address: "host:port", "[ipv6]:port", or ":port" for every
    interface. Port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # an IPv6 address needs brackets
    if not sep or not port.isdigit() or int(port) > 65535 or any(c in host for c in "[]/ "):
        raise ConfigError(
            f'{where}: {value!r} is not host:port; use e.g. "127.0.0.1:9464", '
            '"0.0.0.0:9464" (every interface), "[::1]:9464", or "" for no listener'
        )
    return host, int(port)
