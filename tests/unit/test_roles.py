"""Role names for `orchestrator roles`: validated before any SQL is built, and quoted in it."""

from __future__ import annotations

import pytest

from orchestrator.db import roles
from orchestrator.errors import ConfigError, InvalidRoleNameError

pytestmark = pytest.mark.timeout(30)

HOSTILE = [
    'x"; DROP TABLE orchestrator.runs; --',
    "x'; DROP ROLE postgres; --",
    "x$$; DROP SCHEMA orchestrator CASCADE; $$",
    "Orchestrator",
    "9lives",
    "a b",
    "",
    "x" * 64,
    "naïve",
    "x\x00y",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_validate_name__refuses_anything_but_plain_identifiers(name: str) -> None:
    with pytest.raises(InvalidRoleNameError, match="is not allowed"):
        roles.Roles(runtime=name)


@pytest.mark.parametrize("name", ["pg_monitor", "public", "current_user", "session_user", "none"])
def test_validate_name__refuses_names_postgres_reserves(name: str) -> None:
    with pytest.raises(InvalidRoleNameError, match="reserved by Postgres"):
        roles.Roles(owner=name)


def test_roles__need_three_different_names() -> None:
    with pytest.raises(InvalidRoleNameError, match="three different names") as info:
        roles.Roles(owner="app", runtime="app")
    assert isinstance(info.value, ConfigError) and info.value.code == "invalid_role_name"


def test_script__quotes_names_and_carries_no_password() -> None:
    names = roles.Roles("o_1", "r_1", "ro_1")
    script = roles.script(names, login=True)
    assert 'CREATE ROLE "r_1" LOGIN;' in script
    assert 'ALTER ROLE "r_1" LOGIN;' in script  # an existing role gets LOGIN too
    assert "\\password" in script  # the header says how to set one
    statements = [s.as_string(None) for s in roles.statements(names, login=True)]
    assert not [s for s in statements if "PASSWORD" in s.upper()]
    assert 'ALTER ROLE "ro_1" SET default_transaction_read_only = on' in script
    assert (
        'ALTER DEFAULT PRIVILEGES FOR ROLE "o_1" IN SCHEMA "orchestrator" '
        'GRANT SELECT ON TABLES TO "ro_1"'
    ) in script
    assert "TRUNCATE" not in script.replace("REVOKE TRUNCATE", "")


def test_script__without_login__new_roles_cannot_log_in_and_existing_ones_keep_theirs() -> None:
    script = roles.script(roles.Roles())
    assert 'CREATE ROLE "orchestrator_runtime" NOLOGIN;' in script
    assert 'ALTER ROLE "orchestrator_runtime" LOGIN' not in script
    assert "NOLOGIN;" in script and "GRANT orchestrator_runtime TO myapp" in script
