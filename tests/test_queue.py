"""The message queue's housekeeping: stats, requeueing stuck messages, poison messages, purge."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from kronos_db import queue
from kronos_db.housekeeping import BatchOptions

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


def add_message(
    conn: psycopg.Connection[Any],
    status: str,
    changed_ago: timedelta,
    *,
    topic: str = "orders",
    attempts: int = 0,
    created_ago: timedelta | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO message_queue (topic, payload, status, attempts, created_at,"
        " status_changed_at) VALUES (%(topic)s, '{}', %(status)s, %(attempts)s, %(created)s,"
        " %(changed)s) RETURNING id",
        {
            "topic": topic,
            "status": status,
            "attempts": attempts,
            "created": NOW - (created_ago or changed_ago),
            "changed": NOW - changed_ago,
        },
    ).fetchone()
    assert row is not None
    return int(row[0])


def message(conn: psycopg.Connection[Any], message_id: int) -> tuple[str, int, datetime] | None:
    row = conn.execute(
        "SELECT status, attempts, status_changed_at FROM message_queue WHERE id = %(id)s",
        {"id": message_id},
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def test_a_stuck_message_is_requeued_and_its_attempt_counted(conn: psycopg.Connection[Any]) -> None:
    stuck = add_message(conn, "processing", timedelta(minutes=16))
    working = add_message(conn, "processing", timedelta(minutes=14))
    pending = add_message(conn, "pending", timedelta(hours=3))
    result = queue.requeue_stuck(conn, NOW, older_than=timedelta(minutes=15), max_attempts=5)
    assert (result.rows, dict(result.details)) == (1, {"requeued": 1, "failed": 0})
    assert message(conn, stuck) == ("pending", 1, NOW)
    assert message(conn, working) == ("processing", 0, NOW - timedelta(minutes=14))
    assert message(conn, pending) == ("pending", 0, NOW - timedelta(hours=3))


def test_a_poison_message_ends_in_failed_instead_of_looping(conn: psycopg.Connection[Any]) -> None:
    poison = add_message(conn, "processing", timedelta(hours=1))
    statuses = []
    for attempt in range(1, 4):
        clock = NOW + timedelta(hours=attempt)
        queue.requeue_stuck(conn, clock, older_than=timedelta(minutes=15), max_attempts=3)
        status, attempts, _changed = message(conn, poison)  # type: ignore[misc]
        statuses.append((status, attempts))
        if status == "pending":  # a consumer takes it again, and dies again
            conn.execute(
                "UPDATE message_queue SET status = 'processing',"
                " status_changed_at = %(taken)s WHERE id = %(id)s",
                {"taken": clock + timedelta(minutes=1), "id": poison},
            )
    assert statuses == [("pending", 1), ("pending", 2), ("failed", 3)]
    # a failed message stays failed: nothing requeues it again
    result = queue.requeue_stuck(conn, NOW + timedelta(days=30), max_attempts=3)
    assert result.rows == 0
    assert message(conn, poison)[:2] == ("failed", 3)  # type: ignore[index]


def test_a_message_held_by_a_live_consumer_is_left_alone(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    held = add_message(conn, "processing", timedelta(hours=1))
    other = add_message(conn, "processing", timedelta(hours=1))
    with database.connect(autocommit=False) as consumer:
        consumer.execute("SELECT 1 FROM message_queue WHERE id = %(id)s FOR UPDATE", {"id": held})
        started = time.monotonic()
        result = queue.requeue_stuck(conn, NOW)
        assert time.monotonic() - started < 2
        assert result.rows == 1
        consumer.rollback()
    assert message(conn, held)[0] == "processing"  # type: ignore[index]
    assert message(conn, other)[0] == "pending"  # type: ignore[index]


def test_requeue_wakes_the_consumers_of_the_topic(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    add_message(conn, "processing", timedelta(hours=1), topic="invoices")
    add_message(conn, "processing", timedelta(hours=1), topic="invoices")
    with database.connect() as listener:
        listener.execute("LISTEN kronos_message_queue")
        queue.requeue_stuck(conn, NOW)
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert payloads == ["invoices"]


def test_the_trigger_records_when_a_service_changes_the_status(
    conn: psycopg.Connection[Any],
) -> None:
    taken = add_message(conn, "pending", timedelta(days=3))
    conn.execute("UPDATE message_queue SET status = 'processing' WHERE id = %(id)s", {"id": taken})
    _status, _attempts, changed = message(conn, taken)  # type: ignore[misc]
    server_now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    assert abs(changed - server_now) < timedelta(seconds=5)
    # an update that leaves the status alone does not touch it
    conn.execute(
        "UPDATE message_queue SET payload = 'x', status = 'processing' WHERE id = %(id)s",
        {"id": taken},
    )
    assert message(conn, taken)[2] == changed  # type: ignore[index]


def test_purge_deletes_old_processed_messages_only(conn: psycopg.Connection[Any]) -> None:
    old_processed = [add_message(conn, "processed", timedelta(days=8)) for _ in range(3)]
    recent_processed = add_message(conn, "processed", timedelta(days=6))
    # created long ago but processed recently: it is the processing time that counts
    processed_late = add_message(
        conn, "processed", timedelta(days=1), created_ago=timedelta(days=30)
    )
    old_pending = add_message(conn, "pending", timedelta(days=30))
    old_failed = add_message(conn, "failed", timedelta(days=30))
    old_processing = add_message(conn, "processing", timedelta(days=30))
    result = queue.purge_processed(
        conn, NOW, older_than=timedelta(days=7), options=BatchOptions(batch_size=2)
    )
    assert (result.rows, result.batches) == (3, 2)
    remaining = {row[0] for row in conn.execute("SELECT id FROM message_queue").fetchall()}
    assert remaining == {recent_processed, processed_late, old_pending, old_failed, old_processing}
    assert not remaining & set(old_processed)


def test_dry_run_counts_what_requeue_would_do(conn: psycopg.Connection[Any]) -> None:
    add_message(conn, "processing", timedelta(hours=1), attempts=0)
    add_message(conn, "processing", timedelta(hours=1), attempts=4)
    result = queue.requeue_stuck(conn, NOW, max_attempts=5, options=BatchOptions(dry_run=True))
    assert (result.rows, dict(result.details)) == (2, {"requeued": 1, "failed": 1})
    assert conn.execute(
        "SELECT count(*) FROM message_queue WHERE status = 'processing'"
    ).fetchone() == (2,)


def test_stats_per_topic_and_status(conn: psycopg.Connection[Any]) -> None:
    add_message(conn, "pending", timedelta(minutes=10), topic="a")
    add_message(conn, "pending", timedelta(minutes=3), topic="a")
    add_message(
        conn,
        "processing",
        timedelta(minutes=20),
        topic="a",
        attempts=2,
        created_ago=timedelta(hours=2),
    )
    add_message(conn, "failed", timedelta(days=1), topic="b", attempts=5)
    rows = queue.stats(conn, NOW)
    summary = {
        (r.topic, r.status): (r.messages, r.oldest_age, r.longest_in_status, r.max_attempts)
        for r in rows
    }
    assert summary == {
        ("a", "pending"): (2, timedelta(minutes=10), timedelta(minutes=10), 0),
        ("a", "processing"): (1, timedelta(hours=2), timedelta(minutes=20), 2),
        ("b", "failed"): (1, timedelta(days=1), timedelta(days=1), 5),
    }
    assert [r.topic for r in queue.stats(conn, NOW, topic="b")] == ["b"]
