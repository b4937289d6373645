"""What cannot run is refused when it is registered, with a message that says what to write
instead: generators, a plain def that awaits a step, a plain def whose step body is async."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import Context, Orchestrator
from orchestrator.context import AsyncContext
from orchestrator.errors import RegistrationError


async def fetch_async() -> int:
    return 1


def test_generator_function__refused() -> None:
    app = Orchestrator()
    with pytest.raises(RegistrationError) as caught:

        @app.function("gen")
        def gen(ctx: Context) -> Any:
            yield ctx.step.run("a", lambda: 1)

    assert str(caught.value) == (
        "function 'gen': 'test_generator_function__refused.<locals>.gen' is a generator (it "
        "yields); a function returns its result once. Make each piece of work a step "
        "(`ctx.step.run`) and return the results, as a list if need be"
    )


def test_async_generator_function__refused() -> None:
    app = Orchestrator()
    with pytest.raises(RegistrationError, match=r"is an async generator \(it yields\)"):

        @app.function("agen")
        async def agen(ctx: AsyncContext) -> Any:
            yield await ctx.step.run("a", fetch_async)


def test_plain_def_awaiting_a_step__refused() -> None:
    app = Orchestrator()
    with pytest.raises(RegistrationError) as caught:

        @app.function("awaits")
        def awaits(ctx: Context) -> Any:
            async def helper() -> Any:
                return await ctx.step.run("a", fetch_async)  # type: ignore[misc]

            return helper()

    message = str(caught.value)
    assert message.startswith("function 'awaits': ")
    assert message.endswith(
        "is a plain def but awaits a step at line 4; declare it `async def` so that its "
        "steps can be awaited"
    )


def test_plain_def_with_an_async_step_body__refused() -> None:
    app = Orchestrator()
    with pytest.raises(RegistrationError) as caught:

        @app.function("mixed")
        def mixed(ctx: Context) -> Any:
            return ctx.step.run("fetch", fetch_async)

    assert str(caught.value) == (
        "function 'mixed': 'test_plain_def_with_an_async_step_body__refused.<locals>.mixed' "
        "is a plain def, and its step 'fetch' has the async def body 'fetch_async', which it "
        "cannot await. Make the function `async def` and write `await ctx.step.run(...)`, or "
        "give the step a plain function as its body"
    )


def test_async_functions_and_handlers__registered_as_async() -> None:
    app = Orchestrator()

    async def on_failure(ctx: AsyncContext) -> None:
        await ctx.step.run("alert", fetch_async)

    @app.function("ok", on_failure=on_failure)
    async def ok(ctx: AsyncContext) -> int:
        return int(await ctx.step.run("fetch", fetch_async))

    @app.function("plain")
    def plain(ctx: Context) -> int:
        return int(ctx.step.run("one", lambda: 1))

    flags = {fid: f.is_async for fid, f in app.functions.items()}
    assert flags == {"ok": True, "ok:on-failure": True, "plain": False}


def test_a_closure_over_a_name_bound_later__registers() -> None:
    def build() -> Orchestrator:
        app = Orchestrator()

        @app.function("f")
        def f(ctx: Context) -> int:
            return helper(1)

        def helper(n: int) -> int:  # bound after the function is registered
            return n

        return app

    assert list(build().functions) == ["f"]
