"""Leases: exclusion that holds in short transactions, takeover of stale leases, fencing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from conftest import Database

from kronos_db import locks
from kronos_db.errors import LockBusyError

SHORT = timedelta(seconds=1)


def _stall(lease: locks.Lease) -> None:
    """Stop the heartbeat as a frozen process would (SIGSTOP, a long GC pause)."""
    lease._stop.set()
    lease._thread.join()


def test_a_lease_excludes_until_released_and_counts_its_takings(database: Database) -> None:
    with database.connect() as conn:
        first = locks.acquire(conn, "job")
        assert first is not None
        assert locks.acquire(conn, "job") is None
        current = locks.holder(conn, "job")
        assert current is not None and not current.free and current.owner == first.owner
        first.release()
        second = locks.acquire(conn, "job")
        assert second is not None
        assert second.token == first.token + 1
        second.release()
        # a released lease leaves its row behind as the record of the last run
        last = locks.holder(conn, "job")
        assert last is not None and last.released and last.owner == second.owner


def test_the_heartbeat_keeps_a_lease_past_its_ttl(database: Database) -> None:
    with database.connect() as conn:
        lease = locks.acquire(conn, "long-job", ttl=timedelta(milliseconds=600))
        assert lease is not None
        try:
            time.sleep(2.0)  # more than three ttls
            assert locks.acquire(conn, "long-job") is None
            assert not lease.lost.is_set()
        finally:
            lease.release()


def test_an_expired_lease_is_taken_over_and_fencing_rolls_back_its_old_holder(
    database: Database,
) -> None:
    with database.connect() as conn, database.connect(autocommit=False) as work:
        work.execute("CREATE TABLE fenced (step text)")
        work.commit()
        stalled = locks.acquire(conn, "migrations", ttl=SHORT)
        assert stalled is not None
        _stall(stalled)
        started = time.monotonic()
        successor = locks.acquire(conn, "migrations", wait=timedelta(seconds=10))
        assert successor is not None, "an expired lease must be taken over"
        assert time.monotonic() - started < 5
        assert successor.token == stalled.token + 1
        # the stalled run wakes up and tries to commit its work: refused, rolled back
        work.execute("INSERT INTO fenced VALUES ('by the stalled run')")
        with pytest.raises(LockBusyError, match="taken over"):
            stalled.fence(work)
        work.rollback()
        work.execute("INSERT INTO fenced VALUES ('by the successor')")
        successor.fence(work)
        work.commit()
        assert work.execute("SELECT step FROM fenced").fetchall() == [("by the successor",)]
        successor.release()
        stalled.release()  # releasing a lease that is no longer ours frees nothing
        assert locks.holder(conn, "migrations").owner == successor.owner  # type: ignore[union-attr]


def test_nobody_takes_a_lease_over_between_its_fencing_and_the_commit(database: Database) -> None:
    """An expired lease fenced by its holder is not free: the taker waits for that commit."""
    with database.connect() as conn, database.connect(autocommit=False) as work:
        holder = locks.acquire(conn, "migrations", ttl=SHORT)
        assert holder is not None
        _stall(holder)
        time.sleep(1.2)  # expired, not yet taken over
        holder.fence(work)  # renews it inside this open transaction, holding its row
        taken: list[locks.Lease | None] = []
        contender = threading.Thread(
            target=lambda: taken.append(locks.acquire(database.target, "migrations"))
        )
        contender.start()
        time.sleep(0.5)
        assert contender.is_alive(), "the contender must wait for the fenced row"
        work.commit()
        contender.join(10)
        assert taken == [None], "after the commit the lease is renewed: still busy"
        holder.release()


def test_a_run_killed_on_this_machine_frees_its_lease_at_once(database: Database) -> None:
    script = (
        "import sys, time, psycopg\n"
        "from kronos_db import locks\n"
        "conn = psycopg.connect(sys.argv[1], autocommit=True)\n"
        "lease = locks.acquire(conn, 'housekeeping:expire-cache', ttl=locks.DEFAULT_TTL * 10)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, database.url], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "held"
            with database.connect() as conn:
                assert locks.acquire(conn, "housekeeping:expire-cache") is None
                process.kill()
                process.wait(10)
                started = time.monotonic()
                lease = locks.acquire(conn, "housekeeping:expire-cache")
                assert lease is not None, "a SIGKILLed holder of this machine is gone: take over"
                assert time.monotonic() - started < 2
                lease.release()
        finally:
            process.kill()


def test_a_holder_on_another_machine_is_waited_out(database: Database) -> None:
    """A lease of another machine's process cannot be judged here: only its expiry frees it."""
    with database.connect() as conn:
        lease = locks.acquire(conn, "job", ttl=timedelta(seconds=2))
        assert lease is not None
        _stall(lease)
        conn.execute(
            "UPDATE kronos_leases SET process_key = 'another-boot:1/1/1' WHERE name = 'job'"
        )
        assert locks.acquire(conn, "job") is None
        successor = locks.acquire(conn, "job", wait=timedelta(seconds=10))
        assert successor is not None
        successor.release()
        lease.release()


def test_the_lease_ignores_the_callers_transaction(database: Database) -> None:
    """Taken on a connection of its own: visible to others even while the caller's
    transaction is open, and still held after the caller rolls back."""
    with database.connect(autocommit=False) as conn, database.connect() as other:
        conn.execute("SELECT 1")
        with locks.advisory_lock(conn, "job"):
            conn.rollback()
            assert locks.acquire(other, "job") is None
        with locks.try_advisory_lock(other, "job") as acquired:
            assert acquired


def test_the_lease_table_is_created_on_first_use(empty_database: Database) -> None:
    with empty_database.connect() as conn:
        assert conn.execute("SELECT to_regclass('kronos_leases')").fetchone() == (None,)
        with locks.try_advisory_lock(conn, "job") as acquired:
            assert acquired
        assert conn.execute("SELECT to_regclass('kronos_leases')").fetchone() != (None,)
