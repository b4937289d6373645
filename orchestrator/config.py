"""Configuration: defaults < TOML file < ORCHESTRATOR_* environment < CLI flags.

Every key is documented in `config.example.toml`. Values are validated when loaded; an error
names the key, what was wrong and how to fix it.
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

ENV_PREFIX = "ORCHESTRATOR_"
DEFAULT_CONFIG_FILE = "orchestrator.toml"


@dataclass(frozen=True)
class Config:
    database_url: str = ""
    embedded_data_dir: str = ".orchestrator/pgdata"
    app: str = ""
    auto_migrate: bool = True
    workers: int = 2
    concurrency: int = 32
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
    ingest_batch_size: int = 500
    log_format: str = "auto"
    log_level: str = "info"
    version: str = ""


_RULES: dict[str, tuple[float | None, str]] = {
    "workers": (1, "at least 1 worker process"),
    "concurrency": (1, "at least 1 thread per worker"),
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
    "ingest_batch_size": (1, "at least 1"),
}
_CHOICES = {
    "log_format": ("auto", "json", "console"),
    "log_level": ("debug", "info", "warning", "error"),
}
_FIELDS = {f.name: f for f in fields(Config)}


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
        return value
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    choices = _CHOICES.get(key)
    if choices and raw.lower() not in choices:
        raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(choices)}")
    return raw.lower() if choices else raw


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
    return section


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a `Config` from the file, the environment and explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file_path = path or env.get(ENV_PREFIX + "CONFIG")
    if not file_path and Path(DEFAULT_CONFIG_FILE).is_file():
        file_path = DEFAULT_CONFIG_FILE
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
    cfg = dataclasses.replace(Config(), **values)
    if cfg.leader_ttl < 2 * cfg.heartbeat_interval:
        raise ConfigError(
            f"leader_ttl ({cfg.leader_ttl}) must be at least twice heartbeat_interval "
            f"({cfg.heartbeat_interval}): the leader renews its term on every heartbeat"
        )
    return cfg
