"""Masking database passwords in URLs and in text the engine did not write."""

from __future__ import annotations

import pytest

from orchestrator.redact import redact_url, scrub, url_password, url_secrets

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("url", "shown", "password"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app", "s3cret"),
        ("postgres://app:p%40ss@db/app", "postgres://app:***@db/app", "p%40ss"),
        ("postgresql+psycopg://app:x/y@db/app", "postgresql+psycopg://app:***@db/app", "x/y"),
        ("postgresql://:pw@db/app", "postgresql://:***@db/app", "pw"),
        (
            "postgresql://app:pw@h1:5432,h2:5433/app",
            "postgresql://app:***@h1:5432,h2:5433/app",
            "pw",
        ),
        (
            "postgresql://db/app?sslmode=require&password=pw&user=app",
            "postgresql://db/app?sslmode=require&password=***&user=app",
            "pw",
        ),
        ("postgresql://app@db:5432/app", "postgresql://app@db:5432/app", ""),
        (
            "postgresql://postgres:@/postgres?host=/tmp/s",
            "postgresql://postgres:@/postgres?host=/tmp/s",
            "",
        ),
        ("postgresql://db:5432/app", "postgresql://db:5432/app", ""),
        ("not a url", "not a url", ""),
    ],
)
def test_redact_url__masks_only_the_password(url: str, shown: str, password: str) -> None:
    assert redact_url(url) == shown
    assert url_password(url) == password


def test_url_secrets__as_written_and_decoded() -> None:
    assert url_secrets("postgresql://app:p%40ss@db/app") == ["p%40ss", "p@ss"]
    assert url_secrets("postgresql://app:pw@db/app?password=other") == ["pw", "other"]
    assert url_secrets("postgresql://app@db/app") == []


def test_scrub__masks_every_occurrence_longest_secret_first() -> None:
    text = 'invalid percent-encoded token: "ab%zzcd"; also ab%zz'
    assert scrub(text, ["ab%zz", "ab%zzcd"]) == 'invalid percent-encoded token: "***"; also ***'
    assert scrub("nothing here", ["", "pw"]) == "nothing here"
