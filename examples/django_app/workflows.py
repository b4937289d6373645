"""The project's durable functions, served by `orchestrator run --app
examples.django_app.workflows:app` and imported by the view to send events.

`welcome-user` is a plain `def` function: it runs on a worker thread, where the Django ORM
works as in any view. Importing this module sets Django up (the daemon does not otherwise).
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.apps import apps

from orchestrator import Context, Orchestrator, event

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
if not apps.ready:
    django.setup()

# after django.setup(): the models need the settings and the app registry
from django.db import close_old_connections
from django.utils import timezone

from examples.django_app.models import Signup

app = Orchestrator()


def send_welcome_email(email: str) -> dict[str, Any]:
    return {"sent": "welcome", "to": email}  # (pretend) a mail service's answer


def mark_welcomed(user_id: int) -> str:
    # outside a request nothing closes this thread's connection: drop it if it went stale
    # (a database restart) or outlived CONN_MAX_AGE, before and after using it
    close_old_connections()
    try:
        now = timezone.now()
        Signup.objects.filter(pk=user_id).update(welcomed_at=now)
    finally:
        close_old_connections()
    return now.isoformat()


@app.function("welcome-user", trigger=event("user/signed_up"), retries=5)
def welcome_user(ctx: Context) -> dict[str, Any]:
    user = ctx.event.data
    ctx.step.run("welcome-email", send_welcome_email, user["email"])
    welcomed_at = ctx.step.run("mark-welcomed", mark_welcomed, user["user_id"])
    return {"user_id": user["user_id"], "welcomed_at": welcomed_at}
