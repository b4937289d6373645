"""JSON encoding of everything stored: strict, size-limited, never pickle.

`encode` turns a Python value into the exact JSON text stored in a `jsonb` column, refusing what
JSON or `jsonb` cannot hold (sets, objects, NaN, NUL characters) with a message that says what to
return instead. `roundtrip` gives back what a replay would read, so a step returns the same value
whether it just ran or was replayed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from orchestrator.errors import InvalidEventError, PayloadError, PayloadTooLargeError

_JSON_SCALARS = (str, int, float, bool, type(None))
# A real NUL escape is preceded by an even number of backslashes; "\\u0000" (an escaped
# backslash followed by the text u0000) is six harmless characters.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _find_bad(value: Any, path: str) -> tuple[str, str] | None:
    """Return (path, type name) of the first value JSON cannot represent faithfully."""
    if isinstance(value, _JSON_SCALARS):
        return None
    children: list[tuple[Any, str]]
    if isinstance(value, list | tuple):  # a tuple is stored (and replayed) as a list
        children = [(item, f"{path}[{i}]") for i, item in enumerate(value)]
    elif isinstance(value, dict):
        bad_key = next((k for k in value if not isinstance(k, str)), None)
        if bad_key is not None:
            return (f"{path} key {bad_key!r}", f"{type(bad_key).__name__} key")
        children = [(item, f"{path}.{key}") for key, item in value.items()]
    else:
        return (path, type(value).__name__)
    for item, item_path in children:
        bad = _find_bad(item, item_path)
        if bad:
            return bad
    return None


def _plain(value: Any) -> bool:
    """True if `_find_bad` finds nothing in `value`: the same walk, without naming each
    value's path (that costs more than the encoding, and only an error needs it)."""
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) for k in value) and all(map(_plain, value.values()))
    return False


def encode(value: Any, *, what: str, limit: int | None = None) -> str:
    """Encode `value` as JSON text for a `jsonb` column.

    `what` names the value in errors ("step 'charge' result"); `limit` is a byte cap.
    """
    bad = None if _plain(value) else _find_bad(value, "$")
    if bad is not None:
        where, type_name = bad
        suffix = "" if where == "$" else f" at {where}"
        raise PayloadError(
            f"{what} contains a {type_name}{suffix}, which is not JSON; "
            "return only dicts with string keys, lists, strings, numbers, booleans and None"
        )
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError as exc:
        raise PayloadError(f"{what} contains NaN or Infinity, which JSON cannot hold") from exc
    if "\\u0000" in text and _NUL_ESCAPE.search(text):  # the search only where one may be
        raise PayloadError(
            f"{what} contains a NUL character (\\u0000), which Postgres jsonb rejects"
        )
    try:  # ASCII text (known without reading it) is as many bytes as characters
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise PayloadError(
            f"{what} contains a lone surrogate {exc.object[exc.start]!r}, which is not valid "
            "Unicode and cannot be stored as JSON; decode bytes with errors='replace' instead"
        ) from None
    if limit is not None and size > limit:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes, over the {limit}-byte limit; store large data "
            "elsewhere and return a reference, or raise the limit in the config"
        )
    return text


def roundtrip(value: Any, *, what: str, limit: int | None = None) -> tuple[str, Any]:
    """Encode `value` and return (text, the value as a replay would decode it)."""
    text = encode(value, what=what, limit=limit)
    return text, json.loads(text)


def storable_text(value: Any, max_length: int) -> bool:
    """A string of 1-`max_length` characters that Postgres `text` can hold: no NUL, valid
    UTF-8 (no lone surrogates). For names and ids, which are stored as text, not JSON."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_length or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def validate_event(name: Any, data: Any, event_id: Any, limit: int) -> str:
    """Check an event before it is written; returns its data as JSON text."""
    if not storable_text(name, 256):
        raise InvalidEventError(
            f"event name must be a 1-256 character string without NUL characters or lone "
            f"surrogates, got {name!r}"
        )
    if event_id is not None and not storable_text(event_id, 256):
        raise InvalidEventError(
            f"event id must be a 1-256 character string without NUL characters or lone "
            f"surrogates, got {event_id!r}"
        )
    if not isinstance(data, dict):
        raise InvalidEventError(
            f"event data must be a JSON object (a dict), got {type(data).__name__}"
        )
    return encode(data, what=f"event '{name}' data", limit=limit)
