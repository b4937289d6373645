"""Fixtures of the Inngest protocol tests: the gateway's ASGI app on a test database."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

from orchestrator.config import Config
from orchestrator.db.database import Database
from orchestrator.inngest.gateway import GatewaySettings, create_app

SIGNING_KEY = "signkey-test-8d9e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6"


class AppClient:
    """Requests to an ASGI app in this process (httpx.ASGITransport), one event loop each."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        content = kwargs.get("content")
        if content is not None and not isinstance(content, bytes | str):
            kwargs["content"] = _stream(content)  # chunks, without a Content-Length
        return asyncio.run(self._send(method, url, **kwargs))

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, url, **kwargs)


async def _stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


MakeClient = Callable[..., AppClient]


@pytest.fixture
def gateway(db: Database, db_url: str) -> Iterator[MakeClient]:
    """`gateway(**config)`: a client of the gateway app with those config keys (signed mode
    with SIGNING_KEY by default)."""

    def make(**keys: object) -> AppClient:
        base = Config(database_url=db_url, inngest=True, inngest_signing_key=SIGNING_KEY)
        return AppClient(create_app(GatewaySettings(dataclasses.replace(base, **keys), db)))

    yield make
