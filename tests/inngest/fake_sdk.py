"""A small HTTP server that answers call requests as an Inngest SDK does, for the driver's
tests: each function is a Python "program" over `Tools` (step.run, parallel, sleep,
waitForEvent, invoke) that memoizes from the request's `steps`, reports the first new step
as an op (206), and returns its value (200). Hashed step ids, memo shapes, status codes and
headers follow the protocol notes (SDK spec, and the SDKs' sources)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orchestrator.inngest import signing

Program = Callable[["Tools", dict[str, Any]], Any]


class Report(BaseException):
    """Stop the function here and answer with `ops`."""

    def __init__(self, ops: list[dict[str, Any]]) -> None:
        super().__init__("report")
        self.ops = ops


class NonRetriable(Exception):
    """As the SDKs' NonRetriableError: answered 400 with X-Inngest-No-Retry: true."""


class RetryLater(Exception):
    def __init__(self, seconds: int) -> None:
        super().__init__(f"retry after {seconds}s")
        self.seconds = seconds


class StepFailed(Exception):
    """A step whose memo holds its final error, thrown into the function."""


def hashed(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


class Tools:
    def __init__(self, sdk: FakeSdk, request: dict[str, Any], target: str) -> None:
        self.sdk = sdk
        self.memo: dict[str, Any] = request["steps"]
        self.target = target
        self.seen: dict[str, int] = {}

    def _id(self, name: str) -> str:
        n = self.seen.get(name, 0)
        self.seen[name] = n + 1
        return hashed(name if n == 0 else f"{name}:{n}")

    def _memoized(self, h: str) -> Any:
        found = self.memo[h]
        if "error" in found:
            raise StepFailed(found["error"]["message"])
        return found["data"]

    def _execute(self, h: str, name: str, fn: Callable[[], Any]) -> dict[str, Any]:
        self.sdk.count(name)
        try:
            return {"id": h, "op": "StepRun", "name": name, "displayName": name, "data": fn()}
        except Exception as exc:
            error = {"name": type(exc).__name__, "message": str(exc)}
            return {"id": h, "op": "StepError", "name": name, "error": error}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        h = self._id(name)
        if h in self.memo:
            return self._memoized(h)
        if self.target not in ("step", h):
            raise Report([{"id": h, "op": "StepNotFound"}])
        raise Report([self._execute(h, name, fn)])

    def parallel(self, *branches: tuple[str, Callable[[], Any]]) -> list[Any]:
        ids = [self._id(name) for name, _ in branches]
        if self.target != "step":
            for h, (name, fn) in zip(ids, branches, strict=True):
                if h == self.target:
                    raise Report([self._execute(h, name, fn)])
        missing = [
            {"id": h, "op": "StepPlanned", "name": name, "displayName": name}
            for h, (name, _) in zip(ids, branches, strict=True)
            if h not in self.memo
        ]
        if missing:
            raise Report(missing)
        return [self._memoized(h) for h in ids]

    def sleep(self, name: str, duration: str) -> None:
        h = self._id(name)
        if h not in self.memo:
            raise Report([{"id": h, "op": "Sleep", "name": duration, "displayName": name}])

    def wait(self, name: str, event: str, timeout: str, if_: str | None = None) -> Any:
        h = self._id(name)
        if h in self.memo:
            return self._memoized(h)
        opts = {"event": event, "timeout": timeout} | ({"if": if_} if if_ else {})
        raise Report([{"id": h, "op": "WaitForEvent", "name": event, "opts": opts}])

    def invoke(self, name: str, function_id: str, data: dict[str, Any]) -> Any:
        h = self._id(name)
        if h in self.memo:
            return self._memoized(h)
        opts = {"function_id": function_id, "payload": {"data": data}}
        raise Report([{"id": h, "op": "InvokeFunction", "name": name, "opts": opts}])


class FakeSdk:
    """The app's HTTP server on 127.0.0.1 (a port of its own), serving `programs` by
    function id. `signing_key`: requests must be signed with it, and answers are signed
    with `response_key` (default: the same key)."""

    def __init__(self, app_id: str = "shop") -> None:
        self.app_id = app_id
        self.programs: dict[str, Program] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.executed: dict[str, int] = {}
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.signing_key: str | None = None
        self.response_key: str | None = None
        self.before_answer: Callable[[dict[str, Any]], None] | None = None
        self.api_base: str | None = None  # where a sync (PUT) registers: our gateway
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/inngest"

    def __enter__(self) -> FakeSdk:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def function(self, slug: str, **config: Any) -> Callable[[Program], Program]:
        def register(program: Program) -> Program:
            self.programs[f"{self.app_id}-{slug}"] = program
            self.configs[f"{self.app_id}-{slug}"] = config
            return program

        return register

    def count(self, name: str) -> None:
        with self.lock:
            self.executed[name] = self.executed.get(name, 0) + 1

    def register_payload(self) -> dict[str, Any]:
        """What this app's SDK would post on a sync."""
        functions = []
        for fid, config in self.configs.items():
            cfg = dict(config)
            functions.append(
                {
                    "id": fid,
                    "name": fid,
                    "triggers": cfg.pop("triggers", [{"event": f"{fid}/go"}]),
                    "steps": {
                        "step": {
                            "id": "step",
                            "name": "step",
                            "runtime": {
                                "type": "http",
                                "url": f"{self.url}?fnId={fid}&stepId=step",
                            },
                            "retries": {"attempts": cfg.pop("retries", 3)},
                        }
                    },
                    **cfg,
                }
            )
        return {
            "url": self.url,
            "appName": self.app_id,
            "sdk": "fake:v0.1",
            "v": "0.1",
            "deployType": "ping",
            "functions": functions,
        }

    def answer(
        self, query: dict[str, str], raw: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        request = json.loads(raw)
        call = {
            "fn": query.get("fnId"),
            "step": query.get("stepId"),
            "body": request,
            "headers": headers,
        }
        with self.lock:
            self.calls.append(call)
        if self.before_answer is not None:
            self.before_answer(call)
        if self.signing_key is not None:
            try:
                signing.verify(
                    signing.canonical_json(request),
                    headers.get("x-inngest-signature"),
                    [self.signing_key],
                )
            except Exception:
                return 401, {}, {"message": "Unauthorized"}
        program = self.programs[query["fnId"]]
        tools = Tools(self, request, query.get("stepId", "step"))
        try:
            return 200, {}, program(tools, request["event"])
        except Report as report:
            return 206, {}, report.ops
        except NonRetriable as exc:
            return (
                400,
                {"X-Inngest-No-Retry": "true"},
                {"name": "NonRetriableError", "message": str(exc)},
            )
        except RetryLater as exc:
            return (
                500,
                {"X-Inngest-No-Retry": "false", "Retry-After": str(exc.seconds)},
                {"name": "RetryAfterError", "message": str(exc)},
            )
        except Exception as exc:
            return (
                500,
                {"X-Inngest-No-Retry": "false"},
                {"name": type(exc).__name__, "message": str(exc)},
            )


def _handler(sdk: FakeSdk) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = sdk.answer(query, raw, headers)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Inngest-Sdk", "fake:v0.1")
            key = sdk.response_key or sdk.signing_key
            if key is not None:
                self.send_header("X-Inngest-Signature", signing.sign(data, key))
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            import httpx

            assert sdk.api_base is not None
            answer = httpx.post(f"{sdk.api_base}/fn/register", json=sdk.register_payload())
            said = answer.json()
            body = {
                "message": said.get("error") or "Successfully synced.",
                "modified": bool(said.get("modified")),
            }
            self._json(200 if answer.status_code == 200 else 500, body)

        def do_GET(self) -> None:
            self._json(200, {"mode": "dev", "function_count": len(sdk.programs)})

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler
