"""`kronos-db adopt`: a database built from the original design, full of data and dirty rows,
taken over in place while services write, with every row and grant kept; killed anywhere and
rerun, it ends in the same state."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import seed
from conftest import HOST, PORT, REPO, USER, Database, clean_environment, run_cli, url_for
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from kronos_db import adopt, migrations, schema
from kronos_db.adopt import quarantine
from kronos_db.config import AdoptSettings, Settings

NOW = seed.SEED_NOW.replace(tzinfo=UTC)
LOCK_TIMEOUT = timedelta(seconds=2)
SETTINGS = Settings(adopt=AdoptSettings(lock_timeout=LOCK_TIMEOUT, batch_size=2000))
TABLES = migrations.KRONOS_TABLES
FIX, QUARANTINE = seed.FIX, seed.QUARANTINE
CHOICES = [*(f"--fix={r}" for r in FIX), *(f"--quarantine={r}" for r in QUARANTINE)]


@dataclasses.dataclass(frozen=True)
class Roles:
    reader: str
    writer: str


@pytest.fixture
def service_roles() -> Iterator[Roles]:
    """Two roles of this run only (roles are cluster-wide): dropped once its databases are."""
    suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
    roles = Roles(f"kronos_adopt_reader_{suffix}", f"kronos_adopt_writer_{suffix}")
    with psycopg.connect(url_for("postgres"), autocommit=True) as conn:
        for role in (roles.reader, roles.writer):
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    yield roles
    with psycopg.connect(url_for("postgres"), autocommit=True) as conn:
        for role in (roles.reader, roles.writer):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _seed(database: Database, sizes: seed.Sizes, roles: Roles | None = None) -> None:
    with database.connect() as conn:
        seed.create_seed_schema(conn)
        seed.fill(conn, seed.SEED_NOW, sizes)
        if roles is not None:
            seed.grant_to(conn, roles.reader, roles.writer)


def _key(table: str) -> str:
    return "key" if table == "cache" else "id"


def _rows(conn: psycopg.Connection[Any], table: str) -> dict[Any, dict[str, Any]]:
    """Every row of a table, whole, by key (partitions included)."""
    query = sql.SQL("SELECT {key}, to_jsonb(t) FROM {table} AS t").format(
        key=sql.Identifier(_key(table)), table=sql.Identifier(table)
    )
    return {row[0]: row[1] for row in conn.execute(query)}


def _snapshot(database: Database) -> dict[str, dict[Any, dict[str, Any]]]:
    with database.connect() as conn:
        return {table: _rows(conn, table) for table in TABLES}


def _normal(value: Any) -> Any:
    """A timestamp as an instant: naive values were written in UTC."""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return value


def _content(row: dict[str, Any], columns: list[str]) -> tuple[Any, ...]:
    return tuple(_normal(row.get(c)) for c in columns)


def _checksum(rows: list[tuple[Any, ...]]) -> str:
    digest = hashlib.sha256()
    for row in sorted(json.dumps(r, default=str) for r in rows):
        digest.update(row.encode())
    return digest.hexdigest()


def _acl(conn: psycopg.Connection[Any], name: str) -> list[str]:
    row = conn.execute(
        "SELECT coalesce(relacl::text[], '{}') FROM pg_class"
        " WHERE relname = %s AND relnamespace = 'public'::regnamespace",
        (name,),
    ).fetchone()
    assert row is not None, name
    return sorted(row[0])


def _column_acl(conn: psycopg.Connection[Any], table: str, column: str) -> list[str]:
    row = conn.execute(
        "SELECT coalesce(attacl::text[], '{}') FROM pg_attribute"
        " WHERE attrelid = to_regclass(%s) AND attname = %s",
        (table, column),
    ).fetchone()
    assert row is not None
    return sorted(row[0])


class Writer(threading.Thread):
    """A service inserting a log line and a session every 20 ms, timing each insert.

    Like services behind PgBouncer, it uses no server-side prepared statements: a prepared
    statement that returns a column whose type the adoption changes fails afterwards with
    "cached plan must not change result type" (docs/adopting.md).
    """

    def __init__(self, database: Database) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(database.url, autocommit=True, prepare_threshold=None)
        self.stop = threading.Event()
        self.waits: list[float] = []
        self.logs: list[int] = []
        self.sessions: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                started = time.monotonic()
                # on the adoption's clock (rotation runs at NOW), as a live service would be
                row = self.conn.execute(
                    "INSERT INTO logs (service_name, level, message, timestamp)"
                    " VALUES ('writer', 'INFO', %s, %s) RETURNING id",
                    (f"written during the adoption {n}", NOW + timedelta(milliseconds=n)),
                ).fetchone()
                self.waits.append(time.monotonic() - started)
                self.logs.append(int(row[0]))  # type: ignore[index]
                started = time.monotonic()
                row = self.conn.execute(
                    "INSERT INTO sessions (user_id, token) VALUES (1, %s) RETURNING id",
                    (secrets.token_hex(32),),
                ).fetchone()
                self.waits.append(time.monotonic() - started)
                self.sessions.append(int(row[0]))  # type: ignore[index]
            except psycopg.Error as exc:
                self.errors.append(str(exc))
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.join()
        self.conn.close()


def test_adopt_a_seed_database_in_place_while_services_write(
    service_roles: Roles, empty_database: Database
) -> None:
    database = empty_database
    _seed(database, seed.Sizes(), service_roles)
    with database.connect() as conn:
        acl_before = {t: _acl(conn, t) for t in TABLES}
        sequence_acl_before = {s: _acl(conn, s) for s in ("logs_id_seq", "message_queue_id_seq")}
        column_acl_before = _column_acl(conn, "message_queue", "id")
        max_ids = {
            t: conn.execute(sql.SQL("SELECT max(id) FROM {}").format(sql.Identifier(t))).fetchone()[
                0
            ]  # type: ignore[index]
            for t in ("logs", "sessions", "message_queue")
        }

    # the plan: every violation in one run, nothing changed
    result = run_cli("adopt", "--plan", "--json", "--database-url", database.url)
    assert result.code == 0, result.output
    plan = json.loads(result.stdout)
    assert {v["rule"]: v["count"] for v in plan["violations"]} == seed.DIRTY
    routes = next(v for v in plan["violations"] if v["rule"] == "routes_method_check")
    assert routes["fixable"] == 2
    users = next(v for v in plan["violations"] if v["rule"] == "users_password_hash_argon2")
    assert users["fix_sql"] == ""
    assert "$2b$12$R9h/cIPz0gi" not in result.stdout, "a password hash shown whole"
    assert plan["timestamps"]["timestamps_in"] is None
    assert plan["history"].startswith("none")
    assert all(not s["done"] for s in plan["steps"] if s["key"].endswith(".partition"))
    before = _snapshot(database)
    assert _snapshot(database) == before, "the plan changed something"

    # --apply without the decisions changes nothing and says what is missing
    blocked = run_cli("adopt", "--apply", "--database-url", database.url)
    assert blocked.code == 2, blocked.output
    assert "--timestamps-in" in blocked.stderr
    assert "--quarantine users_password_hash_argon2" in blocked.stderr

    writer = Writer(database)
    listener = psycopg.connect(database.url, autocommit=True)
    listener.execute("LISTEN kronos_message_queue")
    writer.start()
    try:
        outcome = adopt.apply(
            SETTINGS,
            database.target,
            now=NOW,
            timestamps_in="UTC",
            fix=FIX,
            quarantine=QUARANTINE,
        )
    finally:
        writer.finish()
    assert outcome.rotated and outcome.rotation_failures == ()
    assert writer.errors == []
    assert len(writer.logs) > 10 and len(writer.sessions) > 10
    assert max(writer.waits) < LOCK_TIMEOUT.total_seconds(), max(writer.waits)
    assert outcome.check_differences == ()
    assert outcome.stamped[-1] == adopt.ADOPTION_REVISION
    longest = outcome.longest_lock
    assert longest is not None and longest.lock_seconds < LOCK_TIMEOUT.total_seconds()
    # the existing pending messages did not wake the consumers
    assert list(listener.notifies(timeout=0.2, stop_after=1)) == []

    after = _snapshot(database)
    kept = quarantine.list_rows(database.target)
    by_action: dict[str, dict[str, dict[Any, dict[str, Any]]]] = {}
    for row in kept:
        key = row.row_data[_key(row.table_name)]
        by_action.setdefault(row.action, {}).setdefault(row.table_name, {})[key] = row.row_data
    moved = {**by_action.get("quarantined", {})}
    for table, rows in by_action.get("merged", {}).items():
        moved.setdefault(table, {}).update(rows)
    fixed = by_action.get("fixed", {})
    written = {"logs": set(writer.logs), "sessions": set(writer.sessions)}
    for table in TABLES:
        columns = sorted(next(iter(before[table].values())).keys())
        gone = moved.get(table, {})
        # moved rows are whole in the quarantine, and gone from their table
        for key, row_data in gone.items():
            assert row_data == before[table][key], (table, key)
            assert key not in after[table], (table, key)
        # no row lost, none doubled, none invented
        assert set(after[table]) == (set(before[table]) - set(gone)) | written.get(table, set())
        # every other row has the same content, but for the fixes (their old version is kept)
        expected = []
        for key, row in before[table].items():
            if key in gone:
                continue
            if key in fixed.get(table, {}):
                assert fixed[table][key] == row
                continue
            expected.append(_content(row, columns))
        actual = [
            _content(after[table][key], columns)
            for key in after[table]
            if key not in fixed.get(table, {}) and key not in written.get(table, set())
        ]
        assert _checksum(actual) == _checksum(expected), table
    assert set(moved["users"]) == {3, 5}
    assert moved["routes"][40]["method"] == "fetch it"
    assert {k for k in moved["sessions"]} >= {7, 8}
    assert after["routes"][38]["method"] == "GET" and after["routes"][39]["method"] == "POST"
    assert after["roles"][3]["permissions"] == ["logs:read"]
    assert {after["message_queue"][k]["status"] for k in (2001, 2002, 2003)} == {
        "pending",
        "failed",
    }
    assert all(row["timestamp"] is not None for row in after["logs"].values())

    with database.connect() as conn:
        # the shape: status at head, logs partitioned with the old table as default partition
        status = migrations.status(SETTINGS, database.target)
        assert status.up_to_date and not status.not_adopted
        partitioned = conn.execute(
            "SELECT relkind, (SELECT partdefid::regclass::text FROM pg_partitioned_table"
            "  WHERE partrelid = 'logs'::regclass) FROM pg_class WHERE oid = 'logs'::regclass"
        ).fetchone()
        assert partitioned == ("p", "logs_default")
        assert conn.execute("SELECT count(*) FROM logs_default").fetchone() == (0,)
        # grants kept, on the new logs and the new identity sequences too
        assert {t: _acl(conn, t) for t in TABLES} == acl_before
        assert {
            s: _acl(conn, s) for s in ("logs_id_seq", "message_queue_id_seq")
        } == sequence_acl_before
        assert _column_acl(conn, "message_queue", "id") == column_acl_before
        # new inserts get fresh ids, as the services' roles
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(service_roles.writer)))
        fresh = {
            table: conn.execute(statement).fetchone()[0]  # type: ignore[index]
            for table, statement in (
                (
                    "logs",
                    "INSERT INTO logs (service_name, level, message)"
                    " VALUES ('s', 'INFO', 'new') RETURNING id",
                ),
                (
                    "sessions",
                    "INSERT INTO sessions (user_id, token) VALUES (2, 'fresh') RETURNING id",
                ),
                (
                    "message_queue",
                    "INSERT INTO message_queue (topic, payload) VALUES ('t', 'p') RETURNING id",
                ),
            )
        }
        conn.execute("RESET ROLE")
        for table, new_id in fresh.items():
            assert new_id > max(max_ids[table], *written.get(table, {0})), table
    # a message queued now does wake them
    assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == ["t"]
    listener.close()

    # quarantined rows are restorable: once the user-service gives user 3 an Argon2 hash
    user_row = next(r for r in kept if r.table_name == "users" and r.row_data["id"] == 3)
    with database.connect() as conn:
        conn.execute(
            "UPDATE kronos_quarantine SET row_data = jsonb_set(row_data, '{password_hash}', %s)"
            " WHERE id = %s",
            (json.dumps(seed.ARGON2.format(3)), user_row.id),
        )
    restored = run_cli("quarantine", "restore", str(user_row.id), "--database-url", database.url)
    assert restored.code == 0, restored.output
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE id = 3").fetchone() == (1,)
        batch = [r for r in kept if r.batch == user_row.batch]
        sessions_back = sum(1 for r in batch if r.table_name == "sessions")
        assert sessions_back > 0
        assert conn.execute("SELECT count(*) FROM sessions WHERE user_id = 3").fetchone() == (
            sessions_back,
        )
    # the route whose method no fix could repair still breaks the rule: it stays
    route_row = next(r for r in kept if r.table_name == "routes" and r.action == "quarantined")
    refused = run_cli("quarantine", "restore", str(route_row.id), "--database-url", database.url)
    assert refused.code == 1
    assert "routes_method_check" in refused.stderr
    assert any(r.id == route_row.id for r in quarantine.list_rows(database.target))
    assert schema.check(SETTINGS, database.target).differences == ()


def test_timestamps_written_in_another_zone_are_converted_through_shadow_columns(
    empty_database: Database,
) -> None:
    database = empty_database
    _seed(database, seed.Sizes(logs=300, users=20, sessions=40, cache=20, messages=40))
    with database.connect() as conn:
        naive = conn.execute("SELECT id, created_at FROM users ORDER BY id LIMIT 1").fetchone()
        filenode = conn.execute("SELECT pg_relation_filenode('users')").fetchone()
    assert naive is not None
    # a run killed after converting some columns as Paris time must not go on as UTC
    marker = "kronos-db adopt: naive timestamps converted as Europe/Paris"
    with database.connect() as conn:
        conn.execute(sql.SQL("COMMENT ON COLUMN backups.created_at IS {}").format(marker))
    plan = adopt.plan(SETTINGS, database.target, timestamps_in="UTC")
    assert any("with --timestamps-in Europe/Paris" in b for b in plan.blockers)
    plan = adopt.plan(SETTINGS, database.target, timestamps_in="europe/paris")
    assert not plan.blockers
    assert plan.timestamps.timestamps_in == "Europe/Paris" and not plan.timestamps.in_place
    assert any(s.key == "users.timestamps.backfill" for s in plan.steps)
    result = adopt.apply(
        SETTINGS,
        database.target,
        now=NOW,
        timestamps_in="Europe/Paris",
        fix=FIX,
        quarantine=QUARANTINE,
    )
    assert result.check_differences == ()
    with database.connect() as conn:
        converted = conn.execute("SELECT created_at FROM users WHERE id = %s", (naive[0],))
        value = converted.fetchone()[0]  # type: ignore[index]
        # March: Paris is one hour ahead of UTC
        assert value == naive[1].replace(tzinfo=UTC) - timedelta(hours=1)
        comment = conn.execute(
            "SELECT col_description('users'::regclass, attnum) FROM pg_attribute"
            " WHERE attrelid = 'users'::regclass AND attname = 'created_at'"
        ).fetchone()
        assert comment == ("kronos-db adopt: naive timestamps converted as Europe/Paris",)
        # the table kept its storage (no rewrite under a lock); rows were updated in batches
        assert conn.execute("SELECT pg_relation_filenode('users')").fetchone() == filenode


def _state(database: Database) -> dict[str, Any]:
    """What a finished adoption leaves: schema, every row, the quarantine, sequences."""
    with database.connect() as conn:
        facts = schema.schema_facts(conn)
        rows = {table: _rows(conn, table) for table in TABLES}
        kept = sorted(
            (r[0], r[1], r[2], json.dumps(r[3], sort_keys=True))
            for r in conn.execute(
                "SELECT table_name, rule, action, row_data FROM kronos_quarantine"
            )
        )
        partitions = sorted(
            row[0]
            for row in conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits"
                " WHERE inhparent = 'logs'::regclass"
            )
        )
        # the Kronos tables' sequences (a killed transaction may burn values of kronos-db's
        # own, as any sequence: gaps in kronos_quarantine.id are no difference)
        sequences = {
            row[0]: row[1]
            for row in conn.execute("SELECT sequencename, last_value FROM pg_sequences")
            if not row[0].startswith("kronos_")
        }
        revisions = migrations.current_revisions(conn)
    return {
        "facts": facts,
        "rows": rows,
        "quarantine": kept,
        "partitions": partitions,
        "sequences": sequences,
        "revisions": revisions,
    }


def _apply_args(database: Database) -> list[str]:
    return [
        "adopt",
        "--apply",
        "--timestamps-in",
        "UTC",
        *CHOICES,
        "--now",
        NOW.isoformat(),
        "--database-url",
        database.url,
    ]


def _apply_process(database: Database) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kronos_db", *_apply_args(database)],
        cwd=REPO,
        env=clean_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def other_empty_database() -> Iterator[Database]:
    name = f"kronos_empty_{os.getpid()}_{secrets.token_hex(4)}"
    with DatabaseJanitor(user=USER, host=HOST, port=PORT, dbname=name):
        yield Database(name, url_for(name))


def test_killed_anywhere_and_rerun_ends_in_the_same_state(
    empty_database: Database, other_empty_database: Database
) -> None:
    """SIGKILL at random points of --apply (inside steps and between them), then a rerun."""
    sizes = seed.Sizes(logs=3000, users=40, sessions=120, cache=30, messages=120)
    reference = other_empty_database
    _seed(reference, sizes)
    adopt.apply(
        SETTINGS, reference.target, now=NOW, timestamps_in="UTC", fix=FIX, quarantine=QUARANTINE
    )
    expected = _state(reference)

    victim = empty_database
    _seed(victim, sizes)
    rng = random.Random(11)
    total_steps = len(adopt.plan(SETTINGS, victim.target).steps)
    # inside six random steps, while the schema is compared before the stamp, and while the
    # rotation moves the old rows out after it
    kill_points: list[Any] = sorted(rng.sample(range(1, total_steps + 1), 6))
    kill_points += ["comparing the schema", "moving the old logs"]
    killed: list[str] = []
    scratch: list[str] = []
    try:
        for point in kill_points:
            process = _apply_process(victim)
            assert process.stderr is not None
            for line in process.stderr:
                scratch += re.findall(r"scratch database (kronos_\w+)", line)
                if isinstance(point, int):
                    hit = (
                        line.startswith("kronos-db: step ")
                        and int(line.split()[2].split("/")[0]) >= point
                    )
                else:
                    hit = point in line
                if hit:
                    time.sleep(rng.uniform(0, 0.03))
                    process.send_signal(signal.SIGKILL)
                    killed.append(line.strip())
                    break
            process.wait(timeout=120)
            process.stderr.close()
    finally:
        # a killed run cannot drop the scratch database it was building
        with psycopg.connect(url_for("postgres"), autocommit=True) as conn:
            for name in scratch:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    assert len(killed) == len(kill_points), killed
    final = run_cli(*_apply_args(victim), timeout=180)
    assert final.code == 0, final.output
    state = _state(victim)
    assert state["revisions"] == expected["revisions"]
    assert state["facts"] == expected["facts"]
    assert state["partitions"] == expected["partitions"]
    assert state["quarantine"] == expected["quarantine"]
    for table in TABLES:
        assert _without_adoption_time(state["rows"][table]) == _without_adoption_time(
            expected["rows"][table]
        ), table
    assert state["sequences"] == expected["sequences"]


# columns added with a now() default: existing rows read the time of the ALTER that added them
ADOPTION_TIME = ("last_active_at", "status_changed_at")


def _without_adoption_time(rows: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {
        key: {c: v for c, v in row.items() if c not in ADOPTION_TIME} for key, row in rows.items()
    }


def test_a_database_between_the_seed_and_head_is_adopted_from_where_it_stands(
    empty_database: Database,
) -> None:
    """Built by revisions 0001-0007 then its history lost: only 0008-0010's objects are added."""
    migrations.upgrade(SETTINGS, empty_database.target, "0007")
    with empty_database.connect() as conn:
        conn.execute("DROP TABLE alembic_version")
        conn.execute("DROP TABLE kronos_migrations")
        conn.execute("INSERT INTO sessions (token) VALUES ('a'), ('b')")
    plan = adopt.plan(SETTINGS, empty_database.target)
    assert plan.timestamps.naive_columns == ()
    pending = {s.key for s in plan.pending}
    assert "sessions.columns" in pending and "toolkit.reports" in pending
    assert not any(".timestamps" in k or ".ids." in k or k == "logs.partition" for k in pending)
    result = adopt.apply(SETTINGS, empty_database.target, now=NOW)
    assert result.check_differences == ()
    assert result.stamped[-1] == adopt.ADOPTION_REVISION
    # and a second run finds nothing left to do
    again = adopt.apply(SETTINGS, empty_database.target, now=NOW)
    assert again.already_adopted and again.steps == ()
