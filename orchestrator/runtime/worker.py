"""A worker process: `concurrency` threads executing the runs its daemon hands it.

Talks to its daemon over a pipe: it receives ("run", task), ("drain",) and ("stop",) and
answers ("ready",) once, then ("done", run_id, status, due_at) per run. It dies with its daemon
(PR_SET_PDEATHSIG) and ignores SIGINT/SIGTERM, which the daemon handles for the whole group.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import threading
from dataclasses import asdict
from typing import Any

from orchestrator import log as logging
from orchestrator.config import Config
from orchestrator.db.database import Database
from orchestrator.engine.execution import Limits
from orchestrator.engine.executor import Outcome, Task, execute
from orchestrator.engine.store import RunStore
from orchestrator.runtime.loader import load_app

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the pipe EOF check below still ends the worker


def worker_main(index: int, app_path: str, url: str, config: dict[str, Any], conn: Any) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cfg = Config(**config)
    logging.configure(cfg.log_format, cfg.log_level)
    log = logging.get("worker", worker=index, pid=os.getpid())
    app = load_app(app_path)
    app.bind(url)
    db = Database(url, pool_size=cfg.concurrency, application_name=f"orchestrator-worker-{index}")
    Worker(app.functions, RunStore(db), cfg, conn, log).serve()


class Worker:
    def __init__(
        self, functions: dict[str, Any], store: RunStore, cfg: Config, conn: Any, log: Any
    ) -> None:
        self.functions = functions
        self.store = store
        self.cfg = cfg
        self.conn = conn
        self.log = log
        self.limits = Limits(cfg.max_step_output_bytes)
        self.draining = threading.Event()
        self.tasks: queue.Queue[Task | None] = queue.Queue()
        self.send_lock = threading.Lock()

    def serve(self) -> None:
        threads = [
            threading.Thread(target=self._execute_loop, name=f"executor-{i}", daemon=True)
            for i in range(self.cfg.concurrency)
        ]
        for thread in threads:
            thread.start()
        self._send(("ready",))
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(1)  # the daemon is gone; its leases will be rescued
            if message[0] == "run":
                self.tasks.put(Task(**message[1]))
            elif message[0] == "drain":
                self.draining.set()
            elif message[0] == "stop":
                break
        for _ in threads:
            self.tasks.put(None)
        for thread in threads:
            thread.join()

    def _execute_loop(self) -> None:
        while (task := self.tasks.get()) is not None:
            outcome = self._execute(task)
            due = outcome.due_at.isoformat() if outcome.due_at else None
            self._send(("done", outcome.run_id, outcome.status, due))

    def _execute(self, task: Task) -> Outcome:
        fdef = self.functions.get(task.function_id)
        if fdef is None:
            self.log.error("function not in this worker's app", function_id=task.function_id)
            return Outcome(task.run_id, "abandoned")
        try:
            return execute(
                task, fdef, self.store, limits=self.limits, draining=self.draining, log=self.log
            )
        except Exception:
            self.log.exception("execution abandoned", run_id=task.run_id)
            return Outcome(task.run_id, "abandoned")

    def _send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            try:
                self.conn.send(message)
            except (OSError, EOFError):
                os._exit(1)


def task_message(task: Task) -> tuple[str, dict[str, Any]]:
    return ("run", asdict(task))
