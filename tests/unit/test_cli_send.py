from __future__ import annotations

import json

import pytest

from orchestrator.cli_send import Line, Sent, _partial, check_lines
from orchestrator.errors import InvalidEventError

pytestmark = pytest.mark.timeout(30)


def jsonl(*events: object) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def test_check_lines__numbers_count_blank_lines__ids_kept_or_made() -> None:
    raw = (
        b"\n" + jsonl({"name": "a", "id": "x-1"}) + b"  \n" + jsonl({"name": "b", "data": {"k": 1}})
    )

    lines = check_lines(raw, limit=1024)

    assert [(line.number, line.name, line.data_json) for line in lines] == [
        (2, "a", "{}"),
        (4, "b", '{"k":1}'),
    ]
    assert lines[0].id == "x-1"
    assert len(lines[1].id) == 36  # a new UUID for a line without an id


def test_check_lines__many_bad_lines__the_first_ten_and_a_count() -> None:
    raw = jsonl(*[{"name": "a", "data": i} for i in range(12)])

    with pytest.raises(InvalidEventError) as info:
        check_lines(raw, limit=1024)

    lines = str(info.value).splitlines()
    assert lines[0] == "12 bad line(s), nothing was sent:"
    assert lines[1] == "  line 1: event data must be a JSON object, got number"
    assert lines[10].startswith("  line 10: ")
    assert lines[11] == "  and 2 more"


def test_check_lines__over_the_size_limit__names_the_line() -> None:
    raw = jsonl({"name": "ok"}, {"name": "big", "data": {"blob": "x" * 100}})

    with pytest.raises(InvalidEventError, match=r"line 2: event 'big' data is \d+ bytes, over"):
        check_lines(raw, limit=50)


def test_partial__says_what_was_committed_and_how_to_send_the_rest() -> None:
    lines = [Line(n, f"id-{n}", "a", "{}") for n in (1, 2, 4, 5)]  # line 3 was blank
    sent = Sent(events=2, created=1, last_line=2)

    error = _partial("events.jsonl", lines, sent, ConnectionError("server closed\ndetail"))

    assert error.code == "partial_send"
    assert str(error) == (
        "lines 1-2 were sent (2 events, 1 new), lines 4 and after were not: server closed; "
        "send the rest with `tail -n +4 events.jsonl | orchestrator send --jsonl -`"
    )
