"""The API's JSON conversion (ui/api.py `_plain`) gives what FastAPI's own would."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.encoders import jsonable_encoder

from orchestrator.db.steps import StepRow
from orchestrator.db.ui import TimelineBar
from orchestrator.ui.api import _plain

T0 = datetime(2031, 3, 4, 2, 0, tzinfo=UTC)
STEP = StepRow("r-1", "charge", 0, "run", "completed", 2, {"ids": [1, 2], "ok": True, "x": None},
               {"type": "ValueError", "message": "é"}, None, 12, T0, T0)  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        STEP,
        [STEP, TimelineBar("charge", "retrying", T0, None, "attempt 1 failed")],
        {"steps": (STEP,), "when": T0.date(), "at": time(3, 4), "took": timedelta(seconds=1.5)},
        {"exact": Decimal("12"), "part": Decimal("1.25"), "tags": {"a"}},
    ],
)
def test_plain__what_jsonable_encoder_gives(value: Any) -> None:
    assert _plain(value) == jsonable_encoder(value)


def test_plain__dates_as_iso_text() -> None:
    assert _plain({"at": T0, "day": date(2031, 3, 4)}) == {
        "at": "2031-03-04T02:00:00+00:00",
        "day": "2031-03-04",
    }
