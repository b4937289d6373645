"""The fault scenarios. Each takes a `ChaosEnv` and its size, injects one kind of fault, and
returns a `Result` with the checker's counts, the scenario's own figures and its verdict.

The same functions run small in the test suite (tests/chaos/test_chaos.py) and large in
`make soak` (tests/chaos/soak.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from orchestrator import Orchestrator
from orchestrator.errors import OrchestratorError
from tests.chaos.checker import Report
from tests.chaos.harness import ChaosEnv, percentile
from tests.conftest import ROOT


@dataclass
class Result:
    scenario: str
    report: Report
    faults: int = 0
    seconds: float = 0.0
    recovery: list[float] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            self.failures.append(message)

    @property
    def passed(self) -> bool:
        return self.report.ok and not self.failures

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "runs": self.report.runs,
            "faults": self.faults,
            "lost": self.report.lost + self.report.non_terminal,
            "duplicated results": self.report.duplicated_results,
            "extra executions": self.report.extra_executions,
            "recovery p50 s": round(percentile(self.recovery, 0.5), 2) if self.recovery else "",
            "recovery p99 s": round(percentile(self.recovery, 0.99), 2) if self.recovery else "",
            "recovery max s": round(max(self.recovery), 2) if self.recovery else "",
            "seconds": round(self.seconds, 1),
            "passed": self.passed,
        }

    def explain(self) -> str:
        return "; ".join(self.failures + self.report.problems) or "ok"


def _flows(env: ChaosEnv, n: int, *, steps: int = 3, work_ms: int = 0) -> int:
    return env.send("chaos/flow", ({"steps": steps, "work_ms": work_ms} for _ in range(n)))


def _finish(result: Result, env: ChaosEnv, started: float, **check: Any) -> Result:
    result.seconds = time.monotonic() - started
    result.report = env.check(**check)
    result.require(
        all(d.proc and d.proc.poll() is None for d in env.daemons),
        "a daemon exited during the scenario",
    )
    return result


# -- 1 ------------------------------------------------------------------------------------


def worker_kills(env: ChaosEnv, *, runs: int = 2000, every: float = 2.0) -> Result:
    """kill -9 a random worker process every `every` s while `runs` 3-step runs execute."""
    result = Result("1 kill -9 a worker every 2 s", Report())
    for _ in range(2):
        env.start_daemon()
    rng = random.Random(1)
    next_kill = time.monotonic() + every
    started = time.monotonic()
    _flows(env, runs, work_ms=20)

    def inject() -> None:
        nonlocal next_kill
        if time.monotonic() >= next_kill:
            next_kill += every
            if env.kill_random_worker(rng):
                result.faults += 1

    env.wait_terminal(runs, timeout=max(120, runs / 5), during=inject)
    _finish(result, env, started)
    bound = result.faults * env.config["concurrency"]
    result.figures["executions bound"] = bound
    result.require(result.faults > 0, "no worker was killed")
    result.require(
        result.report.extra_executions <= bound,
        f"{result.report.extra_executions} extra executions > kills x concurrency = {bound}",
    )
    return result


# -- 2 ------------------------------------------------------------------------------------


def daemon_kills(env: ChaosEnv, *, kills: int = 5, runs: int = 400) -> Result:
    """kill -9 one daemon (with its workers) repeatedly while a second one keeps serving and a
    backlog waits: each run the dead daemon held must be taken over (claimed by another daemon)
    within lease + rescue interval + 2 s of the kill, however long the backlog."""
    result = Result("2 kill -9 a whole daemon", Report())
    victim = env.start_daemon()
    env.start_daemon()
    started = time.monotonic()
    _flows(env, runs, steps=3, work_ms=300)
    bound = env.config["lease_duration"] + env.config["rescue_interval"] + 2
    requeued: list[float] = []
    for _ in range(kills):
        victim_id = _wait_holding(env, victim, timeout=30)
        if not victim_id:
            break
        killed_at = time.monotonic()
        victim.kill9()
        # what it held when it died: nothing but a rescue changes these rows now
        held = _held_by(env, victim_id)
        result.faults += 1
        takeover = _takeover_times(env, held, killed_at, timeout=bound + 10)
        result.recovery += takeover.claimed
        requeued += takeover.requeued
        result.failures += takeover.late
        env.restart_daemon(victim)
    env.wait_terminal(runs, timeout=300)
    _finish(result, env, started)
    result.figures["bound s"] = bound
    result.figures["requeued max s"] = round(max(requeued, default=0), 2)
    result.require(result.faults == kills, f"only {result.faults} of {kills} kills held work")
    result.require(
        bool(result.recovery) and max(result.recovery) <= bound,
        f"takeover took {max(result.recovery or [0]):.2f}s > {bound}s",
    )
    return result


def _daemon_id(env: ChaosEnv, daemon: Any) -> str | None:
    value = env.scalar(
        "SELECT id::text FROM orchestrator.daemons WHERE pid = %s "
        "AND status = 'running' ORDER BY started_at DESC LIMIT 1",
        (daemon.pid,),
    )
    return str(value) if value else None


def _held_by(env: ChaosEnv, daemon_id: str) -> list[str]:
    return [
        r[0]
        for r in env.sql(
            "SELECT id::text FROM orchestrator.runs WHERE status = 'running' "
            "AND lease_owner = CAST(%s AS uuid)",
            (daemon_id,),
        )
    ]


def _wait_holding(env: ChaosEnv, daemon: Any, timeout: float) -> str | None:
    """Wait until the daemon holds runs; returns its id (None if it held none in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon_id = _daemon_id(env, daemon)
        if daemon_id and _held_by(env, daemon_id):
            return daemon_id
        time.sleep(0.05)
    return None


@dataclass
class Takeover:
    """Seconds from the fault until each run was requeued, and until it was claimed by another
    daemon (or finished); `late` explains each run not claimed by the deadline."""

    requeued: list[float] = field(default_factory=list)
    claimed: list[float] = field(default_factory=list)
    late: list[str] = field(default_factory=list)


def _takeover_times(env: ChaosEnv, run_ids: list[str], since: float, timeout: float) -> Takeover:
    """Poll the runs that a stopped or dead daemon held, from `since` (the fault) until each
    is claimed by another daemon or finished, for `timeout` seconds at most. A run's takeover
    is that claim: its rescue (the requeue) and its wait in line both count."""
    owners = dict(
        env.sql(
            "SELECT id::text, lease_owner::text FROM orchestrator.runs "
            "WHERE id = ANY(CAST(%s AS uuid[]))",
            (run_ids,),
        )
    )
    out = Takeover()
    pending, unrescued = set(run_ids), set(run_ids)
    deadline = since + timeout
    while pending and time.monotonic() < deadline:
        rows = env.sql(
            "SELECT id::text, status, lease_owner::text FROM orchestrator.runs "
            "WHERE id = ANY(CAST(%s AS uuid[]))",
            (list(pending),),
        )
        now = time.monotonic()
        for run_id, status, owner in rows:
            if run_id in unrescued and owner != owners.get(run_id):
                unrescued.discard(run_id)
                out.requeued.append(now - since)
            if status in ("completed", "failed") or (
                status == "running" and owner != owners.get(run_id)
            ):
                pending.discard(run_id)
                out.claimed.append(now - since)
        time.sleep(0.02)
    out.claimed += [timeout] * len(pending)
    if pending:
        examples = "; ".join(f"run {r}: {_state(env, r)}" for r in sorted(pending)[:2])
        out.late.append(f"{len(pending)} runs not taken over within {timeout}s ({examples})")
    return out


def _state(env: ChaosEnv, run_id: str) -> str:
    """Where a run stands, to explain a late takeover."""
    status, owner, recoveries, due_in, ahead = env.sql(
        "SELECT r.status, r.lease_owner::text, r.recoveries, "
        "round(extract(epoch FROM r.due_at - now())::numeric, 2), "
        "(SELECT count(*) FROM orchestrator.runs o WHERE o.status IN ('queued', 'sleeping', "
        "'waiting') AND o.due_at <= now() AND (o.due_at, o.id) < (r.due_at, r.id)) "
        "FROM orchestrator.runs r WHERE r.id = CAST(%s AS uuid)",
        (run_id,),
    )[0]
    return (
        f"{status} (lease owner {owner}), {recoveries} recoveries, due in {due_in} s, "
        f"{ahead} due runs ahead of it"
    )


# -- 3 ------------------------------------------------------------------------------------


def postgres_restarts(env: ChaosEnv, *, runs: int = 600, restarts: int = 2) -> Result:
    """Restart Postgres (fast, then immediate) under load; daemons must reconnect by
    themselves within 5 s, and lose nothing."""
    result = Result("3 restart Postgres (fast, immediate)", Report())
    for _ in range(2):
        env.start_daemon()
    started = time.monotonic()
    _flows(env, runs, work_ms=20)
    modes = ["fast", "immediate"] * restarts
    for mode in modes[: 2 * restarts]:
        time.sleep(1.5)  # let the load build up between restarts
        env.cluster.restart(mode)
        result.faults += 1
        result.recovery.append(_reconnect_time(env, timeout=30))
    env.wait_terminal(runs, timeout=300)
    _finish(result, env, started)
    result.require(
        max(result.recovery) <= 5, f"a daemon took {max(result.recovery):.2f}s to reconnect (> 5 s)"
    )
    return result


def _reconnect_time(env: ChaosEnv, timeout: float) -> float:
    """Seconds after the server is back until every live daemon has heartbeated again."""
    back = time.monotonic()
    marker = None
    while marker is None:
        try:
            marker = env.scalar("SELECT now()")
        except psycopg.OperationalError as exc:
            if time.monotonic() - back > timeout:
                raise AssertionError(
                    f"the restarted server refused connections for {timeout}s: {exc}"
                ) from exc
            time.sleep(0.05)
    pids = [d.pid for d in env.alive()]
    while time.monotonic() - back < timeout:
        fresh = env.scalar(
            "SELECT count(*) FROM orchestrator.daemons WHERE pid = ANY(%s) "
            "AND status = 'running' AND heartbeat_at > %s",
            (pids, marker),
        )
        if fresh == len(pids):
            return time.monotonic() - back
        time.sleep(0.05)
    return timeout


# -- 4 ------------------------------------------------------------------------------------


def terminate_backends(env: ChaosEnv, *, runs: int = 600, every: float = 0.5) -> Result:
    """pg_terminate_backend a random daemon connection every 500 ms."""
    result = Result("4 pg_terminate_backend every 500 ms", Report())
    for _ in range(2):
        env.start_daemon()
    rng = random.Random(4)
    next_at = time.monotonic()
    started = time.monotonic()
    _flows(env, runs, work_ms=20)

    def inject() -> None:
        nonlocal next_at
        if time.monotonic() < next_at:
            return
        next_at += every
        pids = [
            r[0]
            for r in env.sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'orchestrator%%' AND pid <> pg_backend_pid()"
            )
        ]
        if pids:
            env.sql("SELECT pg_terminate_backend(%s)", (rng.choice(pids),))
            result.faults += 1

    env.wait_terminal(runs, timeout=max(120, runs / 3), during=inject)
    _finish(result, env, started)
    result.require(result.faults > 0, "no backend was terminated")
    return result


# -- 5 ------------------------------------------------------------------------------------


def sigstop(env: ChaosEnv, *, runs: int = 200) -> Result:
    """SIGSTOP a daemon (and its workers) for twice its lease, then SIGCONT: another daemon
    does its work, and every late write of the stopped one is refused by fencing."""
    result = Result("5 SIGSTOP a daemon for 2 x lease", Report())
    paused = env.start_daemon()
    env.start_daemon()
    started = time.monotonic()
    _flows(env, runs, steps=3, work_ms=400)
    paused_id = _wait_holding(env, paused, timeout=30)
    stopped_at = time.monotonic()
    os.killpg(paused.pid, signal.SIGSTOP)
    held = _held_by(env, paused_id) if paused_id else []
    result.faults = 1
    try:
        takeover = _takeover_times(
            env, held, stopped_at, timeout=2 * env.config["lease_duration"] + 5
        )
        result.recovery = takeover.claimed
        time.sleep(max(0.0, stopped_at + 2 * env.config["lease_duration"] - time.monotonic()))
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    env.wait_terminal(runs, timeout=300)
    # the resumed workers hit their fence at their next write
    rejected = _eventually_count(lambda: _fenced(paused), minimum=1, timeout=15)
    _finish(result, env, started)
    result.figures["runs held when stopped"] = len(held)
    result.figures["late writes refused"] = rejected
    result.require(bool(held), "the stopped daemon held no runs")
    result.require(rejected >= 1, "no late write of the stopped daemon was refused")
    return result


def _fenced(daemon: Any) -> int:
    return sum(1 for e in daemon.log_events() if e.get("event") == "lease lost; abandoning run")


def _eventually_count(count: Any, *, minimum: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    value = count()
    while value < minimum and time.monotonic() < deadline:
        time.sleep(0.1)
        value = count()
    return int(value)


# -- 6 ------------------------------------------------------------------------------------


def timers(env: ChaosEnv, *, timers: int = 5000, daemons: int = 4, lead: float = 20) -> Result:
    """`timers` runs all sleeping until the same instant, four daemons: each dispatched once."""
    result = Result(f"6 {daemons} daemons, {timers} timers due at once", Report())
    for _ in range(daemons):
        env.start_daemon()
    started = time.monotonic()
    at = env.db_now() + timedelta(seconds=lead)
    env.send("chaos/timer", ({"at": at.isoformat()} for _ in range(timers)))
    env.wait_terminal(timers, timeout=lead + max(120, timers / 20))
    _finish(result, env, started)
    spread = env.scalar(
        "SELECT extract(epoch FROM max(at) - %s) FROM public.chaos_effects WHERE step = 's1'", (at,)
    )
    early = env.scalar(
        "SELECT count(*) FROM public.chaos_effects WHERE step = 's1' AND at < %s", (at,)
    )
    result.figures["last dispatched after due, s"] = round(float(spread or 0), 2)
    result.require(
        result.report.extra_executions == 0,
        f"{result.report.extra_executions} timer steps ran more than once",
    )
    result.require(early == 0, f"{early} timers fired before they were due")
    return result


# -- 7 ------------------------------------------------------------------------------------


def poison(
    env: ChaosEnv, *, runs: int = 1500, repeats: int = 3, min_ratio: float | None = None
) -> Result:
    """A step that kills its own process every time: the run fails after the recovery cap
    with a clear reason, and healthy runs keep their throughput meanwhile.

    Throughput is healthy completions per second over the poison's whole life (from its event
    to its failure) under a standing backlog, against a control running at the same time: the
    same daemon and load on a second database, without the poison. Side by side, the drift of
    a shared machine affects both alike; the median ratio of `repeats` rounds is reported, and
    judged against `min_ratio` when one is given (`make soak` does; a test does not judge a
    benchmark figure).
    """
    result = Result("7 poison step kills its process", Report())
    started = time.monotonic()
    ratios = []
    for round_ in range(repeats):
        target = env if round_ == 0 else ChaosEnv(env.cluster, env.logs, **env.config)
        try:
            ratios.append(_poison_round(target, runs, result if round_ == 0 else None))
        finally:
            if target is not env:
                target.close()
    _finish(result, env, started, expect_failed={"chaos-poison"})
    ratio = sorted(ratios)[len(ratios) // 2]
    result.figures["throughput ratios"] = [round(r, 3) for r in ratios]
    result.figures["throughput ratio (median)"] = round(ratio, 3)
    if min_ratio is not None:
        result.require(
            ratio >= min_ratio,
            f"healthy throughput fell to {ratio:.0%} of the control's (< {min_ratio:.0%})",
        )
    return result


def _poison_round(env: ChaosEnv, runs: int, result: Result | None) -> float:
    """One side-by-side round; returns poisoned / control throughput. With `result`, also
    checks and records the poison run's end."""
    control = ChaosEnv(env.cluster, env.logs, **env.config)
    try:
        for target in (env, control):
            target.start_daemon()
            _flows(target, runs, steps=1, work_ms=5)
        for target in (env, control):
            target.wait_terminal(runs, timeout=600)
        env.send("chaos/poison", [{}])
        sent = {id(target): runs for target in (env, control)}
        deadline = time.monotonic() + 900
        # keep a standing backlog on both sides until the poison has failed, however fast
        # the engine drains it
        while not env.scalar(
            "SELECT count(*) FROM orchestrator.runs "
            "WHERE function_id = 'chaos-poison' AND status = 'failed'"
        ):
            if time.monotonic() > deadline:
                raise AssertionError("the poison run did not fail within 900 s")
            for target in (env, control):
                if sent[id(target)] - target.terminal() < runs:
                    sent[id(target)] += _flows(target, runs, steps=1, work_ms=5)
            time.sleep(0.2)
        for target in (env, control):  # one more batch, so the backlog surely outlived it
            sent[id(target)] += _flows(target, runs, steps=1, work_ms=5)
        env.wait_terminal(sent[id(env)] + 1, timeout=900)
        control.wait_terminal(sent[id(control)], timeout=900)
        status, code, message, recoveries, born, died = env.sql(
            "SELECT status, error->>'code', error->>'message', recoveries, created_at, "
            "finished_at FROM orchestrator.runs WHERE function_id = 'chaos-poison'"
        )[0]
        life = (died - born).total_seconds()
        poisoned = _completions(env, born, died) / life
        baseline = _completions(control, born, died) / life
        backlog_left = min(_completions(env, died, None), _completions(control, died, None))
    finally:
        control.close()
    if result is not None:
        result.faults = int(
            env.scalar("SELECT count(*) FROM public.chaos_effects WHERE step = 'die'")
        )
        result.recovery = [life]
        result.figures["healthy runs/s, control"] = round(baseline, 1)
        result.figures["healthy runs/s, poisoned"] = round(poisoned, 1)
        result.figures["poison error"] = message
        result.require(
            status == "failed" and code == "recovery_cap", f"poison run ended {status}/{code}"
        )
        result.require(
            recoveries == env.config["max_recoveries"] + 1,
            f"poison run recovered {recoveries} times",
        )
    if backlog_left == 0:
        raise AssertionError("the healthy backlog ran out before the poison failed")
    return poisoned / baseline


def _completions(env: ChaosEnv, since: Any, until: Any) -> int:
    """Healthy runs that completed in [since, until] (until None: since `since`)."""
    return int(
        env.scalar(
            "SELECT count(*) FROM orchestrator.runs WHERE function_id = 'chaos-flow' "
            "AND status = 'completed' AND finished_at >= %s "
            "AND (CAST(%s AS timestamptz) IS NULL OR finished_at <= %s)",
            (since, until, until),
        )
    )


# -- 8 ------------------------------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE orchestrator.runs; --",
    "Robert'); DELETE FROM orchestrator.steps; --",
    "%s %(x)s {0} $1 \\x00 \\u0000",
    "\u202e\u2028emoji \U0001f600 ünïcödé",
]


def hostile_input(env: ChaosEnv, *, huge_mib: int = 64) -> Result:
    """Malformed and hostile input through SQL and the API: each rejected or parked with a
    reason, valid data round-tripped byte for byte, and the daemon keeps serving."""
    result = Result("8 hostile and malformed input", Report())
    env.start_daemon(max_event_bytes=1024 * 1024)
    started = time.monotonic()
    rejected = 0
    for bad in ["'[1, 2]'", "'\"text\"'", "'null'", "'42'", "'{\"x\": NaN}'", "'{bad json'"]:
        try:
            env.sql(f"INSERT INTO orchestrator.events (name, data) VALUES ('chaos/flow', {bad})")
            result.failures.append(f"SQL data {bad} was accepted")
        except psycopg.Error:
            rejected += 1
    for name in ["", "x" * 300, "nul\x00name"]:
        try:
            env.sql("INSERT INTO orchestrator.events (name) VALUES (%s)", (name,))
            result.failures.append(f"SQL name {name[:20]!r} was accepted")
        except (psycopg.Error, ValueError):
            rejected += 1
    app = Orchestrator(database_url=env.url)
    for name, data in [
        ("a\x00", {}),
        ("ok", {"x": float("nan")}),
        ("ok", {"x": {1, 2}}),
        ("ok", [1]),
        ("x" * 300, {}),
        ("ok", {"s": "\ud800"}),
    ]:
        try:
            app.send(name, data)  # type: ignore[arg-type]
            result.failures.append(f"send({name[:10]!r}, ...) was accepted")
        except OrchestratorError:
            rejected += 1
    # a 64 MiB event by SQL is stored (Postgres can hold it) but parked unread
    env.sql(
        "INSERT INTO orchestrator.events (id, name, data) VALUES ('huge', 'chaos/flow', "
        "jsonb_build_object('blob', repeat('x', %s)))",
        (huge_mib * 1024 * 1024,),
    )
    # a run of a function nobody registered, inserted by hand
    env.sql("INSERT INTO orchestrator.runs (function_id) VALUES (%s)", (HOSTILE[0],))
    # hostile strings as event ids, names, keys and values: valid, so they must round-trip
    sent = []
    for i, text in enumerate(HOSTILE):
        data = {"steps": 1, text: text, "nested": {text: [text, i]}}
        sent.append((app.send("chaos/flow", data, id=f"{text}#{i}"), data))
        app.send(text, {text: text})
    app.close()
    _flows(env, 5)
    env.wait_terminal(len(HOSTILE) + 6, timeout=120)
    parked = env.scalar("SELECT error FROM orchestrator.events WHERE id = 'huge'")
    _finish(result, env, started, expect_failed={HOSTILE[0]})
    for event_id, data in sent:
        stored = env.scalar("SELECT data FROM orchestrator.events WHERE id = %s", (event_id,))
        seen = env.scalar(
            "SELECT events->0->'data' FROM orchestrator.runs WHERE event_id = %s", (event_id,)
        )
        result.require(stored == data and seen == data, f"event {event_id!r} did not round-trip")
    unknown = env.sql(
        "SELECT status, error->>'code' FROM orchestrator.runs WHERE function_id = %s", (HOSTILE[0],)
    )
    result.faults = rejected + 2
    result.figures["rejected with a typed error"] = rejected
    result.figures["64 MiB event parked"] = parked
    result.require(bool(parked) and "max_event_bytes" in parked, "the huge event was not parked")
    result.require(
        unknown == [("failed", "unknown_function")],
        f"hand-made run of an unknown function ended {unknown}",
    )
    return result


# -- 9 ------------------------------------------------------------------------------------


def sigterm_in_flight(env: ChaosEnv, *, in_flight: int = 200, grace: float = 10) -> Result:
    """SIGTERM with `in_flight` steps executing: exit 0 within grace + 2 s, nothing lost."""
    result = Result(f"9 SIGTERM with {in_flight} steps in flight", Report())
    workers = 4 if in_flight >= 100 else 2
    daemon = env.start_daemon(
        workers=workers, concurrency=in_flight // workers, shutdown_grace=grace
    )
    started = time.monotonic()
    _flows(env, in_flight, steps=3, work_ms=1500)
    deadline = time.monotonic() + 60
    while (
        env.scalar("SELECT count(*) FROM orchestrator.runs WHERE status = 'running'") < in_flight
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    running = int(env.scalar("SELECT count(*) FROM orchestrator.runs WHERE status = 'running'"))
    signalled = time.monotonic()
    code = daemon.terminate()
    stop_seconds = time.monotonic() - signalled
    left_running = env.scalar("SELECT count(*) FROM orchestrator.runs WHERE status = 'running'")
    env.start_daemon()
    env.wait_terminal(in_flight, timeout=300)
    daemon.proc = None  # stopped on purpose; _finish checks the others
    env.daemons.remove(daemon)
    _finish(result, env, started)
    result.faults = 1
    result.recovery = [stop_seconds]
    result.figures["in flight at SIGTERM"] = running
    result.figures["exit code"] = code
    result.require(running == in_flight, f"only {running} runs were in flight")
    result.require(code == 0, f"daemon exited {code}")
    result.require(stop_seconds <= grace + 2, f"stop took {stop_seconds:.2f}s > grace + 2 s")
    result.require(left_running == 0, f"{left_running} runs left 'running' after the stop")
    return result


# -- 10 -----------------------------------------------------------------------------------


def migrate_under_load(env: ChaosEnv, *, runs: int = 600, migrations: int = 5) -> Result:
    """`orchestrator migrate` while daemons serve traffic: no daemon error, nothing lost."""
    result = Result("10 migrate while serving", Report())
    for _ in range(2):
        env.start_daemon()
    started = time.monotonic()
    _flows(env, runs, work_ms=10)
    environ = dict(
        os.environ,
        ORCHESTRATOR_DATABASE_URL=env.url,
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    codes = []
    for _ in range(migrations):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "migrate"],
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        codes.append(done.returncode)
        result.faults += 1
    env.wait_terminal(runs, timeout=300)
    _finish(result, env, started)
    errors = env.daemon_errors()
    result.figures["migrate exit codes"] = codes
    result.require(codes == [0] * migrations, f"migrate exited {codes}")
    result.require(not errors, f"daemon errors: {errors[:3]}")
    return result


SCENARIOS = {
    "worker_kills": worker_kills,
    "daemon_kills": daemon_kills,
    "postgres_restarts": postgres_restarts,
    "terminate_backends": terminate_backends,
    "sigstop": sigstop,
    "timers": timers,
    "poison": poison,
    "hostile_input": hostile_input,
    "sigterm_in_flight": sigterm_in_flight,
    "migrate_under_load": migrate_under_load,
}
