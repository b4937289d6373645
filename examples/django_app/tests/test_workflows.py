"""The Django project's function (examples/django_app/workflows.py) through
`orchestrator.testing`: `welcome-user` runs in the test's process and its `mark-welcomed` step
writes with the Django ORM to the test's own database (Django's default connection is pointed
at it, and the example's table made there, for each test); the e-mail is a mocked step."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from orchestrator import Orchestrator
from orchestrator.testing import TestEnv
from orchestrator.testing.env import server_url

# the settings need a database URL when the workflows module sets Django up; each test then
# points Django at its own database
os.environ.setdefault("DJANGO_DATABASE_URL", server_url())

from examples.django_app.workflows import app  # sets Django up: before the models

# isort: split
from django.db import connection

from examples.django_app.models import Signup
from examples.django_app.settings import database_from_url


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


@pytest.fixture
def env(orchestrator_env: TestEnv) -> Iterator[TestEnv]:
    """The test environment, with Django's default database being its database."""
    connection.close()
    before = dict(connection.settings_dict)
    connection.settings_dict.update(database_from_url(orchestrator_env.url))
    try:
        with connection.schema_editor() as editor:
            editor.create_model(Signup)
        yield orchestrator_env
    finally:
        connection.close()  # before the database is dropped
        connection.settings_dict.clear()
        connection.settings_dict.update(before)


def signup(email: str) -> dict[str, Any]:
    row = Signup.objects.create(email=email)
    return {"user_id": row.pk, "email": email}


def mail_service(to: str) -> dict[str, Any]:
    return {"sent": "welcome", "to": to, "message_id": "m-1"}


def test_welcome_user__emails_then_marks_the_row_welcomed_with_the_orm(env: TestEnv) -> None:
    email = env.mock_step("welcome-user", "welcome-email", side_effect=mail_service)
    user = signup(f"ada-{uuid.uuid4().hex[:8]}@example.com")

    env.send("user/signed_up", user)
    env.run_until_idle()

    (run,) = env.runs("welcome-user")
    assert run.status == "completed"
    assert [s.id for s in run.steps] == ["welcome-email", "mark-welcomed"]
    assert run.step("welcome-email").output["message_id"] == "m-1"
    assert [c.args for c in email.calls] == [(user["email"],)]
    welcomed_at = Signup.objects.get(pk=user["user_id"]).welcomed_at
    assert welcomed_at is not None
    assert run.output == {"user_id": user["user_id"], "welcomed_at": welcomed_at.isoformat()}
    assert run.step("mark-welcomed").output == welcomed_at.isoformat()


def test_welcome_user__a_failed_database_write_is_retried_without_a_second_email(
    env: TestEnv,
) -> None:
    email = env.mock_step("welcome-user", "welcome-email", side_effect=mail_service)
    env.fail_step("welcome-user", "mark-welcomed", times=2)
    user = signup(f"bob-{uuid.uuid4().hex[:8]}@example.com")

    env.send("user/signed_up", user)
    env.run_until_idle()
    assert Signup.objects.get(pk=user["user_id"]).welcomed_at is None  # first try failed
    env.advance(60)  # the two back-offs

    (run,) = env.runs("welcome-user")
    assert run.status == "completed"
    assert run.step("mark-welcomed").attempts == 3
    assert len(email.calls) == 1  # the recorded e-mail step is replayed, not sent again
    welcomed_at = Signup.objects.get(pk=user["user_id"]).welcomed_at
    assert welcomed_at is not None
    assert datetime.fromisoformat(run.output["welcomed_at"]) == welcomed_at


def test_welcome_user__each_signup_gets_its_own_run(env: TestEnv) -> None:
    env.mock_step("welcome-user", "welcome-email", side_effect=mail_service)
    users = [signup(f"u{n}-{uuid.uuid4().hex[:8]}@example.com") for n in range(3)]

    for user in users:
        env.send("user/signed_up", user)
    env.run_until_idle()

    runs = env.runs("welcome-user")
    assert sorted(r.output["user_id"] for r in runs) == sorted(u["user_id"] for u in users)
    assert all(r.status == "completed" for r in runs)
    assert Signup.objects.filter(welcomed_at__isnull=True).count() == 0
