"""Serving Inngest SDK apps: a daemon with `inngest = true` takes on every function of every
synced app, and keeps up as apps sync again.

It reads the SDK-served functions at start-up and then every REFRESH_INTERVAL seconds, and
at once when a sync is notified (`orchestrator_apps`, sent by any daemon's gateway), so that
a sync on one daemon reaches the others. A new or changed function (by its version) is
handed to `adopt`, a removed one to `drop`: the daemon passes them on to its dispatcher, flow
claimer, cron scheduler and timeouts, and records what it serves in `daemons.functions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.runtime.service import Looper

if TYPE_CHECKING:  # the Inngest modules load only on daemons that serve SDK apps
    from orchestrator.functions import FunctionDef
    from orchestrator.inngest.remote import RemoteFunctions

REFRESH_INTERVAL = 5.0


class AppsRefresh(Looper):
    name = "apps"
    interval: float | None = REFRESH_INTERVAL

    def __init__(
        self,
        remote: RemoteFunctions,
        *,
        adopt: Callable[[dict[str, FunctionDef], list[str]], None],
        log: Any,
    ) -> None:
        super().__init__()
        self.remote = remote
        self.adopt = adopt
        self.log = log
        self.served: dict[str, FunctionDef] = {}  # by id, as last adopted

    def run(self, now: float) -> None:
        self.refresh()

    def refresh(self) -> bool:
        """Read the SDK-served functions; pass on what changed. Returns whether anything did."""
        found = self.remote.load_all()
        changed = {fid: f for fid, f in found.items() if self.served.get(fid) is not f}
        gone = sorted(set(self.served) - set(found))
        if not changed and not gone:
            return False
        self.adopt(changed, gone)
        self.served = found
        self.log.info(
            "SDK app functions refreshed", serving=len(found), changed=sorted(changed), gone=gone
        )
        return True
