"""`Orchestrator`: the registry of functions and the way to send events.

```python
app = Orchestrator()                       # database from config / env / embedded default

@app.function("send-welcome", trigger=event("user/created"), retries=3)
def send_welcome(ctx: Context) -> dict: ...

event_id = app.send("user/created", {"user_id": 7})
```

The daemon (`orchestrator run --app package.module:app`) imports this object to learn which
functions exist; `send` only writes an event row, so any process that can reach the database
can send.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator import codec
from orchestrator.config import Config, load_config
from orchestrator.errors import InvalidEventError, RegistrationError
from orchestrator.functions import Backoff, FunctionDef, Trigger, make_function

if TYPE_CHECKING:
    from orchestrator.db.database import Database

F = TypeVar("F", bound=Callable[..., Any])


class Orchestrator:
    def __init__(self, database_url: str | None = None, *, config: Config | None = None) -> None:
        """`database_url` (or `config.database_url`) wins over the config file and environment;
        with neither, the configured URL or the embedded Postgres is used."""
        self._explicit_url = database_url
        self._config = config
        self._functions: dict[str, FunctionDef] = {}
        self._db: Database | None = None
        self._lock = threading.Lock()

    # -- registry ----------------------------------------------------------------------

    def function(
        self,
        id: str,
        *,
        trigger: Trigger | Sequence[Trigger] | None = None,
        retries: int = 3,
        backoff: Backoff | None = None,
    ) -> Callable[[F], F]:
        """Register a durable function under a stable `id`."""

        def register(fn: F) -> F:
            fdef = make_function(id, fn, trigger, retries, backoff)
            if id in self._functions:
                raise RegistrationError(f"function id {id!r} is registered twice")
            self._functions[id] = fdef
            return fn

        return register

    @property
    def functions(self) -> dict[str, FunctionDef]:
        return dict(self._functions)

    def version(self) -> str:
        """A hash of the registered functions' ids and source: the code version of this app."""
        digest = hashlib.sha256()
        for fid in sorted(self._functions):
            digest.update(self._functions[fid].source_hash().encode())
        return digest.hexdigest()[:12]

    # -- database ----------------------------------------------------------------------

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config()
        return self._config

    def database_url(self) -> str:
        """The URL this app talks to: explicit, configured, or the embedded server's."""
        from orchestrator.db.connect import resolve_url

        cfg = self.config
        return resolve_url(self._explicit_url or cfg.database_url, cfg.embedded_data_dir)

    def _database(self) -> Database:
        with self._lock:
            if self._db is None:
                from orchestrator.db.database import Database

                self._db = Database(
                    self.database_url(), pool_size=2, application_name="orchestrator-client"
                )
            return self._db

    def bind(self, url: str) -> None:
        """Use `url` from now on (the daemon binds its app to the database it serves)."""
        with self._lock:
            if self._db is not None:
                self._db.dispose()
            self._explicit_url = url
            self._db = None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.dispose()
                self._db = None

    # -- events ------------------------------------------------------------------------

    def send(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
    ) -> str:
        """Record an event and return its id. An id seen before is a duplicate: nothing is
        created and the same id is returned."""
        from orchestrator.db import events

        text = validate_event(
            name, data if data is not None else {}, id, self.config.max_event_bytes
        )
        return self._database().run(
            lambda conn: events.insert(conn, name, text, event_id=id, ts=ts)
        )[0]


def validate_event(name: Any, data: Any, event_id: Any, limit: int) -> str:
    """Check an event before it is written; returns its data as JSON text."""
    if not codec.storable_text(name, 256):
        raise InvalidEventError(
            f"event name must be a 1-256 character string without NUL characters or lone "
            f"surrogates, got {name!r}"
        )
    if event_id is not None and not codec.storable_text(event_id, 256):
        raise InvalidEventError(
            f"event id must be a 1-256 character string without NUL characters or lone "
            f"surrogates, got {event_id!r}"
        )
    if not isinstance(data, dict):
        raise InvalidEventError(
            f"event data must be a JSON object (a dict), got {type(data).__name__}"
        )
    return codec.encode(data, what=f"event '{name}' data", limit=limit)
