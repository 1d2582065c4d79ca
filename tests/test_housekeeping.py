"""Expiring sessions and cache rows, resetting rate limits: against the real server, with a
controllable clock, rows held by other transactions, and overlapping runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from kronos_db import housekeeping, locks, queue
from kronos_db.errors import UsageError
from kronos_db.housekeeping import BatchOptions, JobResult

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"


def add_session(
    conn: psycopg.Connection[Any],
    token: str,
    *,
    expires_in: timedelta | None,
    active_ago: timedelta | None = timedelta(0),
) -> None:
    conn.execute(
        "INSERT INTO sessions (token, created_at, expires_at, last_active_at)"
        " VALUES (%(token)s, %(created)s, %(expires)s, %(active)s)",
        {
            "token": token,
            "created": NOW - timedelta(days=2),
            "expires": None if expires_in is None else NOW + expires_in,
            "active": None if active_ago is None else NOW - active_ago,
        },
    )


def tokens(conn: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in conn.execute("SELECT token FROM sessions").fetchall()}


def test_expire_sessions_deletes_exactly_the_expired_and_idle_ones(
    conn: psycopg.Connection[Any],
) -> None:
    add_session(conn, "expired", expires_in=-timedelta(seconds=1))
    add_session(conn, "expired-long-ago", expires_in=-timedelta(days=30))
    add_session(conn, "expires-exactly-now", expires_in=timedelta(0))
    add_session(conn, "valid", expires_in=timedelta(hours=3), active_ago=timedelta(minutes=5))
    add_session(conn, "idle", expires_in=timedelta(hours=3), active_ago=timedelta(hours=2))
    add_session(
        conn,
        "idle-exactly-the-timeout",
        expires_in=timedelta(hours=3),
        active_ago=timedelta(hours=1),
    )
    add_session(conn, "activity-unknown", expires_in=timedelta(hours=3), active_ago=None)
    add_session(
        conn, "expired-and-idle", expires_in=-timedelta(hours=1), active_ago=timedelta(hours=5)
    )
    # the default expiry trigger gives a session without one created_at + 24h: expired by NOW
    add_session(conn, "default-expiry", expires_in=None)

    result = housekeeping.expire_sessions(
        conn, NOW, idle_timeout=timedelta(hours=1), options=BatchOptions(batch_size=1)
    )

    assert tokens(conn) == {
        "expires-exactly-now",
        "valid",
        "idle-exactly-the-timeout",
        "activity-unknown",
    }
    assert result.rows == 5
    assert dict(result.details) == {"expired": 4, "idle": 1}
    assert result.batches == 2  # the expiry rule's page, then the idle rule's
    assert not result.skipped
    assert not result.dry_run
    again = housekeeping.expire_sessions(conn, NOW, idle_timeout=timedelta(hours=1))
    assert again.rows == 0


def test_the_clock_is_the_parameter_not_the_server(conn: psycopg.Connection[Any]) -> None:
    add_session(conn, "expires-in-a-day", expires_in=timedelta(days=1))
    housekeeping.expire_sessions(conn, NOW + timedelta(hours=23), idle_timeout=timedelta(0))
    assert tokens(conn) == {"expires-in-a-day"}
    housekeeping.expire_sessions(conn, NOW + timedelta(hours=25), idle_timeout=timedelta(0))
    assert tokens(conn) == set()


def test_zero_idle_timeout_turns_the_idle_rule_off(conn: psycopg.Connection[Any]) -> None:
    add_session(conn, "idle", expires_in=timedelta(hours=3), active_ago=timedelta(days=3))
    result = housekeeping.expire_sessions(conn, NOW, idle_timeout=timedelta(0))
    assert tokens(conn) == {"idle"}
    assert dict(result.details) == {"expired": 0, "idle": 0}


def test_dry_run_counts_and_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    for number in range(3):
        add_session(conn, f"expired-{number}", expires_in=-timedelta(minutes=1))
    add_session(conn, "idle", expires_in=timedelta(hours=1), active_ago=timedelta(hours=2))
    add_session(
        conn, "expired-and-idle", expires_in=-timedelta(minutes=1), active_ago=timedelta(hours=2)
    )
    before = tokens(conn)
    result = housekeeping.expire_sessions(
        conn, NOW, idle_timeout=timedelta(hours=1), options=BatchOptions(dry_run=True)
    )
    assert result.dry_run
    assert (result.rows, dict(result.details)) == (5, {"expired": 4, "idle": 1})
    assert tokens(conn) == before


def test_a_session_locked_by_a_service_is_skipped_not_waited_on(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    for number in range(5):
        add_session(conn, f"expired-{number}", expires_in=-timedelta(minutes=1))
    with database.connect(autocommit=False) as service:
        # the auth service is in the middle of something with this session
        service.execute("SELECT id FROM sessions WHERE token = 'expired-2' FOR UPDATE")
        started = time.monotonic()
        result = housekeeping.expire_sessions(
            conn, NOW, options=BatchOptions(batch_size=2, lock_timeout=timedelta(seconds=30))
        )
        elapsed = time.monotonic() - started
        assert elapsed < 2, f"the run waited {elapsed:.1f}s on a locked row"
        assert result.rows == 4
        assert tokens(conn) == {"expired-2"}
        service.rollback()
    later = housekeeping.expire_sessions(conn, NOW)
    assert later.rows == 1
    assert tokens(conn) == set()


def test_a_row_made_valid_after_the_snapshot_is_not_deleted(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    """The outer DELETE re-checks the predicate on the row's newest version."""
    add_session(conn, "extended", expires_in=-timedelta(minutes=1))
    with database.connect(autocommit=False) as service:
        service.execute(
            "UPDATE sessions SET expires_at = %(later)s WHERE token = 'extended'",
            {"later": NOW + timedelta(hours=1)},
        )
        # the run sees the old, expired version, finds it locked and skips it
        assert housekeeping.expire_sessions(conn, NOW).rows == 0
        service.commit()
    assert housekeeping.expire_sessions(conn, NOW).rows == 0
    assert tokens(conn) == {"extended"}


def test_a_second_overlapping_run_does_nothing(
    conn: psycopg.Connection[Any], database: Any
) -> None:
    add_session(conn, "expired", expires_in=-timedelta(minutes=1))
    with (
        database.connect() as other_run,
        locks.try_advisory_lock(other_run, housekeeping.lock_name("expire-sessions")) as held,
    ):
        assert held
        result = housekeeping.expire_sessions(conn, NOW)
        assert result.skipped
        assert result.rows == 0
        assert "another run" in result.summary()
        assert tokens(conn) == {"expired"}
    assert housekeeping.expire_sessions(conn, NOW).rows == 1


def test_the_job_restores_the_session_timeouts(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET lock_timeout = '7s'")
    housekeeping.expire_sessions(conn, NOW, options=BatchOptions(lock_timeout=timedelta(seconds=1)))
    assert conn.execute("SHOW lock_timeout").fetchone() == ("7s",)


def test_bad_arguments_are_usage_errors(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(UsageError, match="timezone-aware"):
        housekeeping.expire_sessions(conn, datetime(2030, 1, 1))
    with pytest.raises(UsageError, match="batch size"):
        BatchOptions(batch_size=-1)
    with pytest.raises(UsageError, match="batch time"):
        BatchOptions(batch_time=timedelta(0))
    with pytest.raises(UsageError, match="negative"):
        housekeeping.expire_sessions(conn, NOW, idle_timeout=-timedelta(minutes=1))


def test_expire_cache_keeps_rows_without_expiry_and_future_ones(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(
        "INSERT INTO cache (key, value, expires_at) VALUES"
        " ('gone', 'v', %(past)s), ('gone-too', 'v', %(long_ago)s),"
        " ('future', 'v', %(future)s), ('forever', 'v', NULL), ('exactly-now', 'v', %(now)s)",
        {
            "past": NOW - timedelta(seconds=1),
            "long_ago": NOW - timedelta(days=400),
            "future": NOW + timedelta(minutes=1),
            "now": NOW,
        },
    )
    result = housekeeping.expire_cache(conn, NOW, options=BatchOptions(batch_size=1))
    assert result.rows == 2
    assert result.batches == 1  # two rows of five: one physical pass over the one page
    keys = {row[0] for row in conn.execute("SELECT key FROM cache").fetchall()}
    assert keys == {"future", "forever", "exactly-now"}


def add_rate_limits(
    conn: psycopg.Connection[Any], counters: list[tuple[int, timedelta | None]]
) -> None:
    conn.execute("INSERT INTO roles (name, permissions) VALUES ('user', '{}')")
    conn.execute(
        "INSERT INTO users (username, email, password_hash, role_id)"
        " SELECT 'user' || n, 'user' || n || '@example.org', %(hash)s, 1"
        "   FROM generate_series(1, %(count)s) AS n",
        {"hash": HASH, "count": len(counters)},
    )
    conn.execute("INSERT INTO routes (path, service, method) VALUES ('/api', 'api', 'GET')")
    for user_id, (count, ago) in enumerate(counters, start=1):
        conn.execute(
            "INSERT INTO rate_limits (user_id, route_id, request_count, last_request)"
            " VALUES (%(user)s, 1, %(count)s, %(last)s)",
            {"user": user_id, "count": count, "last": None if ago is None else NOW - ago},
        )


def counters(conn: psycopg.Connection[Any]) -> list[int | None]:
    return [
        row[0]
        for row in conn.execute("SELECT request_count FROM rate_limits ORDER BY user_id").fetchall()
    ]


def test_reset_rate_limits_resets_only_counters_whose_window_passed(
    conn: psycopg.Connection[Any],
) -> None:
    add_rate_limits(
        conn,
        [
            (10, timedelta(hours=2)),  # window passed
            (7, timedelta(hours=2)),  # same last_request: the keyset walk must not lose it
            (3, timedelta(minutes=59)),  # still in its window
            (0, timedelta(days=2)),  # already 0: not counted again
            (5, None),  # never used: left alone
            (9, timedelta(days=30)),
        ],
    )
    result = housekeeping.reset_rate_limits(
        conn, NOW, older_than=timedelta(hours=1), options=BatchOptions(batch_size=1)
    )
    assert counters(conn) == [0, 0, 3, 0, 5, 0]
    assert result.rows == 3
    assert result.batches == 4  # one row each, and the one that found none left
    assert housekeeping.reset_rate_limits(conn, NOW, older_than=timedelta(hours=1)).rows == 0


# --- two concurrent runs of each job ----------------------------------------------------------

Job = Callable[[psycopg.Connection[Any], BatchOptions], JobResult]


def _expire_sessions(conn: psycopg.Connection[Any], options: BatchOptions) -> JobResult:
    return housekeeping.expire_sessions(conn, NOW, options=options)


def _expire_cache(conn: psycopg.Connection[Any], options: BatchOptions) -> JobResult:
    return housekeeping.expire_cache(conn, NOW, options=options)


def _reset_rate_limits(conn: psycopg.Connection[Any], options: BatchOptions) -> JobResult:
    return housekeeping.reset_rate_limits(conn, NOW, options=options)


def _requeue_stuck(conn: psycopg.Connection[Any], options: BatchOptions) -> JobResult:
    return queue.requeue_stuck(conn, NOW, max_attempts=2, options=options)


def _purge_processed(conn: psycopg.Connection[Any], options: BatchOptions) -> JobResult:
    return queue.purge_processed(conn, NOW, options=options)


ROWS = 400


def _seed(conn: psycopg.Connection[Any], job: str) -> None:
    half = {"n": ROWS}
    if job == "sessions":
        conn.execute(
            "INSERT INTO sessions (token, expires_at, last_active_at)"
            " SELECT 's' || n, %(now)s::timestamptz + (n %% 2 * 2 - 1) * interval '1 hour', %(now)s"
            "   FROM generate_series(1, %(n)s) AS n",
            {**half, "now": NOW},
        )
    elif job == "cache":
        conn.execute(
            "INSERT INTO cache (key, value, expires_at)"
            " SELECT 'c' || n, 'v', %(now)s::timestamptz + (n %% 2 * 2 - 1) * interval '1 hour'"
            "   FROM generate_series(1, %(n)s) AS n",
            {**half, "now": NOW},
        )
    elif job == "ratelimits":
        add_rate_limits(conn, [(n, timedelta(hours=n % 2 * 2)) for n in range(1, ROWS + 1)])
    else:
        status = "processing" if job == "requeue" else "processed"
        conn.execute(
            "INSERT INTO message_queue (topic, payload, status, status_changed_at, attempts)"
            " SELECT 't' || n %% 3, 'p', %(status)s,"
            "        %(now)s::timestamptz - (n %% 2) * interval '30 days', n %% 3"
            "   FROM generate_series(1, %(n)s) AS n",
            {**half, "now": NOW, "status": status},
        )


def _state(conn: psycopg.Connection[Any], job: str) -> list[tuple[Any, ...]]:
    statement = {
        "sessions": "SELECT token FROM sessions ORDER BY token",
        "cache": "SELECT key FROM cache ORDER BY key",
        "ratelimits": "SELECT user_id, request_count FROM rate_limits ORDER BY user_id",
        "requeue": "SELECT id, status, attempts, status_changed_at FROM message_queue ORDER BY id",
        "purge": "SELECT id FROM message_queue ORDER BY id",
    }[job]
    return conn.execute(statement).fetchall()  # type: ignore[arg-type]


JOBS: dict[str, Job] = {
    "sessions": _expire_sessions,
    "cache": _expire_cache,
    "ratelimits": _reset_rate_limits,
    "requeue": _requeue_stuck,
    "purge": _purge_processed,
}


@pytest.fixture
def twin_database(template_database: Any) -> Iterator[Any]:
    """A second clone of the template: where one run shows the state a run should leave."""
    from conftest import Database, _janitor, unique_name, url_for

    name = unique_name("kronos_twin")
    with _janitor(name, template=template_database.name):
        yield Database(name, url_for(name))


def _run_twice_at_once(database: Any, job: Job, options: BatchOptions) -> list[JobResult]:
    barrier = threading.Barrier(2)
    results: list[JobResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with database.connect() as connection:
                barrier.wait()
                results.append(job(connection, options))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == 2
    return results


@pytest.mark.parametrize("job", sorted(JOBS))
def test_two_concurrent_runs_leave_the_state_of_one_run(
    job: str, conn: psycopg.Connection[Any], database: Any, twin_database: Any
) -> None:
    with twin_database.connect() as twin:
        _seed(twin, job)
        JOBS[job](twin, BatchOptions())
        expected = _state(twin, job)
    _seed(conn, job)
    options = BatchOptions(batch_size=20, pause=timedelta(milliseconds=5))
    results = _run_twice_at_once(database, JOBS[job], options)
    # Whether the two runs overlap depends on the machine's load (a time-sized batch may finish
    # the job before the other thread connects): either the second stepped aside or it came
    # after and found nothing left. Stepping aside itself is shown deterministically by
    # test_a_second_overlapping_run_does_nothing, which holds the lease while a run starts.
    assert not all(r.skipped for r in results), "one of the runs must do the work"
    assert sum(r.rows for r in results) == ROWS // 2, "each row is done exactly once"
    assert _state(conn, job) == expected


@pytest.mark.parametrize("job", sorted(JOBS))
def test_skip_locked_alone_prevents_double_work(
    job: str, conn: psycopg.Connection[Any], database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even without the advisory lock, two runs at once never touch a row twice."""

    @contextmanager
    def no_lock(_conn: Any, _name: str) -> Iterator[bool]:
        yield True

    monkeypatch.setattr(housekeeping, "try_advisory_lock", no_lock)
    _seed(conn, job)
    options = BatchOptions(batch_size=10, pause=timedelta(milliseconds=2))
    results = _run_twice_at_once(database, JOBS[job], options)
    assert [r.skipped for r in results] == [False, False]
    assert sum(r.rows for r in results) == ROWS // 2
    if job == "requeue":
        counted_twice = conn.execute(
            "SELECT count(*) FROM message_queue WHERE id %% 2 = 1"
            " AND (attempts <> id %% 3 + 1 OR status_changed_at <> %(now)s)",
            {"now": NOW},
        ).fetchone()
        assert counted_twice == (0,)
