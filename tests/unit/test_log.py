"""Log lines: payloads only when asked for at the debug level, no row values from database
errors, and never a registered secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from orchestrator import log

pytestmark = pytest.mark.timeout(30)

SQLALCHEMY_ERROR = (
    '(psycopg.errors.CheckViolation) new row for relation "events" violates check '
    'constraint "events_data_is_object"\n'
    'DETAIL:  Failing row contains (e-1, 7, a/b, "tok_secret", 2026-01-01).\n'
    "CONTEXT:  JSON data, line 1: tok_secret\n"
    "unnamed portal parameter $1 = '...'\n"
    "[SQL: INSERT INTO orchestrator.events (id, name, data) VALUES (%(id)s, %(name)s, %(data)s)]\n"
    "[parameters: {'id': 'e-1', 'data': 'tok_secret'}]\n"
    "(Background on this error at: https://sqlalche.me/e/21/gkpj)"
)


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(log._State, "payloads", False)
    monkeypatch.setattr(log._State, "secrets", frozenset())

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    yield read
    structlog.reset_defaults()


def test_payload__nothing_unless_log_payloads_at_debug(lines: Any) -> None:
    log.configure("json", "info")
    assert log.payload(output='{"card": "tok"}') == {}
    log.configure("json", "info", payloads=True)
    assert log.payload(output="x") == {}
    log.configure("json", "debug")
    assert log.payload(output="x") == {}
    log.configure("json", "debug", payloads=True)
    assert log.payload(output='{"card": "tok"}', data={"n": 1}) == {
        "output": '{"card": "tok"}',
        "data": '{"n": 1}',
    }


def test_payload__long_values_are_cut(lines: Any) -> None:
    log.configure("json", "debug", payloads=True)
    text = log.payload(output="x" * (log.PAYLOAD_CHARS + 10))["output"]
    assert text.startswith("x" * log.PAYLOAD_CHARS)
    assert text.endswith(f"… ({log.PAYLOAD_CHARS + 10} characters in all)")


def test_logged_exception__database_error_lines_quoting_values_are_left_out(lines: Any) -> None:
    log.configure("json", "info")
    try:
        raise RuntimeError(SQLALCHEMY_ERROR)
    except RuntimeError:
        log.get("test").exception("scheduler pass failed")
    (line,) = lines()
    assert "tok_secret" not in json.dumps(line)
    text = line["exception"]
    assert "violates check constraint" in text
    assert "DETAIL: (not logged)" in text and "CONTEXT: (not logged)" in text
    assert "[SQL: INSERT INTO orchestrator.events" in text
    assert "(Background on this error" in text


def test_logged_exception__kept_whole_with_log_payloads_at_debug(lines: Any) -> None:
    log.configure("json", "debug", payloads=True)
    try:
        raise RuntimeError(SQLALCHEMY_ERROR)
    except RuntimeError:
        log.get("test").exception("scheduler pass failed")
    (line,) = lines()
    assert 'Failing row contains (e-1, 7, a/b, "tok_secret"' in line["exception"]


def test_without_row_values__plain_text_is_untouched() -> None:
    text = 'connection failed: connection to server at "127.0.0.1", port 1 failed'
    assert log.without_row_values(text) == text


def test_hidden_secrets__masked_in_every_line_even_with_payloads(lines: Any) -> None:
    log.configure("json", "debug", payloads=True)
    log.hide("Pw%zz", "")
    try:
        raise ValueError('invalid percent-encoded token: "Pw%zz"')
    except ValueError:
        log.get("test").exception("session connection lost", error="token Pw%zz", note="Pw%zz")
    (line,) = lines()
    assert "Pw%zz" not in json.dumps(line)
    assert line["error"] == "token ***" and line["note"] == "***"
    assert log.scrub_secrets("a Pw%zz b") == "a *** b"
