"""orchestrator/progress.py: when a bar is drawn, what it shows, and Ctrl-C between batches."""

from __future__ import annotations

import io
import json
import signal
import sys

import pytest

from orchestrator import progress as prog

pytestmark = pytest.mark.timeout(30)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_shown__only_on_a_terminal_and_never_with_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert (prog.shown(False), prog.shown(True)) == (False, False)

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert (prog.shown(False), prog.shown(True)) == (True, False)


def test_progress__disabled__counts_and_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with prog.progress(10, "copying", enabled=False) as bar:
        bar.advance(4)
        bar.describe("still copying")
        bar.note("a line above the bar")
        bar.advance(6)

    assert (bar.completed, bar.total) == (10, 10)
    assert capfd.readouterr() == ("", "")


def test_progress__on_a_terminal__draws_description_and_n_of_m(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setenv("COLUMNS", "100")

    with prog.progress(250, "replaying runs", enabled=True) as bar:
        bar.advance(100)
        bar.note("first batch done")
        bar.advance(150)

    drawn = screen.getvalue()
    assert "replaying runs" in drawn and "250/250" in drawn
    assert "first batch done" in drawn


def test_progress__more_than_counted__total_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setenv("COLUMNS", "100")

    with prog.progress(3, "deleting old rows", enabled=True) as bar:
        bar.advance(5)  # rows aged past the cutoff after the count

    assert bar.total == 5
    assert "5/5" in screen.getvalue()


def test_progress__unknown_total__a_spinner_with_the_elapsed_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setenv("COLUMNS", "100")

    with prog.progress(None, "counting old rows", enabled=True):
        pass

    drawn = screen.getvalue()
    assert "counting old rows" in drawn and "0:00:0" in drawn and "/" not in drawn


def test_progress__first_ctrl_c_asks_to_stop__second_interrupts__handler_restored() -> None:
    before = signal.getsignal(signal.SIGINT)

    seen = []
    with pytest.raises(KeyboardInterrupt), prog.progress(3, "sending", enabled=False) as bar:
        signal.raise_signal(signal.SIGINT)
        seen.append(bar.stopping)  # no exception: the batch in progress goes on
        signal.raise_signal(signal.SIGINT)
        seen.append(True)  # not reached

    assert seen == [True]

    assert signal.getsignal(signal.SIGINT) is before


def test_progress__not_interruptible__ctrl_c_raises_at_once() -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        prog.progress(17, "migrating", enabled=False, interruptible=False) as bar,
    ):
        signal.raise_signal(signal.SIGINT)
    assert not bar.stopping


# -- what the commands print when Ctrl-C stopped them ---------------------------------------


def test_bulk_report__stopped__json_lists_the_runs_not_reached_and_exits_130(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from argparse import Namespace

    from orchestrator.cli_recovery import _report
    from orchestrator.recovery import Outcome

    outcome = Outcome(done=["a", "b"], refused={"c": "why"}, stopped=True, reached=3)

    status = _report(Namespace(json=True), "resume", ["a", "b", "c", "d", "e"], outcome)

    out, err = capsys.readouterr()
    assert status == 130
    assert json.loads(out) == {
        "matched": 5,
        "done": ["a", "b"],
        "refused": {"c": "why"},
        "interrupted": True,
        "not_reached": ["d", "e"],
    }
    assert err == "interrupted: stopped after 3 of 5 run(s); 2 were not reached and are untouched\n"


def test_bulk_report__not_stopped__json_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from orchestrator.cli_recovery import _report
    from orchestrator.recovery import Outcome

    status = _report(Namespace(json=True), "replay", ["a"], Outcome(done=["n"], reached=1))

    assert status == 0
    assert capsys.readouterr() == ('{"matched": 1, "done": ["n"], "refused": {}}\n', "")


@pytest.mark.parametrize("cause", [None, KeyboardInterrupt()])
def test_partial_send__stopped_by_ctrl_c__says_so_and_exits_130(
    cause: BaseException | None,
) -> None:
    from orchestrator.cli_send import Line, Sent, _partial

    lines = [Line(n, f"id-{n}", "a", "{}") for n in (1, 2, 3)]

    error = _partial("-", lines, Sent(events=2, created=2, last_line=2), cause)

    assert (error.code, error.exit_status) == ("partial_send", 130)
    assert str(error) == (
        "lines 1-2 were sent (2 events, 2 new), lines 3 and after were not: interrupted by "
        "Ctrl-C; send the rest with the input from line 3 on"
    )


def test_partial_send__database_error__exits_1() -> None:
    from orchestrator.cli_send import Line, Sent, _partial

    lines = [Line(n, f"id-{n}", "a", "{}") for n in (1, 2)]

    error = _partial("f", lines, Sent(events=1, created=1, last_line=1), ConnectionError("x"))

    assert error.exit_status == 1 and "were not: x;" in str(error)
