"""The pipeline, version 3: fixed, with steps 1 and 2 swapped (see pipeline.py)."""

from __future__ import annotations

from typing import Any

from orchestrator import Context, Orchestrator
from tests.e2e.apps.pipeline import OPTIONS, TRIGGER, run_pipeline

app = Orchestrator()


@app.function("pipeline", trigger=TRIGGER, **OPTIONS)
def pipeline(ctx: Context) -> dict[str, Any]:
    return run_pipeline(ctx, fixed=True, swapped=True)
