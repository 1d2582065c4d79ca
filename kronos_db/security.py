"""Security: Argon2 accounts, session-token digests, and the security report.

Passwords are hashed with Argon2id (argon2-cffi) using ``[security]`` parameters; the database
refuses anything that is not an Argon2 PHC string (``users_password_hash_argon2``). A password
is only ever an argument of these functions: the CLI reads it from a prompt or stdin.

:func:`security_report` runs one function per check and returns findings with a monitoring
severity (ok, warning, critical, unknown). A check the connected role may not run (pg_hba rules
and password hashes need superuser) is reported ``unknown`` with what it needs, not an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import psycopg
from argon2 import PasswordHasher, Type
from argon2 import exceptions as argon2_errors
from psycopg import errors as pg_errors
from psycopg.rows import class_row, dict_row

from kronos_db import db, roles
from kronos_db.config import Settings
from kronos_db.errors import KronosError, UsageError
from kronos_db.resources import query

Severity = Literal["ok", "warning", "critical", "unknown"]
SEVERITY_EXIT = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
RAW_TOKEN_SAMPLE = 10_000
# statement_timeout of each check: a slow catalog query never hangs the report
CHECK_TIMEOUT = "30s"
# extensions that reach outside the database (other servers, files, the OS) or read raw pages
RISKY_EXTENSIONS = {
    "adminpack": "writes and removes server files",
    "dblink": "opens connections to other servers from inside the database",
    "postgres_fdw": "opens connections to other servers from inside the database",
    "file_fdw": "reads server files",
    "pageinspect": "reads raw pages, bypassing privileges (superuser only, but installed)",
    "plpython3u": "untrusted language: runs OS-level code",
    "plperlu": "untrusted language: runs OS-level code",
    "pltclu": "untrusted language: runs OS-level code",
    "lo": "large objects carry their own privileges, outside the table grants",
}


# --------------------------------------------------------------------------- passwords


def password_hasher(settings: Settings) -> PasswordHasher:
    section = settings.security
    return PasswordHasher(
        time_cost=section.argon2_time_cost,
        memory_cost=section.argon2_memory_cost,
        parallelism=section.argon2_parallelism,
        hash_len=section.argon2_hash_len,
        salt_len=section.argon2_salt_len,
        type=Type.ID,
    )


def check_password_policy(password: str, settings: Settings) -> None:
    minimum = settings.security.min_password_length
    if len(password) < minimum:
        raise UsageError(
            f"the password is too short: at least {minimum} characters "
            "([security] min_password_length)"
        )
    if password != password.strip():
        raise UsageError("the password starts or ends with white space (a stray newline?)")


def hash_password(password: str, settings: Settings) -> str:
    """An Argon2id PHC string for ``password``, with the configured parameters."""
    check_password_policy(password, settings)
    return password_hasher(settings).hash(password)


def session_token_digest(token: str) -> str:
    """What the auth service stores in ``sessions.token``: the token's SHA-256, lowercase hex.

    Session tokens are long random values, so a fast hash is enough (there is nothing to
    brute-force); a stolen database then holds no usable session.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Account:
    id: int
    username: str
    email: str
    role_id: int | None
    created_at: datetime | None


@dataclasses.dataclass(frozen=True)
class PasswordCheck:
    username: str
    matches: bool
    needs_rehash: bool


def create_user(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    username: str,
    email: str,
    password: str,
    role: str | None = None,
) -> Account:
    """Create an account with an Argon2id hash of ``password``."""
    if not username.strip() or not email.strip():
        raise UsageError("username and email must not be empty")
    password_hash = hash_password(password, settings)
    if (
        role is not None
        and conn.execute(query("security", "select_role_exists"), {"role": role}).fetchone() is None
    ):
        raise UsageError(f"no role named {role!r} in the roles table")
    try:
        with conn.cursor(row_factory=class_row(Account)) as cur:
            row = cur.execute(
                query("security", "insert_user"),
                {
                    "username": username,
                    "email": email,
                    "password_hash": password_hash,
                    "role": role,
                },
            ).fetchone()
    except pg_errors.UniqueViolation:
        raise UsageError(
            f"a user with the username {username!r} or the email {email!r} already exists"
        ) from None
    assert row is not None
    return row


def set_password(
    conn: psycopg.Connection[Any], settings: Settings, *, username: str, password: str
) -> Account:
    """Replace an account's password with a new Argon2id hash."""
    password_hash = hash_password(password, settings)
    with conn.cursor(row_factory=class_row(Account)) as cur:
        row = cur.execute(
            query("security", "update_user_password"),
            {"username": username, "password_hash": password_hash},
        ).fetchone()
    if row is None:
        raise UsageError(f"no user named {username!r}")
    return row


def verify_password(
    conn: psycopg.Connection[Any], settings: Settings, *, username: str, password: str
) -> PasswordCheck:
    """Whether ``password`` is the account's, and whether its hash predates the parameters."""
    row = conn.execute(
        query("security", "select_user_password_hash"), {"username": username}
    ).fetchone()
    if row is None:
        raise UsageError(f"no user named {username!r}")
    hasher = password_hasher(settings)
    stored = str(row[0])
    try:
        hasher.verify(stored, password)
    except argon2_errors.VerifyMismatchError:
        return PasswordCheck(username, False, False)
    except argon2_errors.InvalidHashError:
        raise KronosError(f"the stored hash of {username!r} is not a valid Argon2 hash") from None
    return PasswordCheck(username, True, hasher.check_needs_rehash(stored))


# --------------------------------------------------------------------------- the report


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    summary: str
    details: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SecurityReport:
    database: str
    findings: tuple[Finding, ...]

    @property
    def status(self) -> Severity:
        severities = {finding.severity for finding in self.findings}
        for severity in ("critical", "warning", "unknown"):
            if severity in severities:
                return severity
        return "ok"

    @property
    def exit_code(self) -> int:
        return SEVERITY_EXIT[self.status]


Check = Callable[[psycopg.Connection[Any], Settings], Finding]


def _rows(
    conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("security", name), params or {}).fetchall()


def check_connected_role(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    row = _rows(conn, "select_current_role")[0]
    if row["superuser"]:
        return Finding(
            "connected role",
            "warning",
            f"connected as {row['role_name']}, a superuser",
            (
                "kronos-db needs a superuser once (kronos-db bootstrap); then migrate as the "
                "owner role, cron jobs as the maintenance role, health as the monitoring role "
                "(docs/roles.md)",
            ),
        )
    return Finding("connected role", "ok", f"connected as {row['role_name']} (not a superuser)")


def check_login_superusers(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    names = [row["role_name"] for row in _rows(conn, "select_login_superusers")]
    if len(names) > 1:
        return Finding(
            "superusers",
            "warning",
            f"{len(names)} superuser roles can log in: {', '.join(names)}",
            ("keep one (break-glass) superuser; give the others the privileges they need",),
        )
    return Finding("superusers", "ok", f"login superusers: {', '.join(names) or 'none'}")


def check_trust_authentication(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    rows = _rows(conn, "select_trust_rules")
    if not rows:
        return Finding("trust authentication", "ok", "no pg_hba.conf line uses trust")
    details = tuple(
        f"pg_hba.conf line {row['line_number']}: {row['connection_type']} "
        f"database={row['database_names']} user={row['user_names']} "
        f"{row['address'] or '(local socket)'} trust"
        for row in rows
    )
    network = [row for row in rows if row["connection_type"] != "local"]
    if network:
        return Finding(
            "trust authentication",
            "critical",
            f"{len(network)} pg_hba.conf line(s) let TCP clients in without a password",
            details,
        )
    return Finding(
        "trust authentication",
        "warning",
        "local socket connections need no password (trust)",
        details,
    )


def check_passwordless_logins(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    rows = _rows(conn, "select_passwordless_logins")
    if not rows:
        return Finding("login passwords", "ok", "every login role has a SCRAM password")
    return Finding(
        "login passwords",
        "warning",
        f"{len(rows)} login role(s) without a SCRAM password",
        (
            *(f"{row['role_name']}: {row['problem']}" for row in rows),
            "a role with no password can log in only where pg_hba.conf says trust "
            "or peer; an MD5 hash is weaker than SCRAM: ALTER ROLE … PASSWORD again "
            "with password_encryption = scram-sha-256",
        ),
    )


def check_public_privileges(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    schemas = _rows(conn, "select_public_schema_privileges")
    relations = _rows(conn, "select_public_relation_privileges")
    database = [row["privilege"] for row in _rows(conn, "select_public_database_privileges")]
    details = [
        f"PUBLIC has {row['privilege']} on schema {row['schema_name']}"
        for row in schemas
        if row["privilege"] != "USAGE"
    ]
    details += [f"PUBLIC has {row['privilege']} on {row['relation_name']}" for row in relations]
    if "CREATE" in database:
        details.append("PUBLIC has CREATE on the database")
    note = f"PUBLIC holds {', '.join(database) or 'nothing'} on the database"
    if details:
        return Finding(
            "PUBLIC privileges",
            "critical",
            f"{len(details)} privilege(s) granted to every role (PUBLIC)",
            (*details, note),
        )
    return Finding(
        "PUBLIC privileges", "ok", "PUBLIC cannot create objects or read any table", (note,)
    )


def check_security_definer(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    rows = _rows(conn, "select_unsafe_security_definer_functions")
    names = [row["function_name"] for row in rows]
    if names:
        return Finding(
            "SECURITY DEFINER functions",
            "warning",
            f"{len(names)} SECURITY DEFINER function(s) without a fixed search_path",
            (*names, "ALTER FUNCTION … SET search_path = pg_catalog, public"),
        )
    return Finding(
        "SECURITY DEFINER functions", "ok", "no SECURITY DEFINER function with an open search_path"
    )


def check_extensions(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    installed = _rows(conn, "select_extensions")
    languages = [row["language"] for row in _rows(conn, "select_untrusted_languages")]
    risky = [
        f"{row['name']} {row['version']}: {RISKY_EXTENSIONS[row['name']]}"
        for row in installed
        if row["name"] in RISKY_EXTENSIONS
    ]
    risky += [
        f"language {name}: untrusted, runs code as the server's OS user"
        for name in languages
        if name not in RISKY_EXTENSIONS
    ]
    listing = "installed: " + ", ".join(f"{row['name']} {row['version']}" for row in installed)
    if risky:
        return Finding(
            "extensions",
            "warning",
            f"{len(risky)} extension(s) or language(s) reach outside the database",
            (*risky, listing),
        )
    return Finding("extensions", "ok", "no risky extension or untrusted language", (listing,))


def check_settings(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    values = {row["name"]: row["value"] for row in _rows(conn, "select_security_settings")}
    critical: list[str] = []
    warnings: list[str] = []
    for name in ("fsync", "full_page_writes"):
        if values.get(name) == "off":
            critical.append(f"{name} = off: a crash can corrupt the database")
    if values.get("ssl") == "off":
        warnings.append(
            "ssl = off: passwords and data cross the network in clear text "
            "(unless only local connections are allowed)"
        )
    if values.get("password_encryption", "scram-sha-256") != "scram-sha-256":
        warnings.append(
            f"password_encryption = {values['password_encryption']}: new "
            "passwords are stored as MD5"
        )
    if values.get("log_statement") in ("all", "mod", "ddl"):
        warnings.append(
            f"log_statement = {values['log_statement']}: statements such as "
            "ALTER ROLE … PASSWORD are written to the server log"
        )
    if values.get("data_checksums") == "off":
        warnings.append(
            "data_checksums = off: silent page corruption goes undetected "
            "(initdb --data-checksums, or pg_checksums on a stopped cluster)"
        )
    if values.get("log_connections") == "off":
        warnings.append("log_connections = off: logins leave no trace in the server log")
    shown = ", ".join(f"{name}={value}" for name, value in sorted(values.items()))
    if critical:
        return Finding(
            "settings",
            "critical",
            f"{len(critical)} setting(s) risk data loss",
            (*critical, *warnings, shown),
        )
    if warnings:
        return Finding(
            "settings", "warning", f"{len(warnings)} setting(s) to review", (*warnings, shown)
        )
    return Finding("settings", "ok", "no setting to flag", (shown,))


def check_argon2_constraint(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    rows = _rows(conn, "select_argon2_constraint")
    if not rows:
        return Finding(
            "Argon2 passwords",
            "critical",
            "users has no users_password_hash_argon2 CHECK: any text is accepted "
            "as a password hash (migrate to head)",
        )
    if not rows[0]["validated"]:
        return Finding(
            "Argon2 passwords",
            "warning",
            "users_password_hash_argon2 is NOT VALID: older rows were never checked",
            ("ALTER TABLE users VALIDATE CONSTRAINT users_password_hash_argon2",),
        )
    return Finding("Argon2 passwords", "ok", "users.password_hash accepts Argon2 PHC strings only")


def check_session_tokens(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    row = _rows(conn, "count_raw_session_tokens", {"limit": RAW_TOKEN_SAMPLE})[0]
    raw = int(row["raw_tokens"])
    if raw:
        more = "at least " if raw >= RAW_TOKEN_SAMPLE else ""
        return Finding(
            "session tokens",
            "warning",
            f"{more}{raw} session(s) store a token that is not a SHA-256 digest",
            (
                "the auth service must store sha256(token) in lowercase hex, never the "
                "token (docs/security.md)",
            ),
        )
    return Finding("session tokens", "ok", "every session token is stored as a SHA-256 digest")


def check_service_roles(conn: psycopg.Connection[Any], settings: Settings) -> Finding:
    report = roles.check_roles(conn, settings)
    if report.in_sync:
        return Finding("service roles", "ok", f"{len(report.roles)} roles match the mapping")
    serious = [
        d
        for d in report.drift
        if d.kind in ("owns objects", "membership")
        or (d.kind == "attributes" and "superuser" in d.detail)
    ]
    return Finding(
        "service roles",
        "critical" if serious else "warning",
        f"{len(report.drift)} difference(s) from the roles mapping "
        "(kronos-db roles apply fixes them)",
        tuple(d.describe() for d in report.drift[:20]),
    )


CHECKS: tuple[tuple[str, Check], ...] = (
    ("connected role", check_connected_role),
    ("superusers", check_login_superusers),
    ("trust authentication", check_trust_authentication),
    ("login passwords", check_passwordless_logins),
    ("PUBLIC privileges", check_public_privileges),
    ("SECURITY DEFINER functions", check_security_definer),
    ("extensions", check_extensions),
    ("settings", check_settings),
    ("Argon2 passwords", check_argon2_constraint),
    ("session tokens", check_session_tokens),
    ("service roles", check_service_roles),
)


def security_report(conn: psycopg.Connection[Any], settings: Settings) -> SecurityReport:
    """Run every check; a check the role may not run is ``unknown``, not a failure."""
    findings: list[Finding] = []
    for name, check in CHECKS:
        try:
            with db.transaction_settings(conn, {"statement_timeout": CHECK_TIMEOUT}):
                findings.append(check(conn, settings))
        except pg_errors.InsufficientPrivilege as exc:
            reason = str(exc).strip().splitlines()[0]
            findings.append(
                Finding(
                    name,
                    "unknown",
                    f"not checked: {reason}",
                    ("connect as a superuser to run this check",),
                )
            )
        except pg_errors.UndefinedTable as exc:
            reason = str(exc).strip().splitlines()[0]
            findings.append(
                Finding(name, "unknown", f"not checked: {reason} (is the database migrated?)")
            )
    return SecurityReport(str(conn.info.dbname), tuple(findings))
