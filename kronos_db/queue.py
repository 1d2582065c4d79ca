"""The message queue's housekeeping: stats, requeueing stuck messages, purging processed ones.

A consumer takes a message by setting its status to ``processing``; when the consumer dies the
message stays there. ``requeue_stuck`` puts messages that have been in ``processing`` for
longer than ``older_than`` back to ``pending`` and counts the attempt in ``attempts``; the
attempt that reaches ``max_attempts`` sends the message to ``failed`` instead, so a poison
message (one that kills its consumer) stops looping. A consumer that still holds its message's
row lock is alive: ``FOR UPDATE SKIP LOCKED`` leaves that message alone. Requeued topics get a
``NOTIFY kronos_message_queue`` like new messages do.

``purge_processed`` deletes ``processed`` messages older than ``older_than``, in key order
through the partial index on ``status_changed_at`` (batches sized by time, each from the last
key of the previous one); ``pending``, ``processing`` and ``failed`` messages are never purged
(failed ones wait for a human).
Ages are measured from ``status_changed_at`` (kept by a trigger, migration 0008).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from kronos_db import batching
from kronos_db.batching import Totals
from kronos_db.checks import (
    Context,
    Finding,
    Limits,
    Metric,
    Outcome,
    Status,
    Threshold,
    data_hint,
    fetch,
    health_threshold,
    worst,
)
from kronos_db.config import Settings
from kronos_db.errors import UsageError
from kronos_db.housekeeping import (
    DEFAULT_OPTIONS,
    BatchOptions,
    JobResult,
    ProgressCallback,
    check_now,
    count_rows,
    job_timeouts,
    run_job,
)
from kronos_db.resources import query
from kronos_db.units import human_seconds


@dataclasses.dataclass(frozen=True)
class QueueStat:
    """Messages of one topic in one status."""

    topic: str
    status: str
    messages: int
    oldest_created_at: datetime | None
    oldest_age: timedelta | None  # now - the oldest message's created_at
    longest_in_status: timedelta | None  # now - the oldest status_changed_at
    max_attempts: int


def stats(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    topic: str | None = None,
    statement_timeout: timedelta = timedelta(seconds=60),
) -> list[QueueStat]:
    """Counts per topic and status, with the oldest message's age and the longest wait.

    One pass over the queue, bounded by ``statement_timeout``.
    """
    check_now(now)
    with (
        job_timeouts(conn, BatchOptions(statement_timeout=statement_timeout)),
        conn.cursor(row_factory=class_row(QueueStat)) as cur,
    ):
        return cur.execute(
            query("queue", "select_queue_stats"), {"now": now, "topic": topic}
        ).fetchall()


def requeue_stuck(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    older_than: timedelta = timedelta(minutes=15),
    max_attempts: int = 5,
    options: BatchOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """Put messages in processing for longer than ``older_than`` back to pending (or failed).

    Details: ``requeued`` (back to pending) and ``failed`` (reached ``max_attempts``).
    """
    if older_than <= timedelta(0):
        raise UsageError("the stuck age must be longer than 0")
    if max_attempts < 1:
        raise UsageError(f"max attempts must be at least 1, got {max_attempts}")
    params = {"now": now, "stuck_before": now - older_than, "max_attempts": max_attempts}

    def work(totals: Totals) -> None:
        totals.details["requeued"] = totals.details["failed"] = 0
        statement = query("queue", "requeue_stuck_messages")
        batching.keyset_pass(
            conn,
            statement,
            statement,  # it claims with SKIP LOCKED already; requeued rows leave the predicate
            params,
            options.policy(),
            cursor_columns=(),
            details=("requeued", "failed"),
            totals=totals,
            on_progress=on_progress,
        )

    def count() -> dict[str, int]:
        return count_rows(conn, query("queue", "count_stuck_messages"), params)

    return run_job(conn, "requeue-stuck", now, options, work, count)


def purge_processed(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    older_than: timedelta = timedelta(days=7),
    options: BatchOptions = DEFAULT_OPTIONS,
    on_progress: ProgressCallback | None = None,
) -> JobResult:
    """Delete the messages processed more than ``older_than`` ago."""
    if older_than < timedelta(0):
        raise UsageError("the purge age cannot be negative")
    params = {"processed_before": now - older_than}

    def work(totals: Totals) -> None:
        batching.keyset_pass(
            conn,
            query("queue", "delete_processed_messages"),
            query("queue", "delete_processed_messages_skip_locked"),
            params,
            options.policy(idempotent=True),
            cursor_columns=("after_at", "after_id"),
            totals=totals,
            on_progress=on_progress,
        )

    def count() -> dict[str, int]:
        return count_rows(conn, query("queue", "count_processed_messages"), params)

    return run_job(conn, "purge-processed", now, options, work, count)


# ----------------------------------------------------------------------------- check


@dataclasses.dataclass(frozen=True)
class PendingTopic:
    topic: str
    pending: int
    oldest_created_at: datetime | None


def pending_messages(conn: psycopg.Connection[Any], limits: Limits) -> list[PendingTopic]:
    """Pending messages per topic, with the oldest one's creation time."""
    return fetch(
        conn,
        query("queue", "select_pending_messages"),
        {},
        PendingTopic,
        limits,
        privilege_hint=data_hint("message_queue"),
    )


def queue_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "queue_age"), health_threshold(settings, "queue_pending"))


def check_message_queue(ctx: Context) -> Outcome:
    """Are the consumers keeping up? The oldest pending message's age, the largest backlog."""
    age_threshold, pending_threshold = queue_thresholds(ctx.settings)
    topics = pending_messages(ctx.conn, ctx.limits)
    oldest = min((row.oldest_created_at for row in topics if row.oldest_created_at), default=None)
    age = max((ctx.now - oldest).total_seconds(), 0.0) if oldest else 0.0
    largest = max(topics, key=lambda row: row.pending, default=None)
    metrics = (
        Metric("message_queue_age", age, "seconds", age_threshold),
        Metric(
            "message_queue_pending",
            float(largest.pending if largest else 0),
            "count",
            pending_threshold,
        ),
    )
    if largest is None:
        return Outcome(Status.OK, "no pending message", metrics)
    status = worst([metric.grade() for metric in metrics])
    total = sum(row.pending for row in topics)
    return Outcome(
        status,
        f"{total:,} pending message(s) in {len(topics)} topic(s); oldest "
        f"{human_seconds(age)} old; largest backlog {largest.topic} ({largest.pending:,})",
        metrics,
        tuple(
            Finding(
                f"topic {row.topic}",
                f"{row.pending:,} pending, the oldest "
                + (
                    f"{human_seconds((ctx.now - row.oldest_created_at).total_seconds())} old"
                    if row.oldest_created_at
                    else "of unknown age"
                ),
            )
            for row in topics
        )
        if status is not Status.OK
        else (),
        "" if status is Status.OK else "are the consumers of these topics running?",
        tuple(topics),
    )


__all__ = [
    "PendingTopic",
    "QueueStat",
    "check_message_queue",
    "pending_messages",
    "purge_processed",
    "requeue_stuck",
    "stats",
]
