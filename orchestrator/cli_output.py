"""Output shared by the account and key commands (`ui-user`, `ui-token`, `event-keys`,
`apps`): one line or a table for people, JSON with `--json`."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any


def say(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    """Print `text`, or `data` as JSON with `--json`; exit status 0."""
    print(json.dumps(data) if args.json else text)
    return 0


def table(args: argparse.Namespace, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> int:
    """Print `rows` as a table of the columns `keys`, or as a JSON list with `--json`."""
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from orchestrator.cli import _print_table

    _print_table([k.upper() for k in keys], [[r[k] or "" for k in keys] for r in rows])
    return 0


def iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
