"""The migrated schema equals the specification (../shared/kronos-schema.md), from the catalogs.

Columns are checked one by one (type, nullability, default); then every constraint, index,
trigger and the partitioning of ``logs``; then the behaviour the constraints and triggers exist
for. Columns that later revisions add (decision 5 of the spec allows adding, never removing or
narrowing) must be explained in docs/schema.md.
"""

from __future__ import annotations

import re
import select
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from argon2 import PasswordHasher
from conftest import REPO, Database

# table -> column -> (type, not null, default); None as default means no default
SPEC: dict[str, dict[str, tuple[str, bool, str | None]]] = {
    "roles": {
        "id": ("integer", True, "nextval('roles_id_seq'::regclass)"),
        "name": ("character varying(100)", True, None),
        "permissions": ("text[]", True, None),
    },
    "users": {
        "id": ("integer", True, "nextval('users_id_seq'::regclass)"),
        "username": ("character varying(255)", True, None),
        "email": ("character varying(255)", True, None),
        "password_hash": ("text", True, None),
        "role_id": ("integer", False, None),
        "created_at": ("timestamp with time zone", False, "now()"),
    },
    "sessions": {
        "id": ("integer", True, "nextval('sessions_id_seq'::regclass)"),
        "user_id": ("integer", False, None),
        "token": ("text", True, None),
        "created_at": ("timestamp with time zone", False, "now()"),
        "expires_at": ("timestamp with time zone", False, None),
    },
    "logs": {
        "id": ("bigint", True, None),  # identity, checked below
        "service_name": ("character varying(255)", True, None),
        "level": ("character varying(50)", True, None),
        "message": ("text", True, None),
        "timestamp": ("timestamp with time zone", True, "now()"),
    },
    "cache": {
        "key": ("character varying(255)", True, None),
        "value": ("text", True, None),
        "expires_at": ("timestamp with time zone", False, None),
    },
    "routes": {
        "id": ("integer", True, "nextval('routes_id_seq'::regclass)"),
        "path": ("character varying(255)", True, None),
        "service": ("character varying(255)", True, None),
        "method": ("character varying(10)", True, None),
    },
    "rate_limits": {
        # widened by revision 0011 (docs/schema.md: the router's upsert draws an id per request)
        "id": ("bigint", True, "nextval('rate_limits_id_seq'::regclass)"),
        "user_id": ("integer", False, None),
        "route_id": ("integer", False, None),
        "request_count": ("integer", False, "0"),
        "last_request": ("timestamp with time zone", False, "now()"),
    },
    "message_queue": {
        "id": ("bigint", True, None),  # identity
        "topic": ("character varying(255)", True, None),
        "payload": ("text", True, None),
        "created_at": ("timestamp with time zone", False, "now()"),
        # NOT NULL on top of the original (docs/schema.md explains why)
        "status": ("character varying(50)", True, "'pending'::character varying"),
    },
    "backups": {
        "id": ("integer", True, "nextval('backups_id_seq'::regclass)"),
        "created_at": ("timestamp with time zone", False, "now()"),
        "file_path": ("text", True, None),
    },
}

FOREIGN_KEYS = {
    ("users", "role_id", "roles", "id"),
    ("sessions", "user_id", "users", "id"),
    ("rate_limits", "user_id", "users", "id"),
    ("rate_limits", "route_id", "routes", "id"),
}

PRIMARY_KEYS = {
    "roles": ["id"],
    "users": ["id"],
    "sessions": ["id"],
    "logs": ["id", "timestamp"],
    "cache": ["key"],
    "routes": ["id"],
    "rate_limits": ["id"],
    "message_queue": ["id"],
    "backups": ["id"],
}

UNIQUE = {
    ("roles", ("name",)),
    ("users", ("username",)),
    ("users", ("email",)),
    ("routes", ("path",)),
    ("rate_limits", ("user_id", "route_id")),
}

# columns a maintenance job or a lookup scans: each must lead some index
INDEXED = {
    ("users", "email"),
    ("users", "username"),
    ("users", "role_id"),
    ("sessions", "user_id"),
    ("sessions", "expires_at"),
    ("sessions", "token"),
    ("logs", "service_name"),
    ("logs", "timestamp"),
    ("cache", "expires_at"),
    ("rate_limits", "user_id"),
    ("rate_limits", "route_id"),
    ("rate_limits", "last_request"),
    ("message_queue", "topic"),
    ("backups", "created_at"),
}


def _columns(conn: psycopg.Connection[Any], table: str) -> dict[str, tuple[str, bool, str | None]]:
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
          FROM pg_attribute AS a
          LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (f"public.{table}",),
    ).fetchall()
    return {name: (kind, not_null, default) for name, kind, not_null, default in rows}


def test_all_nine_tables_exist_and_nothing_else(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition"
    ).fetchall()
    tables = {name for (name,) in rows}
    tool_tables = {
        name for name in tables if name == "alembic_version" or name.startswith("kronos_")
    }
    assert tables - tool_tables == set(SPEC)


@pytest.mark.parametrize("table", sorted(SPEC))
def test_columns_match_the_spec(conn: psycopg.Connection[Any], table: str) -> None:
    actual = _columns(conn, table)
    for column, expected in SPEC[table].items():
        assert column in actual, f"{table}.{column} is missing"
        assert actual[column] == expected, f"{table}.{column}"


def test_added_columns_are_documented(conn: psycopg.Connection[Any]) -> None:
    schema_doc = (REPO / "docs" / "schema.md").read_text(encoding="utf-8")
    for table, columns in SPEC.items():
        for column in set(_columns(conn, table)) - set(columns):
            assert f"{table}.{column}" in schema_doc, (
                f"{table}.{column} is not in the spec: explain it in docs/schema.md"
            )


def test_high_volume_ids_are_bigint_identities(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT attrelid::regclass::text, attidentity FROM pg_attribute"
        " WHERE attname = 'id' AND attrelid IN ('logs'::regclass, 'message_queue'::regclass)"
    ).fetchall()
    assert dict(rows) == {"logs": "d", "message_queue": "d"}


def test_primary_keys(conn: psycopg.Connection[Any]) -> None:
    for table, columns in PRIMARY_KEYS.items():
        row = conn.execute(
            """
            SELECT array_agg(a.attname::text ORDER BY k.ordinality)
              FROM pg_constraint AS c
             CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k (attnum, ordinality)
              JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             WHERE c.conrelid = %s::regclass AND c.contype = 'p'
            """,
            (table,),
        ).fetchone()
        assert row is not None and row[0] == columns, table


def test_foreign_keys(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        """
        SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, fa.attname
          FROM pg_constraint AS c
          JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
          JOIN pg_attribute AS fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1]
         WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
        """
    ).fetchall()
    assert set(rows) >= FOREIGN_KEYS


def test_unique_constraints(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        """
        SELECT c.conrelid::regclass::text,
               array_agg(a.attname::text ORDER BY k.ordinality)
          FROM pg_constraint AS c
         CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k (attnum, ordinality)
          JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
         WHERE c.contype = 'u' AND c.connamespace = 'public'::regnamespace
         GROUP BY c.oid
        """
    ).fetchall()
    assert {(table, tuple(columns)) for table, columns in rows} >= UNIQUE


def test_every_searched_and_foreign_key_column_leads_an_index(
    conn: psycopg.Connection[Any],
) -> None:
    rows = conn.execute(
        """
        SELECT i.indrelid::regclass::text, a.attname
          FROM pg_index AS i
          JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
          JOIN pg_class AS c ON c.oid = i.indrelid
         WHERE c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
        """
    ).fetchall()
    assert set(rows) >= INDEXED


def test_triggers(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger"
        " WHERE NOT tgisinternal AND tgparentid = 0"
    ).fetchall()
    assert {
        ("sessions", "sessions_default_expiry"),
        ("message_queue", "message_queue_notify"),
    } <= set(rows)


def test_logs_is_partitioned_by_day_in_utc(conn: psycopg.Connection[Any]) -> None:
    (key,) = conn.execute("SELECT pg_get_partkeydef('logs'::regclass)").fetchone() or ("",)
    assert key == 'RANGE ("timestamp")'
    rows = conn.execute(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
          FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'logs'::regclass
        """
    ).fetchall()
    bounds = dict(rows)
    assert bounds.pop("logs_default") == "DEFAULT"
    today = datetime.now(UTC).date()
    # today and seven days ahead, each [midnight UTC, next midnight UTC), named as pg_partman does
    conn.execute("SET TimeZone = 'UTC'")
    rows = conn.execute(
        """
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'TO \\(''([^'']+)''\\)'))[1]::timestamptz
          FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'logs'::regclass AND c.relname <> 'logs_default'
        """
    ).fetchall()
    days = {name: (start, end) for name, start, end in rows}
    for offset in range(8):
        day = today + timedelta(days=offset)
        name = f"logs_p{day:%Y_%m_%d}"
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        assert days[name] == (start, start + timedelta(days=1))


def test_partitions_carry_the_parents_indexes(conn: psycopg.Connection[Any]) -> None:
    day = datetime.now(UTC).date()
    rows = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (f"logs_p{day:%Y_%m_%d}",)
    ).fetchall()
    definitions = " ".join(row[0] for row in rows)
    assert '(id, "timestamp")' in definitions
    assert '(service_name, "timestamp")' in definitions
    assert "USING brin" in definitions


# ---------------------------------------------------------------- behaviour


def _role(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "INSERT INTO roles (name, permissions) VALUES ('reader', '{logs:read}') RETURNING id"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_password_hash_must_be_argon2(conn: psycopg.Connection[Any]) -> None:
    role = _role(conn)
    good = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("s3cret")
    conn.execute(
        "INSERT INTO users (username, email, password_hash, role_id) VALUES ('ok', 'ok@x', %s, %s)",
        (good, role),
    )
    for bad in (
        "plain-text",
        "$2b$12$abcdefghijklmnopqrstuv",
        "$argon2id$v=19$m=8,t=1,p=1$",
        good + " ",
    ):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO users (username, email, password_hash) VALUES ('u', 'e', %s)", (bad,)
            )


def test_permissions_reject_null_elements(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO roles (name, permissions) VALUES ('x', ARRAY['a', NULL])")


def test_session_gets_a_default_expiry(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "INSERT INTO sessions (token, created_at) VALUES ('t1', '2026-01-01T00:00:00Z')"
        " RETURNING expires_at"
    ).fetchone()
    assert row is not None and row[0] == datetime(2026, 1, 2, tzinfo=UTC)
    conn.execute("SET kronos.session_ttl = '30 minutes'")
    row = conn.execute(
        "INSERT INTO sessions (token, created_at) VALUES ('t2', '2026-01-01T00:00:00Z')"
        " RETURNING expires_at"
    ).fetchone()
    assert row is not None and row[0] == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    explicit = datetime(2030, 1, 1, tzinfo=UTC)
    row = conn.execute(
        "INSERT INTO sessions (token, expires_at) VALUES ('t3', %s) RETURNING expires_at",
        (explicit,),
    ).fetchone()
    assert row is not None and row[0] == explicit


def test_session_tokens_are_unique_at_any_length(conn: psycopg.Connection[Any]) -> None:
    long_token = "x" * 10_000  # past a B-tree entry's limit: the hash index takes it
    conn.execute("INSERT INTO sessions (token) VALUES (%s)", (long_token,))
    with pytest.raises(psycopg.errors.ExclusionViolation):
        conn.execute("INSERT INTO sessions (token) VALUES (%s)", (long_token,))
    conn.execute("SET enable_seqscan = off")  # a tiny table: make the planner show the index
    plan = conn.execute("EXPLAIN SELECT * FROM sessions WHERE token = 'abc'").fetchall()
    assert "sessions_token_excl" in " ".join(row[0] for row in plan)


def test_queue_status_and_route_method_reject_garbage(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO message_queue (topic, payload) VALUES ('t', 'p')")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO message_queue (topic, payload, status) VALUES ('t', 'p', 'done?')"
        )
    with pytest.raises(psycopg.errors.NotNullViolation):
        conn.execute("INSERT INTO message_queue (topic, payload, status) VALUES ('t', 'p', NULL)")
    for method in ("GET", "PROPFIND", "*"):
        conn.execute(
            "INSERT INTO routes (path, service, method) VALUES (%s, 's', %s)",
            (f"/{method}", method),
        )
    for method in ("get", "", "GET /x"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO routes (path, service, method) VALUES ('/bad', 's', %s)", (method,)
            )


def test_queueing_a_message_notifies_listeners(database: Database) -> None:
    with database.connect() as listener, database.connect() as producer:
        listener.execute("LISTEN kronos_message_queue")
        producer.execute("INSERT INTO message_queue (topic, payload) VALUES ('emails', '{}')")
        ready = select.select([listener.fileno()], [], [], 5)[0]
        assert ready, "no notification within 5 s"
        notifications = list(listener.notifies(timeout=1, stop_after=1))
        assert [n.payload for n in notifications] == ["emails"]


def test_logs_land_in_their_day_or_the_default_partition(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TimeZone = 'Asia/Tokyo'")  # bounds are UTC whatever the session says
    now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = conn.execute(
        "INSERT INTO logs (service_name, level, message, timestamp) VALUES"
        " ('auth', 'INFO', 'a', %s), ('auth', 'INFO', 'b', %s)"
        " RETURNING tableoid::regclass::text",
        (now, now - timedelta(days=400)),
    ).fetchall()
    assert [r[0] for r in rows] == [f"logs_p{now:%Y_%m_%d}", "logs_default"]


def test_table_comments_name_the_owning_service(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class"
        " WHERE relnamespace = 'public'::regnamespace AND relname = ANY(%s)",
        (list(SPEC),),
    ).fetchall()
    for table, comment in rows:
        assert comment and re.match(r"^[a-z-]+:", comment), table
