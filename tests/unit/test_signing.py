"""Inngest request signing, checked against the official Python SDK's own functions."""

from __future__ import annotations

import json

import jcs  # type: ignore[import-untyped]  # the Python SDK's canonicaliser, no stubs
import pytest
from inngest._internal import net, server_lib, transforms

from orchestrator.errors import SignatureError
from orchestrator.inngest import signing

KEY = "signkey-prod-568c4116828e6e8384a554153722df93022e5cd29a6c2d1b0444a19a807ff315"
FALLBACK = "signkey-prod-00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff"
BODY = b'{"ctx":{"attempt":0,"run_id":"r1"},"event":{"data":{"n":1},"name":"app/x"}}'
AT = 1_765_000_000


def test_normalize_key__strips_the_env_prefix_and_keeps_the_hex_as_text() -> None:
    assert signing.normalize_key(KEY) == KEY.removeprefix("signkey-prod-").encode()
    assert signing.normalize_key("signkey-branch_1-abcd") == b"abcd"
    assert signing.normalize_key("abcd") == b"abcd"


def test_sign__matches_the_python_sdk_response_signature() -> None:
    assert signing.sign(BODY, KEY, AT) == net.sign_response(BODY, KEY, AT)


def test_sign__of_canonical_json_matches_the_sdk_request_signature() -> None:
    payload = {"event": {"name": "app/x", "data": {"n": 1, "é": 2.5}}, "ctx": {"run_id": "r"}}
    body = signing.canonical_json(payload)
    assert signing.sign(body, KEY, AT) == net.sign_request(json.dumps(payload).encode(), KEY, AT)


def test_sign__is_verified_by_the_python_sdk() -> None:
    header = signing.sign(BODY, KEY, AT)
    used = net.validate_request_sig(
        body=BODY,
        headers={"x-inngest-signature": header},
        mode=server_lib.ServerKind.CLOUD,
        signing_key=FALLBACK,
        signing_key_fallback=KEY,
    )
    assert used == KEY


def test_verify__round_trip_and_fallback_key() -> None:
    header = signing.sign(BODY, FALLBACK, AT)
    signing.verify(BODY, header, [KEY, FALLBACK], now=AT + 10)
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify(BODY, header, [KEY], now=AT + 10)


def test_verify__refuses_a_changed_body() -> None:
    header = signing.sign(BODY, KEY, AT)
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify(BODY + b" ", header, [KEY], now=AT)


def test_verify__refuses_an_old_or_future_timestamp() -> None:
    header = signing.sign(BODY, KEY, AT)
    with pytest.raises(SignatureError, match="too old") as info:
        signing.verify(BODY, header, [KEY], now=AT + 301)
    assert info.value.code == "invalid_signature"
    with pytest.raises(SignatureError, match="too old"):
        signing.verify(BODY, header, [KEY], now=AT - 301)
    signing.verify(BODY, header, [KEY], now=AT + 3000, max_age=3600)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "t=abc&s=00",
        "s=00",
        "t=1765000000",
        "t=-5&s=00",
        "garbage",
        "t=1765000000&s=%C3%A9",
    ],
)
def test_verify__refuses_a_missing_or_malformed_header(header: str | None) -> None:
    with pytest.raises(SignatureError):
        signing.verify(BODY, header, [KEY], now=AT)


def test_verify__with_no_key_configured_refuses() -> None:
    with pytest.raises(SignatureError, match="no signing key"):
        signing.verify(BODY, signing.sign(BODY, KEY, AT), [], now=AT)


def test_hash_key__matches_both_sdks_bearer_forms() -> None:
    assert signing.hash_key(KEY) == transforms.hash_signing_key(KEY)
    signing.verify_bearer(f"Bearer {transforms.hash_signing_key(KEY)}", [KEY])  # Python SDK
    signing.verify_bearer(f"Bearer signkey-prod-{signing.hash_key(KEY)}", [FALLBACK, KEY])  # JS


@pytest.mark.parametrize(
    "header", [None, "Bearer undefined", f"Basic {'0' * 64}", "Bearer " + "0" * 64]
)
def test_verify_bearer__refuses_anything_else(header: str | None) -> None:
    with pytest.raises(SignatureError):
        signing.verify_bearer(header, [KEY])


@pytest.mark.parametrize("key", ["signkey-prod-", "signkey-prod-xyz", "abc", "signkey-prod-abc"])
def test_check_key__refuses_what_the_sdks_cannot_hash(key: str) -> None:
    with pytest.raises(ValueError, match="signkey-<env>-<hex>"):
        signing.check_key(key)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [True, False, None], "": "x"},
        {"\u20ac": 1, "\U0001f600": 2, "\ufb01": 3, "a\nb": '\x01\x1f"\\\u2028'},
        [0.1, 1.0, -0.0, 1e21, 1e-7, 123456789012345680000.0, 5e-324, 1.7976931348623157e308],
        [2**53 - 1, -(2**53) + 1, 100, 0, 1e16, 12.5, -3.75e-5, 4.35],
    ],
)
def test_canonical_json__agrees_with_rfc8785(value: object) -> None:
    assert signing.canonical_json(value) == jcs.canonicalize(value)


@pytest.mark.parametrize("value", [float("nan"), {1: 2}, {"a": {1, 2}}, "\ud800"])
def test_canonical_json__refuses_what_is_not_json(value: object) -> None:
    with pytest.raises(ValueError):
        signing.canonical_json(value)
