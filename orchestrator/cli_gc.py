"""`orchestrator gc`: one retention pass now (orchestrator/runtime/retention.py).

    orchestrator gc [--completed S] [--failed S] [--events S] [--dry-run]

On a terminal (orchestrator/progress.py) the pass first counts what it will delete, with a
spinner (one read, the same as `--dry-run`), then draws a bar of the runs, events and daemon
rows deleted so far out of that count; without a terminal or with `--json` it neither counts
nor draws. `--dry-run` is that one count, with a spinner on a terminal. The pass deletes in
batches, each its own transaction, so Ctrl-C stops it after the batch in progress: what was
deleted is printed as usual, and the command exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from orchestrator.config import Config

if TYPE_CHECKING:  # imported when the command runs, so that `--help` stays fast
    from orchestrator.runtime.retention import PassResult, Policy

INTERRUPTED_EXIT = 130  # as a shell reports a command stopped by Ctrl-C


def run(db: Any, cfg: Config, args: argparse.Namespace) -> int:
    from orchestrator.progress import progress, shown
    from orchestrator.runtime.retention import Cleaner, Policy

    policy = Policy.from_config(cfg)
    if args.dry_run:
        with progress(None, "counting old rows", enabled=shown(args.json), interruptible=False):
            result = Cleaner(db.url, policy).backlog()
        stopped = False
    else:
        result, stopped = _pass(db.url, policy, shown(args.json))
    _print(args, cfg, result, stopped)
    if result.error is not None:
        from orchestrator import log

        reason = log.scrub_secrets(result.error)
        print(f"error: database: {reason} (the pass stopped there)", file=sys.stderr)
        return 1
    if stopped:
        print(
            f"interrupted: stopped after {result.batches} batches; the rows counted above were "
            "deleted, the rest are left for the next pass",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    return 0


def _pass(url: str, policy: Policy, shown: bool) -> tuple[PassResult, bool]:
    """One pass, with a bar when `shown`; and whether Ctrl-C stopped it."""
    from orchestrator.progress import progress
    from orchestrator.runtime.retention import Cleaner

    total = None
    if shown:  # only a terminal pays for the count
        with progress(None, "counting old rows", enabled=True, interruptible=False):
            total = _walked(Cleaner(url, policy).backlog())
    with progress(total, "deleting old rows", enabled=shown) as bar:
        cleaner = Cleaner(
            url,
            policy,
            keep_going=lambda: not bar.stopping,
            on_batch=lambda result: bar.advance(_walked(result) - bar.completed),
        )
        result = cleaner.run_pass()
        return result, bar.stopping and result.interrupted and result.error is None


def _walked(result: PassResult) -> int:
    """The rows a bar counts: runs, events and daemon rows (steps and waits go with runs)."""
    return result.completed + result.failed + result.events + result.daemons


def _print(args: argparse.Namespace, cfg: Config, result: PassResult, stopped: bool) -> None:
    from orchestrator.cli import _print_table
    from orchestrator.runtime.retention import DAEMON_ROWS_KEPT

    ages = {
        "completed": cfg.retain_completed,
        "failed": cfg.retain_failed,
        "events": cfg.retain_events,
        "daemons": DAEMON_ROWS_KEPT,
    }
    if args.json:
        extra = {"interrupted": True} if stopped else {}
        print(json.dumps({"dry_run": args.dry_run, "retain": ages, **result.counts(), **extra}))
        return
    kept = ", ".join(f"{k} {_age(v)}" for k, v in ages.items())
    print(f"{'would delete' if args.dry_run else 'deleted'} (keeping {kept}):")
    _print_table(("ROWS", "COUNT"), [(k, f"{v:,}") for k, v in result.rows().items()])
    batches = "" if args.dry_run else f" in {result.batches} batches"
    print(f"took {result.seconds:.1f} s{batches}")


def _age(seconds: float) -> str:
    if not seconds:
        return "forever"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
