"""Finding the run a command-line argument names: a run id, or the first characters of one.

When nothing matches, the error says which case it is: no run has that id, the text is no
id at all, or the prefix is shared by several runs (which are listed, so the user can pick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.errors import RunNotFoundError

if TYPE_CHECKING:
    from orchestrator.db.runs import RunRow

SHOWN = 5  # candidates listed for an ambiguous prefix


def find_run(conn: Any, ref: str) -> RunRow:
    """The run whose id is `ref` or starts with it, else `RunNotFoundError` saying why."""
    from orchestrator.db import runs

    run = runs.get(conn, ref)
    if run is not None:
        return run
    raise RunNotFoundError(why_not_found(ref, runs.ids_with_prefix(conn, ref, SHOWN + 1)))


def why_not_found(ref: str, matching: list[str]) -> str:
    """The message for `ref`, given the ids of the runs it is a prefix of."""
    hexed = ref.lower().replace("-", "")
    if not hexed or any(c not in "0123456789abcdef" for c in hexed) or len(hexed) > 32:
        return (
            f"no run matches {ref!r}: a run id is a UUID (or its first hex digits); "
            "`orchestrator runs list` shows them"
        )
    if not matching:
        return f"no run matches {ref!r}: no run id starts with it (`orchestrator runs list`)"
    shown = ", ".join(matching[:SHOWN]) + (", …" if len(matching) > SHOWN else "")
    count = f"more than {SHOWN}" if len(matching) > SHOWN else str(len(matching))
    return (
        f"run id prefix {ref!r} is ambiguous: {count} runs start with it ({shown}); "
        "give more characters"
    )
