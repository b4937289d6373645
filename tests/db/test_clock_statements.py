"""No statement reads the database's clock but through the `now` parameter (db/clock.py).

Every string literal of the engine's source and of the migrations is read (plain strings,
the pieces of f-strings, implicit concatenations; docstrings are prose and left out), the
three forms that take the parameter are removed, and whatever still reads the clock must be
on the allow-list below, with the reason a parameter cannot reach it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from orchestrator.db import clock

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("orchestrator", "migrations")

READS_THE_CLOCK = re.compile(
    r"\bnow\s*\(|\bcurrent_timestamp\b|\bclock_timestamp\s*\(|\bstatement_timestamp\s*\("
    r"|\btransaction_timestamp\s*\(|\blocaltimestamp\b|\blocaltime\b|\bcurrent_time\b"
    r"|\bcurrent_date\b|\btimeofday\s*\(",
    re.IGNORECASE,
)
TAKES_THE_PARAMETER = (clock.SQL, clock.SQL_BINARY, clock.SQL_TEXT)


@dataclass(frozen=True)
class Allowed:
    files: str  # a glob of paths relative to the repository
    context: str  # a regex the text around the clock reading must match
    why: str


ALLOWED = (
    # Column defaults cannot take a parameter. The engine's INSERTs name these columns and
    # pass the time (db/clock.py); a row inserted by hand gets the database's time.
    Allowed(
        "migrations/versions/*.py",
        r"timestamptz NOT NULL DEFAULT now\(\)",
        "column default: for rows inserted without the column (by hand)",
    ),
    Allowed(
        "orchestrator/db/schema.py",
        r"^now\(\)$",
        "the SQLAlchemy mirror of those defaults (server_default), compared with the migrations",
    ),
    # A trigger cannot take a parameter. The trigger that wakes the run of a signal read
    # now() in migration 0013; migration 0014 makes it read the signal's `sent_at` (which
    # the engine passes), and its downgrade puts the old body back.
    Allowed(
        "migrations/versions/0013_signals_state.py",
        r"SET status = 'queued', due_at = now\(\), updated_at = now\(\)",
        "trigger waking the run of a signal, as first written (replaced by 0014)",
    ),
    Allowed(
        "migrations/versions/0014_signal_time.py",
        r"^now\(\)$",
        "the downgrade of 0014, back to the trigger of 0013",
    ),
    # Operator views, read by people at the real time; the engine never reads them.
    Allowed(
        "migrations/versions/00[01][58]_*.py",
        r"l\.tat > now\(\) \+ make_interval|r\.due_at <= now\(\)",
        "operator view run_queue (held back by a rate limit, due)",
    ),
    Allowed(
        "migrations/versions/00[01][26]_*.py",
        r"now\(\) - w\.created_at AS waiting_for",
        "operator view of waits (how long each has waited)",
    ),
)


@dataclass(frozen=True)
class Reading:
    path: str
    line: int
    what: str
    context: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what} in ...{self.context}..."


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string literals that stand alone as statements (docstrings, prose)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    prose = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
    ]


def _readings(path: Path, relative: str) -> list[Reading]:
    found = []
    for line, literal in _literals(path):
        text = literal
        for form in TAKES_THE_PARAMETER:
            text = text.replace(form, "<now>")
        for match in READS_THE_CLOCK.finditer(text):
            at = line + text.count("\n", 0, match.start())
            context = text[max(0, match.start() - 80) : match.end() + 60]
            if not _allowed(relative, context, text):
                found.append(Reading(relative, at, match.group(), " ".join(context.split())))
    return found


def _allowed(relative: str, context: str, text: str) -> bool:
    for entry in ALLOWED:
        if fnmatch(relative, entry.files) and (
            re.search(entry.context, context) or re.search(entry.context, text)
        ):
            return True
    return False


def clock_readings(root: Path) -> list[Reading]:
    """Every reading of the clock in the source under `root` that is not on the allow-list."""
    found = []
    for top in SOURCES:
        for path in sorted((root / top).rglob("*.py")):
            found += _readings(path, path.relative_to(root).as_posix())
    return sorted(found, key=lambda r: (r.path, r.line))


def test_statements__read_the_clock_only_through_the_now_parameter() -> None:
    found = clock_readings(ROOT)
    assert not found, "statements reading the clock without the `now` parameter:\n" + "\n".join(
        map(str, found)
    )


def test_statements__the_scan_sees_a_clock_read_in_any_form(tmp_path: Path) -> None:
    module = tmp_path / "orchestrator" / "db" / "made_up.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        '"""A docstring may say now() freely."""\n'
        "TABLE = 'x'\n"
        'A = "UPDATE t SET at = coalesce(%(now)s::timestamptz, now())"\n'
        'B = f"SELECT 1 FROM {TABLE} WHERE due <= now() "\n'
        'C = ("SELECT clock_timestamp(), "\n'
        '     "current_timestamp")\n'
        "D = '''\n    SELECT\n      statement_timestamp()'''\n"
    )
    found = clock_readings(tmp_path)
    assert [(r.path, r.line, r.what) for r in found] == [
        ("orchestrator/db/made_up.py", 4, "now("),
        ("orchestrator/db/made_up.py", 5, "clock_timestamp("),
        ("orchestrator/db/made_up.py", 5, "current_timestamp"),
        ("orchestrator/db/made_up.py", 9, "statement_timestamp("),
    ], found


def test_allow_list__every_entry_is_used() -> None:
    used = set()
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for _, text in _literals(path):
                for match in READS_THE_CLOCK.finditer(text):
                    context = text[max(0, match.start() - 80) : match.end() + 60]
                    used |= {
                        e.why
                        for e in ALLOWED
                        if fnmatch(relative, e.files)
                        and (re.search(e.context, context) or re.search(e.context, text))
                    }
    assert used == {e.why for e in ALLOWED}
