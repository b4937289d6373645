"""`AsyncContext` gives type checkers the awaited types of `async def` steps (mypy --strict
on a small user module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

USER_CODE = """
from orchestrator.context import AsyncContext

async def fetch(sku: str) -> dict[str, int]:
    return {"stock": 1}

def plain(n: int) -> int:
    return n

async def flow(ctx: AsyncContext) -> None:
    stock = await ctx.step.run("fetch", fetch, "mug")
    count = await ctx.step.run("count", plain, 2)
    await ctx.step.sleep("nap", 1)
    found = await ctx.step.wait_for_event("approval", event="x/approved", timeout=60)
    reveal_type(stock)
    reveal_type(count)
    reveal_type(found)
"""


@pytest.mark.timeout(120)
def test_async_context__steps_type_check_with_their_awaited_types(tmp_path: Path) -> None:
    module = tmp_path / "user_flow.py"
    module.write_text(USER_CODE)
    out, err, _ = api.run(["--strict", "--no-incremental", str(module)])
    revealed = [
        line.split("Revealed type is ")[1] for line in out.splitlines() if "Revealed" in line
    ]
    assert revealed == ['"dict[str, int]"', '"int"', '"orchestrator.context.Event | None"'], out
    assert " error: " not in out, out + err
