"""Keeping database passwords out of what the engine shows.

A URL is shown (in a log line, an error message, a `repr`) only through `redact_url`, which
masks its password: `postgresql://app:***@db:5432/app`. `url_secrets` gives the password as
written and as decoded, so that text the engine did not build itself (a driver's error
message, a traceback) can be scrubbed of it with `scrub`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

# scheme://user:password@...  The password runs to the first "@" (an "@" inside it must be
# percent-encoded); the user part stops at ":", "/", "?", "#" or "@".
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/?#@]*:)(?P<password>[^@]*)(?=@)")
# ...?password=secret&... (libpq accepts connection parameters in the query string)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&#]*)", re.IGNORECASE)


def url_password(url: str) -> str:
    """The password written in `url` (user info or `?password=`), as written; "" if none."""
    match = _USERINFO.match(url)
    if match and match.group("password"):
        return match.group("password")
    query = _QUERY_PASSWORD.search(url)
    return query.group("password") if query else ""


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***` (both in the user info and the query)."""
    masked = _USERINFO.sub(lambda m: m.group("head") + (MASK if m.group("password") else ""), url)
    return _QUERY_PASSWORD.sub(lambda m: m.group("head") + MASK, masked)


def url_secrets(url: str) -> list[str]:
    """The password of `url` as written and percent-decoded (each non-empty one once)."""
    found: list[str] = []
    for match in (_USERINFO.match(url), *_QUERY_PASSWORD.finditer(url)):
        if match is None or not match.group("password"):
            continue
        raw = match.group("password")
        for secret in (raw, unquote(raw)):
            if secret not in found:
                found.append(secret)
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret replaced by `***`, longest first (so a
    secret containing another is masked whole)."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text
