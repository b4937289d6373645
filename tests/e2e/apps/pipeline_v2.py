"""The pipeline, version 2: step 3 fixed (see pipeline.py)."""

from __future__ import annotations

from typing import Any

from orchestrator import Context, Orchestrator
from tests.e2e.apps.pipeline import OPTIONS, TRIGGER, run_pipeline

app = Orchestrator()


@app.function("pipeline", trigger=TRIGGER, **OPTIONS)
def pipeline(ctx: Context) -> dict[str, Any]:
    return run_pipeline(ctx, fixed=True)
