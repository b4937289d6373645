"""Logging: structlog, JSON when stderr is not a terminal, readable console otherwise.

Lines about a run carry `run_id`, `function_id` and `step`; logs carry ids and sizes, not
payloads. Data (event data, step outputs, error messages of user code) reaches a line only
through `payload()`, which gives nothing unless `log_payloads = true` and the level is debug.
Every line is scrubbed of the secrets registered with `hide()` (the database password), and
the lines of a database error that quote row values (DETAIL, CONTEXT, bound parameters) are
left out of logged exceptions unless payloads are logged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from orchestrator.redact import scrub

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
PAYLOAD_CHARS = 4096  # a logged payload is cut to this many characters


class _State:
    payloads = False
    secrets: frozenset[str] = frozenset()


def configure(fmt: str = "auto", level: str = "info", *, payloads: bool = False) -> None:
    """Set up structlog for this process. `payloads` (the `log_payloads` key) takes effect
    only at the debug level."""
    _State.payloads = payloads and level == "debug"
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            add_trace_ids,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        # one write per line: the daemon and its workers share stderr, and lines written in
        # pieces would interleave
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def add_trace_ids(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """`trace_id` and `span_id` (hex, as trace back ends show them) of the span current when
    the line is logged, if any: a run attempt's, a step's (runtime/tracing.py), the caller's."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event.setdefault("trace_id", format(span.trace_id, "032x"))
        event.setdefault("span_id", format(span.span_id, "016x"))
    return event


def get(name: str, **bound: Any) -> Any:
    """A bound structlog logger for one component."""
    return structlog.get_logger(name).bind(component=name, **bound)


def hide(*secrets: str) -> None:
    """Never show these strings (a database password): every log line, and every error the
    command line prints, is scrubbed of them."""
    _State.secrets = _State.secrets | {s for s in secrets if s}


def scrub_secrets(text: str) -> str:
    """`text` with the secrets registered by `hide()` masked."""
    return scrub(text, _State.secrets)


def payloads_enabled() -> bool:
    return _State.payloads


def payload(**fields: Any) -> dict[str, Any]:
    """Fields that carry data (event data, step outputs, error messages written by user code),
    to add to a log line: `log.info("run completed", **payload(output=text))`. Empty unless
    `log_payloads = true` and `log_level = "debug"`. Each value is logged as JSON text, cut to
    PAYLOAD_CHARS characters."""
    if not _State.payloads:
        return {}
    return {key: _payload_text(value) for key, value in fields.items()}


def _payload_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= PAYLOAD_CHARS:
        return text
    return f"{text[:PAYLOAD_CHARS]}… ({len(text)} characters in all)"


# A database error quotes the data it was about in these lines: the failing row or clashing
# key (DETAIL), the bad input (CONTEXT), the statement's parameters (SQLAlchemy).
_QUOTING = ("DETAIL:", "CONTEXT:", "[parameters:")
# ... and each such block ends at one of these, or at an empty line.
_BLOCK_ENDS = ("HINT:", "[SQL", "(Background", "Traceback", "The above", "During handling", "File ")


def without_row_values(text: str) -> str:
    """`text` (an error message, a traceback) without the lines of database errors that
    quote row values."""
    if not any(marker in text for marker in _QUOTING):
        return text
    kept: list[str] = []
    skipping = False
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(_QUOTING):
            label = stripped.split(":", 1)[0].lstrip("[")
            kept.append(f"{line[: len(line) - len(stripped)]}{label}: (not logged)")
            skipping = True
            continue
        if skipping and (not stripped or stripped.startswith(_BLOCK_ENDS) or _is_raise(stripped)):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def _is_raise(line: str) -> bool:
    """A traceback's last line, `package.module.SomeError: message`."""
    name = line.split(":", 1)[0]
    return " " not in name and name.rsplit(".", 1)[-1].endswith(("Error", "Exception", "Warning"))


def _redact(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if not isinstance(value, str):
            continue
        text = value
        if key in ("exception", "error") and not _State.payloads:
            text = without_row_values(text)
        event_dict[key] = scrub(text, _State.secrets) if _State.secrets else text
    return event_dict
