"""`orchestrator send`: one event from the command line, or many from a JSON Lines file.

    orchestrator send NAME --data '{"k": 1}' [--id ID]
    orchestrator send NAME --data @payload.json      (or --data - to read standard input)
    orchestrator send --jsonl events.jsonl           (or --jsonl - to read standard input)

Data given inline travels in the command's arguments, which the system caps (about 128 KiB
for one argument on Linux); `@FILE` and `-` have no such cap, only `max_event_bytes`.

A JSON Lines file holds one event a line: `{"name": "user/created", "data": {...}, "id":
"optional-dedup-id"}` (blank lines are skipped). Every line is checked before anything is
sent, so a bad line (its number and what is wrong are reported) sends nothing. Then events
go in batches, one INSERT statement and one commit each, with a progress bar on a terminal
(orchestrator/progress.py). Should the database fail midway, or Ctrl-C stop the command after
the batch in progress, the error says exactly which lines were committed and how to send the
rest. Events are checked and stored as `app.send` does (same size limit, same
de-duplication by id: a known id creates nothing and counts as a duplicate).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import InvalidEventError, OrchestratorError

BATCH = 500  # events a statement
SHOWN_ERRORS = 10
_KEYS = ("name", "data", "id")
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


class PartialSendError(OrchestratorError):
    """`send --jsonl` committed some batches before the database failed."""

    code = "partial_send"

    def __init__(self, message: str, *, interrupted: bool = False) -> None:
        super().__init__(message)
        self.exit_status = 130 if interrupted else 1  # 130: stopped by Ctrl-C, as a shell says


@dataclass(frozen=True)
class Line:
    """One checked event of a JSON Lines input, with its (1-based) line number."""

    number: int
    id: str
    name: str
    data_json: str


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    send = sub.add_parser(
        "send", parents=[common], help="send an event (or many, from a JSON Lines file)"
    )
    send.add_argument("name", nargs="?", help="the event name, e.g. user/created")
    send.add_argument(
        "--data",
        help="event data: a JSON object, @FILE to read it from a file, or - for stdin "
        "(default: {})",
    )
    send.add_argument("--id", help="event id, for de-duplication (default: a new UUID)")
    send.add_argument(
        "--jsonl",
        metavar="FILE",
        help='send many events: one {"name": ..., "data": ..., "id": ...} a line; - for stdin',
    )


def run(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    _check_arguments(args)
    if args.jsonl is not None:
        return _send_lines(db, cfg, args)
    from orchestrator import tracecontext
    from orchestrator.codec import validate_event
    from orchestrator.db import events

    data = read_data(args.data) if args.data is not None else {}
    text = validate_event(args.name, data, args.id, cfg.max_event_bytes)
    trace = tracecontext.from_environment()  # TRACEPARENT, if the caller set it
    event_id, created = db.run(
        lambda conn: events.insert(
            conn, args.name, text, event_id=args.id, ts=None, trace_context=trace
        )
    )
    if args.json:
        print(json.dumps({"id": event_id, "created": created}))
    else:
        print(event_id if created else f"{event_id} (duplicate id: nothing new was created)")
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    from orchestrator.errors import UsageError

    if args.jsonl is not None and (args.name, args.data, args.id) != (None, None, None):
        raise UsageError(
            "--jsonl reads each event's name, data and id from its lines; "
            "give no NAME, --data or --id with it",
            prog="orchestrator send",
        )
    if args.jsonl is None and args.name is None:
        raise UsageError("give an event NAME (or --jsonl FILE for many)", prog="orchestrator send")


def read_data(value: str) -> dict[str, Any]:
    """`--data`: inline JSON, `@FILE` or `-` (stdin); it must be a JSON object."""
    where = "--data " + (value if value.startswith("@") or value == "-" else "")
    try:
        raw = _read(value[1:]) if value.startswith("@") else _read(value) if value == "-" else value
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidEventError(f"{where.strip()} is not valid JSON: {exc}") from None
    return require_object(data)


def _read(source: str) -> bytes:
    """The bytes of a file, or of standard input for `-`."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        with open(source, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise InvalidEventError(f"cannot read {source}: {exc.strerror}") from None


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        kind = _JSON_TYPES.get(type(data), "number")
        raise InvalidEventError(f"event data must be a JSON object, got {kind}")
    return data


def check_lines(raw: bytes, limit: int) -> list[Line]:
    """Every event of a JSON Lines input, checked; `InvalidEventError` listing the bad lines
    (the first few, and how many) if any is bad."""
    good: list[Line] = []
    bad: list[str] = []
    for number, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        try:
            good.append(_check_line(number, text, limit))
        except (OrchestratorError, ValueError) as exc:
            bad.append(f"line {number}: {exc}")
    if bad:
        more = [f"and {len(bad) - SHOWN_ERRORS} more"] if len(bad) > SHOWN_ERRORS else []
        listed = "\n  ".join(bad[:SHOWN_ERRORS] + more)
        raise InvalidEventError(f"{len(bad)} bad line(s), nothing was sent:\n  {listed}")
    return good


def _check_line(number: int, text: bytes, limit: int) -> Line:
    from orchestrator.codec import validate_event

    try:
        event = json.loads(text)
    except ValueError as exc:
        raise InvalidEventError(f"not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise InvalidEventError('a line must be a JSON object: {"name": ..., "data": {...}}')
    unknown = sorted(set(event) - set(_KEYS))
    if unknown:
        raise InvalidEventError(f"unknown key {unknown[0]!r}; a line takes name, data and id")
    if "name" not in event:
        raise InvalidEventError('no "name"')
    data = require_object(event.get("data", {}))
    event_id = event.get("id")
    data_json = validate_event(event["name"], data, event_id, limit)
    return Line(
        number, event_id if event_id is not None else str(uuid.uuid4()), event["name"], data_json
    )


@dataclass
class Sent:
    events: int = 0
    created: int = 0
    last_line: int = 0


def _send_lines(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.progress import progress, shown

    lines = check_lines(_read(args.jsonl), cfg.max_event_bytes)
    sent = Sent()
    with progress(len(lines), "sending events", enabled=shown(args.json)) as bar:
        try:
            for batch in _batches(lines):
                if bar.stopping and sent.events:  # Ctrl-C: stop between batches
                    raise _partial(args.jsonl, lines, sent, None)
                if bar.stopping:
                    raise KeyboardInterrupt
                sent.created += _insert(db, batch)
                sent.events += len(batch)
                sent.last_line = batch[-1].number
                bar.advance(len(batch))
        except (Exception, KeyboardInterrupt) as exc:
            if sent.events == 0 or isinstance(exc, PartialSendError):
                raise
            raise _partial(args.jsonl, lines, sent, exc) from exc
    duplicates = sent.events - sent.created
    if args.json:
        print(json.dumps({"sent": sent.events, "created": sent.created, "duplicates": duplicates}))
    else:
        print(f"sent {sent.events} events ({sent.created} new, {duplicates} duplicate ids)")
    return 0


def _batches(lines: list[Line]) -> Iterator[list[Line]]:
    for start in range(0, len(lines), BATCH):
        yield lines[start : start + BATCH]


def _insert(db: Any, batch: list[Line]) -> int:
    from orchestrator import tracecontext
    from orchestrator.db import events

    rows = [(line.id, line.name, line.data_json) for line in batch]
    trace = tracecontext.from_environment()  # TRACEPARENT, if the caller set it
    created: int = db.run(lambda conn: events.insert_many(conn, rows, trace_context=trace))
    return created


def _partial(
    source: str, lines: list[Line], sent: Sent, exc: BaseException | None
) -> PartialSendError:
    """What was committed before `exc` (None: stopped between batches by Ctrl-C), and how to
    send the rest."""
    from orchestrator.errors import first_line

    first_unsent = lines[sent.events].number
    rest = f"`tail -n +{first_unsent} {source} | orchestrator send --jsonl -`"
    if source == "-":
        rest = f"the input from line {first_unsent} on"
    interrupted = exc is None or isinstance(exc, KeyboardInterrupt)
    why = "interrupted by Ctrl-C" if interrupted or exc is None else first_line(exc)
    return PartialSendError(
        f"lines 1-{sent.last_line} were sent ({sent.events} events, {sent.created} new), "
        f"lines {first_unsent} and after were not: {why}; send the rest with {rest}",
        interrupted=interrupted,
    )
