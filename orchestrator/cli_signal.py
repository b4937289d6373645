"""`orchestrator runs signal`: send a signal to one run from the command line.

    orchestrator runs signal RUN_ID NAME [--data '{"k": 1}']

The run's `ctx.step.wait_for_signal(..., NAME)` takes it (now if it waits, or when it next
does). Errors are those of `app.signal`: an unknown run (`run_not_found`), a finished one
(`run_finished`), a bad name or data (`invalid_signal`, `payload_not_json`,
`payload_too_large`); with --json, as `{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.errors import InvalidSignalError


def add_parser(runs_sub: Any, common: argparse.ArgumentParser) -> None:
    signal = runs_sub.add_parser(
        "signal",
        parents=[common],
        help="send a signal to a run (its ctx.step.wait_for_signal takes it)",
    )
    signal.add_argument("run_id", help="run id (or an unambiguous prefix)")
    signal.add_argument("name", help="the signal's name")
    signal.add_argument("--data", help="the signal's data: a JSON object (default: {})")


def command(db: Any, max_event_bytes: int, args: argparse.Namespace) -> int:
    from orchestrator import client
    from orchestrator.cli_lookup import find_run
    from orchestrator.db import outbox

    data = _parse(args.data)
    data_json = client.signal_data(args.name, data, max_event_bytes)
    with db.transaction() as conn:
        run = find_run(conn, args.run_id)
        signal_id = outbox.run(client.signal_op(run.id, args.name, data_json), conn)
    if args.json:
        print(json.dumps({"id": signal_id, "run_id": run.id, "name": args.name}))
    else:
        print(f"signal {args.name!r} sent to run {run.id} (signal id {signal_id})")
    return 0


def _parse(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise InvalidSignalError(f"--data is not valid JSON: {exc}") from None
