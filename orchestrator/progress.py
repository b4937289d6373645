"""Progress of long commands: a bar on a terminal, nothing anywhere else.

`shown(as_json)` is the one place that decides whether a command draws progress: only when
standard error is a terminal and `--json` was not given. Scripts, pipes and `--json` get the
same output as without this module; the bar goes to stderr, so stdout carries only the result.

`progress(total, description, enabled=...)` is a context manager yielding a `Tracker`:
`advance(n)` after each batch, `describe(text)` to change what the bar says, `note(text)` to
print a line above it. A `total` of None draws a spinner with the elapsed time instead of a
bar (an operation that is one statement, or whose size is unknown).

Ctrl-C: with `interruptible=True`, the first Ctrl-C (SIGINT) inside the block does not raise;
it sets `Tracker.stopping`, which the command checks between batches, so it stops after the
batch in progress and reports how many were done. A second Ctrl-C raises `KeyboardInterrupt`
at once, as without this module. This holds with or without a terminal; the handler is
installed only on the main thread, and the previous one is put back on leaving the block.

rich is imported only when a bar is drawn, so commands stay quick to start.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOPPING = "stopping after this batch; Ctrl-C again to stop at once"


def shown(as_json: bool) -> bool:
    """Whether a command draws progress: on a terminal (stderr), and not with `--json`."""
    return not as_json and sys.stderr.isatty()


class Tracker:
    """How far an operation got, drawn on a rich bar when there is one."""

    def __init__(self, total: int | None, description: str, bar: Any = None) -> None:
        self.total = total
        self.description = description
        self.completed = 0
        self.stopping = False  # Ctrl-C was pressed: stop after the batch in progress
        self._bar = bar
        self._task = bar.add_task(description, total=total) if bar is not None else None

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if self.total is not None and self.completed > self.total:
            self.total = self.completed  # more than counted beforehand (new rows meanwhile)
        self._draw()

    def describe(self, description: str) -> None:
        self.description = description
        self._draw()

    def note(self, text: str) -> None:
        """A line above the bar (on a terminal only)."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)

    def stop_soon(self) -> None:
        self.stopping = True
        self._draw()

    def _draw(self) -> None:
        if self._bar is None:
            return
        text = f"{self.description} ({STOPPING})" if self.stopping else self.description
        self._bar.update(self._task, completed=self.completed, total=self.total, description=text)


@contextmanager
def progress(
    total: int | None, description: str, *, enabled: bool, interruptible: bool = True
) -> Iterator[Tracker]:
    """Track an operation of `total` items (None: unknown); see the module doc."""
    bar = _bar(total) if enabled else None
    tracker = Tracker(total, description, bar)
    restore = _defer_interrupt(tracker) if interruptible else _nothing
    if bar is not None:
        bar.start()
    try:
        yield tracker
    finally:
        restore()
        if bar is not None:
            bar.stop()


def _bar(total: int | None) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    text = TextColumn("{task.description}")
    console = Console(stderr=True)
    if total is None:
        return Progress(SpinnerColumn(), text, TimeElapsedColumn(), console=console)
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(text, *columns, console=console)


def _defer_interrupt(tracker: Tracker) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return _nothing  # signal handlers belong to the main thread
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        if tracker.stopping:
            raise KeyboardInterrupt
        tracker.stop_soon()

    def restore() -> None:  # None: a handler not set from Python; Python's default then
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)

    signal.signal(signal.SIGINT, on_interrupt)
    return restore


def _nothing() -> None:
    return None
