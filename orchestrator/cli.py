"""The `orchestrator` command line.

    orchestrator migrate
    orchestrator roles [--apply] [--login] [--owner N] [--runtime N] [--readonly N]
    orchestrator run --app package.module:app
    orchestrator send NAME --data '{"k": 1}' [--id ID]
    orchestrator runs list [--status S] [--function F] [--limit N]
    orchestrator runs show RUN_ID
    orchestrator runs cancel RUN_ID
    orchestrator runs replay|resume RUN_ID   (or in bulk: --function F --status S --since 2h)
    orchestrator runs fork RUN_ID --from-step STEP_ID [--data JSON]
    orchestrator functions [remove NAME [--cancel-runs] [--yes]]
    orchestrator gc [--completed S] [--failed S] [--events S] [--dry-run]

Every command takes `--config PATH` and `--database-url URL`, prints readable tables in a
terminal and JSON with `--json`, and exits non-zero with a one-line reason on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from orchestrator.config import Config, load_config
from orchestrator.errors import OrchestratorError


def _parser() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the subcommand is not reset by the subparser's default
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--config", help="TOML config file (default: ./orchestrator.toml)")
    common.add_argument("--database-url", help="Postgres URL (default: embedded Postgres)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    parser = argparse.ArgumentParser(
        prog="orchestrator", description="Durable execution on Postgres.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", parents=[common], help="create or upgrade the schema (idempotent)")
    roles = sub.add_parser(
        "roles",
        parents=[common],
        help="print (or --apply) the SQL of the owner, runtime and read-only database roles",
    )
    roles.add_argument("--apply", action="store_true", help="run the SQL instead of printing it")
    roles.add_argument("--login", action="store_true", help="give the roles LOGIN (no password)")
    roles.add_argument("--owner", help="owner role (default: orchestrator_owner)")
    roles.add_argument("--runtime", help="daemon role (default: orchestrator_runtime)")
    roles.add_argument("--readonly", help="read-only role (default: orchestrator_readonly)")

    run = sub.add_parser("run", parents=[common], help="start the daemon")
    run.add_argument("--app", help="the app to serve, as package.module:attr")
    run.add_argument("--workers", type=int, help="worker processes")
    run.add_argument("--concurrency", type=int, help="threads per worker process")

    send = sub.add_parser("send", parents=[common], help="send an event")
    send.add_argument("name")
    send.add_argument("--data", default="{}", help="event data as a JSON object")
    send.add_argument("--id", help="event id, for de-duplication")

    runs = sub.add_parser("runs", parents=[common], help="inspect runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND")
    listing = runs_sub.add_parser("list", parents=[common], help="list recent runs")
    listing.add_argument("--status", help="only runs with this status")
    listing.add_argument("--function", help="only runs of this function id")
    listing.add_argument("--limit", type=int, default=50)
    show = runs_sub.add_parser("show", parents=[common], help="one run and its steps")
    show.add_argument("run_id", help="run id (or an unambiguous prefix)")
    cancel = runs_sub.add_parser(
        "cancel", parents=[common], help="cancel a run and its unfinished invoked runs"
    )
    cancel.add_argument("run_id", help="run id (or an unambiguous prefix)")
    cancel.add_argument("--reason", default="cancelled from the command line")
    from orchestrator.cli_recovery import add_parsers

    add_parsers(runs_sub, common)

    from orchestrator.cli_functions import add_parser as add_functions

    add_functions(sub, common)

    gc = sub.add_parser("gc", parents=[common], help="delete old runs, events and daemon rows now")
    gc.add_argument("--completed", type=float, metavar="SECONDS", help="retain_completed")
    gc.add_argument("--failed", type=float, metavar="SECONDS", help="retain_failed")
    gc.add_argument("--events", type=float, metavar="SECONDS", help="retain_events")
    gc.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from orchestrator import log
    from orchestrator.redact import url_secrets

    # before anything can fail: no message or log line may show the database password
    log.hide(*url_secrets(getattr(args, "database_url", None) or ""))
    log.hide(*url_secrets(os.environ.get("ORCHESTRATOR_DATABASE_URL", "")))
    try:
        args.json = getattr(args, "json", False)
        cfg = load_config(
            getattr(args, "config", None),
            overrides={
                "database_url": getattr(args, "database_url", None),
                "app": getattr(args, "app", None),
                "workers": getattr(args, "workers", None),
                "concurrency": getattr(args, "concurrency", None),
                "retain_completed": getattr(args, "completed", None),
                "retain_failed": getattr(args, "failed", None),
                "retain_events": getattr(args, "events", None),
            },
        )
        log.hide(*url_secrets(cfg.database_url))
        log.configure(cfg.log_format, cfg.log_level, payloads=cfg.log_payloads)
        return _dispatch(args, cfg)
    except OrchestratorError as exc:
        print(f"error: {log.scrub_secrets(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `orchestrator runs list | head`
        sys.stderr.close()
        return 0
    except Exception as exc:
        from orchestrator.db.database import DatabaseError
        from orchestrator.errors import first_line

        if isinstance(exc, DatabaseError):
            print(f"error: database: {log.scrub_secrets(first_line(exc))}", file=sys.stderr)
            return 1
        raise


def _dispatch(args: argparse.Namespace, cfg: Config) -> int:
    if args.command in ("run", "roles"):  # they open (or need) no database of their own
        return _cmd_run(cfg) if args.command == "run" else _cmd_roles(cfg, args)
    from orchestrator.db.connect import resolve_url
    from orchestrator.db.database import Database

    db = Database(
        resolve_url(cfg.database_url, cfg.embedded_data_dir),
        pool_size=1,
        application_name="orchestrator-cli",
    )
    try:
        if args.command == "migrate":
            from orchestrator.db import migrate

            migrate.upgrade(db.engine)
            print("schema is at", migrate.head_revision())
            return 0
        from orchestrator.db.connect import check_schema

        check_schema(db.engine)
        handlers: dict[str, Callable[[], int]] = {
            "send": lambda: _cmd_send(db, cfg, args),
            "functions": lambda: _cmd_functions(db, args),
            "gc": lambda: _cmd_gc(db, cfg, args),
            "list": lambda: _cmd_runs_list(db, args),
            "show": lambda: _cmd_runs_show(db, args),
            "cancel": lambda: _cmd_runs_cancel(db, args),
            "replay": lambda: _cmd_recovery(db, cfg, args),
            "resume": lambda: _cmd_recovery(db, cfg, args),
            "fork": lambda: _cmd_recovery(db, cfg, args),
        }
        return handlers[args.runs_command if args.command == "runs" else args.command]()
    finally:
        db.dispose()


def _cmd_run(cfg: Config) -> int:
    from orchestrator.db.connect import resolve_url
    from orchestrator.errors import ConfigError
    from orchestrator.runtime.daemon import Daemon
    from orchestrator.runtime.loader import load_app

    if not cfg.app:
        raise ConfigError("no app to serve; pass --app package.module:attr or set app = ...")
    app = load_app(cfg.app)
    if not app.functions:
        raise ConfigError(f"app {cfg.app!r} registers no functions")
    url = resolve_url(cfg.database_url, cfg.embedded_data_dir)
    app.bind(url)
    return Daemon(app, cfg.app, url, cfg).run()


def _cmd_roles(cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.db import roles
    from orchestrator.db.connect import resolve_url
    from orchestrator.db.database import Database

    names = roles.Roles(
        owner=args.owner or roles.DEFAULT_OWNER,
        runtime=args.runtime or roles.DEFAULT_RUNTIME,
        readonly=args.readonly or roles.DEFAULT_READONLY,
    )
    if not args.apply:
        print(roles.script(names, login=args.login), end="")
        return 0
    url = resolve_url(cfg.database_url, cfg.embedded_data_dir)
    db = Database(url, pool_size=1, application_name="orchestrator-cli")
    try:
        with db.transaction() as conn:
            roles.apply(conn, names, login=args.login)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(names.__dict__ | {"login": args.login}))
        return 0
    print(
        f"roles {names.owner} (owner), {names.runtime} (runtime) and {names.readonly} "
        f"(read-only) are set up; the schema and its objects belong to {names.owner}"
    )
    if args.login:
        print("they may log in: set their passwords in psql with \\password ROLE (none was set)")
    else:
        print("they cannot log in: grant them to login roles, or run again with --login")
    return 0


def _cmd_send(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.app import validate_event
    from orchestrator.db import events
    from orchestrator.errors import InvalidEventError

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise InvalidEventError(f"--data is not valid JSON: {exc}") from None
    text = validate_event(args.name, data, args.id, cfg.max_event_bytes)
    event_id, created = db.run(
        lambda conn: events.insert(conn, args.name, text, event_id=args.id, ts=None)
    )
    if args.json:
        print(json.dumps({"id": event_id, "created": created}))
    else:
        print(event_id if created else f"{event_id} (duplicate id: nothing new was created)")
    return 0


def _cmd_functions(db: Any, args: argparse.Namespace) -> int:
    from orchestrator import cli_functions

    return cli_functions.run(db, args)


def _cmd_gc(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.runtime.retention import DAEMON_ROWS_KEPT, Cleaner, Policy

    cleaner = Cleaner(db.url, Policy.from_config(cfg))
    result = cleaner.backlog() if args.dry_run else cleaner.run_pass()
    counts = result.counts()
    ages = {
        "completed": cfg.retain_completed,
        "failed": cfg.retain_failed,
        "events": cfg.retain_events,
        "daemons": DAEMON_ROWS_KEPT,
    }
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "retain": ages, **counts}))
    else:
        kept = ", ".join(f"{k} {_age(v)}" for k, v in ages.items())
        print(f"{'would delete' if args.dry_run else 'deleted'} (keeping {kept}):")
        _print_table(("ROWS", "COUNT"), [(k, f"{v:,}") for k, v in result.rows().items()])
        batches = "" if args.dry_run else f" in {result.batches} batches"
        print(f"took {result.seconds:.1f} s{batches}")
    if result.error is not None:
        from orchestrator import log

        reason = log.scrub_secrets(result.error)
        print(f"error: database: {reason} (the pass stopped there)", file=sys.stderr)
        return 1
    return 0


def _age(seconds: float) -> str:
    if not seconds:
        return "forever"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _cmd_runs_list(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.db import runs

    with db.transaction() as conn:
        rows = runs.list_runs(conn, status=args.status, function_id=args.function, limit=args.limit)
    if args.json:
        print(json.dumps([_plain(r.__dict__) for r in rows], indent=2))
        return 0
    table = [
        (r.id, r.function_id, r.status, r.attempts, _time(r.created_at), _time(r.finished_at))
        for r in rows
    ]
    _print_table(("RUN", "FUNCTION", "STATUS", "ATTEMPTS", "CREATED", "FINISHED"), table)
    return 0


def _cmd_runs_cancel(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.db import runs
    from orchestrator.errors import RunNotFoundError

    with db.transaction() as conn:
        run = runs.get(conn, args.run_id)
        if run is None:
            raise RunNotFoundError(f"no run matches {args.run_id!r} (or the prefix is ambiguous)")
        changed = runs.cancel(conn, [run.id], reason=args.reason)
    status = next((c.status for c in changed if c.id == run.id), run.status)
    children = sum(c.id != run.id for c in changed)
    if args.json:
        print(json.dumps({"id": run.id, "status": status, "children_cancelled": children}))
        return 0
    if status == "running":
        print(f"{run.id}: cancellation requested; it stops at its next step boundary")
    elif status == "cancelled" and any(c.id == run.id for c in changed):
        print(f"{run.id}: cancelled")
    else:
        print(f"{run.id}: already {status}; nothing to cancel")
    if children:
        print(f"{children} invoked run(s) cancelled with it")
    return 0


def _cmd_recovery(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator import cli_recovery

    return cli_recovery.run(db, cfg, args)


def _cmd_runs_show(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.db import runs, steps
    from orchestrator.errors import RunNotFoundError

    with db.transaction() as conn:
        run = runs.get(conn, args.run_id)
        if run is None:
            raise RunNotFoundError(f"no run matches {args.run_id!r} (or the prefix is ambiguous)")
        step_rows = steps.load(conn, run.id)
    if args.json:
        out = _plain(run.__dict__) | {"steps": [_plain(s.__dict__) for s in step_rows]}
        print(json.dumps(out, indent=2))
        return 0
    for key in (
        "id",
        "function_id",
        "status",
        "event_id",
        "attempts",
        "recoveries",
        "created_at",
        "started_at",
        "finished_at",
        "due_at",
        "lease_owner",
        "parent_run_id",
        "cancel_requested_at",
        "origin",
        "origin_run_id",
        "resumes",
    ):
        print(f"{key:<12} {_cell(getattr(run, key))}")
    if run.output is not None:
        print(f"{'output':<12} {_short(json.dumps(run.output))}")
    if run.error is not None:
        print(f"{'error':<12} {run.error.get('type')}: {run.error.get('message')}")
    print()
    table = [
        (
            s.step_id,
            s.kind,
            s.status,
            s.attempt,
            _short(json.dumps(s.output))
            if s.output is not None
            else (f"{s.error.get('type')}: {s.error.get('message')}" if s.error else ""),
            s.duration_ms if s.duration_ms is not None else "",
            _time(s.wake_at),
            _time(s.updated_at),
        )
        for s in step_rows
    ]
    _print_table(("STEP", "KIND", "STATUS", "ATTEMPT", "OUTPUT/ERROR", "MS", "WAKE", "AT"), table)
    return 0


def _plain(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in obj.items()}


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return "" if value is None else str(value)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")


if __name__ == "__main__":
    sys.exit(main())
