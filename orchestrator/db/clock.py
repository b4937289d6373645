"""The time the engine's statements judge by: the database's `now()`, unless a test pins it.

Every statement that compares against or records the current time takes it as a parameter,
`now`, and says `coalesce(%(now)s::timestamptz, now())` (`%(now)b` where the statement sends
binary parameters; `coalesce(CAST(:p_now AS timestamptz), now())` in SQLAlchemy `text()`).
In production the parameter is NULL, so the database's clock decides, with no extra round
trip; `coalesce` of a parameter and `now()` is stable, so prepared statements keep their
generic plans and index conditions on it still hold. A test sets a virtual time with `set`
or `advance`, and every statement of this process then sees that time instead.

INSERTs the engine makes write the time explicitly into the columns whose DEFAULT is `now()`
where a virtual clock must reach them (a run's `created_at` and `due_at`, an event's `ts`
and `received_at`, a wait's `created_at`, a signal's `sent_at`, a step's and a schedule's
`updated_at` ...).

What a parameter cannot reach keeps the real clock:

- Column defaults (`DEFAULT now()` in migrations/versions): a row inserted by hand, or by a
  statement that does not name the column, gets the database's time.
- Triggers: the one that wakes the run of a signal (migrations 0013, 0014) makes it due at
  the signal's `sent_at`, which `app.signal` passes and a hand-written INSERT leaves to the
  column default (the real time).
- The operator views of migrations 0005, 0006, 0008 and 0012 (`waiting_for`, a function's
  backlog held by a rate limit): they are read by people, at the real time.
- The daemon's own timers (poll interval, lease renewal period, heartbeats' period): real
  time; only what the database compares moves with the virtual clock.

Only tests set the clock. It is one value per process, guarded by a lock, read by every
thread.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

SQL = "coalesce(%(now)s::timestamptz, now())"
"""The current time in a psycopg statement with named text parameters."""
SQL_BINARY = "coalesce(%(now)b::timestamptz, now())"
"""The current time in a psycopg statement with binary parameters."""
SQL_TEXT = "coalesce(CAST(:p_now AS timestamptz), now())"
"""The current time in an SQLAlchemy `text()` statement."""


class _Clock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.virtual: datetime | None = None


_clock = _Clock()


def current() -> datetime | None:
    """The virtual time, or None: the database's clock (production)."""
    return _clock.virtual


def pick(now: datetime | None) -> datetime | None:
    """`now` if given, else the virtual time (None in production)."""
    return _clock.virtual if now is None else now


def set(at: datetime) -> datetime:
    """Pin the time of every statement of this process to `at` (aware; naive means UTC)."""
    with _clock.lock:
        _clock.virtual = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        return _clock.virtual


def advance(by: timedelta) -> datetime:
    """Move the virtual time forward by `by`; starts from the real time if none is set."""
    with _clock.lock:
        _clock.virtual = (_clock.virtual or datetime.now(UTC)) + by
        return _clock.virtual


def reset() -> None:
    """Back to the database's clock."""
    with _clock.lock:
        _clock.virtual = None
