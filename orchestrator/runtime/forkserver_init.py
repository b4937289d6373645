"""Imported first by the worker fork server, and only there.

The fork server must outlive a SIGTERM or SIGINT sent to the whole process group (systemd's
default KillMode, Ctrl-C in a terminal): the daemon drains its workers on such a signal, and
the workers die with the fork server. It ends when the daemon does (its pipe closes).
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
