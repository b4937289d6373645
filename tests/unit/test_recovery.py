"""Pure parts of replay and resume: reconciling recorded steps with the code (position and
kind), and the command line's time selections."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.cli_recovery import parse_moment
from orchestrator.db.steps import StepRow
from orchestrator.engine.execution import Execution, Limits
from orchestrator.engine.store import Lease
from orchestrator.errors import NonDeterminismError, OrchestratorError
from orchestrator.functions import make_function

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _row(step_id: str, position: int, kind: str = "run") -> StepRow:
    return StepRow("r", step_id, position, kind, "completed", 1, {}, None, None, 1, NOW, NOW)


def _execution(*recorded: StepRow) -> Execution:
    fdef = make_function("f", lambda ctx: None, None, 0, None)
    return Execution(
        lease=Lease("r", "t"),
        fdef=fdef,
        store=Any,  # type: ignore[arg-type]  # never reached: nothing is executed here
        memo={row.step_id: row for row in recorded},
        claimed_at=NOW,
        created_at=NOW,
        trigger={},
        limits=Limits(),
        draining=threading.Event(),
        log=None,
    )


def _reach(execution: Execution, step_id: str, kind: str = "run") -> StepRow | None:
    sid, position = execution.next_id(step_id, kind=kind)
    return execution.recorded(sid, kind, position)


def test_recorded__same_order__replays() -> None:
    execution = _execution(_row("a", 0), _row("b", 1))
    assert _reach(execution, "a") is not None and _reach(execution, "b") is not None
    assert _reach(execution, "c") is None  # a new step after the recorded ones is fine


def test_recorded__swapped_order__names_the_step() -> None:
    execution = _execution(_row("a", 0), _row("b", 1))
    with pytest.raises(NonDeterminismError, match="step 'b' was recorded as step 2") as info:
        _reach(execution, "b")
    assert info.value.step_id == "b"
    with pytest.raises(NonDeterminismError):  # it sticks, whatever the code does next
        _reach(execution, "a")


def test_recorded__new_step_where_another_was_recorded__names_both() -> None:
    execution = _execution(_row("a", 0), _row("b", 1))
    _reach(execution, "a")
    with pytest.raises(NonDeterminismError, match=r"step 'x' as step 2 .* recorded step 'b'"):
        _reach(execution, "x")


def test_recorded__other_kind__refused() -> None:
    execution = _execution(_row("a", 0, kind="sleep"))
    with pytest.raises(NonDeterminismError, match="recorded as a sleep step"):
        _reach(execution, "a")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", timedelta(hours=2)),
        ("90s", timedelta(seconds=90)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1.5m", timedelta(seconds=90)),
        ("1w", timedelta(weeks=1)),
        ("2026-11-28T10:00:00+00:00", datetime(2026, 11, 28, 10, tzinfo=UTC)),
        (None, None),
    ],
)
def test_parse_moment__durations_and_times(text: str | None, expected: object) -> None:
    assert parse_moment(text, "--since") == expected


@pytest.mark.parametrize("text", ["2 hours", "yesterday", "2026-11-28T10:00:00", "h2", ""])
def test_parse_moment__refuses_the_rest(text: str) -> None:
    with pytest.raises(OrchestratorError, match="--since"):
        parse_moment(text, "--since")
