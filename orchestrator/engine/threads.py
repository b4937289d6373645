"""Plain step bodies with a timeout: each runs on a thread of its own.

A thread cannot be killed. When such a body outlives its step's timeout, the execution stops
waiting for it (the attempt fails with `StepTimeoutError`) and the thread is *abandoned*: it
runs on until the body returns or raises by itself, and what it returns is dropped. Nothing it
does later can be recorded: the run suspended (or failed) when the attempt timed out, which
released its lease, and every write of the run is fenced on the lease token it was claimed
with; the retry runs under a new token. The threads are daemon threads, so an abandoned one
never holds up the process's exit.

`ABANDONED` counts the threads abandoned in this process that are still running (the metrics
read it through the worker's tally, see engine/observer.py).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class _Alive:
    """A thread-safe count of abandoned threads still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self._count += delta

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


ABANDONED = _Alive()


def start(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
    """Call `fn(*args, **kwargs)` on a new daemon thread, in a copy of the caller's context;
    the future holds what it returns or raises."""
    done: Future[Any] = Future()
    context = contextvars.copy_context()

    def body() -> None:
        done.set_running_or_notify_cancel()
        try:
            value = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # whatever the body raised is the attempt's outcome
            done.set_exception(exc)
        else:
            done.set_result(value)

    name = f"orchestrator-step-{getattr(fn, '__name__', 'body')}"
    threading.Thread(target=body, name=name, daemon=True).start()
    return done


def abandon(running: Future[Any], on_end: Callable[[], None]) -> None:
    """Stop caring about a body's thread: count it until it ends, then call `on_end`."""
    ABANDONED.add(1)

    def ended(_: Future[Any]) -> None:
        ABANDONED.add(-1)
        on_end()

    running.add_done_callback(ended)  # called at once if it has ended meanwhile
