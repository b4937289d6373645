"""Inngest signing keys: request and response signatures, and the hashed key of a bearer token.

What the official SDKs do (inngest-js 3.x `helpers/net.ts` and `helpers/strings.ts`, the Python
SDK 0.5 `_internal/net.py` and `_internal/transforms.py`), which this module reproduces:

- A signing key reads `signkey-<env>-<hex>`. The HMAC key is the text after that prefix,
  *as text* (its UTF-8 bytes), not the bytes the hex stands for.
- `X-Inngest-Signature: t=<unix seconds>&s=<hex>`, where `s` is HMAC-SHA256 over the body
  followed by the decimal text of `t`.
- A response is signed over its raw bytes. A *request* is verified by the SDKs over the JSON
  Canonicalization Scheme (RFC 8785) form of its body (the JS SDK parses the body and
  canonicalises it; the Python SDK does the same with the `jcs` package), so a request we send
  is best sent as `canonical_json(payload)`: then its raw bytes and their canonical form agree.
- The JS SDK refuses a signature whose `t` is more than five minutes from its clock, either
  way; `verify` does the same with `max_age`.
- When an SDK calls the server (sync, `POST /fn/register`), it sends no signature but
  `Authorization: Bearer <hashed key>`: SHA-256 of the bytes the hex after the prefix stands
  for, hex-encoded; the JS SDK keeps the `signkey-<env>-` prefix in front, the Python SDK
  sends the bare hash. `verify_bearer` accepts both.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
import urllib.parse
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from orchestrator.errors import SignatureError

_PREFIX = re.compile(r"^signkey-\w+-", re.ASCII)
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_JSON_ESCAPES["\t"] = "\\t"


def strip_prefix(key: str) -> str:
    """The key without its `signkey-<env>-` prefix (unchanged when it has none)."""
    return _PREFIX.sub("", key, count=1)


def normalize_key(key: str) -> bytes:
    """The HMAC key the SDKs derive from a signing key: the text after the prefix, UTF-8."""
    return strip_prefix(key).encode("utf-8")


def check_key(key: str) -> None:
    """Raise ValueError unless `key` is a signing key the SDKs can use: `signkey-<env>-<hex>`
    or bare hex, an even number of hex digits (the SDKs hash the bytes the hex stands for)."""
    body = strip_prefix(key)
    if not body or not _HEX.match(body) or len(body) % 2:
        raise ValueError(
            "a signing key reads signkey-<env>-<hex> (an even number of hex digits), "
            "e.g. signkey-prod-0123abcd…"
        )


def hash_key(key: str) -> str:
    """The hashed key an SDK sends as its bearer token, without any prefix: hex SHA-256 of
    the bytes the key's hex stands for. Raises ValueError for a key `check_key` refuses."""
    check_key(key)
    return hashlib.sha256(bytes.fromhex(strip_prefix(key))).hexdigest()


def sign(body: bytes, key: str, at: int | None = None) -> str:
    """The `X-Inngest-Signature` value for `body` signed with `key` at unix second `at`
    (now when None): `t=<at>&s=<hex HMAC-SHA256 of body + str(at)>`."""
    at = round(time.time()) if at is None else at
    return f"t={at}&s={_mac(body, key, str(at))}"


def verify(
    body: bytes,
    header: str | None,
    keys: Sequence[str],
    *,
    now: float | None = None,
    max_age: float = 300,
) -> None:
    """Check an `X-Inngest-Signature` header against `body` and each of `keys` in turn (the
    signing key, then its fallback). Raise SignatureError when the header is missing or
    malformed, its timestamp is more than `max_age` seconds from `now` either way (a replay,
    or a clock far off), no key is configured, or no key produced the signature."""
    at, signature = _parse_header(header)
    now = time.time() if now is None else now
    if abs(now - int(at)) > max_age:
        raise SignatureError(
            f"X-Inngest-Signature is too old: signed at {at}, {now - int(at):.0f}s before the "
            f"time here, more than the {max_age:g}s allowed; a replayed request, or clocks "
            "out of step"
        )
    if not keys:
        raise SignatureError("no signing key is configured to verify X-Inngest-Signature")
    if not any(hmac.compare_digest(_mac(body, key, at), signature) for key in keys):
        raise SignatureError("X-Inngest-Signature does not match the body for any signing key")


def verify_bearer(header: str | None, keys: Sequence[str]) -> None:
    """Check an `Authorization: Bearer <hashed key>` header (as the SDKs send on a sync)
    against `keys`; raise SignatureError unless it names the hash of one of them."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = strip_prefix(token.strip()).lower()
    if scheme.lower() != "bearer" or not _DIGEST.match(token):
        raise SignatureError(
            "the request has no Authorization: Bearer <hashed signing key> header; set "
            "INNGEST_SIGNING_KEY in the app to the daemon's inngest_signing_key"
        )
    if not any(hmac.compare_digest(hash_key(key), token) for key in keys):
        raise SignatureError("the bearer token is not the hash of a configured signing key")


def canonical_json(value: Any) -> bytes:
    """`value` as RFC 8785 canonical JSON (keys sorted by UTF-16 code units, no whitespace,
    numbers as JavaScript prints them), UTF-8: the form the SDKs verify a request's signature
    over. Raises ValueError for NaN, infinities, non-string keys and other non-JSON values."""
    parts: list[str] = []
    _emit(value, parts)
    return "".join(parts).encode("utf-8")


def _mac(body: bytes, key: str, at: str) -> str:
    mac = hmac.new(normalize_key(key), body, hashlib.sha256)
    mac.update(at.encode("ascii"))
    return mac.hexdigest()


def _parse_header(header: str | None) -> tuple[str, str]:
    if not header:
        raise SignatureError("the request has no X-Inngest-Signature header")
    fields = urllib.parse.parse_qs(header.strip(), keep_blank_values=True)
    at, signature = fields.get("t", [""])[0], fields.get("s", [""])[0]
    if not at.isascii() or not at.isdigit() or not _HEX.match(signature):
        raise SignatureError(
            "X-Inngest-Signature is malformed: expected t=<unix seconds>&s=<hex>, "
            f"got {header[:100]!r}"
        )
    return at, signature


def _emit(value: Any, parts: list[str]) -> None:
    if value is None or isinstance(value, bool):
        parts.append({None: "null", True: "true", False: "false"}[value])
    elif isinstance(value, int | float):
        parts.append(_number(value))
    elif isinstance(value, str):
        parts.append(_string(value))
    elif isinstance(value, list | tuple):
        _emit_array(value, parts)
    elif isinstance(value, dict):
        _emit_object(value, parts)
    else:
        raise ValueError(f"{type(value).__name__} is not JSON")


def _emit_array(value: Sequence[Any], parts: list[str]) -> None:
    parts.append("[")
    for i, item in enumerate(value):
        parts.append("," if i else "")
        _emit(item, parts)
    parts.append("]")


def _emit_object(value: dict[Any, Any], parts: list[str]) -> None:
    if not all(isinstance(k, str) for k in value):
        raise ValueError("a JSON object's keys must be strings")
    parts.append("{")
    for i, k in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
        parts.append(("," if i else "") + _string(k) + ":")
        _emit(value[k], parts)
    parts.append("}")


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError("a JSON string cannot hold a lone surrogate")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _number(value: float) -> str:
    """A number as JavaScript's Number.prototype.toString prints the double nearest it."""
    if isinstance(value, int) and abs(value) < 2**53:
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{number} is not a JSON number")
    if number == 0:
        return "0"
    _sign, digits, exponent = Decimal(repr(abs(number))).normalize().as_tuple()
    text = "".join(map(str, digits))
    return ("-" if number < 0 else "") + _es_digits(text, len(text) + int(exponent))


def _es_digits(digits: str, n: int) -> str:
    """ECMA-262 Number::toString for the shortest digits `digits` and decimal point at `n`."""
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    exponent = f"e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return (digits[0] + ("." + digits[1:] if k > 1 else "")) + exponent
