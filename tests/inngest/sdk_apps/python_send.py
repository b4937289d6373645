"""Send events with the official Python SDK's client:
`python -m tests.inngest.sdk_apps.python_send '<JSON event or array>'`, with the INNGEST_*
variables (INNGEST_DEV, INNGEST_BASE_URL, INNGEST_EVENT_KEY). Prints {"ids": [...]}; on
failure prints {"error": "..."} and exits 1."""

from __future__ import annotations

import json
import sys

import inngest


def main() -> int:
    raw = json.loads(sys.argv[1])
    events = [
        inngest.Event(name=e["name"], data=e.get("data", {}), id=e.get("id", ""))
        for e in (raw if isinstance(raw, list) else [raw])
    ]
    client = inngest.Inngest(app_id="e2e-sender")
    try:
        ids = client.send_sync(events)
    except Exception as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps({"ids": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
