"""The step kinds, one module each: `run`, `sleep` (and `sleep_until`), `wait` (for an
event), `invoke`, `wait_any` (`wait_for_any`), `send_event`, `parallel`.

Each module owns its kind's replay rule (what a recorded step returns), its suspension (when
the run stops here) and its store calls. Each is written once, as coroutines over an
execution (engine/execution.py) whose face (engine/faces.py) does the I/O: a plain function's
steps run them to their end at once, an async function's steps are awaited on the loop.

A module's `start(execution, step_id, ...)` takes the step's id and position at once, when
user code calls the step (so that ids follow the order of the calls, awaited or not), and
returns the coroutine that does the rest.
"""
