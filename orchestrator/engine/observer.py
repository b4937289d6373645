"""What an execution tells whoever counts steps (the worker's metrics tally), if anyone.

Called on the hot path from executor threads, so an observer must be thread-safe and cheap.
"""

from __future__ import annotations

from typing import Protocol


class StepObserver(Protocol):
    def step_ran(self, function_id: str, seconds: float) -> None:
        """A step body ran (successfully or not) for `seconds`, its result's encoding
        included: the span `steps.duration_ms` records."""

    def steps_retrying(self, function_id: str, count: int) -> None:
        """`count` failed step attempts were scheduled to run again."""

    def thread_abandoned(self, function_id: str) -> None:
        """A plain step body outlived its timeout and was left to finish on its thread."""

    def abandoned_thread_ended(self, function_id: str) -> None:
        """An abandoned body's thread ended (called on that thread)."""

    def run_retrying(self, function_id: str) -> None:
        """A run whose function raised outside any step was scheduled to run again."""


class _Nobody:
    def step_ran(self, function_id: str, seconds: float) -> None:
        return None

    def steps_retrying(self, function_id: str, count: int) -> None:
        return None

    def thread_abandoned(self, function_id: str) -> None:
        return None

    def abandoned_thread_ended(self, function_id: str) -> None:
        return None

    def run_retrying(self, function_id: str) -> None:
        return None


NOBODY: StepObserver = _Nobody()
