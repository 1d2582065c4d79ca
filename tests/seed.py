"""A database as the Kronos services built it: the original design's DDL, full of data.

The DDL is read from ``../shared/seed-schema-fr.md`` itself (its ``sql`` blocks) and run in
foreign key order (the document lists ``sessions`` before ``users``, which cannot run as
written). :func:`fill` loads a realistic amount of data with naive timestamps, as services
writing in UTC produce, and the dirty rows real data has: one of each kind that head's
constraints refuse. Used by the adoption tests and by ``bench/adopt.py``.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlparse
from psycopg import sql

SEED_DOCUMENT = Path(__file__).resolve().parent.parent.parent / "shared" / "seed-schema-fr.md"
ARGON2 = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0{:04d}$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo"


def seed_statements(document: Path = SEED_DOCUMENT) -> list[str]:
    """The CREATE TABLE statements of the original design, in foreign key order."""
    text = document.read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, re.DOTALL)
    tables: dict[str, str] = {}
    for block in blocks:
        for statement in sqlparse.split(block):
            match = re.match(r"\s*CREATE\s+TABLE\s+(\w+)", statement, re.IGNORECASE)
            if match:
                tables[match.group(1).lower()] = statement.strip().rstrip(";")
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in ordered:
            return
        if name in path:
            raise ValueError(f"foreign key cycle through {name}")
        for referenced in re.findall(r"REFERENCES\s+(\w+)", tables[name], re.IGNORECASE):
            if referenced.lower() != name:
                visit(referenced.lower(), (*path, name))
        ordered.append(name)

    for name in tables:
        visit(name)
    return [tables[name] for name in ordered]


def create_seed_schema(conn: psycopg.Connection[Any]) -> list[str]:
    """Run the original DDL; returns the tables in the order they were created."""
    created = []
    for statement in seed_statements():
        conn.execute(statement)  # type: ignore[arg-type]
        created.append(re.match(r"\s*CREATE\s+TABLE\s+(\w+)", statement, re.I).group(1))  # type: ignore[union-attr]
    return created


@dataclasses.dataclass(frozen=True)
class Sizes:
    logs: int = 20_000
    users: int = 400
    sessions: int = 2_000
    cache: int = 500
    routes: int = 40
    messages: int = 2_000
    backups: int = 30
    days: int = 10  # logs spread over the last `days` days


# The dirty rows: one group per kind of row head's constraints refuse, with what each becomes.
DIRTY = {
    "roles_permissions_no_null": 1,
    "users_password_hash_argon2": 2,  # a bcrypt hash and a plain-text one
    "sessions_token_excl": 2,  # two tokens used twice
    "logs_timestamp_not_null": 3,
    "routes_method_check": 3,  # 'get', ' post ' (fixable) and 'fetch it' (not)
    "rate_limits_request_count_check": 1,
    "rate_limits_user_id_route_id_key": 2,  # two pairs counted twice
    "message_queue_status_check": 2,  # 'PENDING' (fixable to pending), 'done' (to failed)
    "message_queue_status_not_null": 1,
}


# what a user chooses for those rows: fix what a fix can repair, quarantine the rest
FIX = (
    "roles_permissions_no_null",
    "logs_timestamp_not_null",
    "routes_method_check",
    "rate_limits_request_count_check",
    "rate_limits_user_id_route_id_key",
    "message_queue_status_check",
    "message_queue_status_not_null",
)
QUARANTINE = ("users_password_hash_argon2", "sessions_token_excl", "routes_method_check")


def fill(conn: psycopg.Connection[Any], now: datetime, sizes: Sizes = Sizes()) -> None:
    """Load data the way the services write it: naive UTC timestamps, serial ids."""
    naive_now = now.replace(tzinfo=None)
    params = {"now": naive_now, "days": sizes.days}
    conn.execute(
        "INSERT INTO roles (name, permissions) VALUES"
        " ('admin', ARRAY['users:read', 'users:write', 'logs:read']),"
        " ('user', ARRAY['profile:read']),"
        " ('auditor', ARRAY['logs:read', NULL]),"  # dirty: a NULL permission
        " ('service', ARRAY['queue:write'])"
    )
    conn.execute(
        "INSERT INTO users (username, email, password_hash, role_id, created_at)"
        " SELECT 'user' || i, 'user' || i || '@kronos.test',"
        "        format(%(argon)s, i), 1 + i %% 4, %(now)s - i * interval '1 hour'"
        "   FROM generate_series(1, %(count)s) AS i",
        {**params, "argon": ARGON2.replace("{:04d}", "%s"), "count": sizes.users},
    )
    conn.execute(
        "UPDATE users SET password_hash = CASE id"
        " WHEN 3 THEN '$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW'"
        " ELSE 'hunter2' END WHERE id IN (3, 5)"
    )
    conn.execute(
        "INSERT INTO sessions (user_id, token, created_at, expires_at)"
        " SELECT 1 + i %% %(users)s, encode(sha256(('token' || i)::bytea), 'hex'),"
        "        %(now)s - (i %% 48) * interval '1 hour',"
        "        CASE WHEN i %% 10 = 0 THEN NULL"
        "             ELSE %(now)s + (24 - i %% 48) * interval '1 hour' END"
        "   FROM generate_series(1, %(count)s) AS i",
        {**params, "users": sizes.users, "count": sizes.sessions},
    )
    # dirty: two tokens reused by a later session (a client retrying a login)
    conn.execute(
        "INSERT INTO sessions (user_id, token, created_at, expires_at)"
        " SELECT user_id, token, created_at + interval '1 second', expires_at"
        "   FROM sessions WHERE id IN (7, 8)"
    )
    # sessions of the users whose hash is refused: a quarantine takes them along
    conn.execute(
        "INSERT INTO sessions (user_id, token, created_at)"
        " VALUES (3, 'raw-token-of-user-3', %(now)s), (5, 'raw-token-of-user-5', %(now)s)",
        params,
    )
    conn.execute(
        "INSERT INTO logs (service_name, level, message, timestamp)"
        " SELECT (ARRAY['auth', 'users', 'router', 'cache', 'messaging'])[1 + i %% 5],"
        "        (ARRAY['INFO', 'info', 'WARN', 'ERROR', 'DEBUG'])[1 + i %% 5],"
        "        'request ' || i || ' handled in ' || (i %% 997) || ' ms',"
        "        %(now)s - %(days)s * interval '1 day' * (1 - i::float8 / %(count)s)"
        "   FROM generate_series(1, %(count)s) AS i",
        {**params, "count": sizes.logs},
    )
    conn.execute(
        "INSERT INTO logs (service_name, level, message, timestamp) VALUES"
        " ('auth', 'ERROR', 'clock lost', NULL), ('users', 'INFO', 'no time', NULL)"
    )
    conn.execute("UPDATE logs SET timestamp = NULL WHERE id = (SELECT min(id) + 100 FROM logs)")
    conn.execute(
        "INSERT INTO cache (key, value, expires_at)"
        " SELECT 'key:' || i, 'value ' || i,"
        "        CASE WHEN i %% 3 = 0 THEN NULL"
        "             ELSE %(now)s + (i %% 100 - 50) * interval '1 minute' END"
        "   FROM generate_series(1, %(count)s) AS i",
        {**params, "count": sizes.cache},
    )
    conn.execute(
        "INSERT INTO routes (path, service, method)"
        " SELECT '/api/v1/resource' || i,"
        "        (ARRAY['auth', 'users', 'router', 'cache'])[1 + i %% 4],"
        "        (ARRAY['GET', 'POST', 'PUT', 'DELETE', 'PATCH'])[1 + i %% 5]"
        "   FROM generate_series(1, %(count)s) AS i",
        {"count": sizes.routes - 3},
    )
    conn.execute(
        "INSERT INTO routes (path, service, method) VALUES"
        " ('/legacy/login', 'auth', 'get'), ('/legacy/logout', 'auth', ' post '),"
        " ('/legacy/fetch', 'cache', 'fetch it')"
    )
    conn.execute(
        "INSERT INTO rate_limits (user_id, route_id, request_count, last_request)"
        " SELECT u, r, (u * r) %% 50, %(now)s - ((u + r) %% 60) * interval '1 minute'"
        "   FROM generate_series(1, least(%(users)s, 50)) AS u,"
        "        generate_series(1, least(%(routes)s, 10)) AS r",
        {**params, "users": sizes.users, "routes": sizes.routes},
    )
    conn.execute(
        "INSERT INTO rate_limits (user_id, route_id, request_count, last_request) VALUES"
        " (1, 1, 7, %(now)s), (2, 2, 3, %(now)s)",  # dirty: pairs counted twice
        params,
    )
    conn.execute("UPDATE rate_limits SET request_count = -4 WHERE user_id = 9 AND route_id = 3")
    conn.execute(
        "INSERT INTO message_queue (topic, payload, created_at, status)"
        " SELECT (ARRAY['emails', 'invoices', 'webhooks'])[1 + i %% 3], '{\"n\": ' || i || '}',"
        "        %(now)s - (i %% 500) * interval '1 minute',"
        "        (ARRAY['pending', 'processing', 'processed', 'processed', 'failed'])[1 + i %% 5]"
        "   FROM generate_series(1, %(count)s) AS i",
        {**params, "count": sizes.messages},
    )
    conn.execute(
        "INSERT INTO message_queue (topic, payload, created_at, status) VALUES"
        " ('emails', 'legacy 1', %(now)s, 'PENDING'), ('emails', 'legacy 2', %(now)s, 'done'),"
        " ('webhooks', 'legacy 3', %(now)s, NULL)",
        params,
    )
    conn.execute(
        "INSERT INTO backups (created_at, file_path)"
        " SELECT %(now)s - i * interval '1 day', '/var/backups/kronos-' || i || '.dump'"
        "   FROM generate_series(1, %(count)s) AS i",
        {**params, "count": sizes.backups},
    )
    conn.execute("ANALYZE")


def grant_to(conn: psycopg.Connection[Any], reader: str, writer: str) -> None:
    """The service roles' grants as a DBA made them by hand (they must survive the adoption)."""
    r, w = sql.Identifier(reader), sql.Identifier(writer)
    for statement in (
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}",
        "GRANT INSERT, SELECT ON logs, sessions, message_queue TO {w}",
        "GRANT USAGE ON SEQUENCE logs_id_seq, sessions_id_seq, message_queue_id_seq TO {w}",
        "GRANT UPDATE (status) ON message_queue TO {w}",
        "GRANT SELECT (id) ON message_queue TO {w} WITH GRANT OPTION",
    ):
        conn.execute(sql.SQL(statement).format(r=r, w=w))  # type: ignore[arg-type]


def table_digest(conn: psycopg.Connection[Any], table: str, columns: list[str]) -> tuple[int, str]:
    """Row count and an order-independent checksum of ``columns`` of every row."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '') FROM"
            " (SELECT md5(row({})::text) AS h FROM {}) AS rows"
        ).format(sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table))
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


SEED_NOW = datetime(2026, 3, 10, 12, 0, 0)
DAY = timedelta(days=1)
