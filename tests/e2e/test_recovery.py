"""Replay, resume and fork end to end: a bug fixed in a new deployment, the failed runs
resumed in bulk from the command line, a run forked from a step, and a changed step order
refused with a non-determinism error naming the step."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import cli, count, effects, run_of, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

V1, V2, V3 = (f"tests.e2e.apps.pipeline_v{v}:app" for v in (1, 2, 3))


def start_runs(url: str, n: int) -> list[str]:
    """Send `n` events (data n = 1..n); returns the event ids in order."""
    rows = sql(
        url,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'pipeline/start', jsonb_build_object('n', i) FROM generate_series(1, %s) i "
        "RETURNING id",
        (n,),
    )
    return [r[0] for r in rows]


def wait_status(url: str, run_ids: list[str], status: str, timeout: float = 60.0) -> None:
    eventually(
        lambda: (
            count(
                url,
                "SELECT count(*) FROM orchestrator.runs WHERE id = ANY(%s::uuid[]) AND status = %s",
                (run_ids, status),
            )
            == len(run_ids)
        ),
        timeout=timeout,
        what=f"{len(run_ids)} runs {status}",
    )


def runs_of(url: str, event_ids: list[str]) -> list[str]:
    rows = sql(
        url,
        "SELECT id::text FROM orchestrator.runs WHERE event_id = ANY(%s) AND origin IS NULL",
        (event_ids,),
    )
    return [r[0] for r in rows]


def run_row(url: str, run_id: str) -> dict[str, Any]:
    [row] = sql(
        url,
        "SELECT status, output, error, origin, origin_run_id::text, resumes "
        "FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    return dict(
        zip(("status", "output", "error", "origin", "origin_run_id", "resumes"), row, strict=True)
    )


def step_outputs(url: str, run_id: str) -> dict[str, Any]:
    rows = sql(
        url,
        "SELECT step_id, output FROM orchestrator.steps WHERE run_id = %s AND status = 'completed'",
        (run_id,),
    )
    return dict(rows)


def test_resume__bulk_after_a_fix__completes_all_without_repeating_steps(e2e_url, daemon_factory):
    v1 = daemon_factory(V1, workers=1)
    event_ids = start_runs(e2e_url, 20)
    eventually(lambda: len(runs_of(e2e_url, event_ids)) == 20, timeout=30, what="20 runs")
    run_ids = runs_of(e2e_url, event_ids)
    wait_status(e2e_url, run_ids, "failed")
    v1.stop()
    failed = run_row(e2e_url, run_ids[0])
    assert failed["error"]["step"] == "transform"
    assert "the bug" in failed["error"]["message"]

    daemon_factory(V2, workers=1)  # the fix is deployed
    asked = cli(e2e_url, "runs", "resume", "--function", "pipeline", "--since", "1h", check=False)
    assert asked.returncode == 1 and "--yes" in asked.stderr  # no terminal to confirm on
    done = cli(e2e_url, "runs", "resume", "--function", "pipeline", "--since", "1h", "--yes")
    assert "20 run(s) match" in done.stdout and "20 of 20 run(s) resumed" in done.stdout

    wait_status(e2e_url, run_ids, "completed")
    for run_id in run_ids:
        row = run_row(e2e_url, run_id)
        n = int(step_outputs(e2e_url, run_id)["fetch"]["n"])
        assert row["output"] == {"stored": 2 * n} and row["resumes"] == 1 and row["error"] is None
        # steps 1-2 ran once (in v1); step 3 failed once in v1 and ran once more after the fix
        assert effects(e2e_url, run_id) == {"fetch": 1, "enrich": 1, "transform": 2, "store": 1}
    again = cli(e2e_url, "runs", "resume", "--function", "pipeline", "--since", "1h", "--yes")
    assert "no runs match" in again.stdout


def test_fork_and_replay__reuse_the_steps_before_the_fork_or_none(e2e_url, daemon_factory):
    daemon_factory(V2, workers=1)
    [event_id] = start_runs(e2e_url, 1)
    original = run_of(e2e_url, event_id)
    wait_status(e2e_url, [original], "completed")
    recorded = step_outputs(e2e_url, original)

    forked = json.loads(
        cli(
            e2e_url,
            "runs",
            "fork",
            original[:12],
            "--from-step",
            "transform",
            "--data",
            json.dumps({"n": 50, "bonus": 7}),
            "--json",
        ).stdout
    )["id"]
    replayed = json.loads(cli(e2e_url, "runs", "replay", original, "--json").stdout)["id"]
    wait_status(e2e_url, [forked, replayed], "completed")

    fork = run_row(e2e_url, forked)
    assert (fork["origin"], fork["origin_run_id"]) == ("fork", original)
    # fetch and enrich were reused (n = 1 from the original), transform ran on new data
    assert fork["output"] == {"stored": 2 + 7}
    assert effects(e2e_url, forked) == {"transform": 1, "store": 1}
    outputs = step_outputs(e2e_url, forked)
    assert outputs["fetch"] == recorded["fetch"] and outputs["enrich"] == recorded["enrich"]

    replay = run_row(e2e_url, replayed)
    assert (replay["origin"], replay["origin_run_id"]) == ("replay", original)
    assert replay["output"] == run_row(e2e_url, original)["output"]
    assert effects(e2e_url, replayed) == {"fetch": 1, "enrich": 1, "transform": 1, "store": 1}

    missing = cli(e2e_url, "runs", "fork", original, "--from-step", "nope", check=False)
    assert missing.returncode == 1 and "recorded no step 'nope'" in missing.stderr
    completed = cli(e2e_url, "runs", "resume", original, check=False)
    assert completed.returncode == 1 and "only failed or cancelled runs" in completed.stderr
    wrong = cli(e2e_url, "runs", "resume", "--status", "completed", "--since", "1h", check=False)
    assert wrong.returncode == 1 and "resume takes runs that are failed, cancelled" in wrong.stderr


def test_resume__changed_step_order__non_determinism_error_names_the_step(e2e_url, daemon_factory):
    v1 = daemon_factory(V1, workers=1)
    [event_id] = start_runs(e2e_url, 1)
    run_id = run_of(e2e_url, event_id)
    wait_status(e2e_url, [run_id], "failed")
    v1.stop()

    v3 = daemon_factory(V3, workers=1)  # steps 1 and 2 swapped
    cli(e2e_url, "runs", "resume", run_id)
    wait_status(e2e_url, [run_id], "failed")
    error = run_row(e2e_url, run_id)["error"]
    assert (error["code"], error["step"]) == ("non_determinism", "enrich")
    assert "step 'enrich' was recorded as step 2 of the run" in error["message"]
    # nothing ran under the incompatible code: no output was mixed in
    assert effects(e2e_url, run_id) == {"fetch": 1, "enrich": 1, "transform": 1}
    v3.stop()

    daemon_factory(V2, workers=1)  # the order restored, the bug fixed
    cli(e2e_url, "runs", "resume", run_id)
    wait_status(e2e_url, [run_id], "completed")
    row = run_row(e2e_url, run_id)
    assert row["output"] == {"stored": 2} and row["resumes"] == 2
    assert effects(e2e_url, run_id) == {"fetch": 1, "enrich": 1, "transform": 2, "store": 1}
