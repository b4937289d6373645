"""Serving the dashboard: `serve` blocks (`orchestrator ui`); `start_in_thread` runs it on a
thread of the daemon (`ui = true`) and returns a handle to stop it.

Off the loopback interface the dashboard refuses to start without authentication
(`ui_auth = false` is for a developer's own machine). Reads use `ui_read_database_url` (the
read-only role), actions and logins `ui_act_database_url` (the runtime role); both default
to `database_url`. The client address the login limiter counts is the socket's peer, never a
forwarded header, which a client could forge.
"""

from __future__ import annotations

import dataclasses
import sys

from orchestrator.config import Config, parse_http_address
from orchestrator.db.database import Database
from orchestrator.errors import ConfigError
from orchestrator.http_thread import ThreadedServer, is_loopback
from orchestrator.ui.auth import LoginLimiter
from orchestrator.ui.deps import UiSettings

__all__ = ["UiServer", "check_exposure", "is_loopback", "serve", "start_in_thread"]

POOL_SIZE = 4


def check_exposure(config: Config, host: str) -> None:
    """ConfigError when the dashboard would listen beyond loopback without authentication."""
    if not config.ui_auth and not is_loopback(host):
        shown = host or "every interface"
        raise ConfigError(
            f"ui_auth = false is allowed only on a loopback address (127.0.0.1, ::1), and "
            f"ui_address listens on {shown}; turn ui_auth on (and create users with "
            "`orchestrator ui-user add`), or listen on 127.0.0.1"
        )


def settings_for(config: Config) -> UiSettings:
    """The app's settings: `config.database_url` must be the resolved URL."""
    read_url = config.ui_read_database_url or config.database_url
    act_url = config.ui_act_database_url or config.database_url
    return UiSettings(
        config,
        Database(read_url, pool_size=POOL_SIZE, application_name="orchestrator-ui"),
        Database(act_url, pool_size=POOL_SIZE, application_name="orchestrator-ui"),
        limiter=LoginLimiter(config.ui_login_limit),
    )


class UiServer(ThreadedServer):
    """The dashboard's uvicorn server on a bound socket, with the databases it opened."""

    def __init__(self, config: Config, address: str) -> None:
        host, port = parse_http_address(address, "ui_address")
        check_exposure(config, host)
        self.settings = settings_for(config)
        from orchestrator.ui.app import create_app

        try:
            super().__init__(
                create_app(self.settings),
                host,
                port,
                where="ui_address",
                name="orchestrator-ui",
                on_close=self._dispose,
            )
        except BaseException:
            self._dispose()
            raise

    def _dispose(self) -> None:
        self.settings.read_db.dispose()
        self.settings.act_db.dispose()


def serve(config: Config, *, address: str | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `config.database_url` must be the resolved URL."""
    ui = UiServer(config, address or config.ui_address)
    print(f"dashboard at {ui.url}", file=sys.stderr, flush=True)
    ui.run()


def start_in_thread(config: Config, *, database_url: str = "") -> UiServer:
    """The daemon's dashboard, on `ui_address`, on a thread; `stop()` ends it."""
    if database_url:
        config = dataclasses.replace(config, database_url=database_url)
    return UiServer(config, config.ui_address).start()
