"""The metric families docs/metrics.md documents, and the families an exposition holds, in one
shape so that tests can compare them: {series name: (type, label names)}.

The documented name is the one a query uses: a counter's ends in `_total`. prometheus_client's
parsers name a counter's family without it, so `exported` puts it back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
Families = dict[str, tuple[str, frozenset[str]]]

# a row of the table of series: | `name` | type | `label`, `label` | meaning |
_ROW = re.compile(r"^\| `(orchestrator_[a-z_]+)` \| ([a-z]+) \|([^|]*)\|", re.MULTILINE)

# the counter OpenMetrics cannot name as a counter: its family name without `_total` is the
# name of the gauge next to it, so it goes out as `unknown` (runtime/collectors.py)
OPENMETRICS_UNKNOWN = frozenset({"orchestrator_step_threads_abandoned_total"})


def documented() -> Families:
    families: Families = {}
    for name, kind, labels in _ROW.findall(DOCS.read_text()):
        assert name not in families, f"{name} is documented twice"
        families[name] = (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return families


def exported(metrics: Iterable[Metric], *, openmetrics: bool = False) -> Families:
    """The families of a parsed exposition; a family without samples has no label names."""
    families: Families = {}
    for metric in metrics:
        name, kind = metric.name, metric.type
        if kind == "counter":
            name += "_total"
        elif openmetrics and kind == "unknown" and name in OPENMETRICS_UNKNOWN:
            kind = "counter"
        labels = frozenset(key for s in metric.samples for key in s.labels) - {"le"}
        assert name not in families, f"{name} is exported twice"
        families[name] = (kind, labels)
    return families


def differences(got: Families, want: Families) -> dict[str, object]:
    """What is missing, undocumented, or of another type or labels (labels are compared
    only where the exposition has series to show them)."""
    different = {
        name: (got[name], want[name])
        for name in set(got) & set(want)
        if got[name][0] != want[name][0] or (got[name][1] and got[name][1] != want[name][1])
    }
    return {
        "missing": sorted(set(want) - set(got)),
        "undocumented": sorted(set(got) - set(want)),
        "different": different,
    }


NONE = {"missing": [], "undocumented": [], "different": {}}
