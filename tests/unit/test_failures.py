"""Rendering a user's exception for the record: never raises, whatever the exception."""

from __future__ import annotations

import json

import pytest

from orchestrator.engine import failures

pytestmark = pytest.mark.timeout(30)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


class NotAString(Exception):
    def __str__(self) -> str:
        return 5  # type: ignore[return-value]  # noqa: PLE0307 (the hostile case under test)


class RaisingCode(Exception):
    @property
    def code(self) -> str:
        raise RuntimeError("no code")


def test_message__broken_str_says_it_could_not_be_rendered() -> None:
    assert failures.message(BrokenStr()) == (
        "<the message of this BrokenStr could not be rendered: its __str__ raised RuntimeError>"
    )
    assert "could not be rendered" in failures.message(NotAString())


def test_message__cut_to_the_limit_with_its_length() -> None:
    text = failures.message(ValueError("z" * (failures.MAX_MESSAGE + 10)))
    assert (
        text
        == "z" * failures.MAX_MESSAGE + f"… [cut: {failures.MAX_MESSAGE + 10} characters in all]"
    )


def test_error_dict__storable_json_for_hostile_parts() -> None:
    error = failures.error_dict(RaisingCode("a\x00b \udcff"))
    assert error["type"] == "RaisingCode" and error["code"] is None
    assert error["message"] == "a\\x00b \\udcff"
    json.dumps(error).encode("utf-8")  # no lone surrogate left: this would raise


def test_error_dict__code_kept_only_as_text_or_a_whole_number() -> None:
    def with_code(code: object) -> object:
        exc = ValueError("x")
        exc.code = code  # type: ignore[attr-defined]
        return failures.error_dict(exc)["code"]

    assert [with_code(c) for c in ("E42", 404, True, 1.5, print)] == ["E42", 404, None, None, None]


def test_traceback__a_huge_message_line_does_not_crowd_out_the_frames() -> None:
    try:
        raise ValueError("m" * 100_000)
    except ValueError as exc:
        text = failures.error_dict(exc)["traceback"]
    assert len(text) <= failures.MAX_TRACEBACK
    assert "test_traceback__a_huge_message_line_does_not_crowd_out_the_frames" in text


def test_first_line__the_first_line_cut_for_a_log_line() -> None:
    assert failures.first_line(ValueError("the card was declined\ncard: tok_1")) == (
        "the card was declined"
    )
    assert failures.first_line(ValueError("")) == "ValueError"
    assert len(failures.first_line(ValueError("q" * 1000))) < 400
