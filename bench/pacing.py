"""Benchmark: session expiry paced on a throttled standby, against the same expiry unpaced.

    .venv/bin/python bench/pacing.py [--rows 1000000] [--limit 1048576] [--duty 0.2]

Builds its own primary and streaming standby (tests/standby.py: initdb + pg_basebackup in a
temporary directory, free ports, torn down at the end; fsync back on) and throttles the
standby's replay: a
thread pauses replay and resumes it for ``--duty`` of every 500 ms (``pg_wal_replay_pause()`` /
``pg_wal_replay_resume()``), a standby that replays at a fraction of its speed, like one whose
disk or CPU is saturated. Then, twice, ``--rows`` sessions of which all have expired are
loaded, the standby is let catch up, and ``kronos-db expire sessions`` (the library job, its
defaults: batches sized to take 25 ms) deletes them:

1. **unpaced** (``[replication] pacing = false``);
2. **paced** (``pacing = true``, ``max_replay_lag = --limit``).

A monitor samples every 20 ms the true replay lag: the primary's ``pg_current_wal_insert_lsn()``
against the standby's own ``pg_last_wal_replay_lsn()``, read at the same moment. The paced
run also records the WAL each batch wrote (the WAL insert position before and after). The
table's autovacuum is off, so that the WAL measured is the job's. Prints, side
by side: time, WAL written, the largest true lag, the largest lag the primary saw, the waits;
the ratio of the times; and whether the paced lag stayed under the limit plus one batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from standby import StreamingPair, streaming_pair

from kronos_db import db, housekeeping, migrations, replication
from kronos_db.config import Settings, load_settings

MB = 1024 * 1024


def lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class Throttle(threading.Thread):
    """Replay runs ``duty`` of every ``period`` seconds, paused the rest."""

    def __init__(self, pair: StreamingPair, duty: float, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pair, self.duty, self.period = pair, duty, period
        self.stop = threading.Event()

    def run(self) -> None:
        with self.pair.standby.connect() as conn:
            while not self.stop.is_set():
                conn.execute("SELECT pg_wal_replay_resume()")
                self.stop.wait(self.period * self.duty)
                conn.execute("SELECT pg_wal_replay_pause()")
                self.stop.wait(self.period * (1 - self.duty))
            conn.execute("SELECT pg_wal_replay_resume()")


class Monitor(threading.Thread):
    """The true replay lag every 20 ms: the primary's WAL end against the standby's replay."""

    def __init__(self, pair: StreamingPair) -> None:
        super().__init__(daemon=True)
        self.pair = pair
        self.stop = threading.Event()
        self.largest = 0

    def run(self) -> None:
        with self.pair.primary.connect() as primary, self.pair.standby.connect() as standby:
            while not self.stop.is_set():
                (written,) = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()  # type: ignore[misc]
                (replayed,) = standby.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()  # type: ignore[misc]
                self.largest = max(self.largest, lsn(written) - lsn(replayed))
                time.sleep(0.02)


class RecordingPacer(replication.Pacer):
    """The job's pacer, noting the WAL each batch wrote: from the position when the batch
    started (after the pacer's wait) to the position before the next wait."""

    def __init__(self, conn: psycopg.Connection[Any], settings: Settings, job: str) -> None:
        super().__init__(conn, settings.replication, job)
        self.batches: list[int] = []
        self._started: int | None = None

    def _insert_position(self) -> int:
        row = self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return lsn(row[0])

    def __call__(self) -> float | None:
        if self._started is not None:
            self.batches.append(self._insert_position() - self._started)
        share = super().__call__()
        self._started = self._insert_position()
        return share

    @property
    def largest_batch(self) -> int:
        return max(self.batches, default=0)

    def finish(self) -> None:
        """The last batch: from its start to the end of the job."""
        if self._started is not None:
            self.batches.append(self._insert_position() - self._started)
            self._started = None


@dataclasses.dataclass
class Outcome:
    mode: str
    seconds: float
    rows: int
    wal_bytes: int
    true_lag: int
    seen_lag: int
    waits: int
    waited: float
    largest_batch: int


def load(pair: StreamingPair, rows: int) -> None:
    # the same table for both runs, dense (the previous run's pages not left empty ahead)
    pair.primary.execute("TRUNCATE sessions CASCADE", dbname="kronos")
    pair.primary.execute(
        "INSERT INTO sessions (token, created_at, expires_at, last_active_at)"
        " SELECT 'bench-' || n || '-' || md5(n::text), now() - interval '2 days',"
        "        now() - interval '1 day', now() - interval '1 day'"
        "   FROM generate_series(1, %s) AS n",
        (rows,),
        dbname="kronos",
    )
    pair.primary.execute("VACUUM ANALYZE sessions", dbname="kronos")
    pair.wait_for_replay(timeout=600)


def expire(pair: StreamingPair, settings: Settings, mode: str, duty: float) -> Outcome:
    throttle, monitor = Throttle(pair, duty), Monitor(pair)
    throttle.start()
    monitor.start()
    with psycopg.connect(pair.primary.url("kronos"), autocommit=True) as conn:
        (before,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()  # type: ignore[misc]
        pacer = (
            RecordingPacer(conn, settings, "expire-sessions")
            if settings.replication.pacing
            else None
        )
        options = dataclasses.replace(
            housekeeping.job_options(conn, settings, "expire-sessions"), pacer=pacer
        )
        started = time.monotonic()
        result = housekeeping.expire_sessions(
            conn,
            datetime.now(UTC),
            idle_timeout=settings.housekeeping.session_idle_timeout,
            options=options,
        )
        seconds = time.monotonic() - started
        if pacer is not None:
            pacer.finish()
        (after,) = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()  # type: ignore[misc]
    monitor.stop.set()
    monitor.join()
    throttle.stop.set()
    throttle.join()
    return Outcome(
        mode,
        seconds,
        result.rows,
        lsn(after) - lsn(before),
        monitor.largest,
        pacer.worst if pacer else 0,
        pacer.waits if pacer else 0,
        pacer.waited if pacer else 0.0,
        pacer.largest_batch if pacer else 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--limit", type=int, default=768 * 1024, help="max_replay_lag, bytes (768 kB)"
    )
    parser.add_argument("--duty", type=float, default=0.2, help="share of time replay runs")
    options = parser.parse_args()
    outcomes = []
    with streaming_pair() as pair:
        for server in (pair.primary, pair.standby):  # the fixture's fsync = off is for tests
            server.execute("ALTER SYSTEM SET fsync = on")
            server.execute("SELECT pg_reload_conf()")
        pair.primary.execute("CREATE DATABASE kronos")
        migrations.upgrade(
            Settings(), db.resolve_target(pair.primary.url("kronos"), Settings()), "head"
        )
        # autovacuum would write WAL of its own in the middle of a run (pruning, freezing the
        # deleted pages): off for this table, so that the lags measured are the job's
        pair.primary.execute(
            "ALTER TABLE sessions SET (autovacuum_enabled = false)", dbname="kronos"
        )
        for mode, pacing in (("unpaced", False), ("paced", True)):
            settings = load_settings(
                overrides={
                    "replication.pacing": (pacing, "bench"),
                    "replication.max_replay_lag": (options.limit, "bench"),
                    "replication.max_wait": ("10m", "bench"),
                    # the idle rule's count reads the pages the expiry just emptied, and a
                    # read prunes dead rows: WAL of its own, in one statement no batch loop
                    # paces (autovacuum writes the same kind). Off: the lag measured is the
                    # batches'
                    "housekeeping.session_idle_timeout": ("0", "bench"),
                }
            )
            load(pair, options.rows)
            outcome = expire(pair, settings, mode, options.duty)
            outcomes.append(outcome)
            print(f"{mode}: {outcome}", flush=True)
    unpaced, paced = outcomes
    print()
    print(
        f"{options.rows:,} expired sessions; standby replay throttled to {options.duty:.0%} "
        f"of the time; limit {options.limit / MB:.2f} MiB"
    )
    print(
        "| run | time | WAL written | largest true replay lag | largest lag the primary saw "
        "| waits | time waiting |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for outcome in outcomes:
        print(
            f"| {outcome.mode} | {outcome.seconds:.1f} s | {outcome.wal_bytes / MB:.0f} MiB "
            f"| {outcome.true_lag / MB:.2f} MiB | "
            + (f"{outcome.seen_lag / MB:.2f} MiB" if outcome.mode == "paced" else "-")
            + f" | {outcome.waits} | {outcome.waited:.1f} s |"
        )
    bound = options.limit + paced.largest_batch
    print(
        f"\npaced / unpaced time: {paced.seconds / unpaced.seconds:.2f}x; largest batch "
        f"{paced.largest_batch / 1024:.0f} kB of WAL; paced lag {paced.true_lag / MB:.2f} MiB "
        f"{'<=' if paced.true_lag <= bound else '>'} limit + one batch ({bound / MB:.2f} MiB); "
        f"unpaced lag {unpaced.true_lag / MB:.1f} MiB"
    )
    if paced.true_lag > bound:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
