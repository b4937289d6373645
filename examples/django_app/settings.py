"""Settings of the example project: `DJANGO_SETTINGS_MODULE=examples.django_app.settings`.

The database is `DJANGO_DATABASE_URL`, or `ORCHESTRATOR_DATABASE_URL` when that is unset:
the outbox needs the view's rows and the orchestrator's events in one database.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def database_from_url(url: str) -> dict[str, Any]:
    """`postgresql://user:password@host:port/name?host=/socket/dir` as Django's DATABASES."""
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.pop("host", parts.hostname or ""),
        "PORT": str(parts.port or query.pop("port", "")),
        "OPTIONS": query,
    }


_URL = os.environ.get("DJANGO_DATABASE_URL") or os.environ.get("ORCHESTRATOR_DATABASE_URL")
if not _URL:
    raise RuntimeError("set DJANGO_DATABASE_URL (or ORCHESTRATOR_DATABASE_URL) to the database")

DATABASES = {"default": database_from_url(_URL)}
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["examples.django_app"]
MIDDLEWARE: list[str] = []  # a JSON API without sessions or CSRF cookies
ROOT_URLCONF = "examples.django_app.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# errors on the console whatever DEBUG says (Django's default prints them only with DEBUG on)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
