"""`orchestrator functions`: the registry, who serves each function, and retiring one.

    orchestrator functions
    orchestrator functions remove NAME [--cancel-runs] [--yes]

A function is served while a running daemon's app has it. The runs of a function that no
running daemon serves (renamed, removed from the app, or every daemon deployed with another
app) are never claimed, so the listing shows, for each function, the live daemons that serve
it and when one last did, and marks the others UNSERVED with how many runs wait.

`remove` retires a function: it deletes it from the registry (`orchestrator.functions`, with
its cron schedule and the events buffered for it), so events no longer start it. It refuses
while a live daemon serves it (that daemon would register it again when it next starts: stop
it, or deploy its app without the function, first), and while it has unfinished runs, unless
`--cancel-runs`, which cancels them. It asks before acting (`--yes` for scripts; without a
terminal to ask on, it refuses).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.errors import FunctionInUseError, UnknownFunctionError

if TYPE_CHECKING:  # the database layer loads only when a command runs
    from orchestrator.db.functions import Hold, Serving

CANCEL_REASON = "function {name!r} was removed from the registry (orchestrator functions remove)"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    functions = sub.add_parser(
        "functions",
        parents=[common],
        help="list registered functions and the daemons serving them; remove retired ones",
        description="Without a subcommand: list the registered functions, the live daemons "
        "serving each and when one last did; functions no live daemon serves show UNSERVED.",
    )
    actions = functions.add_subparsers(dest="functions_command", metavar="SUBCOMMAND")
    remove = actions.add_parser(
        "remove",
        parents=[common],
        help="delete a retired function from the registry, so events no longer start it",
    )
    remove.add_argument("name", help="the function id")
    remove.add_argument(
        "--cancel-runs", action="store_true", help="cancel its unfinished runs (else refused)"
    )
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def run(db: Any, args: argparse.Namespace) -> int:
    if getattr(args, "functions_command", None) == "remove":
        return _remove(db, args)
    return _list(db, args)


# -- the listing ------------------------------------------------------------------------


def _list(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.cli import _plain, _print_table, _time
    from orchestrator.db import functions
    from orchestrator.runtime.unserved import COUNT_CAP

    with db.transaction() as conn:
        rows = functions.list_all(conn)
        served = functions.serving(conn)
        waiting = {b.function_id: b.runs for b in functions.unserved_backlog(conn, cap=COUNT_CAP)}
    state = {r.id: served.get(r.id) or functions.Serving(r.id, [], None) for r in rows}
    if args.json:
        out = [_plain(r.__dict__) | _served_json(state[r.id], waiting.get(r.id, 0)) for r in rows]
        print(json.dumps(out, indent=2))
        return 0
    table = [
        (
            r.id,
            ", ".join(_trigger_text(t) for t in r.triggers),
            r.options.get("retries", ""),
            r.version,
            _time(r.updated_at),
            _served_text(state[r.id], waiting.get(r.id, 0), COUNT_CAP),
            "now" if state[r.id].daemons else _time(state[r.id].last_served_at) or "unknown",
        )
        for r in rows
    ]
    headers = ("ID", "TRIGGERS", "RETRIES", "VERSION", "UPDATED", "SERVED BY", "LAST SERVED")
    _print_table(headers, table)
    _hint([fid for fid, s in state.items() if not s.daemons])
    return 0


def _served_json(serving: Serving, waiting: int) -> dict[str, Any]:
    from orchestrator.cli import _plain

    return {
        "served": bool(serving.daemons),
        "served_by": [_plain(d.__dict__) for d in serving.daemons],
        "last_served_at": _plain({"t": serving.last_served_at})["t"],
        "unserved_runs": 0 if serving.daemons else waiting,
    }


def _served_text(serving: Serving, waiting: int, cap: int) -> str:
    if not serving.daemons:
        more = "+" if waiting >= cap else ""
        runs = "run" if waiting == 1 else "runs"
        return f"UNSERVED ({waiting:,}{more} {runs} waiting)" if waiting else "UNSERVED"
    names = [f"{d.hostname}:{d.pid}" for d in serving.daemons]
    return ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")


def _hint(unserved: list[str]) -> None:
    if not unserved:
        return
    example = shlex.quote(unserved[0])
    print(
        f"\n{len(unserved)} function(s) served by no live daemon: their runs are never claimed. "
        "Deploy a daemon whose app has them, or retire one with "
        f"`orchestrator functions remove {example} --cancel-runs`.",
        file=sys.stderr,
    )


def _trigger_text(trigger: dict[str, Any]) -> str:
    if trigger.get("type") == "cron":
        tz = f" {trigger['tz']}" if trigger.get("tz") else ""
        return f"cron({trigger.get('expr')}{tz})"
    cond = f", if_={trigger['if']!r}" if trigger.get("if") else ""
    return f"event({trigger.get('name')}{cond})"


# -- remove -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    cancelled: int  # runs cancelled (with the runs they invoked)
    stopping: int  # executing runs cancelled (their executions stop)
    dropped: int  # buffered events dropped


def _remove(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.cli_recovery import _confirm
    from orchestrator.db import functions

    with db.transaction() as conn:
        held = functions.hold(conn, args.name)
    held = refuse(held, args.name, cancel_runs=args.cancel_runs)
    if not args.yes and not _confirm(_question(held)):
        print("nothing done", file=sys.stderr)
        return 1
    removed: Removed = db.run(lambda conn: retire(conn, args.name, cancel_runs=args.cancel_runs))
    _report(args, removed)
    return 0


def retire(conn: Any, name: str, *, cancel_runs: bool) -> Removed:
    """Check again under the function's row lock, then cancel and delete, in one transaction."""
    from orchestrator.db import functions, runs

    refuse(functions.hold(conn, name, lock=True), name, cancel_runs=cancel_runs)
    changed = []
    if cancel_runs:
        reason = CANCEL_REASON.format(name=name)
        changed = runs.cancel(conn, functions.active_run_ids(conn, name), reason=reason)
    dropped = functions.remove(conn, name)
    stopping = sum(c.was == "running" for c in changed)
    return Removed(len(changed) - stopping, stopping, dropped)


def refuse(held: Hold | None, name: str, *, cancel_runs: bool) -> Hold:
    """`held` (a db.functions.Hold) if the function may go, else the error saying why."""
    if held is None:
        raise UnknownFunctionError(
            f"no function {name!r} is registered; `orchestrator functions` lists them"
        )
    if held.daemons:
        who = ", ".join(f"{d.hostname}:{d.pid} ({d.app})" for d in held.daemons)
        raise FunctionInUseError(
            f"function {name!r} is served by live daemon(s) {who}; they would register it "
            "again when they next start. Stop them, or deploy their app without the "
            "function first, then remove it"
        )
    if (held.active or held.buffered) and not cancel_runs:
        raise FunctionInUseError(
            f"function {name!r} has {_pending(held)}; pass --cancel-runs to cancel them, "
            "or wait until they finish"
        )
    return held


def _pending(held: Hold) -> str:
    parts = [f"{n} {status}" for status, n in sorted(held.active.items())]
    runs = f"{sum(held.active.values())} unfinished run(s) ({', '.join(parts)})" if parts else ""
    events = f"{held.buffered} buffered event(s)" if held.buffered else ""
    return " and ".join(p for p in (runs, events) if p)


def _question(held: Hold) -> str:
    pending = _pending(held)
    also = f", cancelling its {pending}" if pending else ""
    return f"remove function {held.function_id!r} from the registry{also}?"


def _report(args: argparse.Namespace, removed: Removed) -> None:
    if args.json:
        print(json.dumps({"removed": args.name} | removed.__dict__))
        return
    print(f"function {args.name!r} removed from the registry; events no longer start it")
    if removed.cancelled:
        print(f"{removed.cancelled} run(s) cancelled")
    if removed.stopping:
        print(f"{removed.stopping} executing run(s) cancelled; their executions stop")
    if removed.dropped:
        print(f"{removed.dropped} buffered event(s) dropped")
