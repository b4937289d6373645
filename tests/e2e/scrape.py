"""Read a daemon's HTTP endpoints as a monitoring system would."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess
from tests.metrics_docs import Families, exported

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def listening(daemon: DaemonProcess, timeout: float = 60.0) -> str:
    """The base URL of the daemon's listener, from its "http listening" log line (the tests
    configure port 0, so the daemon picks a free one)."""

    def address() -> str | None:
        for line in daemon.log_events():
            if line.get("event") == "http listening":
                return str(line["address"])
        return None

    return "http://" + eventually(address, timeout=timeout, what="http listening")


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        exc.close()
        return exc.code, body


def parse(text: str) -> Samples:
    """Samples of a Prometheus text exposition, read by prometheus_client's own parser,
    checking that every sample belongs to a family announced by # TYPE and that no series
    repeats."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type != "unknown", f"{family.name} has no # TYPE"
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"series repeats: {key!r}"
            samples[key] = sample.value
    return samples


def scrape(base: str) -> Samples:
    status, body = fetch(base + "/metrics")
    assert status == 200, body
    return parse(body)


def families(base: str, *, openmetrics: bool = False) -> Families:
    """The families of one scrape, in OpenMetrics if asked for, else in the text format."""
    request = urllib.request.Request(base + "/metrics")
    if openmetrics:
        request.add_header("Accept", "application/openmetrics-text; version=1.0.0")
    with urllib.request.urlopen(request, timeout=5) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    if openmetrics:
        assert content_type.startswith("application/openmetrics-text; version=1.0.0"), content_type
        return exported(parse_openmetrics(text), openmetrics=True)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8", content_type
    return exported(text_string_to_metric_families(text))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
