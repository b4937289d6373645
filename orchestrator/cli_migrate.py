"""`orchestrator migrate`: create or upgrade the schema (orchestrator/db/migrate.py).

On a terminal (orchestrator/progress.py) each migration gets a line on stderr as it is
applied (`applying 0016_trace_context … done (0.4 s)`) under a bar of N of M migrations;
without a terminal or with `--json` only the result is printed, as always. The migrations
run in one transaction, so they are never split into batches: Ctrl-C interrupts at once,
everything is rolled back, and the command says where the schema is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def run(db: Any, args: argparse.Namespace) -> int:
    from orchestrator.db import migrate
    from orchestrator.progress import progress, shown

    before = migrate.current_revision(db.engine)
    todo = migrate.pending(db.engine) if shown(args.json) else []  # names, for the bar only
    try:
        with progress(len(todo), "migrating", enabled=bool(todo), interruptible=False) as bar:
            migrate.upgrade(db.engine, on_step=_Steps(todo, bar).done)
    except KeyboardInterrupt:
        now_at = migrate.current_revision(db.engine) or "nothing"
        print(
            f"interrupted: the schema is at {now_at} (the migrations are applied in one "
            "transaction: all of them or none)",
            file=sys.stderr,
        )
        raise
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


class _Steps:
    """Says each migration as it is applied, and which one is next."""

    def __init__(self, names: list[str], bar: Any) -> None:
        self.names = names
        self.bar = bar
        self.began = time.monotonic()
        if names:
            bar.describe(f"applying {names[0]}")

    def done(self, revision: str) -> None:
        name = next((n for n in self.names if n.split("_")[0] == revision), revision)
        now = time.monotonic()
        self.bar.note(f"applying {name} … done ({now - self.began:.1f} s)")
        self.began = now
        self.bar.advance(1)
        left = self.names[self.bar.completed :]
        self.bar.describe(f"applying {left[0]}" if left else "migrated")
