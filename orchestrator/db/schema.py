"""The `orchestrator` schema as SQLAlchemy Core metadata.

This is the public SQL contract (documented in docs/sql.md). Alembic migrations create it; a
test compares this metadata with the migrated database so the two never drift.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB, UUID

from orchestrator.statuses import RUN_STATUSES

SCHEMA = "orchestrator"
RUN_ORIGINS = ("replay", "fork")
ACTIVE_DUE_STATUSES = ("queued", "sleeping", "waiting")
ACTIVE_STATUSES = ("queued", "running", "sleeping", "waiting")
LIMITER_KINDS = ("throttle", "rate_limit")
STEP_STATUSES = ("completed", "failed", "retrying", "sleeping", "waiting")
WAIT_KINDS = ("event", "cancel")

metadata = MetaData(schema=SCHEMA)


def _ts(name: str, *, nullable: bool = True, default_now: bool = False) -> Column[object]:
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=text("now()") if default_now else None,
    )


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


events = Table(
    "events",
    metadata,
    Column("id", Text, primary_key=True, server_default=text("(gen_random_uuid())::text")),
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column("name", Text, nullable=False),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _ts("ts", nullable=False, default_now=True),
    _ts("received_at", nullable=False, default_now=True),
    _ts("ingested_at"),
    Column("error", Text),
    # the sender's W3C trace context, {"traceparent": ..., "tracestate": ...} (migration 0016)
    Column("trace_context", JSONB),
    # what the sender gave beyond id, name, data and ts: Inngest's `user` and `v` (0018)
    Column("extra", JSONB),
    CheckConstraint("length(id) BETWEEN 1 AND 256", name="events_id_length"),
    CheckConstraint("length(name) BETWEEN 1 AND 256", name="events_name_length"),
    CheckConstraint("jsonb_typeof(data) = 'object'", name="events_data_is_object"),
    CheckConstraint(
        "extra IS NULL OR jsonb_typeof(extra) = 'object'", name="events_extra_is_object"
    ),
    Index("events_pending", "seq", postgresql_where=text("ingested_at IS NULL")),
    Index("events_seq", "seq", unique=True),
    Index("events_name_received", "name", "received_at"),
    Index("events_name_seq", "name", "seq"),
    Index("events_parked", "seq", postgresql_where=text("error IS NOT NULL")),
)

functions = Table(
    "functions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("triggers", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("options", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("version", Text, nullable=False, server_default=text("''")),
    _ts("created_at", nullable=False, default_now=True),
    _ts("updated_at", nullable=False, default_now=True),
    _ts("last_served_at"),
)

schedules = Table(
    "schedules",
    metadata,
    Column(
        "function_id",
        Text,
        ForeignKey("orchestrator.functions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("cron", Text, nullable=False),
    Column("tz", Text, nullable=False, server_default=text("'UTC'")),
    _ts("next_fire_at", nullable=False),
    _ts("last_fired_at"),
    Column("last_run_id", UUID(as_uuid=False)),
    _ts("updated_at", nullable=False, default_now=True),
    Index("schedules_due", "next_fire_at"),
)

daemons = Table(
    "daemons",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("lock_key", Integer, Identity(always=True), nullable=False),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("app", Text, nullable=False, server_default=text("''")),
    Column("version", Text, nullable=False, server_default=text("''")),
    Column("workers", Integer, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'running'")),
    Column("is_leader", Boolean, nullable=False, server_default=text("false")),
    _ts("started_at", nullable=False, default_now=True),
    _ts("heartbeat_at", nullable=False, default_now=True),
    _ts("stopped_at"),
    Column("functions", ARRAY(Text)),
    CheckConstraint(_in("status", ("running", "stopping", "stopped", "dead")), "daemons_status"),
    Index("daemons_lock_key", "lock_key", unique=True),
)

leader = Table(
    "leader",
    metadata,
    Column("name", Text, primary_key=True, server_default=text("'leader'")),
    Column("daemon_id", UUID(as_uuid=False), nullable=False),
    _ts("elected_at", nullable=False, default_now=True),
    _ts("expires_at", nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("function_id", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'queued'")),
    Column("event_id", Text),
    Column("events", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("idempotency_key", Text),
    Column("parent_run_id", UUID(as_uuid=False)),
    Column("output", JSONB),
    Column("error", JSONB),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("recoveries", Integer, nullable=False, server_default=text("0")),
    Column("crashes", Integer, nullable=False, server_default=text("0")),
    _ts("due_at", nullable=False, default_now=True),
    Column("lease_owner", UUID(as_uuid=False)),
    Column("lease_token", UUID(as_uuid=False)),
    _ts("lease_expires_at"),
    _ts("created_at", nullable=False, default_now=True),
    _ts("started_at"),
    _ts("updated_at", nullable=False, default_now=True),
    _ts("finished_at"),
    _ts("cancel_requested_at"),
    # false: a cancellation requested by UPDATE leaves the run's invoked runs running
    Column("cancel_children", Boolean, nullable=False, server_default=text("true")),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("concurrency_keys", ARRAY(Text)),
    Column("throttle_key", Text),
    Column("singleton_key", Text),
    Column("flow_key", Text),
    Column("origin", Text),
    Column("origin_run_id", UUID(as_uuid=False)),
    Column("resumes", Integer, nullable=False, server_default=text("0")),
    # someone awaits the run's end (RunHandle.result): the trigger runs_finished_notify
    # (migration 0009) sends pg_notify('orchestrator_run_finished', id) when it ends
    Column("awaited", Boolean, nullable=False, server_default=text("false")),
    # function-level retries taken (migration 0010); runs.error holds the failed attempt's
    # error while one is pending
    Column("retries", Integer, nullable=False, server_default=text("0")),
    # what the run published with ctx.set_state (migration 0013)
    Column("state", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # the trace context its spans are children of (migration 0016)
    Column("trace_context", JSONB),
    CheckConstraint(_in("status", RUN_STATUSES), name="runs_status"),
    CheckConstraint("jsonb_typeof(state) = 'object'", name="runs_state_is_object"),
    CheckConstraint(_in("origin", RUN_ORIGINS), name="runs_origin"),
    Index(
        "runs_due",
        "due_at",
        "id",
        postgresql_where=text(_in("status", ACTIVE_DUE_STATUSES)),
    ),
    Index(
        "runs_due_suspects",
        "due_at",
        "id",
        postgresql_where=text(_in("status", ACTIVE_DUE_STATUSES) + " AND crashes > 0"),
    ),
    Index("runs_leased", "lease_expires_at", postgresql_where=text("status = 'running'")),
    Index("runs_lease_owner", "lease_owner", postgresql_where=text("status = 'running'")),
    Index(
        "runs_idempotency",
        "function_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("runs_function_created", "function_id", "created_at"),
    Index("runs_created", "created_at"),
    # text_pattern_ops: an event id prefix (LIKE 'abc%') uses it whatever the collation
    Index(
        "runs_event",
        "event_id",
        postgresql_ops={"event_id": "text_pattern_ops"},
        postgresql_where=text("event_id IS NOT NULL"),
    ),
    # the dashboard's runs page (db/ui.py, migration 0015)
    Index("runs_status_created", "status", "created_at"),
    Index("runs_function_status_created", "function_id", "status", "created_at"),
    Index(
        "runs_event_name_created",
        text("((events -> 0) ->> 'name')"),
        "created_at",
        postgresql_where=text("((events -> 0) ->> 'name') IS NOT NULL"),
    ),
    Index(
        "runs_function_finished",
        "function_id",
        "finished_at",
        postgresql_include=["started_at"],
        postgresql_where=text("status = 'completed'"),
    ),
    Index("runs_parent", "parent_run_id", postgresql_where=text("parent_run_id IS NOT NULL")),
    Index("runs_origin_run", "origin_run_id", postgresql_where=text("origin_run_id IS NOT NULL")),
    Index(
        "runs_cancel_requested",
        "id",
        postgresql_where=text(
            "cancel_requested_at IS NOT NULL AND " + _in("status", ACTIVE_STATUSES)
        ),
    ),
    Index(
        "runs_function_due",
        "function_id",
        "due_at",
        "id",
        postgresql_where=text(_in("status", ACTIVE_DUE_STATUSES)),
    ),
    Index("runs_running", "function_id", postgresql_where=text("status = 'running'")),
    Index(
        "runs_flow_key",
        "function_id",
        "flow_key",
        "due_at",
        "id",
        postgresql_where=text("flow_key IS NOT NULL AND " + _in("status", ACTIVE_DUE_STATUSES)),
    ),
    Index(
        "runs_singleton",
        "function_id",
        "singleton_key",
        unique=True,
        postgresql_where=text(
            "singleton_key IS NOT NULL AND cancel_requested_at IS NULL AND "
            + _in("status", ACTIVE_STATUSES)
        ),
    ),
)

steps = Table(
    "steps",
    metadata,
    Column(
        "run_id",
        UUID(as_uuid=False),
        ForeignKey("orchestrator.runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("step_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("output", JSONB),
    Column("error", JSONB),
    _ts("wake_at"),
    Column("duration_ms", Integer),
    _ts("created_at", nullable=False, default_now=True),
    _ts("updated_at", nullable=False, default_now=True),
    Column("signal", Text),  # the signal a waiting wait_for_signal step waits for
    Column("event_id", Text),  # the event that ended a wait, invoke or wait_for_any step
    _ts("started_at"),  # when the attempt began (0019)
    PrimaryKeyConstraint("run_id", "step_id", name="steps_pkey"),
    CheckConstraint(_in("status", STEP_STATUSES), name="steps_status"),
    Index("steps_event", "run_id", "event_id", postgresql_where=text("event_id IS NOT NULL")),
)

waits = Table(
    "waits",
    metadata,
    Column(
        "run_id",
        UUID(as_uuid=False),
        ForeignKey("orchestrator.runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("step_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("event_name", Text, nullable=False),
    Column("match_path", Text, nullable=False, server_default=text("''")),
    Column("match_value", JSONB, nullable=False, server_default=text("'null'::jsonb")),
    Column("expression", Text),
    _ts("since", nullable=False),
    _ts("expires_at"),
    _ts("created_at", nullable=False, default_now=True),
    Column("branch", Integer, nullable=False, server_default=text("0")),  # wait_for_any entry
    PrimaryKeyConstraint("run_id", "step_id", "branch", name="waits_pkey"),
    CheckConstraint(_in("kind", WAIT_KINDS), name="waits_kind"),
    Index("waits_match", "event_name", "match_path", "match_value"),
)

# Signals to one run (migration 0013). The trigger `signals_sent` locks the run's row, refuses
# a finished run and wakes a run waiting for the signal's name, due at `sent_at` (0014).
signals = Table(
    "signals",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column(
        "run_id",
        UUID(as_uuid=False),
        ForeignKey("orchestrator.runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", Text, nullable=False),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _ts("sent_at", nullable=False, default_now=True),
    _ts("consumed_at"),
    Column("consumed_by", Text),
    CheckConstraint("length(name) BETWEEN 1 AND 200", name="signals_name_length"),
    CheckConstraint("jsonb_typeof(data) = 'object'", name="signals_data_is_object"),
    Index("signals_pending", "run_id", "name", "id", postgresql_where=text("consumed_at IS NULL")),
    Index("signals_run", "run_id"),  # the cascade from runs (retention) without a scan
)

limiters = Table(
    "limiters",
    metadata,
    Column("function_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("key", Text, nullable=False),
    _ts("tat", nullable=False),
    _ts("updated_at", nullable=False, default_now=True),
    PrimaryKeyConstraint("function_id", "kind", "key", name="limiters_pkey"),
    CheckConstraint(_in("kind", LIMITER_KINDS), name="limiters_kind"),
)

buffered_events = Table(
    "buffered_events",
    metadata,
    Column("function_id", Text, nullable=False),
    Column("key", Text, nullable=False, server_default=text("''")),
    Column("event_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("event", JSONB, nullable=False),
    _ts("received_at", nullable=False),
    _ts("created_at", nullable=False, default_now=True),
    PrimaryKeyConstraint("function_id", "event_id", name="buffered_events_pkey"),
    Index("buffered_events_key", "function_id", "key", "seq"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("function_id", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    _ts("expires_at", nullable=False),
    _ts("created_at", nullable=False, default_now=True),
    PrimaryKeyConstraint("function_id", "key", name="idempotency_keys_pkey"),
    Index("idempotency_keys_expires", "expires_at"),
)

# The dashboard (migration 0015): its accounts, sessions, API tokens and audit trail.
UI_ROLES = ("viewer", "operator")
UI_ACTION_VIAS = ("session", "token", "cli")
UI_ACTIONS = ("cancel", "replay", "resume", "fork", "send")

ui_users = Table(
    "ui_users",
    metadata,
    Column("name", Text, primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", Text, nullable=False),
    _ts("created_at", nullable=False, default_now=True),
    _ts("updated_at", nullable=False, default_now=True),
    CheckConstraint("name ~ '^[a-z0-9][a-z0-9_.@-]{0,63}$'", name="ui_users_name"),
    CheckConstraint(_in("role", UI_ROLES), name="ui_users_role"),
)

ui_sessions = Table(
    "ui_sessions",
    metadata,
    Column("id_hash", BYTEA, primary_key=True),  # sha256 of the cookie's random bytes
    Column(
        "user_name",
        Text,
        ForeignKey("orchestrator.ui_users.name", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("csrf_token", Text, nullable=False),
    _ts("created_at", nullable=False, default_now=True),
    _ts("expires_at", nullable=False),
    _ts("last_seen_at", nullable=False, default_now=True),
    Index("ui_sessions_expires", "expires_at"),
    Index("ui_sessions_user", "user_name"),
)

ui_tokens = Table(
    "ui_tokens",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False),
    Column("token_hash", BYTEA, nullable=False),  # sha256 of the token
    Column("role", Text, nullable=False),
    _ts("created_at", nullable=False, default_now=True),
    _ts("last_used_at"),
    _ts("revoked_at"),
    UniqueConstraint("name", name="ui_tokens_name"),
    UniqueConstraint("token_hash", name="ui_tokens_token_hash"),
    CheckConstraint(_in("role", UI_ROLES), name="ui_tokens_role"),
)

ui_actions = Table(
    "ui_actions",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    _ts("at", nullable=False, default_now=True),
    Column("actor", Text, nullable=False),
    Column("via", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("run_id", UUID(as_uuid=False)),  # no foreign key: the history outlives retention
    Column("new_run_id", UUID(as_uuid=False)),
    Column("event_id", Text),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint(_in("via", UI_ACTION_VIAS), name="ui_actions_via"),
    CheckConstraint(_in("action", UI_ACTIONS), name="ui_actions_action"),
    Index("ui_actions_run", "run_id", "id"),
)

# Inngest's protocol (migration 0017): event API keys and the apps its SDKs serve.
event_keys = Table(
    "event_keys",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False),
    Column("key_hash", BYTEA, nullable=False),  # sha256 of the key
    _ts("created_at", nullable=False, default_now=True),
    _ts("last_used_at"),
    _ts("revoked_at"),
    UniqueConstraint("name", name="event_keys_name"),
    UniqueConstraint("key_hash", name="event_keys_key_hash"),
)

apps = Table(
    "apps",
    metadata,
    Column("id", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("sdk", Text),
    Column("framework", Text),
    Column("functions", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("refused", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _ts("created_at", nullable=False, default_now=True),
    _ts("synced_at", nullable=False, default_now=True),
)
