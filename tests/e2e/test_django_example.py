"""The Django example (examples/django_app), driven over HTTP: `django runserver` serving the
view and the real daemon serving its workflows, both subprocesses on one test database.

The view creates its row and sends `user/signed_up` on Django's own connection inside
`transaction.atomic()`: both commit, or (when the view raises after sending) neither.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.e2e.harness import count, finished_run, scalar
from tests.e2e.webserver import ExampleSite as Site
from tests.e2e.webserver import python, serve_example

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SETTINGS = "--settings=examples.django_app.settings"


@pytest.fixture(scope="module")
def site(
    server_url: str, template_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with serve_example(
        server_url,
        template_name,
        tmp_path_factory.mktemp("django-example"),
        app="examples.django_app.workflows:app",
        setup=[python("-m", "django", "migrate", "--run-syncdb", SETTINGS)],  # its table
        server=lambda port: python("-m", "django", "runserver", "--noreload", port, SETTINGS),
        probe="/signup",
        extra=lambda url, port: {
            "DJANGO_DATABASE_URL": url,
            "DJANGO_RUNSERVER_HIDE_WARNING": "true",
        },
    ) as served:
        yield served


def test_signup__row_and_event_commit_together__plain_def_run_completes(site: Site) -> None:
    email = f"ada-{uuid.uuid4().hex[:8]}@example.com"

    response = site.http.post("/signup", json={"email": email})

    assert response.status_code == 201, site.web.logs()
    user_id, event_id = response.json()["user_id"], response.json()["event_id"]
    run = finished_run(site.url, event_id)
    assert run["status"] == "completed", run
    assert run["output"]["user_id"] == user_id
    welcomed = scalar(site.url, "SELECT welcomed_at FROM public.signups WHERE id = %s", (user_id,))
    assert welcomed is not None  # the step wrote it with the Django ORM
    assert datetime.fromisoformat(run["output"]["welcomed_at"]) == welcomed
    again = site.http.post("/signup", json={"email": email})
    assert again.status_code == 409  # the row was committed


def test_signup__raising_after_send__neither_the_row_nor_the_event_is_kept(site: Site) -> None:
    email = f"bob-{uuid.uuid4().hex[:8]}@example.com"

    response = site.http.post("/signup?fail_after_send=true", json={"email": email})

    assert response.status_code == 500, site.web.logs()
    assert "rolled back" in response.json()["error"]
    rows = "SELECT count(*) FROM public.signups WHERE email = %s"
    events = "SELECT count(*) FROM orchestrator.events WHERE data ->> 'email' = %s"
    assert count(site.url, rows, (email,)) == 0
    assert count(site.url, events, (email,)) == 0
    kept = site.http.post("/signup", json={"email": email})  # the flag made the difference
    assert kept.status_code == 201, kept.text
    assert count(site.url, events, (email,)) == 1
    assert finished_run(site.url, kept.json()["event_id"])["status"] == "completed"
