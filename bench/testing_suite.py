"""What testing an app with `orchestrator.testing` costs: a user's suite of 100 tests, and the
pieces of one test.

    python bench/testing_suite.py [--rounds 20] [--keep]

Writes a throwaway user project into a temporary directory: an app module (a three-step
function with a one-day sleep, a nightly cron, a function waiting for an event, a function
whose step fails and retries, an async function) and a test module of exactly 100 tests on
the `orchestrator_env` fixture, each of which sends or starts, runs until idle, advances the
virtual clock and asserts on the recorded runs. Then:

1. runs `pytest` on it in a subprocess, without pytest-xdist and with `-n 2`, and prints the
   wall time and the pass count of each (exits non-zero unless all 100 pass both times);
2. in this process, on one `TestEnv`: the wall time of one send-welcome run (a step, a sleep
   of a day, a step) from the send to its completion (run_until_idle, advance one day), the
   median of `--rounds`;
3. the per-test overhead: a `TestEnv` created on a clone from the pool the plugin uses and
   closed (its clone given back), back to back (the pool's cloning is the limit) and with
   the pool full beforehand (TestEnv's own set-up and tear-down), each split into its parts.

The server is $ORCHESTRATOR_TEST_DATABASE_URL when set, else the embedded Postgres in
<project>/.orchestrator/test-pgdata (what a user's machine runs by default); this process
starts it (and makes the template) first and keeps it up while the subprocesses run, and
prints what that took.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = 100

APP = '''
"""A user's app, as a project's tests would find it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from orchestrator import Context, Orchestrator, cron, event
from orchestrator.context import AsyncContext

app = Orchestrator()


def load_user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "email": f"user{user_id}@example.com"}


def send_email(to: str, template: str) -> dict[str, Any]:
    raise RuntimeError("the mail service is not reachable from tests: mock this step")


@app.function("send-welcome", trigger=event("user/created"), retries=3)
def send_welcome(ctx: Context) -> dict[str, Any]:
    user = ctx.step.run("load-user", load_user, ctx.event.data["user_id"])
    ctx.step.run("welcome-email", send_email, user["email"], "welcome")
    ctx.step.sleep("a-day-later", timedelta(days=1))
    ctx.step.run("tips-email", send_email, user["email"], "tips")
    return {"user": user["id"]}


@app.function("nightly-digest", trigger=cron("0 3 * * *", tz="UTC"))
def nightly_digest(ctx: Context) -> dict[str, Any]:
    return {"scheduled_at": ctx.event.data["scheduled_at"]}


@app.function("await-payment", trigger=event("order/placed"))
def await_payment(ctx: Context) -> dict[str, Any]:
    order_id = ctx.event.data["order_id"]
    paid = ctx.step.wait_for_event(
        "payment", event="order/paid", match="data.order_id", timeout=timedelta(hours=1)
    )
    if paid is None:
        return {"order_id": order_id, "status": "expired"}
    return {"order_id": order_id, "status": "paid", "amount": paid.data["amount"]}


def pull(source: str) -> dict[str, Any]:
    raise RuntimeError("the remote is not reachable from tests: mock this step")


@app.function("sync-account", trigger=event("account/sync"), retries=4)
def sync_account(ctx: Context) -> dict[str, Any]:
    rows = ctx.step.run("pull", pull, ctx.event.data["source"])
    return {"rows": rows["rows"]}


async def enrich(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "score": user_id % 7}


@app.function("async-enrich", trigger=event("user/enrich"))
async def async_enrich(ctx: AsyncContext) -> dict[str, Any]:
    profile = await ctx.step.run("enrich", enrich, ctx.event.data["user_id"])
    await ctx.step.sleep("cool-down", timedelta(minutes=10))
    again = await ctx.step.run("re-enrich", enrich, ctx.event.data["user_id"] + 1)
    return {"scores": [profile["score"], again["score"]]}
'''

TEST_MODULE = '''
"""100 tests of the user's app, ten of each kind."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from orchestrator.testing import TestEnv

N = range(10)


def mail(to: str, template: str) -> dict[str, str]:
    return {"to": to, "template": template}


@pytest.mark.parametrize("n", N)
def test_welcome__emails_now_and_tips_a_day_later(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    emails = env.mock_step("send-welcome", "welcome-email", side_effect=mail)
    tips = env.mock_step("send-welcome", "tips-email", side_effect=mail)
    env.send("user/created", {"user_id": n})
    env.run_until_idle()
    (run,) = env.runs("send-welcome")
    assert run.status == "sleeping" and emails.called and not tips.called
    env.advance(timedelta(days=1))
    run = env.run(run.id)
    assert run.status == "completed" and run.output == {"user": n}
    assert [s.id for s in run.steps] == ["load-user", "welcome-email", "a-day-later", "tips-email"]


@pytest.mark.parametrize("n", N)
def test_welcome__still_sleeping_before_the_day_is_over(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    tips = env.mock_step("send-welcome", "tips-email", side_effect=mail)
    env.mock_step("send-welcome", "welcome-email", side_effect=mail)
    env.send("user/created", {"user_id": n})
    env.advance(timedelta(hours=23, minutes=59))
    assert env.runs("send-welcome")[0].status == "sleeping" and not tips.called


@pytest.mark.parametrize("n", N)
def test_welcome__a_failing_email_is_retried(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    env.mock_step("send-welcome", "welcome-email", side_effect=mail)
    env.mock_step("send-welcome", "tips-email", side_effect=mail)
    env.fail_step("send-welcome", "welcome-email", times=1 + n % 3)
    env.send("user/created", {"user_id": n})
    env.advance(timedelta(days=2))
    (run,) = env.runs("send-welcome")
    assert run.status == "completed"
    assert run.step("welcome-email").attempts == 2 + n % 3


@pytest.mark.parametrize("n", N)
def test_nightly__one_digest_a_night(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    env.advance(timedelta(days=1 + n % 3))
    runs = env.runs("nightly-digest")
    assert len(runs) == 1 + n % 3
    assert all(datetime.fromisoformat(r.output["scheduled_at"]).hour == 3 for r in runs)


@pytest.mark.parametrize("n", N)
def test_payment__paid_in_time(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    env.send("order/placed", {"order_id": f"o-{n}"})
    env.run_until_idle()
    env.advance(timedelta(minutes=30))
    env.send("order/paid", {"order_id": f"o-{n}", "amount": 100 + n})
    env.run_until_idle()
    (run,) = env.runs("await-payment")
    assert run.output == {"order_id": f"o-{n}", "status": "paid", "amount": 100 + n}


@pytest.mark.parametrize("n", N)
def test_payment__expires_after_an_hour(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    env.send("order/placed", {"order_id": f"o-{n}"})
    env.send("order/paid", {"order_id": "someone-else", "amount": 1})
    env.advance(timedelta(hours=1))
    (run,) = env.runs("await-payment")
    assert run.output == {"order_id": f"o-{n}", "status": "expired"}


@pytest.mark.parametrize("n", N)
def test_sync__retries_until_the_remote_answers(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    failures = [ConnectionError("down")] * (n % 4)
    env.mock_step("sync-account", "pull", side_effect=[*failures, {"rows": n}])
    env.send("account/sync", {"source": "crm"})
    env.advance(timedelta(minutes=30))
    (run,) = env.runs("sync-account")
    assert run.status == "completed" and run.output == {"rows": n}
    assert len(env.calls("sync-account", "pull")) == 1 + n % 4


@pytest.mark.parametrize("n", N)
def test_sync__gives_up_after_its_retries(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    env.mock_step("sync-account", "pull", side_effect=ConnectionError("down"))
    env.start("sync-account", {"source": f"crm-{n}"})
    env.advance(timedelta(hours=2))
    (run,) = env.runs("sync-account")
    assert run.status == "failed" and len(env.calls("sync-account", "pull")) == 5


@pytest.mark.parametrize("n", N)
def test_async__enriches_twice_around_its_cool_down(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    env.send("user/enrich", {"user_id": n})
    env.run_until_idle()
    assert env.runs("async-enrich")[0].status == "sleeping"
    env.advance(timedelta(minutes=10))
    (run,) = env.runs("async-enrich")
    assert run.status == "completed" and run.output == {"scores": [n % 7, (n + 1) % 7]}


@pytest.mark.parametrize("n", N)
def test_async__mocked_step(orchestrator_env: TestEnv, n: int) -> None:
    env = orchestrator_env
    env.mock_step("async-enrich", "enrich", return_value={"id": n, "score": 99})
    run_id = env.start("async-enrich", {"user_id": n})
    env.advance(timedelta(hours=1))
    assert env.run(run_id).output == {"scores": [99, (n + 1) % 7]}
'''

PYTEST_INI = """
[pytest]
orchestrator_app = userapp:app
pythonpath = .
addopts = -p no:cacheprovider
filterwarnings =
    error
    ignore::UserWarning:platformdirs.*
"""


def write_project(where: Path) -> None:
    (where / "userapp.py").write_text(textwrap.dedent(APP).lstrip())
    (where / "test_userapp.py").write_text(textwrap.dedent(TEST_MODULE).lstrip())
    (where / "pytest.ini").write_text(textwrap.dedent(PYTEST_INI).lstrip())


def run_pytest(project: Path, extra: list[str]) -> tuple[float, int, str]:
    """Wall time, pass count and the summary line of `pytest` on the project."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *extra],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    wall = time.perf_counter() - started
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    passed = re.search(r"(\d+) passed", summary)
    count = int(passed.group(1)) if passed else 0
    if done.returncode != 0 or count != TESTS:
        sys.stdout.write(done.stdout[-6000:] + done.stderr[-3000:])
        raise SystemExit(f"pytest {' '.join(extra)}: {count} of {TESTS} passed: {summary!r}")
    return wall, count, summary


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms"


def mean_ms(values: list[float]) -> str:
    return f"{statistics.fmean(values) * 1000:6.1f} ms"


def one_welcome(app: Any, rounds: int) -> list[float]:
    """Send to completion of send-welcome, `rounds` times on one TestEnv."""
    from orchestrator.testing import TestEnv

    times: list[float] = []
    with TestEnv(app) as env:
        env.mock_step("send-welcome", "welcome-email", return_value={"sent": True})
        env.mock_step("send-welcome", "tips-email", return_value={"sent": True})
        for n in range(rounds):
            started = time.perf_counter()
            env.send("user/created", {"user_id": n})
            env.run_until_idle()
            env.advance(timedelta(days=1))
            times.append(time.perf_counter() - started)
            if len(env.runs("send-welcome", status="completed")) != n + 1:
                raise SystemExit(f"send-welcome round {n}: the run did not complete")
    return times


def overhead(app: Any, server: str, template: str, rounds: int) -> None:
    """TestEnv on a pooled clone, created and closed: back to back, and with a full pool."""
    from orchestrator.db.clones import Clones, with_database
    from orchestrator.testing import TestEnv

    pool = Clones(server, template)
    try:
        for label, fill in (("back to back", False), ("pool full first", True)):
            parts: dict[str, list[float]] = {"take": [], "open": [], "close": [], "total": []}
            for _ in range(rounds):
                if fill:
                    wait_until(pool._ready.full, 60)
                t0 = time.perf_counter()
                name = pool.take()
                t1 = time.perf_counter()
                url = with_database(server, name)
                env = TestEnv(app, database=lambda u=url, n=name: (u, lambda: pool.give_back(n)))
                t2 = time.perf_counter()
                env.close()
                t3 = time.perf_counter()
                for key, value in (("take", t1 - t0), ("open", t2 - t1), ("close", t3 - t2)):
                    parts[key].append(value)
                parts["total"].append(t3 - t0)
            print(
                f"  {label:16s} median {median_ms(parts['total'])}; mean {mean_ms(parts['total'])}"
                f" = waiting for a clone {mean_ms(parts['take'])} + TestEnv() "
                f"{mean_ms(parts['open'])} + close() {mean_ms(parts['close'])}  ({rounds} tests)"
            )
    finally:
        pool.close()


def clone_and_drop(server: str, template: str, rounds: int) -> None:
    from orchestrator.db import clones

    made, dropped = [], []
    for _ in range(rounds):
        with clones.admin(server) as conn:
            t0 = time.perf_counter()
            name = clones.clone(conn, template)
            t1 = time.perf_counter()
            clones.drop(conn, name)
            made.append(t1 - t0)
            dropped.append(time.perf_counter() - t1)
    print(
        f"  one clone (CREATE DATABASE ... TEMPLATE) {median_ms(made)}, its DROP "
        f"{median_ms(dropped)}  (medians of {rounds}, on this process's connection)"
    )


def wait_until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {check}")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the project directory")
    args = parser.parse_args(argv)
    project = Path(tempfile.mkdtemp(prefix="orchestrator-testing-suite-"))
    write_project(project)
    os.chdir(project)  # the embedded server lives under the working directory, as for a user
    sys.path.insert(0, str(project))
    try:
        return measure(project, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(project, ignore_errors=True)


def measure(project: Path, rounds: int) -> int:
    from orchestrator import log
    from orchestrator.db.clones import ensure_template
    from orchestrator.testing.env import SERVER_ENV, server_url

    log.configure(level="warning")  # the runs' log lines are not the figures
    kind = f"${SERVER_ENV}" if os.environ.get(SERVER_ENV) else "embedded Postgres"
    t0 = time.perf_counter()
    server = server_url()
    t1 = time.perf_counter()
    template = ensure_template(server)
    t2 = time.perf_counter()
    print(f"orchestrator.testing on {kind}; project in {project}")
    print(f"server ready in {t1 - t0:.2f} s, template ready in {t2 - t1:.2f} s (first use)")

    for extra in ([], ["-n", "2"]):
        wall, count, summary = run_pytest(project, extra)
        label = "pytest -n 2" if extra else "pytest (no xdist)"
        print(f"{label:18s} {count}/{TESTS} passed, wall {wall:6.2f} s  [{summary}]")

    app = importlib.import_module("userapp").app
    times = one_welcome(app, rounds)
    print(
        f"send-welcome, send to completed (step, sleep 1 day, step) on one TestEnv: "
        f"median {median_ms(times)}, min {min(times) * 1000:.1f} ms, max "
        f"{max(times) * 1000:.1f} ms  ({rounds} rounds)"
    )
    print("per-test overhead, TestEnv on a clone from the plugin's pool, created and closed:")
    overhead(app, server, template, rounds)
    clone_and_drop(server, template, min(rounds, 10))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
