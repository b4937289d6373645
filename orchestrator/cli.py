"""The `orchestrator` command line.

    orchestrator migrate
    orchestrator roles [--apply] [--login] [--owner N] [--runtime N] [--readonly N]
    orchestrator run --app package.module:app
    orchestrator send NAME [--data '{"k": 1}' | --data @file.json | --data -] [--id ID]
    orchestrator send --jsonl FILE|-        (one {"name": ..., "data": ..., "id": ...} a line)
    orchestrator runs list [--status S] [--function F] [--limit N]
    orchestrator runs show RUN_ID
    orchestrator runs cancel RUN_ID [--no-children]
    orchestrator runs replay|resume RUN_ID   (or in bulk: --function F --status S --since 2h)
    orchestrator runs fork RUN_ID --from-step STEP_ID [--data JSON]
    orchestrator functions [remove NAME [--cancel-runs] [--yes]]
    orchestrator gc [--completed S] [--failed S] [--events S] [--dry-run]

Every command takes `--config PATH` and `--database-url URL`, prints readable tables in a
terminal and JSON with `--json`, and exits non-zero with a one-line reason on errors (with
`--json`, `{"error": {"code": ..., "message": ...}}` on stdout). Without a database URL, the
embedded Postgres is found in `.orchestrator/pgdata` here or in a parent directory
(orchestrator/datadir.py); only `migrate` and `run` create one.

Start-up stays fast: this module imports only the config, and each command imports what it
uses, so `--help` and a mistyped option answer without loading the engine or a driver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

from orchestrator.config import Config, env_warnings, load_config
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.statuses import RUN_STATUSES

USAGE_EXIT = 2  # as argparse


class _Parser(argparse.ArgumentParser):
    """Raises `UsageError` instead of printing and exiting, so `--json` can report it too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, prog=self.prog, usage=self.format_usage())


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the subcommand is not reset by the subparser's default
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--config", help="TOML config file (default: the nearest orchestrator.toml upward)"
    )
    common.add_argument(
        "--database-url", help="Postgres URL (default: the project's embedded Postgres)"
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    parser = _Parser(
        prog="orchestrator", description="Durable execution on Postgres.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "migrate",
        parents=[common],
        help="create or upgrade the schema (idempotent); creates the embedded database if none",
    )
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
    run.add_argument("--workers", type=positive_int, help="worker processes")
    run.add_argument("--concurrency", type=positive_int, help="threads per worker process")

    from orchestrator.cli_send import add_parser as add_send

    add_send(sub, common)

    runs = sub.add_parser("runs", parents=[common], help="inspect and operate on runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND")
    listing = runs_sub.add_parser("list", parents=[common], help="list recent runs, newest first")
    listing.add_argument(
        "--status",
        choices=RUN_STATUSES,
        metavar="STATUS",
        help=f"only runs with this status: {', '.join(RUN_STATUSES)}",
    )
    listing.add_argument("--function", help="only runs of this function id")
    listing.add_argument(
        "--limit", type=positive_int, default=50, help="at most this many runs (default 50)"
    )
    show = runs_sub.add_parser("show", parents=[common], help="one run and its steps")
    show.add_argument("run_id", help="run id (or an unambiguous prefix)")
    cancel = runs_sub.add_parser(
        "cancel",
        parents=[common],
        help="cancel a run (an executing one too) and its unfinished invoked runs",
    )
    cancel.add_argument("run_id", help="run id (or an unambiguous prefix)")
    cancel.add_argument(
        "--no-children",
        dest="children",
        action="store_false",
        help="leave the runs it invoked running (by default they are cancelled with it)",
    )
    cancel.add_argument(
        "--reason",
        default="cancelled from the command line",
        help="recorded as the run's cancellation reason",
    )
    from orchestrator.cli_recovery import add_parsers
    from orchestrator.cli_signal import add_parser as add_signal

    add_parsers(runs_sub, common)
    add_signal(runs_sub, common)

    from orchestrator.cli_functions import add_parser as add_functions

    add_functions(sub, common)
    from orchestrator.cli_ui import add_parsers as add_ui

    add_ui(sub, common)
    from orchestrator.cli_inngest import add_parsers as add_inngest

    add_inngest(sub, common)

    gc = sub.add_parser("gc", parents=[common], help="delete old runs, events and daemon rows now")
    gc.add_argument("--completed", type=float, metavar="SECONDS", help="retain_completed")
    gc.add_argument("--failed", type=float, metavar="SECONDS", help="retain_failed")
    gc.add_argument("--events", type=float, metavar="SECONDS", help="retain_events")
    gc.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv  # known before parsing, so that usage errors are JSON too
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:  # it may quote an argument: mask any URL's password in them
        from orchestrator.redact import scrub, url_secrets

        secrets = [secret for arg in argv for secret in url_secrets(arg)]
        return _fail(exc, as_json, scrub(str(exc), secrets))
    for warning in env_warnings(os.environ):
        print(f"warning: {warning}", file=sys.stderr)
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    from orchestrator import log
    from orchestrator.redact import url_secrets

    # before anything can fail: no message or log line may show the database password
    log.hide(*url_secrets(getattr(args, "database_url", None) or ""))
    log.hide(*url_secrets(os.environ.get("ORCHESTRATOR_DATABASE_URL", "")))
    args.json = getattr(args, "json", False)
    try:
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
        log.hide(cfg.inngest_signing_key, cfg.inngest_signing_key_fallback)
        log.configure(cfg.log_format, cfg.log_level, payloads=cfg.log_payloads)
        return _dispatch(args, cfg)
    except OrchestratorError as exc:
        return _fail(exc, args.json, log.scrub_secrets(str(exc)))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `orchestrator runs list | head`
        sys.stderr.close()
        return 0
    except Exception as exc:
        from orchestrator.db.database import DatabaseError
        from orchestrator.errors import first_line

        if isinstance(exc, DatabaseError):
            message = f"database: {log.scrub_secrets(first_line(exc))}"
            return _fail(exc, args.json, message, code="database_error")
        raise


def _fail(exc: Exception, as_json: bool, message: str, *, code: str = "") -> int:
    """Report an error (its `message` scrubbed of passwords): on stderr, or with --json as
    `{"error": {"code": ..., "message": ...}}` on stdout."""
    code = code or getattr(exc, "code", "error")
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    elif isinstance(exc, UsageError):  # as argparse prints it
        print(f"{exc.usage}{exc.prog}: error: {message}", file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return USAGE_EXIT if isinstance(exc, UsageError) else 1


def database_url(cfg: Config, args: argparse.Namespace, *, create: bool) -> str:
    """The configured URL, else the embedded Postgres of this project, said on stderr."""
    if cfg.database_url:
        return cfg.database_url
    from pathlib import Path

    from orchestrator import datadir
    from orchestrator.config import project_home
    from orchestrator.db.connect import embedded_url

    found = datadir.locate(
        cfg.embedded_data_dir,
        Path.cwd(),
        create=create,
        home=project_home(getattr(args, "config", None), os.environ),
    )
    print(found.describe(), file=sys.stderr)
    return embedded_url(str(found.path))


def _dispatch(args: argparse.Namespace, cfg: Config) -> int:
    if args.command in ("ui", "ui-user", "ui-token"):  # they open databases of their own
        from orchestrator import cli_ui

        return cli_ui.run(cfg, args)
    from orchestrator import cli_inngest

    if args.command in cli_inngest.COMMANDS:  # they open databases of their own
        return cli_inngest.run(cfg, args)
    if args.command in ("run", "roles"):  # they open (or need) no database of their own
        return _cmd_run(cfg, args) if args.command == "run" else _cmd_roles(cfg, args)
    from orchestrator.db.database import Database

    db = Database(
        database_url(cfg, args, create=args.command == "migrate"),
        pool_size=1,
        application_name="orchestrator-cli",
    )
    try:
        if args.command == "migrate":
            return _cmd_migrate(db, args)
        from orchestrator.db.connect import check_schema

        check_schema(db.engine)
        handlers: dict[str, Callable[[], int]] = {
            "send": lambda: _cmd_send(db, cfg, args),
            "functions": lambda: _cmd_functions(db, args),
            "gc": lambda: _cmd_gc(db, cfg, args),
            "list": lambda: _cmd_runs_list(db, args),
            "show": lambda: _cmd_runs_show(db, args),
            "cancel": lambda: _cmd_runs_cancel(db, args),
            "signal": lambda: _cmd_runs_signal(db, cfg, args),
            "replay": lambda: _cmd_recovery(db, cfg, args),
            "resume": lambda: _cmd_recovery(db, cfg, args),
            "fork": lambda: _cmd_recovery(db, cfg, args),
        }
        return handlers[args.runs_command if args.command == "runs" else args.command]()
    finally:
        db.dispose()


def _cmd_migrate(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.db import migrate

    before = migrate.current_revision(db.engine)
    migrate.upgrade(db.engine)
    after = migrate.head_revision()
    if args.json:
        print(json.dumps({"from": before, "to": after, "changed": before != after}))
    elif before == after:
        print(f"schema already at {after}; nothing to do")
    elif before is None:
        print(f"schema created at {after}")
    else:
        print(f"schema upgraded from {before} to {after}")
    return 0


def _cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.errors import ConfigError
    from orchestrator.runtime.daemon import Daemon
    from orchestrator.runtime.loader import load_app

    if not cfg.app:
        raise ConfigError("no app to serve; pass --app package.module:attr or set app = ...")
    app = load_app(cfg.app)
    if not app.functions and not cfg.inngest:  # with inngest, the SDK apps bring theirs
        raise ConfigError(f"app {cfg.app!r} registers no functions")
    url = database_url(cfg, args, create=True)
    app.bind(url)
    return Daemon(app, cfg.app, url, cfg).run()


def _cmd_roles(cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.db import roles
    from orchestrator.db.database import Database

    names = roles.Roles(
        owner=args.owner or roles.DEFAULT_OWNER,
        runtime=args.runtime or roles.DEFAULT_RUNTIME,
        readonly=args.readonly or roles.DEFAULT_READONLY,
    )
    if not args.apply:
        print(roles.script(names, login=args.login), end="")
        return 0
    db = Database(
        database_url(cfg, args, create=False), pool_size=1, application_name="orchestrator-cli"
    )
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
    from orchestrator import cli_send

    return cli_send.run(db, cfg, args)


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


def _cmd_runs_signal(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.cli_signal import command

    return command(db, cfg.max_event_bytes, args)


def _cmd_runs_cancel(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.cli_lookup import find_run
    from orchestrator.db import runs

    with db.transaction() as conn:
        run = find_run(conn, args.run_id)
        changed = runs.cancel(conn, [run.id], reason=args.reason, children=args.children)
    mine = next((c for c in changed if c.id == run.id), None)
    status = mine.status if mine is not None else run.status
    children = sum(c.id != run.id for c in changed)
    if args.json:
        print(json.dumps({"id": run.id, "status": status, "children_cancelled": children}))
        return 0
    if mine is None:
        print(f"{run.id}: already {status}; nothing to cancel")
    elif mine.was == "running":
        print(f"{run.id}: cancelled; its execution stops")
    else:
        print(f"{run.id}: cancelled")
    if children:
        print(f"{children} invoked run(s) cancelled with it")
    return 0


def _cmd_recovery(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator import cli_recovery

    return cli_recovery.run(db, cfg, args)


def _cmd_runs_show(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.cli_lookup import find_run
    from orchestrator.db import steps

    with db.transaction() as conn:
        run = find_run(conn, args.run_id)
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
        "retries",
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
    for key, value in run.state.items():  # what it published with ctx.set_state
        print(f"{'state':<12} {key} = {_short(json.dumps(value))}")
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
