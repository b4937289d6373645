"""Database operations as data, and the one loop that runs them for the sync and async faces.

An operation, `Op[T]`, is a generator that yields commands — a `Query` to execute, a `Pause`
to wait for notifications — receives each command's reply (a query's rows, the payloads that
arrived) and returns its result. It makes its decisions in plain code and does no I/O:

```python
def cancel_op(run_id: str, reason: str) -> Op[str]:
    run = yield from runs.get_op(run_id)
    if run is None:
        raise RunNotFoundError(...)
    changed = yield from runs.cancel_op([run.id], reason=reason)
    ...
```

`drive` feeds an operation the replies of an `IO`. Over a blocking IO (whose coroutines never
suspend) `complete` runs it to its end without an event loop; over an async IO it is simply
awaited. So the statements, the decisions and the loop are written once; only the IO
adapters differ (db/outbox.py has them, one per kind of connection).
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, TypeVar

T = TypeVar("T")

Rows: TypeAlias = list[tuple[Any, ...]]


@dataclass(frozen=True)
class Query:
    """Execute `sql` (psycopg's dialect: `%(name)s`, `%%` for a literal %); the reply is its
    rows (an empty list for a statement that returns none)."""

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pause:
    """Wait up to `seconds` for a notification on the channels the connection LISTENs to;
    the reply is the payloads received (none when the time ran out)."""

    seconds: float


Op: TypeAlias = Generator[Query | Pause, Any, T]


class IO(Protocol):
    async def execute(self, query: Query) -> Rows: ...

    async def pause(self, seconds: float) -> list[str]: ...


async def drive(op: Op[T], io: IO) -> T:
    """Feed `op` the replies of `io` until it returns."""
    reply: Any = None
    while True:
        try:
            command = op.send(reply)
        except StopIteration as done:
            result: T = done.value
            return result
        if isinstance(command, Pause):
            reply = await io.pause(command.seconds)
        else:
            reply = await io.execute(command)


def complete(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (`drive` over a blocking IO)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a blocking database IO suspended")
