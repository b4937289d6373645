"""Read a daemon's HTTP endpoints as a monitoring system would."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_SUFFIXES = ("_bucket", "_sum", "_count")


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
    """Samples of a Prometheus text exposition, checking that every sample belongs to a
    family announced by # HELP and # TYPE lines, and that no series repeats."""
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        family = name
        if name not in types:
            family = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
        assert family in types and family in helped, f"{name} has no # HELP/# TYPE"
        key = (name, tuple(sorted(_LABEL.findall(labels or ""))))
        assert key not in samples, f"series repeats: {line!r}"
        samples[key] = float(value)
    return samples


def scrape(base: str) -> Samples:
    status, body = fetch(base + "/metrics")
    assert status == 200, body
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
