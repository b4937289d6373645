"""The app `orchestrator dev` serves when given none: no Python functions, only the SDK
apps that sync with it."""

from __future__ import annotations

from orchestrator.app import Orchestrator

app = Orchestrator()
