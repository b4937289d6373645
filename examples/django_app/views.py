"""`POST /signup`: the signup row and its `user/signed_up` event, in one transaction.

`app.send(..., conn=...)` writes the event on the connection it is given, inside that
connection's open transaction (the outbox pattern): it commits with the row, or rolls back
with it. `?fail_after_send=true` raises after sending, to show the rollback.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from examples.django_app.models import Signup
from examples.django_app.workflows import app


class SignupAbandonedError(Exception):
    pass


def outbox_connection() -> Any:
    """The psycopg connection under Django's (Django 5 with psycopg 3), in the transaction
    `atomic()` opened."""
    connection.ensure_connection()
    return connection.connection


@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    try:
        email = str(json.loads(request.body)["email"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'send a JSON object with "email"'}, status=400)
    try:
        with transaction.atomic():
            user = Signup.objects.create(email=email)
            data = {"user_id": user.pk, "email": email}
            event_id = app.send("user/signed_up", data, conn=outbox_connection())
            if request.GET.get("fail_after_send") == "true":
                raise SignupAbandonedError(
                    "failed after sending; the signup and its event rolled back"
                )
    except SignupAbandonedError as exc:
        return JsonResponse({"error": str(exc)}, status=500)
    except IntegrityError:
        return JsonResponse({"error": f"{email} has already signed up"}, status=409)
    return JsonResponse({"user_id": user.pk, "event_id": event_id}, status=201)
