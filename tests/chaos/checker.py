"""The independent checker: compares the side-effect log with `runs` and `steps`.

- lost: an event with no run for a function it triggers, or a run that never finished
- duplicate runs: more than one run of a function for one event
- duplicated results: two results of one step that were both acted upon (each was the input
  of a later step's execution), a recorded step result that no execution produced, or one
  produced by an execution which saw a different result of the previous step than the one
  recorded, or a run output that disagrees with its recorded steps
- extra executions: step bodies that ran more than once (allowed, within bounds, after kills)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

CHAINED = {"chaos-flow": "chaos/flow", "chaos-timer": "chaos/timer"}


@dataclass
class Report:
    events: int = 0
    runs: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    non_terminal: int = 0
    duplicate_runs: int = 0
    duplicated_results: int = 0
    extra_executions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.non_terminal or self.duplicate_runs or self.duplicated_results
        )


def check(url: str, *, expect_failed: set[str] | None = None) -> Report:
    """`expect_failed`: function ids whose runs are meant to fail (the poison)."""
    expect_failed = expect_failed or set()
    report = Report()
    with psycopg.connect(url, autocommit=True) as conn:
        report.events = _one(
            conn, "SELECT count(*) FROM orchestrator.events WHERE name LIKE 'chaos/%'"
        )
        report.lost = _one(
            conn,
            """
            SELECT count(*) FROM orchestrator.events e
            JOIN (VALUES ('chaos-flow', 'chaos/flow'), ('chaos-timer', 'chaos/timer'),
                         ('chaos-poison', 'chaos/poison')) AS f(fid, name) ON f.name = e.name
            WHERE e.error IS NULL AND NOT EXISTS (
                SELECT 1 FROM orchestrator.runs r WHERE r.event_id = e.id AND r.function_id = f.fid)
        """,
        )
        report.duplicate_runs = _one(
            conn,
            """
            SELECT count(*) FROM (SELECT 1 FROM orchestrator.runs WHERE event_id IS NOT NULL
                                  GROUP BY event_id, function_id HAVING count(*) > 1) d
        """,
        )
        statuses = dict(
            conn.execute(
                "SELECT status, count(*) FROM orchestrator.runs GROUP BY status"
            ).fetchall()
        )
        report.runs = sum(statuses.values())
        report.completed = statuses.get("completed", 0)
        report.non_terminal = (
            report.runs
            - report.completed
            - statuses.get("failed", 0)
            - statuses.get("cancelled", 0)
        )
        unexpected = conn.execute(
            "SELECT id::text, function_id, error->>'code', error->>'message' "
            "FROM orchestrator.runs WHERE status = 'failed' AND NOT function_id = ANY(%s)",
            (list(expect_failed),),
        ).fetchall()
        report.failed = len(unexpected)
        report.lost += len(unexpected)  # a healthy run that failed is work that was lost
        report.problems += [f"run {r[0]} ({r[1]}) failed: {r[2]}: {r[3]}" for r in unexpected[:5]]
        # distinct tokens: a side-effect INSERT retried after a lost acknowledgement (the
        # server restarted as it committed) is one execution recorded twice, not two
        report.extra_executions = _one(
            conn,
            """
            SELECT coalesce(sum(n - 1), 0) FROM (
                SELECT count(DISTINCT token_out) AS n FROM public.chaos_effects
                GROUP BY run_id, step) c
        """,
        )
        _check_chains(conn, report)
    return report


def _check_chains(conn: psycopg.Connection[Any], report: Report) -> None:
    effects: dict[tuple[str, str, str], str] = {}
    outputs: dict[tuple[str, str], set[str]] = {}
    consumed: set[tuple[str, str]] = set()
    for run_id, step, token_in, token_out in conn.execute(
        "SELECT run_id, step, token_in, token_out FROM public.chaos_effects"
    ):
        effects[(run_id, step, token_out)] = token_in
        outputs.setdefault((run_id, step), set()).add(token_out)
        consumed.add((run_id, token_in))
    # A body may run twice (its process died before the checkpoint), but only one of its
    # results may ever be passed on: an execution whose checkpoint was refused must stop.
    for (run_id, step), tokens in outputs.items():
        used = [t for t in tokens if (run_id, t) in consumed]
        if len(used) > 1:
            _bad(
                report,
                f"run {run_id} step {step}: {len(used)} different results were "
                "each passed on to a later step",
            )
    rows = conn.execute(
        """
        SELECT r.id::text, r.event_id, r.output, s.step_id, s.output #>> '{}'
        FROM orchestrator.runs r JOIN orchestrator.steps s ON s.run_id = r.id
        WHERE r.status = 'completed' AND r.function_id = ANY(%s) AND s.kind = 'run'
        ORDER BY r.id, s.position
    """,
        (list(CHAINED),),
    ).fetchall()
    runs: dict[str, tuple[str, Any, list[tuple[str, str]]]] = {}
    for run_id, event_id, output, step_id, token in rows:
        runs.setdefault(run_id, (event_id, output, []))[2].append((step_id, token))
    for run_id, (event_id, output, steps) in runs.items():
        previous = event_id
        for step_id, token in steps:
            token_in = effects.get((run_id, step_id, token))
            if token_in is None:
                _bad(
                    report,
                    f"run {run_id} step {step_id}: recorded result {token} was "
                    "produced by no execution",
                )
            elif token_in != previous:
                _bad(
                    report,
                    f"run {run_id} step {step_id}: its execution saw {token_in}, "
                    f"but the recorded previous result is {previous}",
                )
            previous = token
        if (output or {}).get("tokens") != [t for _, t in steps]:
            _bad(report, f"run {run_id}: output {output} disagrees with its recorded steps")


def _bad(report: Report, problem: str) -> None:
    report.duplicated_results += 1
    if len(report.problems) < 10:
        report.problems.append(problem)


def _one(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
