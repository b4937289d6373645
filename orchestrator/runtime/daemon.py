"""The daemon: the composition root that builds the services, starts them, runs the
scheduler loop and shuts them down.

Every background concern is a service of one shape (runtime/service.py), in a module of its
own: the dispatcher (ingest, claims, hand-off to the worker pool: runtime/dispatcher.py),
heartbeat and leadership (runtime/leadership.py), lease renewal (runtime/leases.py), rescue
and the leader's duties (runtime/rescue.py), requested cancellations
(runtime/cancellations.py), the requeue of a crashed worker's runs (runtime/crashes.py), and
retention on a thread of its own (runtime/retention.py).

Each pass of the loop ticks the dispatcher, then each other service whose interval is due.
The loop wakes on a LISTEN/NOTIFY hint, on a worker finishing, at the next due time, or after
`poll_interval` at the latest. Database errors are logged and retried; they never stop the
daemon. Shutdown drains the workers within `shutdown_grace` while heartbeats say `stopping`
and leases are still renewed, releases the leases left over, and signs off.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

from orchestrator import log as logging
from orchestrator.app import Orchestrator
from orchestrator.config import Config
from orchestrator.db import daemons, functions, migrate, runs
from orchestrator.db.apps import CHANNEL as APPS_CHANNEL
from orchestrator.db.connect import check_schema
from orchestrator.db.database import Database, DatabaseError
from orchestrator.db.direct import Direct
from orchestrator.db.session import Session
from orchestrator.errors import first_line
from orchestrator.functions import FunctionDef
from orchestrator.redact import redact_url
from orchestrator.runtime.apps import AppsRefresh
from orchestrator.runtime.cancellations import Cancellations
from orchestrator.runtime.crashes import CrashRequeue
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.dispatcher import Dispatcher
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.ingest import Ingester
from orchestrator.runtime.leadership import Leadership
from orchestrator.runtime.leases import LeaseRenewer
from orchestrator.runtime.metrics import TallyDelta
from orchestrator.runtime.pool import Handback, WorkerPool
from orchestrator.runtime.rescue import Parking, Rescue
from orchestrator.runtime.rescuer import Rescuer
from orchestrator.runtime.retention import Policy, Retention
from orchestrator.runtime.service import Ticker
from orchestrator.runtime.telemetry import Telemetry
from orchestrator.runtime.unserved import UnservedWatch
from orchestrator.runtime.upkeep import Upkeep

if TYPE_CHECKING:
    from orchestrator.http_thread import ThreadedServer
    from orchestrator.ui.server import UiServer


class Daemon:
    def __init__(self, app: Orchestrator, app_path: str, url: str, config: Config) -> None:
        self.app = app
        self.app_path = app_path
        self.url = url
        self.cfg = config
        self.id = str(uuid.uuid4())
        self.registry = app.functions  # a copy: SDK apps' functions join it (runtime/apps.py)
        self.function_ids = sorted(self.registry)
        self.version = config.version or app.version()
        self.log = logging.get("daemon", daemon_id=self.id)
        self.db = Database(url, pool_size=4, application_name="orchestrator-daemon")
        # the hot statements of the loop (ingest, claims) run on a direct connection
        # (see db/direct.py); its settings pin the claim's plan
        self.direct = Direct(
            url, application_name="orchestrator-scheduler", settings=runs.CLAIM_SETTINGS
        )
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.signals = 0
        self.session: Session | None = None
        self.ui: UiServer | None = None  # the dashboard, with `ui = true`
        self.gateway: ThreadedServer | None = None  # Inngest's protocol, with `inngest = true`
        self.pool = WorkerPool(
            app_path=app_path,
            url=url,
            config=config,
            on_done=self._on_done,
            on_crash=self._on_crash,
            log=self.log,
            on_stats=self._on_stats,
            async_ids=frozenset(f for f, d in self.registry.items() if d.is_async),
        )
        # metrics, /healthz and /readyz, systemd notifications (runtime/telemetry.py)
        self.telemetry = Telemetry(
            config,
            function_ids=self.function_ids,
            app_version=self.version,
            db=self.db,
            leader=self._leading,
            executing=self.pool.inflight,
            log=self.log,
        )
        self.metrics = self.telemetry.metrics
        self.cron = CronScheduler(self.db, self.registry, self.log)
        self.rescuer = Rescuer(
            self.db,
            daemon_id=self.id,
            max_recoveries=config.max_recoveries,
            dead_after=config.dead_daemon_after,
            log=self.log,
        )
        self._build_services()
        self.apps = self._build_apps()

    def _build_apps(self) -> AppsRefresh | None:
        """With `inngest = true`: the SDK apps' functions, served as they sync."""
        if not self.cfg.inngest:
            return None
        from orchestrator.inngest.calls import Settings
        from orchestrator.inngest.remote import RemoteFunctions

        remote = RemoteFunctions(self.db, Settings.from_config(self.cfg))
        apps_refresh = AppsRefresh(remote, adopt=self._adopt, log=self.log)
        self.ticker.services.append(apps_refresh)
        self.ticker.next_at.append(0.0)
        return apps_refresh

    def _adopt(self, changed: dict[str, FunctionDef], gone: list[str]) -> None:
        """Serve these SDK-served functions (new or changed), and no longer those `gone`."""
        for fid in gone:
            self.registry.pop(fid, None)
            self.dispatcher.forget(fid)
            self.cron.forget(fid)
            self.rescue_upkeep.timeouts.pop(fid, None)
        for fid, fdef in sorted(changed.items()):
            self.registry[fid] = fdef
            self.dispatcher.serve(fid, fdef)
            self.cron.serve(fid, fdef)
            self.rescue_upkeep.serve(fid, fdef)
        self.function_ids = sorted(self.registry)
        self.pool.async_ids = frozenset(f for f, d in self.registry.items() if d.is_async)
        if self.session is not None:  # registered: say what it serves now
            self.db.run(lambda conn: daemons.set_functions(conn, self.id, self.function_ids))
            self.cron.register()
        self.dispatcher.ingester.invalidate()
        self.flow.poke()

    def _build_services(self) -> None:
        cfg, leading = self.cfg, self._leading
        self.dispatcher = self._build_dispatcher()
        self.leadership = Leadership(
            self.db,
            daemon_id=self.id,
            interval=cfg.heartbeat_interval,
            ttl=cfg.leader_ttl,
            stopping=self.stop_requested.is_set,
            on_beat=self.telemetry.heartbeat_ok,
            log=self.log,
        )
        self.leases = LeaseRenewer(
            self.db,
            owner=self.id,
            lease_seconds=cfg.lease_duration,
            held=self.pool.held_leases,
            log=self.log,
        )
        self.rescue = self._build_rescue()
        self.parking = Parking(
            self.rescuer, interval=max(5.0, 10 * cfg.rescue_interval), is_leader=leading
        )
        self.cancellations = Cancellations(
            self.db,
            interval=cfg.poll_interval,
            executing=self.pool.held_leases,
            stop_runs=self.pool.cancel,
            metrics=self.metrics,
            log=self.log,
        )
        self.crashes = CrashRequeue(
            self.db,
            max_recoveries=cfg.max_recoveries,
            metrics=self.metrics,
            on_suspects=self.dispatcher.look_for_suspects,
            on_work=self.wake.set,
            log=self.log,
        )
        # deletes old rows on a thread of its own while this daemon leads (runtime/retention.py)
        self.retention = Retention(
            self.url,
            Policy.from_config(cfg),
            interval=cfg.retention_interval,
            is_leader=lambda: leading() and not self.stop_requested.is_set(),
            log=self.log,
        )
        # what the loop ticks, in this order on each pass
        self.ticker = Ticker(
            [
                self.dispatcher,
                self.leadership,
                self.leases,
                self.rescue,
                self.parking,
                self.cancellations,
            ]
        )

    def _build_dispatcher(self) -> Dispatcher:
        # flow-controlled functions are claimed one by one under their own lock (runtime/flow.py)
        self.flow = FlowClaimer(
            self.direct,
            self.registry,
            owner=self.id,
            lease_seconds=self.cfg.lease_duration,
            poll_interval=self.cfg.poll_interval,
            log=self.log,
        )
        ingester = Ingester(
            self.db,
            self.direct,
            batch_size=self.cfg.ingest_batch_size,
            max_event_bytes=self.cfg.max_event_bytes,
            log=self.log,
        )
        return Dispatcher(
            owner=self.id,
            config=self.cfg,
            registry=self.registry,
            db=self.db,
            direct=self.direct,
            pool=self.pool,
            ingester=ingester,
            flow=self.flow,
            metrics=self.metrics,
        )

    def _build_rescue(self) -> Rescue:
        self.rescue_upkeep = Upkeep(self.db, self.registry, self.log)
        # leader: warns about runs that wait for a function no live daemon serves
        unserved = UnservedWatch(
            self.db,
            warn_after=self.cfg.unserved_warning_after,
            report=self.metrics.set_unserved,
            log=self.log,
        )
        return Rescue(
            self.rescuer,
            interval=self.cfg.rescue_interval,
            is_leader=self._leading,
            cron=self.cron,
            upkeep=self.rescue_upkeep,
            unserved=unserved,
            metrics=self.metrics,
            on_work=self._work_appeared,
        )

    def _leading(self) -> bool:
        return self.leadership.is_leader

    # -- start-up ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Migrate (or check) the schema and record functions, schedules and this daemon."""
        if self.cfg.auto_migrate:
            migrate.upgrade(self.db.engine)
        else:
            check_schema(self.db.engine)
        if self.apps is not None:  # the SDK apps' functions, recorded with the others
            self.apps.refresh()
        lock_key = self.db.run(self._register)  # a deadlock is transient: it is retried
        self.cron.register()
        self.session = Session(
            self.url,
            lock_key=lock_key,
            on_wake=self._on_notify,
            on_error=self._on_session_error,
            application_name="orchestrator-session",
        )

    def _register(self, conn: Any) -> int:
        """Record the functions, in id order (the order every statement locks their rows
        in), and this daemon; returns its liveness lock key."""
        # the app's own functions only: an SDK app's rows are its sync's (options.inngest)
        functions.record_all(conn, self.app.functions)
        return daemons.register(
            conn,
            self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            app=self.app_path,
            version=self.version,
            workers=self.cfg.workers,
            concurrency=self.cfg.concurrency,
            functions=self.function_ids,
        )

    def run(self) -> int:
        self.telemetry.listen()
        self.prepare()
        if self.cfg.ui:  # before anything starts: a taken port is a ConfigError
            from orchestrator.ui.server import start_in_thread  # FastAPI only when asked

            self.ui = start_in_thread(self.cfg, database_url=self.url)
            self.log.info("dashboard serving", url=self.ui.url)
        if self.cfg.inngest:  # likewise: a taken port or dev mode off loopback stops here
            from orchestrator.inngest.gateway import start_in_thread as start_gateway

            self.gateway = start_gateway(self.cfg, database_url=self.url)
            self.log.info("inngest gateway serving", url=self.gateway.url, dev=self.cfg.inngest_dev)
        assert self.session is not None
        self.session.start()
        self.session.wait_connected(10)
        self.crashes.start()  # before the pool: a worker may die at once
        self.pool.start()
        self._install_signals()
        self.pool.wait_ready(60)
        self.log.info(
            "daemon serving",
            app=self.app_path,
            functions=len(self.registry),
            workers=self.cfg.workers,
            concurrency=self.cfg.concurrency,
            version=self.version,
            database=redact_url(self.url),
        )
        self.metrics.rescued("dead_daemon", self.rescuer.rescue_dead_daemons())
        self.retention.start()
        self.telemetry.serving(
            f"serving {len(self.registry)} functions with {self.cfg.workers} workers "
            f"x {self.cfg.concurrency} threads"
        )
        for service in self.ticker.services:
            service.start()
        self._loop()
        return self._shutdown()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stop_requested.set()
        self.wake.set()

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = 0.1
        while not self.stop_requested.is_set():
            self.telemetry.tick()
            try:
                self.ticker.tick()
                backoff = 0.1
            except DatabaseError as exc:
                self.log.warning("database error; retrying", error=first_line(exc))
                self.telemetry.database_error(first_line(exc))
                self.stop_requested.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                # a bug in one pass must not take the daemon (and every run it serves) down
                self.log.exception("scheduler pass failed; retrying")
                self.stop_requested.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.wake.wait(self._timeout())
            self.wake.clear()

    def _timeout(self) -> float:
        timeout = self.cfg.poll_interval
        due_in = self.dispatcher.wait_limit()
        if due_in is not None:
            timeout = min(timeout, due_in)
        pet_in = self.telemetry.wait_limit()  # systemd's watchdog wants a pass by then
        if pet_in is not None:
            timeout = min(timeout, pet_in + 0.001)
        return max(timeout, 0.001)

    # -- callbacks (from the pool's supervisor thread and the session's thread) -----------

    def _on_done(self, run_id: str, status: str, due_at: datetime | None) -> None:
        self.dispatcher.finished(run_id, due_at)
        self.wake.set()

    def _on_stats(self, counts: TallyDelta) -> None:
        self.metrics.merge(counts)

    def _on_crash(self, worker: int, handback: Handback) -> None:
        self.crashes.requeue(worker, handback)

    def _on_notify(self, channel: str) -> None:
        self.dispatcher.notified(channel)  # a cancelled run's slot may be free: claim again
        if channel == runs.CANCEL_CHANNEL:  # tell the workers executing cancelled runs now
            self.ticker.due_now(self.cancellations)
        if channel == APPS_CHANNEL and self.apps is not None:  # an SDK app synced
            self.ticker.due_now(self.apps)
        self.wake.set()

    def _on_session_error(self, exc: Exception) -> None:
        self.log.warning("session connection lost; reconnecting", error=first_line(exc))

    def _work_appeared(self) -> None:
        """Runs were requeued or started by a duty: claim them at once."""
        self.flow.poke()
        self.wake.set()

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self) -> int:
        grace = self.cfg.shutdown_grace
        self.log.info("shutting down", in_flight=self.pool.inflight(), grace=grace)
        self.telemetry.stopping(f"stopping: draining {self.pool.inflight()} runs")
        self.retention.stop()
        for service in (self.dispatcher, self.rescue, self.parking, self.cancellations):
            service.stop()
        self.pool.drain()
        deadline = time.monotonic() + grace
        self.stop_requested.set()  # heartbeats now report 'stopping'
        self.ticker.due_now(self.leadership)
        self._safe(lambda: self.ticker.tick([self.leadership]))
        while self.pool.inflight() and time.monotonic() < deadline and self.signals < 2:
            time.sleep(0.02)
            self.telemetry.tick()  # draining is progress: /healthz and the watchdog
            self._safe(lambda: self.ticker.tick([self.leadership]))
            self._safe(lambda: self.ticker.tick([self.leases]))
        if self.signals >= 2:
            leases = self.pool.kill()
        else:
            leases = self.pool.stop(timeout=max(0.0, deadline - time.monotonic()))
        self.leases.stop()
        if leases:
            self._safe(lambda: self.db.run(lambda conn: runs.release(conn, leases), retry_for=5))
            self.log.info("released runs still in flight", runs=len(leases))
        self._safe(lambda: self.db.run(self._sign_off, retry_for=5))
        self.leadership.stop()
        if self.session is not None:
            self.session.stop()
        if self.ui is not None:
            self.ui.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.direct.close()
        self.crashes.stop()
        self.db.dispose()
        self.telemetry.close()
        self.log.info("daemon stopped")
        return 0

    def _sign_off(self, conn: Any) -> None:
        daemons.resign(conn, self.id)
        daemons.mark_stopped(conn, self.id)

    def _safe(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except DatabaseError as exc:
            self.log.warning("database error during shutdown", error=first_line(exc))
