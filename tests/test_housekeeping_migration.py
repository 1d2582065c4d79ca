"""Migration 0008: the columns the housekeeping jobs need, added without a table rewrite."""

from __future__ import annotations

from typing import Any

import psycopg

from kronos_db import migrations
from kronos_db.config import Settings


def _filenodes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT relname, pg_relation_filenode(oid) FROM pg_class"
        " WHERE relname IN ('sessions', 'message_queue') AND relkind = 'r'"
    ).fetchall()
    return dict(rows)


def _columns(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT table_name || '.' || column_name FROM information_schema.columns"
        " WHERE column_name IN ('last_active_at', 'attempts', 'status_changed_at')"
    ).fetchall()
    return {row[0] for row in rows}


def test_0008_upgrades_existing_rows_in_place_and_downgrades_fully(database: Any) -> None:
    settings = Settings()
    migrations.downgrade(settings, database.target, "0007")
    with database.connect() as conn:
        assert _columns(conn) == set()
        conn.execute("INSERT INTO sessions (token) VALUES ('existing')")
        conn.execute(
            "INSERT INTO message_queue (topic, payload, status) VALUES ('t', 'p', 'processing')"
        )
        before = _filenodes(conn)
        started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

    migrations.upgrade(settings, database.target, "head")
    with database.connect() as conn:
        assert _filenodes(conn) == before, "adding the columns rewrote a table"
        assert _columns(conn) == {
            "sessions.last_active_at",
            "message_queue.attempts",
            "message_queue.status_changed_at",
        }
        # existing rows read the migration's time: active now, stuck clock starting now
        last_active = conn.execute("SELECT last_active_at FROM sessions").fetchone()[0]  # type: ignore[index]
        attempts, changed = conn.execute(
            "SELECT attempts, status_changed_at FROM message_queue"
        ).fetchone()  # type: ignore[misc]
        assert last_active >= started
        assert changed >= started
        assert attempts == 0
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%%status_changed_at%%'"
                " OR indexname = 'sessions_last_active_at_idx'"
            ).fetchall()
        }
        assert indexes == {
            "sessions_last_active_at_idx",
            "message_queue_processing_status_changed_at_idx",
            "message_queue_processed_status_changed_at_idx",
        }

    # the columns hold the rows' values: dropping them is a data loss to ask for
    migrations.downgrade(settings, database.target, "0007", drop_data=True)
    with database.connect() as conn:
        assert _columns(conn) == set()
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'message_queue_status_changed'"
        ).fetchone()
        assert leftovers == (0,)
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (1,)
    migrations.upgrade(settings, database.target, "head")
