"""How a user's exception becomes the JSON recorded in `runs.error` and `steps.error`.

User code can raise anything: an exception whose `__str__` or `__repr__` raises, a message of
many megabytes, NUL characters or lone surrogates, a cycle of causes, a `code` attribute that
is a method, a class defined inside a function that nothing else can import. Recording the
failure must never fail in turn: an error while rendering the error would escape the step's
bookkeeping, name the wrong exception type and look like a crash of the worker. So every
piece of the record is taken defensively, cut to a size a row and a log line can hold, and
replaced by a text saying it could not be rendered when it cannot. Only the type's name is
recorded, never the class: nothing reading an error ever imports anything.
"""

from __future__ import annotations

import traceback
from typing import Any

MAX_MESSAGE = 64 * 1024  # characters of a message kept in the record
MAX_TRACEBACK = 8000  # characters of the traceback kept (its end: the frames nearest the raise)
MAX_TRACEBACK_CHUNK = 2000  # characters of one traceback line (a huge message's line, say)
MAX_LOG_LINE = 300  # characters of the first line that a log line carries


def error_dict(exc: BaseException) -> dict[str, Any]:
    """The JSON shape of an error in `runs.error` and `steps.error`; never raises."""
    error: dict[str, Any] = {
        "type": type_name(exc),
        "message": message(exc),
        "code": _scalar(_attribute(exc, "code")),
        "traceback": _traceback(exc),
    }
    step = _attribute(exc, "step_id")
    if isinstance(step, str):  # the step it is about (a non-determinism error's)
        error["step"] = storable(step)
    return error


def type_name(exc: BaseException) -> str:
    """The name of the exception's class, as the user wrote it."""
    name = getattr(type(exc), "__name__", None)
    return storable(name) if isinstance(name, str) and name else "Exception"


def message(exc: BaseException) -> str:
    """`str(exc)`, made storable and cut to MAX_MESSAGE characters; a text saying it could not
    be rendered when `str()` raises."""
    try:
        text = str(exc)
    except Exception as err:
        return (
            f"<the message of this {type_name(exc)} could not be rendered: its __str__ raised "
            f"{type_name(err)}>"
        )
    return clip(storable(text), MAX_MESSAGE)


def first_line(exc: BaseException) -> str:
    """The first line of the message, for a log line (the type's name when it is empty)."""
    return summary(message(exc), type_name(exc))


def summary(text: str, fallback: str) -> str:
    """The first line of a recorded message, cut for a log line; `fallback` if it is empty."""
    lines = text.strip().splitlines()
    return clip(lines[0], MAX_LOG_LINE) if lines else fallback


def storable(text: str) -> str:
    """jsonb refuses NUL and lone surrogates; an error message carrying them (parsing binary
    data, say) must still be recorded, so show them escaped instead of failing the write."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [cut: {len(text)} characters in all]"


def _traceback(exc: BaseException) -> str:
    try:
        chunks = traceback.TracebackException.from_exception(exc).format()
        text = "".join(clip(chunk, MAX_TRACEBACK_CHUNK) for chunk in chunks)
    except Exception as err:
        return f"<the traceback could not be rendered: {type_name(err)}>"
    return storable(text[-MAX_TRACEBACK:])


def _attribute(exc: BaseException, name: str) -> Any:
    """An attribute of a user's exception; a property that raises counts as absent."""
    try:
        return getattr(exc, name, None)
    except Exception:
        return None


def _scalar(value: Any) -> str | int | None:
    """A `code` as recorded: a string or a whole number; anything else (a method, an object)
    is left out rather than making the record unwritable."""
    if isinstance(value, str):
        return clip(storable(value), 200)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
