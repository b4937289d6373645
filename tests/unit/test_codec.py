from __future__ import annotations

import math

import pytest

from orchestrator import codec
from orchestrator.errors import PayloadError, PayloadTooLargeError


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({1, 2}, "set"),
        ({"a": object()}, "object at $.a"),
        ({1: "x"}, "int key"),
        ([1, b"x"], "bytes at $[1]"),
    ],
)
def test_encode__non_json_names_the_type_and_place(value: object, fragment: str) -> None:
    with pytest.raises(PayloadError, match="not JSON") as info:
        codec.encode(value, what="step 'charge' result")
    assert fragment in str(info.value)
    assert "step 'charge' result" in str(info.value)


def test_encode__nan_rejected() -> None:
    with pytest.raises(PayloadError, match="NaN"):
        codec.encode({"x": math.nan}, what="v")


def test_encode__nul_character_rejected() -> None:
    with pytest.raises(PayloadError, match="NUL"):
        codec.encode({"x": "a\x00b"}, what="v")


def test_encode__size_limit_is_bytes_not_characters() -> None:
    codec.encode("é" * 10, what="v", limit=22)
    with pytest.raises(PayloadTooLargeError, match="over the 21-byte limit"):
        codec.encode("é" * 10, what="v", limit=21)


def test_roundtrip__returns_what_a_replay_would_read() -> None:
    text, value = codec.roundtrip({"t": (1, 2), "n": None, "s": "ü"}, what="v")
    assert value == {"t": [1, 2], "n": None, "s": "ü"}
    assert codec.decode(text) == value


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("order-1", True),
        ("", False),
        ("x" * 11, False),
        ("a\x00b", False),
        ("\ud800", False),
        (7, False),
        ("ü" * 10, True),
    ],
)
def test_storable_text__names_and_ids_postgres_text_can_hold(value: object, ok: bool) -> None:
    assert codec.storable_text(value, 10) is ok


class _Obj:
    pass


@pytest.mark.parametrize(
    "value",
    [
        None,
        "s",
        1,
        1.5,
        True,
        [1, ("a", {"b": None})],
        {"a": [{"b": {"c": [1, 2, 3]}}]},
        {1: "int key"},
        {"a": [{"b": {2: 1}}]},
        [1, {1, 2}],
        {"a": b"bytes"},
        {"a": [_Obj()]},
        ({"a": 1}, [[[]]]),
    ],
)
def test_plain__agrees_with_the_walk_that_names_the_path(value: object) -> None:
    assert codec._plain(value) == (codec._find_bad(value, "$") is None)
