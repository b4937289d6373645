"""CEL expressions: trigger filters, wait conditions, cancellation conditions.

Expressions are written in CEL (the Common Expression Language), over the triggering event
`event` and, where an incoming event is compared with it, `async`:

```python
event("order/created", if_="event.data.amount > 100")
ctx.step.wait_for_event("paid", event="payment/received",
                        if_="async.data.user == event.data.user", timeout=timedelta(hours=1))
```

They are compiled once, when a function is registered, so a typo fails at start-up with the
expression and the position of the error. An expression that fails while evaluating (a
missing field, a comparison of a string with a number) counts as false: the event does not
match.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import cel

from orchestrator.errors import ExpressionError

MAX_LENGTH = 4096


class Expression:
    """A compiled CEL expression that decides whether an event matches."""

    def __init__(self, source: str, program: cel.Program) -> None:
        self.source = source
        self._program = program

    def matches(self, variables: Mapping[str, Any]) -> bool:
        """True only if the expression evaluates to `true`; errors and non-booleans are false."""
        try:
            return self._program.execute(dict(variables)) is True
        except Exception:
            return False

    def value(self, variables: Mapping[str, Any]) -> Any:
        """What the expression evaluates to, or None if evaluating it fails."""
        try:
            return self._program.execute(dict(variables))
        except Exception:
            return None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str, *, where: str, allowed: tuple[str, ...]) -> Expression:
    """Compile `source`, naming `where` it was written in any error. `allowed` lists the
    variables it may use (`event`, `async`)."""
    return _compile(source, where, allowed)


@functools.lru_cache(maxsize=1024)
def _compile(source: str, where: str, allowed: tuple[str, ...]) -> Expression:
    if not isinstance(source, str) or not source.strip() or len(source) > MAX_LENGTH:
        raise ExpressionError(
            f"{where}: expression must be a non-empty string of at most {MAX_LENGTH} "
            f"characters, got {source!r}"
        )
    try:
        program = cel.compile(source)
    except Exception as exc:  # the library raises ValueError with the position and a caret
        raise ExpressionError(f"{where}: invalid CEL expression {source!r}: {exc}") from None
    unknown = sorted(set(program.variables()) - set(allowed))
    if unknown:
        raise ExpressionError(
            f"{where}: expression {source!r} uses unknown variable(s) {', '.join(unknown)}; "
            f"it may use {' and '.join(allowed)}"
        )
    return Expression(source, program)


def cached(source: str, allowed: tuple[str, ...]) -> Expression | None:
    """The compiled expression for a stored source text, or None if it no longer compiles
    (it was compiled when registered; a row edited by hand may not)."""
    try:
        return _compile(source, "stored expression", allowed)
    except ExpressionError:
        return None
