"""What /metrics exports, against what docs/metrics.md documents, in both formats, and that a
scrape never reaches the database.

Before and after: the metrics used to be rendered by a hand-written registry. `BEFORE` is the
list of families that renderer exported (captured from it, with every series present), and it
is the documented list; the families prometheus_client exports now must be the same.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from orchestrator.config import load_config
from orchestrator.db.database import Database
from orchestrator.runtime.endpoints import Endpoints
from orchestrator.runtime.health import Health
from orchestrator.runtime.metrics import DaemonMetrics, StepTally
from orchestrator.runtime.telemetry import Telemetry
from tests.metrics_docs import Families, documented, exported

pytestmark = pytest.mark.timeout(30)

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# the answer's content type; newer prometheus_client versions add "; escaping=underscores"
OPENMETRICS_ANSWER = "application/openmetrics-text; version=1.0.0"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
# what Prometheus 2.x sends by default when it scrapes
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

_F = frozenset
BEFORE: Families = {
    "orchestrator_build_info": ("gauge", _F({"app_version", "version"})),
    "orchestrator_daemon_up": ("gauge", _F()),
    "orchestrator_daemon_leader": ("gauge", _F()),
    "orchestrator_daemon_start_time_seconds": ("gauge", _F()),
    "orchestrator_daemon_last_heartbeat_timestamp_seconds": ("gauge", _F()),
    "orchestrator_daemon_last_tick_timestamp_seconds": ("gauge", _F()),
    "orchestrator_worker_threads": ("gauge", _F()),
    "orchestrator_runs_executing": ("gauge", _F()),
    "orchestrator_runs_started_total": ("counter", _F({"function"})),
    "orchestrator_runs_finished_total": ("counter", _F({"function", "status"})),
    "orchestrator_step_duration_seconds": ("histogram", _F({"function"})),
    "orchestrator_step_retries_total": ("counter", _F({"function"})),
    "orchestrator_run_retries_total": ("counter", _F({"function"})),
    "orchestrator_step_threads_abandoned_total": ("counter", _F({"function"})),
    "orchestrator_step_threads_abandoned": ("gauge", _F({"function"})),
    "orchestrator_runs_rescued_total": ("counter", _F({"reason"})),
    "orchestrator_events_ingested_total": ("counter", _F()),
    "orchestrator_due_runs": ("gauge", _F({"function"})),
    "orchestrator_due_lag_seconds": ("gauge", _F({"function"})),
    "orchestrator_due_probe_timestamp_seconds": ("gauge", _F()),
    "orchestrator_unserved_runs": ("gauge", _F({"function"})),
}


@dataclass(frozen=True)
class _Due:
    function_id: str
    depth: int
    lag_seconds: float


@dataclass(frozen=True)
class _Unserved:
    function_id: str
    runs: int


def _metrics() -> DaemonMetrics:
    """A leader's metrics with every family holding series (so that its labels show)."""
    metrics = DaemonMetrics(
        ["a", "b"],
        app_version="v1",
        health=Health(tick_within=10, heartbeat_within=5),
        leader=lambda: True,
        executing=lambda: 2,
        threads=9,
    )
    tally = StepTally()
    tally.step_ran("a", 0.3)
    tally.thread_abandoned("a")
    tally.run_finished("a", "completed")
    delta = tally.take()
    assert delta is not None
    metrics.merge(delta)
    metrics.set_backlog([_Due("a", 3, 1.5)], 1700000000.0)
    metrics.set_unserved([_Unserved("gone", 4)])
    return metrics


def _differences(got: Families, want: Families) -> dict[str, Any]:
    return {
        "missing": sorted(set(want) - set(got)),
        "undocumented": sorted(set(got) - set(want)),
        "different": {n: (got[n], want[n]) for n in set(got) & set(want) if got[n] != want[n]},
    }


def test_docs__document_the_families_the_old_renderer_exported() -> None:
    assert _differences(documented(), BEFORE) == {
        "missing": [],
        "undocumented": [],
        "different": {},
    }


@pytest.mark.parametrize("accept", ["", "text/plain", "text/html,*/*;q=0.8"])
def test_export__text_format_holds_exactly_the_documented_families(accept: str) -> None:
    body, content_type = _metrics().exposition(accept)
    assert content_type == TEXT
    got = exported(parse_text(body.decode()))
    assert _differences(got, documented()) == {"missing": [], "undocumented": [], "different": {}}


def test_export__text_format_1_0_0_when_asked_for_by_version() -> None:
    body, content_type = _metrics().exposition("text/plain; version=1.0.0")
    assert content_type.startswith("text/plain; version=1.0.0")
    got = exported(parse_text(body.decode()))
    assert _differences(got, documented()) == {"missing": [], "undocumented": [], "different": {}}


@pytest.mark.parametrize("accept", [OPENMETRICS, "application/openmetrics-text", PROMETHEUS_ACCEPT])
def test_export__openmetrics_holds_exactly_the_documented_families(accept: str) -> None:
    body, content_type = _metrics().exposition(accept)
    assert content_type.startswith(OPENMETRICS_ANSWER)
    text = body.decode()
    assert text.endswith("# EOF\n")
    got = exported(parse_openmetrics(text), openmetrics=True)
    assert _differences(got, documented()) == {"missing": [], "undocumented": [], "different": {}}


def test_export__both_formats_carry_the_same_series_and_values() -> None:
    metrics = _metrics()
    text = _samples(parse_text(metrics.exposition("")[0].decode()))
    om = _samples(parse_openmetrics(metrics.exposition(OPENMETRICS)[0].decode()))
    assert text == om
    assert text[("orchestrator_step_threads_abandoned_total", (("function", "a"),))] == 1
    assert text[("orchestrator_step_threads_abandoned", (("function", "a"),))] == 1
    bucket = ("orchestrator_step_duration_seconds_bucket", (("function", "a"), ("le", "0.5")))
    assert text[bucket] == 1
    assert not [name for name, _ in text if name.endswith("_created")]


def _samples(families: Iterator[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }


# -- over HTTP, wired as the daemon wires it -----------------------------------------------


class _Log:
    def info(self, message: str, **fields: Any) -> None:
        pass

    def exception(self, message: str, **fields: Any) -> None:
        raise AssertionError(f"the listener failed: {message} {fields}")


def _get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url)
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


@pytest.fixture
def silent_database() -> Iterator[tuple[socket.socket, str]]:
    """A port that takes connections into its backlog and never answers: any statement
    sent there would hang until its connect timeout (10 s), and leave a connection behind."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        yield listener, f"postgresql://postgres@127.0.0.1:{port}/postgres"


def test_scrape__never_reaches_the_database(silent_database: tuple[socket.socket, str]) -> None:
    listener, url = silent_database
    config = load_config(env={"ORCHESTRATOR_HTTP_ADDRESS": "127.0.0.1:0"})
    telemetry = Telemetry(
        config,
        function_ids=["a"],
        app_version="v1",
        db=Database(url, pool_size=1),
        leader=lambda: True,
        executing=lambda: 0,
        log=_Log(),
    )
    telemetry.listen()
    try:
        assert telemetry.endpoints is not None
        host, port = telemetry.endpoints.bound()
        for _ in range(5):
            for accept, content_type, parse in [
                (None, TEXT, parse_text),
                (OPENMETRICS, OPENMETRICS_ANSWER, parse_openmetrics),
            ]:
                status, got_type, body = _get(f"http://{host}:{port}/metrics", accept)
                assert status == 200 and got_type.startswith(content_type), got_type
                assert "orchestrator_runs_started_total" in exported(parse(body))
    finally:
        telemetry.close()
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):  # nobody connected to the database
        listener.accept()


def test_endpoints__serve_the_daemons_metrics_in_the_format_asked_for() -> None:
    metrics = _metrics()
    health = Health(tick_within=10, heartbeat_within=5)
    endpoints = Endpoints(("127.0.0.1", 0), metrics=metrics.exposition, health=health, log=_Log())
    endpoints.start()
    try:
        host, port = endpoints.bound()
        base = f"http://{host}:{port}/metrics"
        status, content_type, body = _get(base, PROMETHEUS_ACCEPT)
        assert status == 200 and content_type.startswith(OPENMETRICS_ANSWER), content_type
        got = exported(parse_openmetrics(body), openmetrics=True)
        assert set(got) == set(documented())
        status, content_type, body = _get(base)
        assert (status, content_type) == (200, TEXT)
        assert set(exported(parse_text(body))) == set(documented())
    finally:
        endpoints.stop()
