"""An app deployed after a function was retired from it: `app` serves `current` only;
`earlier` holds `retired` as the deploy before had it (the test registers it, as that
deploy's daemons once did)."""

from __future__ import annotations

from orchestrator import Context, Orchestrator, event

app = Orchestrator()
earlier = Orchestrator()


@app.function("current", trigger=event("shop/current"))
def current(ctx: Context) -> str:
    return "served"


@earlier.function("retired", trigger=event("shop/retired"))
def retired(ctx: Context) -> str:
    return "no daemon serves this any more"
