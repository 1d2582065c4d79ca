"""Argon2 accounts, token storage, the security report, and secrets kept out of every output."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from argon2 import PasswordHasher
from conftest import HOST, PORT, PROBE_PASSWORD, PROBE_ROLE
from psycopg import errors as pg_errors

from kronos_db import security
from kronos_db.config import SecuritySettings, Settings
from kronos_db.errors import UsageError

PASSWORD = "correct horse battery staple"
FAST = SecuritySettings(argon2_time_cost=1, argon2_memory_cost=1024, argon2_parallelism=1)


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    """Cheap Argon2 parameters: the tests check that the configured ones are used."""
    path = tmp_path / "kronos.toml"
    path.write_text(
        "[security]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\nargon2_parallelism = 1\n"
    )
    return path


def test_plain_text_password_is_refused_by_the_database(conn: psycopg.Connection[Any]) -> None:
    for not_argon2 in (
        "hunter2",
        "$2b$12$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz012",
        "5f4dcc3b5aa765d61d8327deb882cf99",
    ):
        with pytest.raises(pg_errors.CheckViolation, match="users_password_hash_argon2"):
            conn.execute(
                "INSERT INTO users (username, email, password_hash) "
                "VALUES ('eve', 'eve@x', %(hash)s)",
                {"hash": not_argon2},
            )


def test_users_create_hashes_with_the_configured_argon2_and_verifies(
    database: Any, conn: psycopg.Connection[Any], fast_config: Path, cli: Any
) -> None:
    conn.execute("INSERT INTO roles (name, permissions) VALUES ('admin', '{all}')")
    created = cli(
        "users",
        "create",
        "alice",
        "--email",
        "alice@example.com",
        "--role",
        "admin",
        "--password-stdin",
        "--config",
        str(fast_config),
        "--database-url",
        database.url,
        input=PASSWORD + "\n",
    )
    assert created.code == 0, created.output
    assert PASSWORD not in created.output
    row = conn.execute(
        "SELECT password_hash, r.name FROM users JOIN roles AS r "
        "ON r.id = users.role_id WHERE username = 'alice'"
    ).fetchone()
    assert row is not None
    stored, role = row
    assert role == "admin"
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert PasswordHasher().verify(stored, PASSWORD)

    common = ("--config", str(fast_config), "--database-url", database.url)
    good = cli("users", "verify", "alice", "--password-stdin", *common, input=PASSWORD + "\n")
    assert good.code == 0, good.output
    bad = cli("users", "verify", "alice", "--password-stdin", *common, input="wrong password\n")
    assert bad.code == 1
    assert "does not match" in bad.stderr

    changed = cli(
        "users",
        "set-password",
        "alice",
        "--password-stdin",
        *common,
        input="another long passphrase\n",
    )
    assert changed.code == 0, changed.output
    assert (
        cli("users", "verify", "alice", "--password-stdin", *common, input=PASSWORD + "\n").code
        == 1
    )
    duplicate = cli(
        "users",
        "create",
        "alice",
        "--email",
        "other@example.com",
        "--password-stdin",
        *common,
        input=PASSWORD + "\n",
    )
    assert duplicate.code == 2
    assert "already exists" in duplicate.stderr


def test_password_is_never_an_argument_and_policy_applies(
    database: Any, fast_config: Path, cli: Any
) -> None:
    common = ("--config", str(fast_config), "--database-url", database.url)
    as_argument = cli("users", "create", "bob", "--email", "b@x", "--password", PASSWORD, *common)
    assert as_argument.code == 2
    no_terminal = cli("users", "create", "bob", "--email", "b@x", *common, input="")
    assert no_terminal.code == 2
    assert "--password-stdin" in no_terminal.stderr
    short = cli(
        "users", "create", "bob", "--email", "b@x", "--password-stdin", *common, input="short\n"
    )
    assert short.code == 2
    assert "too short" in short.stderr
    assert "short" not in short.stderr.replace("too short", "")


def test_library_rehash_and_unknown_user(conn: psycopg.Connection[Any]) -> None:
    settings = Settings(security=FAST)
    account = security.create_user(conn, settings, username="carol", email="c@x", password=PASSWORD)
    assert account.username == "carol"
    check = security.verify_password(conn, Settings(), username="carol", password=PASSWORD)
    assert check.matches
    assert check.needs_rehash  # the defaults are stronger than the FAST parameters
    with pytest.raises(UsageError, match="no user"):
        security.set_password(conn, settings, username="nobody", password=PASSWORD)
    with pytest.raises(UsageError, match="no role"):
        security.create_user(
            conn, settings, username="dave", email="d@x", password=PASSWORD, role="missing"
        )


def test_session_token_digest_uses_the_hash_lookup_path(conn: psycopg.Connection[Any]) -> None:
    digest = security.session_token_digest("eyJhbGciOiJIUzI1NiJ9.payload.signature")
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    conn.execute(
        "INSERT INTO sessions (token) SELECT md5(i::text) || md5(i::text) "
        "FROM generate_series(1, 2000) AS i"
    )
    conn.execute("INSERT INTO sessions (token) VALUES (%(t)s)", {"t": digest})
    conn.execute("ANALYZE sessions")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN SELECT user_id FROM sessions WHERE token = %(t)s", {"t": digest}
        )
    )
    assert "sessions_token_excl" in plan
    with pytest.raises(pg_errors.ExclusionViolation):
        conn.execute("INSERT INTO sessions (token) VALUES (%(t)s)", {"t": digest})


def test_security_report_flags_raw_tokens_and_public_grants(
    database: Any, conn: psycopg.Connection[Any], cli: Any
) -> None:
    report = security.security_report(conn, Settings())
    by_check = {finding.check: finding for finding in report.findings}
    assert by_check["session tokens"].severity == "ok"
    assert by_check["Argon2 passwords"].severity == "ok"
    assert by_check["PUBLIC privileges"].severity == "ok"
    assert by_check["connected role"].severity == "warning"  # the tests run as postgres

    conn.execute("INSERT INTO sessions (token) VALUES ('raw-jwt-token')")
    conn.execute("GRANT SELECT ON users TO PUBLIC")
    result = cli("report", "security", "--json", "--database-url", database.url)
    assert result.code == 2, result.output  # CRITICAL
    data = json.loads(result.stdout)
    assert data["status"] == "critical"
    found = {f["check"]: f for f in data["findings"]}
    assert found["session tokens"]["severity"] == "warning"
    assert found["PUBLIC privileges"]["severity"] == "critical"
    assert any("public.users" in d for d in found["PUBLIC privileges"]["details"])


def test_security_report_says_unknown_when_not_allowed(
    database: Any, conn: psycopg.Connection[Any]
) -> None:
    role = f"kronos_nopriv_{os.getpid()}"
    conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        with psycopg.connect(
            f"postgresql://{role}@{HOST}:{PORT}/{database.name}", autocommit=True
        ) as weak:
            report = security.security_report(weak, Settings())
        by_check = {finding.check: finding for finding in report.findings}
        assert by_check["trust authentication"].severity == "unknown"
        assert by_check["login passwords"].severity == "unknown"
    finally:
        conn.execute(f"DROP ROLE {role}")


# --------------------------------------------------------------------------- secrets


def test_no_password_or_dsn_secret_in_any_output(
    database: Any, conn: psycopg.Connection[Any], tmp_path: Path, cli: Any, password_role: str
) -> None:
    # in this (throw-away) database only: enough for a backup, not for roles or verify
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {PROBE_ROLE}")
    conn.execute(f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {PROBE_ROLE}")
    conn.execute(f"GRANT INSERT, UPDATE ON backups, kronos_leases TO {PROBE_ROLE}")
    conn.execute(f"GRANT USAGE ON SEQUENCE backups_id_seq TO {PROBE_ROLE}")
    # a pg_dump that records how it was called
    calls = tmp_path / "calls.txt"
    wrapper = tmp_path / "pg_dump"
    wrapper.write_text(
        f'#!/bin/sh\necho "ARGV: $*" >> {calls}\n'
        f'[ -n "$PGPASSWORD" ] && echo "PGPASSWORD set" >> {calls}\n'
        'exec pg_dump "$@"\n'
    )
    wrapper.chmod(0o755)
    config = tmp_path / "kronos.toml"
    config.write_text(
        f'[backups]\ndirectory = "{tmp_path / "b"}"\npg_dump = "{wrapper}"\n'
        "[security]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\n"
        "argon2_parallelism = 1\n"
    )
    url = f"postgresql://{PROBE_ROLE}:{PROBE_PASSWORD}@{HOST}:{PORT}/{database.name}"
    keyword = (
        f"host={HOST} port={PORT} dbname={database.name} user={PROBE_ROLE} "
        f"password={PROBE_PASSWORD}"
    )
    wrong = f"postgresql://{PROBE_ROLE}:{PROBE_PASSWORD}-wrong@{HOST}:{PORT}/{database.name}"
    common = ("--config", str(config))
    runs = [
        ("backup", "create", "--database-url", url, *common),
        ("backup", "create", "--database-url", url, "--json", *common),
        ("backup", "list", "--database-url", url, *common),
        ("backup", "list", "--json", "--database-url", keyword, *common),
        ("backup", "verify", "1", "--database-url", url, *common),
        (
            "backup",
            "restore",
            "1",
            "--target-db",
            f"{database.name}_x",
            "--database-url",
            url,
            *common,
        ),
        ("backup", "prune", "--keep", "5", "--database-url", url, *common),
        ("roles", "check", "--database-url", url, *common),
        ("roles", "apply", "--database-url", url, *common),
        ("report", "security", "--database-url", url, *common),
        ("report", "security", "--json", "--database-url", keyword, *common),
        ("config", "show", "--database-url", url, *common),
        ("status", "--database-url", url, *common),
        ("backup", "list", "--database-url", wrong, *common),
        ("backup", "create", "--database-url", wrong, *common),
        ("backup", "list", "--database-url", url + "?sslmode=bogus", *common),
    ]
    outputs = []
    for args in runs:
        result = cli(*args)
        outputs.append((args, result))
    users = cli(
        "users",
        "create",
        "mallory",
        "--email",
        "m@x",
        "--password-stdin",
        "--database-url",
        url,
        *common,
        input=PASSWORD + "\n",
    )
    outputs.append((("users", "create"), users))
    env_run = cli("backup", "list", *common, env={"KRONOS_DATABASE_URL": url})
    outputs.append((("backup", "list", "(env)"), env_run))

    secrets = (PROBE_PASSWORD, quote(PROBE_PASSWORD), PASSWORD)
    for args, result in outputs:
        for secret in secrets:
            assert secret not in result.output, f"{args} printed a secret: {result.output}"
        assert "Traceback" not in result.output, args
    # the runs did exercise the password: the backup succeeded, the wrong one was refused
    assert outputs[0][1].code == 0, outputs[0][1].output
    assert outputs[13][1].code == 3
    assert "login refused" in outputs[13][1].stderr
    assert users.code != 0  # the probe role may not write users
    assert "permission denied" in users.stderr
    recorded = calls.read_text()
    assert "ARGV:" in recorded
    assert "PGPASSWORD set" in recorded
    assert PROBE_PASSWORD not in recorded  # never on pg_dump's command line
