"""`orchestrator runs replay|resume|fork`: the command-line side of orchestrator/recovery.py.

    orchestrator runs replay RUN_ID
    orchestrator runs resume RUN_ID
    orchestrator runs fork RUN_ID --from-step STEP_ID [--data JSON]
    orchestrator runs resume --function F [--status failed] --since 2h [--until 30m] [--yes]
    orchestrator runs replay --function F --status failed --since 2h [--yes]

The bulk forms print how many runs match and ask before acting (`--yes` for scripts; without
a terminal to ask on, they refuse), then show a progress bar on a terminal
(orchestrator/progress.py). They exit 1 when some matching run was refused, listing which and
why. Ctrl-C stops them after the batch in progress (exit 130), saying how many runs were
done and how many were not reached (with `--json`, listed under `not_reached`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.config import Config
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:  # imported when a command runs, so that `--help` stays fast
    from orchestrator.recovery import Outcome, Recovery, Selection

INTERRUPTED_EXIT = 130  # as a shell reports a command stopped by Ctrl-C
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def add_parsers(runs_sub: Any, common: argparse.ArgumentParser) -> None:
    for name, verb in (("replay", "replay"), ("resume", "resume")):
        what = (
            "start a new run from the same event(s), with fresh steps"
            if name == "replay"
            else "requeue a failed or cancelled run, reusing its completed steps"
        )
        cmd = runs_sub.add_parser(name, parents=[common], help=what)
        cmd.add_argument("run_id", nargs="?", help="run id (or an unambiguous prefix)")
        cmd.add_argument("--function", help=f"{verb} the runs of this function (bulk)")
        cmd.add_argument(
            "--status",
            default="failed",
            help="bulk: runs with this status (comma-separated; default failed)",
        )
        cmd.add_argument("--since", help="bulk: finished at most this long ago (2h, 30m, 1d)")
        cmd.add_argument("--until", help="bulk: finished at least this long ago, or a time")
        cmd.add_argument("--yes", action="store_true", help="bulk: do not ask for confirmation")
    fork = runs_sub.add_parser(
        "fork", parents=[common], help="start a new run reusing the steps before one step"
    )
    fork.add_argument("run_id", help="run id (or an unambiguous prefix)")
    fork.add_argument("--from-step", required=True, help="the step to execute again from")
    fork.add_argument(
        "--data",
        help="new event data: a JSON object, @FILE to read it from a file, or - for stdin "
        "(default: the original event's data)",
    )


def run(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.recovery import Recovery

    recovery = Recovery(db, max_event_bytes=cfg.max_event_bytes)
    if args.run_id:  # a prefix that names no run, or several, is explained (and listed)
        from orchestrator.cli_lookup import find_run

        args.run_id = db.run(lambda conn: find_run(conn, args.run_id)).id
    if args.runs_command == "fork":
        return _fork(recovery, args)
    bulk = any(getattr(args, k) for k in ("function", "since", "until"))
    if args.run_id and bulk:
        raise OrchestratorError("give a run id or --function/--since/--until, not both")
    if not args.run_id and not bulk:
        raise OrchestratorError("give a run id, or select runs with --function/--since/--until")
    if args.run_id:
        act = recovery.replay if args.runs_command == "replay" else recovery.resume
        result = act(args.run_id)
        _say(args, {"id": result}, f"{result}: {_DONE[args.runs_command]}")
        return 0
    return _bulk(recovery, args)


_DONE = {"replay": "started", "resume": "resumed", "fork": "started"}


def _fork(recovery: Recovery, args: argparse.Namespace) -> int:
    from orchestrator.cli_send import read_data

    data = None if args.data is None else read_data(args.data)
    new_id = recovery.fork(args.run_id, args.from_step, data)
    _say(args, {"id": new_id}, f"{new_id}: started from step {args.from_step!r}")
    return 0


def _bulk(recovery: Recovery, args: argparse.Namespace) -> int:
    from orchestrator.db.replays import FINISHED, RESUMABLE
    from orchestrator.recovery import Selection

    selection = Selection(
        statuses=tuple(s.strip() for s in args.status.split(",") if s.strip()),
        function_id=args.function,
        since=parse_moment(args.since, "--since"),
        until=parse_moment(args.until, "--until"),
    )
    verb = args.runs_command
    allowed = RESUMABLE if verb == "resume" else FINISHED
    if not selection.statuses or not set(selection.statuses) <= set(allowed):
        raise OrchestratorError(
            f"--status {args.status!r}: {verb} takes runs that are {', '.join(allowed)}"
        )
    ids = recovery.select(selection)
    described = _describe(selection)
    if not ids:
        _say(args, {"matched": 0, "done": [], "refused": {}}, f"no runs match ({described})")
        return 0
    if not args.json:
        print(f"{len(ids)} run(s) match ({described}) and will be {_DONE[verb]}.")
    if not args.yes and not _confirm(f"{verb} {len(ids)} run(s)?"):
        print("nothing done", file=sys.stderr)
        return 1
    return _report(args, verb, ids, _act(recovery, verb, ids, args.json))


_DOING = {"replay": "replaying runs", "resume": "resuming runs"}


def _act(recovery: Recovery, verb: str, ids: list[str], as_json: bool) -> Outcome:
    from orchestrator.progress import progress, shown

    act = recovery.replay_many if verb == "replay" else recovery.resume_many
    with progress(len(ids), _DOING[verb], enabled=shown(as_json)) as bar:
        return act(
            ids,
            progress=lambda done, total: bar.advance(done - bar.completed),
            keep_going=lambda: not bar.stopping,
        )


def _report(args: argparse.Namespace, verb: str, ids: list[str], outcome: Outcome) -> int:
    matched = len(ids)
    untouched = ids[outcome.reached :] if outcome.stopped else []
    if args.json:
        stopped = {"interrupted": True, "not_reached": untouched} if outcome.stopped else {}
        print(
            json.dumps(
                {"matched": matched, "done": outcome.done, "refused": outcome.refused, **stopped}
            )
        )
    else:
        print(f"{len(outcome.done)} of {matched} run(s) {_DONE[verb]}")
        for run_id, why in sorted(outcome.refused.items()):
            print(f"  {run_id}: not {_DONE[verb]}: {why}")
    if outcome.stopped:
        print(
            f"interrupted: stopped after {outcome.reached} of {matched} run(s); "
            f"{len(untouched)} were not reached and are untouched",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    return 1 if outcome.refused else 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise OrchestratorError("no terminal to confirm on; pass --yes to act without asking")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:  # Ctrl-D: no
        print(file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")


def _describe(selection: Selection) -> str:
    parts = [f"status {'/'.join(selection.statuses)}"]
    if selection.function_id:
        parts.insert(0, f"function {selection.function_id}")
    for word, value in (("since", selection.since), ("until", selection.until)):
        if isinstance(value, timedelta):
            parts.append(f"finished {word} {value} ago")
        elif value is not None:
            parts.append(f"finished {word} {value.isoformat()}")
    return ", ".join(parts)


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data) if args.json else text)


def parse_moment(text: str | None, flag: str) -> datetime | timedelta | None:
    """`2h`, `30m`, `1d12h`, `90s`, `1w` (a time ago) or an ISO 8601 time with a zone."""
    if text is None:
        return None
    value = text.strip()
    if _DURATION.fullmatch(value) or re.fullmatch(rf"(?:{_DURATION.pattern})+", value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
        return timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise OrchestratorError(
            f"{flag} {text!r} is neither a duration (2h, 30m, 1d12h) nor an ISO time"
        ) from None
    if moment.tzinfo is None:
        raise OrchestratorError(f"{flag} {text!r} needs a time zone (e.g. +00:00 or Z)")
    return moment
