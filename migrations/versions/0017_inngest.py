"""Inngest's protocol: event keys and the apps served by Inngest SDKs.

- `event_keys`: keys for the event API (`POST /e/{key}`). `key_hash` is the sha256 digest of
  the key (the key itself is shown once, when created); `revoked_at` is set when revoked (the
  row stays, so the name stays taken).
- `apps`: an app served by an Inngest SDK, as its last sync registered it: `url` (its serve
  handler), `sdk` and `framework` as the SDK named them, `functions` (the function
  configurations it sent, verbatim), `refused` (what of them this engine could not honour:
  `[{"function": …, "option": …, "reason": …}]`), `synced_at`. The functions themselves are
  rows of `orchestrator.functions` like any other (`options -> 'inngest'` names the app).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_UPGRADE = """
CREATE TABLE orchestrator.event_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL,
    key_hash     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT event_keys_name UNIQUE (name),
    CONSTRAINT event_keys_key_hash UNIQUE (key_hash)
);

CREATE TABLE orchestrator.apps (
    id         text PRIMARY KEY,
    url        text NOT NULL,
    sdk        text,
    framework  text,
    functions  jsonb NOT NULL DEFAULT '[]'::jsonb,
    refused    jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    synced_at  timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    op.execute(_UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE orchestrator.apps")
    op.execute("DROP TABLE orchestrator.event_keys")
