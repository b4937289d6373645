"""The exception tree.

Errors users raise (`NonRetriableError`, `RetryAfterError`) steer the retry policy; errors the
engine raises derive from `OrchestratorError` and carry a stable `code` that also appears in the
`error` column of `runs` and `steps`.

Control-flow signals thrown through user code (suspend, lease lost) derive from `BaseException`
so that a user's `except Exception:` cannot swallow them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def first_line(exc: BaseException) -> str:
    """An error's first line (a database error's detail follows on the next lines), or its
    type when it has no message."""
    try:
        text = str(exc).strip()
    except Exception:  # a user's exception may be hostile: see engine/failures.py
        text = ""
    return text.splitlines()[0] if text else type(exc).__name__


class OrchestratorError(Exception):
    """Base of every error the engine raises; `code` is stable and machine-readable."""

    code = "orchestrator_error"


class ConfigError(OrchestratorError):
    """A configuration key is missing, malformed or out of range."""

    code = "config_error"


class InvalidRoleNameError(ConfigError):
    """A database role name given to `orchestrator roles` is not a plain lowercase identifier,
    is reserved, or is used for two roles."""

    code = "invalid_role_name"


class UsageError(OrchestratorError):
    """The command line is malformed: an unknown option, a missing or invalid argument
    (`orchestrator` exits with status 2, as argparse does)."""

    code = "usage_error"

    def __init__(self, message: str, *, prog: str = "orchestrator", usage: str = "") -> None:
        super().__init__(message)
        self.prog = prog
        self.usage = usage


class AppLoadError(OrchestratorError):
    """`--app module:attr` could not be imported or is not an `Orchestrator`."""

    code = "app_load_error"


class RegistrationError(OrchestratorError):
    """A function was declared with invalid options (bad id, bad cron, duplicate id)."""

    code = "registration_error"


class ExpressionError(RegistrationError):
    """A CEL expression (a trigger's or wait's `if_`, a `match` path) does not compile; the
    message quotes it and points at the position of the error."""

    code = "invalid_expression"


class DatabaseNotReadyError(OrchestratorError):
    """The schema is missing or older than this code; run `orchestrator migrate`."""

    code = "database_not_ready"


class PayloadError(OrchestratorError):
    """A value is not valid JSON for storage (not JSON, NaN, NUL character)."""

    code = "payload_not_json"


class PayloadTooLargeError(PayloadError):
    """A value exceeds its configured size limit."""

    code = "payload_too_large"


class InvalidEventError(OrchestratorError):
    """An event's name or data is malformed."""

    code = "invalid_event"


class SignatureError(OrchestratorError):
    """A request or response signed with an Inngest signing key failed verification: the
    `X-Inngest-Signature` header is missing or malformed, its timestamp is too old (a
    replay), or no configured signing key produced its signature."""

    code = "invalid_signature"


class InvalidAppError(OrchestratorError):
    """An Inngest SDK's sync (its `POST /fn/register` payload) is malformed or refused as a
    whole: nothing of it was stored. The message names the field and what to send."""

    code = "invalid_app"


class AppSyncError(OrchestratorError):
    """Asking an Inngest SDK app to sync (a `PUT` to its serve URL) failed: it could not be
    reached, answered an error, or its sync did not register with us."""

    code = "app_sync_failed"


class SdkResponseError(OrchestratorError):
    """An Inngest SDK app answered a call request with something that is not its protocol
    (a malformed body, an unknown opcode, a response over the size limit). With
    `non_retriable`, no retry could help (an op we do not support): the run fails at once."""

    code = "sdk_bad_response"

    def __init__(self, message: str, *, non_retriable: bool = False) -> None:
        super().__init__(message)
        self.non_retriable = non_retriable  # read by the retry policy (engine/retry.py)


class EventKeyError(OrchestratorError):
    """`POST /e/{key}` of the Inngest event API with a key that is unknown or revoked."""

    code = "invalid_event_key"


class RunNotFoundError(OrchestratorError):
    """No run with the given id exists."""

    code = "run_not_found"


class RunStateError(OrchestratorError):
    """The run is not in a state the operation applies to (resuming a completed run, say)."""

    code = "invalid_run_state"


class RunFinishedError(RunStateError):
    """A signal was sent to a run that has finished: nothing will ever consume it."""

    code = "run_finished"


class InvalidSignalError(OrchestratorError):
    """A signal's name or data is malformed (empty or overlong name, data not a dict)."""

    code = "invalid_signal"


class InvalidStateError(OrchestratorError):
    """`ctx.set_state` was given a key that is not a 1-200 character string."""

    code = "invalid_state"


class StateTooLargeError(PayloadTooLargeError):
    """`ctx.set_state` would make the run's state object larger than its limit."""

    code = "state_too_large"


class StepNotFoundError(OrchestratorError):
    """A fork names a step the run did not record."""

    code = "step_not_found"


class UnknownFunctionError(OrchestratorError):
    """A run names a function no daemon ever registered (recorded in `runs.error`)."""

    code = "unknown_function"


class FunctionInUseError(OrchestratorError):
    """A function cannot be removed from the registry: a live daemon serves it, or it has
    unfinished runs (`orchestrator functions remove`)."""

    code = "function_in_use"


class NonDeterminismError(OrchestratorError):
    """A replay met recorded steps that the current code cannot reconcile (`step_id` names
    the step where it noticed)."""

    code = "non_determinism"

    def __init__(self, message: str, *, step_id: str | None = None) -> None:
        super().__init__(message)
        self.step_id = step_id


class NestedStepError(OrchestratorError):
    """A step (`ctx.step.run`, `sleep`, `wait_for_event`, `invoke`, `send_event`, `parallel`)
    was called inside the body of another step. A step body runs once and is then replayed
    from its recorded result, so a step inside it would vanish on replay; the run fails at
    once instead. Call the helper directly, or make it a step of its own."""

    code = "nested_step"
    non_retriable = True

    def __init__(self, message: str, *, step_id: str) -> None:
        super().__init__(message)
        self.step_id = step_id  # the step in whose body it was called


class ConcurrentStepError(NestedStepError):
    """In an async function, a step was called from another task (`asyncio.gather`,
    `create_task`) while a step body ran: the order of the two would depend on timing, and a
    replay could see another. Await steps one after another, or use `ctx.step.parallel`."""

    code = "concurrent_step"


class AsyncUsageError(OrchestratorError):
    """Sync and async code were mixed in a way that cannot run: an `async def` step body in
    a plain `def` function, or a plain function that returned a coroutine. The run fails at
    once (retrying cannot help); the message says what to write instead."""

    code = "async_misuse"
    non_retriable = True

    def __init__(self, message: str, *, step_id: str | None = None) -> None:
        super().__init__(message)
        self.step_id = step_id


class RecoveryCapError(OrchestratorError):
    """A run crashed its worker (or lost its lease) more often than `max_recoveries`."""

    code = "recovery_cap"


class NonRetriableError(Exception):
    """Raise from a step body to fail the step at once, without retries (raised by the
    function outside any step, it fails the run at once)."""

    code = "non_retriable"


class RetryAfterError(Exception):
    """Raise from a step body to retry it after at least `delay` (counts as an attempt);
    raised by the function outside any step, the function is retried after `delay`."""

    code = "retry_after"

    def __init__(self, delay: timedelta | float, message: str = "") -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError("RetryAfterError delay must be >= 0")
        self.delay = seconds
        super().__init__(message or f"retry requested after {seconds:g}s")


class StepError(OrchestratorError):
    """Raised inside a function when a step failed for good (out of retries or non-retriable).

    Catch it to compensate (sagas); left uncaught, it fails the run.
    """

    code = "step_failed"

    def __init__(self, step_id: str, error: dict[str, Any]) -> None:
        self.step_id = step_id
        self.error = error
        self.error_type = str(error.get("type", "Exception"))
        self.error_message = str(error.get("message", ""))
        super().__init__(f"step '{step_id}' failed: {self.error_type}: {self.error_message}")


class StepTimeoutError(OrchestratorError, TimeoutError):
    """A step attempt ran longer than the `timeout` given to `ctx.step.run`: the attempt
    failed (and is retried as the step's policy says). An `async def` body was cancelled at
    the timeout; a plain body was left to finish on its own thread, and its result dropped."""

    code = "step_timeout"

    def __init__(self, step_id: str, timeout: float) -> None:
        self.step_id = step_id
        self.timeout = timeout
        super().__init__(
            f"step '{step_id}' ran longer than its timeout of {timeout:g}s; the attempt "
            "failed. Raise the timeout, or make the step's body faster"
        )


class InvalidStepOptionError(OrchestratorError):
    """A step was called with an option of the wrong type or out of range (a negative
    `lookback`, an entry of `wait_for_any` that is not `OnEvent` or `OnInvoke`); the message
    names the step."""

    code = "invalid_step_option"


class InvokeTimeoutError(OrchestratorError):
    """An invoked run did not finish within the `timeout` given to `ctx.step.invoke`."""

    code = "invoke_timeout"


class RunCancelledError(OrchestratorError):
    """Recorded as the error of a cancelled run (and of an invoke whose child was cancelled)."""

    code = "cancelled"


class ControlSignal(BaseException):
    """Base of signals thrown through user code; never caught by `except Exception`."""


class Suspend(ControlSignal):
    """The run stops executing here and will be resumed later (sleep, retry back-off, drain)."""


class Abort(ControlSignal):
    """The run fails at once with its execution's fatal error (the code is wrong, not the
    step: a nested step), whatever user code between here and the engine catches."""


class Cancelled(ControlSignal):
    """A cancellation ended the run (db/runs.py): its execution stops here, writing nothing."""


class LeaseLost(ControlSignal):
    """A checkpoint was refused because this worker no longer holds the run's lease."""


class InvalidRunIdError(OrchestratorError):
    """A run id is not a UUID, or the id given to `app.start` belongs to a run of another
    function."""

    code = "invalid_run_id"


class RunNotCompletedError(OrchestratorError):
    """`RunHandle.result()`: the run ended without completing. Base of `RunFailedError`,
    `CancelledRunError` and `RunSkippedError`, so one `except` can handle every such end.

    `run_id`; `status` (`failed`, `cancelled` or `skipped`); `error`, the error the run
    recorded (`runs.error`: `type`, `code`, `message`, …; {} if none); and `error_type`
    and `error_message`, read from it."""

    code = "run_not_completed"

    def __init__(self, run_id: str, status: str, error: Any) -> None:
        self.run_id = run_id
        self.status = status
        self.error: dict[str, Any] = error if isinstance(error, dict) else {}
        self.error_type = str(self.error.get("type") or "")
        self.error_message = str(self.error.get("message") or "")
        recorded = f"{self.error_type}: {self.error_message}" if self.error else "no error recorded"
        super().__init__(f"run {run_id} {status}: {recorded}")


class RunFailedError(RunNotCompletedError):
    """The awaited run failed (a step out of retries, an uncaught exception, a timeout, the
    recovery cap); `error` is what it recorded. `orchestrator runs show <id>` shows its
    steps; `app.resume(run_id)` runs it again from the step that failed."""

    code = "run_failed"


class CancelledRunError(RunNotCompletedError, RunCancelledError):
    """The awaited run was cancelled; `error_message` gives the reason. Also caught by
    `except RunCancelledError`."""

    code = "run_cancelled"


class RunSkippedError(RunNotCompletedError):
    """The awaited run was recorded as `skipped` by flow control (over its function's
    `rate_limit`, or a `singleton` already active) and never ran."""

    code = "run_skipped"


class RunTimeoutError(OrchestratorError, TimeoutError):
    """`RunHandle.result(timeout=...)`: the run had not ended when the timeout ran out. The
    run is not affected; call `result()` again to keep waiting. `run_id`, `timeout` (the
    seconds waited), `status` (the run's status when the wait gave up)."""

    code = "run_timeout"

    def __init__(self, run_id: str, timeout: float, status: str) -> None:
        self.run_id = run_id
        self.timeout = timeout
        self.status = status
        super().__init__(
            f"run {run_id} did not end within {timeout:g}s (it is {status}); the run goes "
            "on: call result() again to keep waiting, or app.cancel() to stop it"
        )


class InvalidFilterError(OrchestratorError):
    """A filter of the dashboard's or the API's runs list is malformed: a JSON path that does
    not parse, a cursor that was not given by a previous page, a limit out of range."""

    code = "invalid_filter"


class NameTakenError(OrchestratorError):
    """A named credential (an event key) of that name exists already, revoked ones included."""

    code = "name_taken"


class UserExistsError(NameTakenError):
    """`orchestrator ui-user add`: a dashboard user of that name exists already."""

    code = "ui_user_exists"
