"""Least privilege: each service role can do what the mapping says, and nothing else."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import _janitor, drop_roles, unique_name, url_for
from psycopg import errors as pg_errors

from kronos_db import role_mapping, roles
from kronos_db.config import SecuritySettings, Settings
from kronos_db.errors import ConfigError

ARGON2 = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"


@pytest.fixture
def prefix() -> str:
    # roles are cluster-wide: a unique prefix per test keeps concurrent runs apart
    return unique_name("ktr").replace("_", "") + "_"


@pytest.fixture
def role_settings(prefix: str) -> Settings:
    return Settings(security=SecuritySettings(role_prefix=prefix))


@pytest.fixture
def applied(
    database: Any, conn: psycopg.Connection[Any], role_settings: Settings, prefix: str
) -> Iterator[roles.ApplyResult]:
    result = roles.apply_roles(conn, role_settings)
    yield result
    drop_mapping_roles([database.url], role_settings)


def drop_mapping_roles(urls: list[str], settings: Settings) -> None:
    """Drop this test's roles (a unique prefix: never another run's)."""
    drop_roles(urls, role_mapping.load_mapping(settings).role_names)


def as_role(database: Any, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url_for(database.name, user=role), autocommit=True)


def test_apply_is_idempotent_and_check_agrees(
    applied: roles.ApplyResult, conn: psycopg.Connection[Any], role_settings: Settings
) -> None:
    kinds = {change.kind for change in applied.changes}
    # the services' roles and grants, kronos-db's own roles with their memberships, and every
    # object of the schema (made by the superuser that migrated the template) to the owner
    assert kinds == {"missing role", "missing privilege", "missing membership", "not the owner"}
    assert applied.remaining == ()
    again = roles.apply_roles(conn, role_settings)
    assert again.changes == ()
    assert roles.check_roles(conn, role_settings).in_sync


def test_sequence_usage_is_derived_from_insert(applied: roles.ApplyResult, prefix: str) -> None:
    targets = {(c.role, c.target) for c in applied.changes if "sequence" in c.detail}
    assert (f"{prefix}log", "public.logs_id_seq") in targets
    assert (f"{prefix}auth", "public.sessions_id_seq") in targets
    assert (f"{prefix}user", "public.users_id_seq") in targets
    # the auth role only reads users: no sequence of users for it
    assert (f"{prefix}auth", "public.users_id_seq") not in targets


# (service, statements that must work, statements that must be refused)
CAPABILITIES = [
    (
        "log",
        [
            "INSERT INTO logs (service_name, level, message) VALUES ('auth', 'INFO', 'hello')",
            "SELECT count(*) FROM logs",
        ],
        [
            "SELECT * FROM users",
            "SELECT * FROM sessions",
            "DELETE FROM logs",
            "UPDATE logs SET level = 'X'",
            "SELECT * FROM logs_default",
            "TRUNCATE logs",
        ],
    ),
    (
        "auth",
        [
            "INSERT INTO sessions (user_id, token) VALUES (1, repeat('a', 64))",
            "SELECT username, password_hash FROM users",
            "SELECT permissions FROM roles",
            "DELETE FROM sessions WHERE token = repeat('a', 64)",
        ],
        [
            f"UPDATE users SET password_hash = '{ARGON2}'",
            "INSERT INTO logs (service_name, level, message) VALUES ('a', 'b', 'c')",
            "DELETE FROM users",
        ],
    ),
    (
        "user",
        [
            f"INSERT INTO users (username, email, password_hash) VALUES ('bob', 'b@x', '{ARGON2}')",
            f"UPDATE users SET password_hash = '{ARGON2}' WHERE username = 'bob'",
            "INSERT INTO roles (name, permissions) VALUES ('viewer', '{read}')",
        ],
        ["SELECT * FROM sessions", "SELECT * FROM logs", "SELECT * FROM backups"],
    ),
    (
        "cache",
        [
            "INSERT INTO cache (key, value) VALUES ('k', 'v') ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value",
            "DELETE FROM cache WHERE key = 'k'",
        ],
        ["SELECT * FROM users", "SELECT * FROM logs"],
    ),
    (
        "router",
        [
            "INSERT INTO routes (path, service, method) VALUES ('/a', 'svc', 'GET')",
            "INSERT INTO rate_limits (user_id, route_id) SELECT 1, id FROM routes",
        ],
        ["SELECT * FROM users", "SELECT * FROM message_queue"],
    ),
    (
        "messaging",
        [
            "INSERT INTO message_queue (topic, payload) VALUES ('t', 'p')",
            "UPDATE message_queue SET status = 'processed' WHERE topic = 't'",
        ],
        ["SELECT * FROM cache", "SELECT * FROM users"],
    ),
]


@pytest.mark.parametrize(
    ("service", "allowed", "refused"), CAPABILITIES, ids=[c[0] for c in CAPABILITIES]
)
def test_each_service_role_can_do_its_job_and_nothing_else(
    applied: roles.ApplyResult,
    database: Any,
    conn: psycopg.Connection[Any],
    prefix: str,
    service: str,
    allowed: list[str],
    refused: list[str],
) -> None:
    conn.execute(
        f"INSERT INTO users (username, email, password_hash) VALUES ('alice', 'a@x', '{ARGON2}')"
    )
    with as_role(database, f"{prefix}{service}") as role_conn:
        for statement in allowed:
            role_conn.execute(statement)
        for statement in refused:
            with pytest.raises(pg_errors.InsufficientPrivilege):
                role_conn.execute(statement)
        # no service creates objects, in public or anywhere
        with pytest.raises(pg_errors.InsufficientPrivilege):
            role_conn.execute("CREATE TABLE public.sneaky (id int)")


def test_log_role_gets_permission_denied_reading_users(
    applied: roles.ApplyResult, database: Any, prefix: str
) -> None:
    with (
        as_role(database, f"{prefix}log") as role_conn,
        pytest.raises(pg_errors.InsufficientPrivilege, match="permission denied for table users"),
    ):
        role_conn.execute("SELECT * FROM users")


def test_drift_is_reported_and_apply_revokes_it(
    applied: roles.ApplyResult,
    database: Any,
    conn: psycopg.Connection[Any],
    role_settings: Settings,
    prefix: str,
    cli: Any,
    tmp_path: Path,
) -> None:
    log, cache, router, auth = (f"{prefix}{s}" for s in ("log", "cache", "router", "auth"))
    conn.execute(f"GRANT SELECT ON users TO {log}")
    conn.execute(f"GRANT SELECT (email) ON users TO {router}")
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {auth}")
    conn.execute(f"GRANT pg_read_all_data TO {cache}")
    conn.execute(f"ALTER ROLE {log} CREATEROLE")
    conn.execute("CREATE TABLE owned_by_service (id int)")
    conn.execute(f"ALTER TABLE owned_by_service OWNER TO {cache}")

    config = tmp_path / "kronos.toml"
    config.write_text(f'[security]\nrole_prefix = "{prefix}"\n')
    checked = cli("roles", "check", "--config", str(config), "--database-url", database.url)
    assert checked.code == 6, checked.output
    for expected in (
        f"{log}: extra privilege: SELECT on table public.users",
        f"{router}: extra privilege: SELECT on column public.users.email",
        f"{auth}: extra privilege: CREATE on schema public",
        f"{cache}: membership: is a member of pg_read_all_data",
        f"{log}: attributes: createrole is on",
        f"{cache}: owns objects",
    ):
        assert expected in checked.stdout

    applied_again = cli("roles", "apply", "--config", str(config), "--database-url", database.url)
    assert applied_again.code == 0, applied_again.output
    assert roles.check_roles(conn, role_settings).in_sync
    with as_role(database, log) as role_conn, pytest.raises(pg_errors.InsufficientPrivilege):
        role_conn.execute("SELECT * FROM users")
    owner = conn.execute(
        "SELECT tableowner FROM pg_tables WHERE tablename = 'owned_by_service'"
    ).fetchone()
    assert owner == (f"{prefix}owner",)  # handed to the mapping's owner, not left to a service
    quiet = cli("roles", "apply", "--config", str(config), "--database-url", database.url)
    assert quiet.code == 0
    assert quiet.stdout == ""  # nothing to do, no terminal: quiet


def test_mapping_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown privilege"):
        role_mapping.parse_mapping(
            {
                "services": {s: {"tables": {"logs": ["SELECT"]}} for s in role_mapping.SERVICES}
                | {"log": {"tables": {"logs": ["DROP"]}}}
            },
            "k_",
            "test",
        )
    with pytest.raises(ConfigError, match="unknown service"):
        role_mapping.parse_mapping({"services": {"billing": {}}}, "k_", "test")
    shipped = role_mapping.load_mapping(Settings())
    assert [s.role for s in shipped.services] == [f"kronos_{s}" for s in role_mapping.SERVICES]
    assert shipped.services[2].tables == {"logs": ("INSERT", "SELECT")}


def test_missing_table_is_refused_by_apply(empty_database: Any, role_settings: Settings) -> None:
    with empty_database.connect() as conn:
        report = roles.check_roles(conn, role_settings)
        assert any(d.kind == "missing table" for d in report.drift)
        from kronos_db.errors import UsageError

        with pytest.raises(UsageError, match="migrate first"):
            roles.apply_roles(conn, role_settings)
        # nothing was created
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE %(p)s",
            {"p": role_settings.security.role_prefix + "%"},
        ).fetchone() == (0,)


def test_concurrent_apply_in_two_databases_sharing_the_roles(
    template_database: Any, database: Any, role_settings: Settings, prefix: str
) -> None:
    other_name = unique_name("kronos_test")
    errors: list[BaseException] = []

    def apply(url: str) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                roles.apply_roles(conn, role_settings)
        except BaseException as exc:
            errors.append(exc)

    with _janitor(other_name, template=template_database.name):
        other_url = url_for(other_name)
        try:
            threads = [threading.Thread(target=apply, args=(u,)) for u in (database.url, other_url)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert errors == []
            for url in (database.url, other_url):
                with psycopg.connect(url, autocommit=True) as conn:
                    assert roles.check_roles(conn, role_settings).in_sync
        finally:
            drop_mapping_roles([other_url, database.url], role_settings)


def test_toolkit_roles_in_the_mapping_are_validated() -> None:
    shipped = tomllib.loads(role_mapping.default_roles_file().read_text(encoding="utf-8"))
    mapping = role_mapping.parse_mapping(shipped, "k_", "test")
    assert mapping.owner == "k_owner"
    assert mapping.toolkit_role("maintenance").member_of == ("k_owner",)  # type: ignore[union-attr]
    assert mapping.toolkit_role("monitoring").member_of == ("pg_monitor",)  # type: ignore[union-attr]
    assert mapping.extensions == ("pg_stat_statements",)
    for broken, message in (
        ({"admin": {}}, "unknown toolkit role"),
        ({"owner": {"login": "yes"}}, "toolkit.owner.login"),
        ({"maintenance": {"member_of": "owner"}}, "toolkit.maintenance.member_of"),
        ({"monitoring": {"tables": {"sessions": ["READ"]}}}, "unknown privilege"),
    ):
        with pytest.raises(ConfigError, match=message):
            role_mapping.parse_mapping({**shipped, "toolkit": broken}, "k_", "test")
