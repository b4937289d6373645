"""Import the user's app from `package.module:attr`."""

from __future__ import annotations

import importlib
import os
import sys

from orchestrator.app import Orchestrator
from orchestrator.errors import AppLoadError


def load_app(path: str) -> Orchestrator:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(
            f"app {path!r} is not of the form 'package.module:attr' (e.g. 'myapp.jobs:app')"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, the current directory is importable
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                f"cannot import module {module_name!r} for app {path!r}: no such module "
                f"(searched the current directory and sys.path)"
            ) from None
        raise AppLoadError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    app = getattr(module, attr, None)
    if app is None:
        raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, Orchestrator):
        raise AppLoadError(f"{path!r} is a {type(app).__name__}, not an Orchestrator")
    return app
