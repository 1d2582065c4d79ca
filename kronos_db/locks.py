"""Leases that keep overlapping kronos-db runs from doing the same work twice.

A lock is a row of ``kronos_leases`` (one per job: ``migrations``, ``housekeeping:<job>``…)
naming its owner and an expiry on the server's clock. It is taken, renewed and released in
short transactions of their own, so it holds whichever server connection each transaction
lands on: through PgBouncer in transaction mode as well as directly. (A session-level advisory
lock does not: it stays on whatever pooled server connection took it, which the next
transaction of the same run may not get, and which outlives the run.)

* **Taking** is one ``INSERT … ON CONFLICT DO UPDATE … WHERE`` the lease is free: expired,
  released, or held by a process of this machine that no longer exists (a run killed with
  SIGKILL is noticed at once; one killed on another machine blocks the job for at most the
  lease's ``ttl``). Two runs racing for a free lease both reach the same row lock and only one
  sees it free. Each taking adds one to the row's ``token``, the fencing token.
* **A heartbeat** thread renews the lease every ``ttl / 3`` on a connection of its own, so a
  run may work for hours. A run whose lease was taken over (it stalled for longer than the
  ttl) learns it at its next renewal (:attr:`Lease.lost`).
* **Fencing**: work that must not commit after losing the lease (a migration revision)
  calls :meth:`Lease.fence` inside its own transaction, just before committing. It renews the
  lease there, holding its row lock: nobody can take the lease over between that check and the
  commit, and a run that lost it rolls back instead.

Waiting is by polling with a bounded wait, so a waiting run can say who holds the lease.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import class_row

from kronos_db import db, replication
from kronos_db.durations import postgres_interval
from kronos_db.errors import (
    InsufficientPrivilegeError,
    KronosError,
    LockBusyError,
    translate_database_error,
)
from kronos_db.resources import query

logger = logging.getLogger(__name__)

LEASE_TABLE = "kronos_leases"
DEFAULT_TTL = timedelta(seconds=30)
POLL_INTERVAL = 0.2
# the lease row may be locked for a moment by a fencing transaction: wait that long, not more
ROW_LOCK_TIMEOUT = "5s"


# --------------------------------------------------------------------------- who we are


def _boot_and_namespace() -> str:
    """This machine's boot and PID namespace: where a PID names one process. Empty if unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}:{namespace}"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_key(pid: int | None = None) -> str:
    """``<boot id>:<pid namespace>/<pid>/<start time>``: one process, never reused."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_and_namespace()}/{pid}/{_process_start(pid) or '?'}"


def is_dead_here(key: str) -> bool:
    """True only when ``key`` is a process of this machine and namespace that has ended.

    A process elsewhere (another machine, another container) is never judged: its lease
    expires instead.
    """
    place, _, rest = key.partition("/")
    pid, _, start = rest.partition("/")
    here = _boot_and_namespace()
    if not place or place != here or not pid.isdigit():
        return False
    return _process_start(int(pid)) != start


# --------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """The run holding a lease, as its row describes it."""

    name: str
    owner: str
    token: int
    host: str
    pid: int
    process_key: str
    application_name: str
    usename: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    expires_in: float  # seconds, on the server's clock; <= 0: expired
    released: bool

    @property
    def free(self) -> bool:
        return self.released or self.expires_in <= 0

    def describe(self) -> str:
        app = f" ({self.application_name})" if self.application_name else ""
        return (
            f"pid {self.pid}{app} on {self.host}, user {self.usename or '?'}, since "
            f"{self.acquired_at:%Y-%m-%d %H:%M:%S %Z}; its lease expires in "
            f"{max(self.expires_in, 0):.0f}s unless renewed"
        )


@dataclasses.dataclass(frozen=True)
class BlockingSession:
    pid: int
    usename: str
    application_name: str
    state: str
    transaction_seconds: float
    query: str

    def describe(self) -> str:
        app = f" {self.application_name!r}" if self.application_name else ""
        return (
            f"pid {self.pid}{app} (user {self.usename or '?'}, {self.state or 'unknown state'}, "
            f"transaction open {self.transaction_seconds:.0f}s, last query: {self.query!r})"
        )


def blocking_sessions(conn: psycopg.Connection[Any], pid: int) -> list[BlockingSession]:
    with conn.cursor(row_factory=class_row(BlockingSession)) as cur:
        return cur.execute(query("locks", "select_blocking_sessions"), {"pid": pid}).fetchall()


# --------------------------------------------------------------------------- the table


def _privilege_error(conn: psycopg.Connection[Any]) -> InsufficientPrivilegeError:
    user = conn.info.user
    return InsufficientPrivilegeError(
        f"permission denied for table {LEASE_TABLE}: {user} needs SELECT, INSERT, UPDATE on it "
        f"to take kronos-db's locks (GRANT SELECT, INSERT, UPDATE ON {LEASE_TABLE} TO {user}; "
        "`kronos-db roles apply` grants it to the maintenance role)"
    )


def ensure_lease_table(conn: psycopg.Connection[Any]) -> None:
    """Create ``kronos_leases`` when it is missing (the first run of a new kronos-db)."""
    try:
        with db.transaction_settings(conn, {"lock_timeout": ROW_LOCK_TIMEOUT}):
            if conn.execute(query("locks", "select_lease_table")).fetchone() == (None,):
                conn.execute(query("locks", "create_lease_table"))
    except (pg_errors.DuplicateTable, pg_errors.UniqueViolation):
        pass  # another run created it at the same moment
    except pg_errors.InsufficientPrivilege as exc:
        raise InsufficientPrivilegeError(
            f"the table {LEASE_TABLE} (kronos-db's locks) does not exist and {conn.info.user} "
            "may not create it: run `kronos-db migrate` as the schema owner (or `kronos-db "
            "bootstrap`) first"
        ) from exc


# --------------------------------------------------------------------------- a lease


Source = psycopg.Connection[Any] | db.Target


def _idle(conn: psycopg.Connection[Any]) -> bool:
    """An autocommit connection with nothing open: each lease statement is its own transaction."""
    return (
        not conn.closed
        and conn.autocommit
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


def _opener(source: Source) -> Callable[[], psycopg.Connection[Any]]:
    """How to open a connection of the lease's own, to the same database as ``source``."""
    if isinstance(source, db.Target):
        return lambda: db.connect(source)
    return db.opener(source)


class Lease:
    """A lease this process holds; renewed by a heartbeat until :meth:`release`.

    It is taken and released on the caller's connection when that one is idle in autocommit
    (no connection to open for a job of a few seconds); the heartbeat renews it on a connection
    of its own, opened at the first beat, since the caller's is busy with the work by then.
    """

    def __init__(
        self,
        name: str,
        owner: str,
        token: int,
        ttl: timedelta,
        source: Source,
        own: psycopg.Connection[Any] | None,
    ) -> None:
        self.name = name
        self.owner = owner
        self.token = token
        self.ttl = ttl
        self.lost = threading.Event()
        self._source = source
        self._open = _opener(source)
        self._own = own
        self._own_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"kronos-lease-{name}", daemon=True
        )

    @property
    def params(self) -> dict[str, Any]:
        return {"name": self.name, "owner": self.owner, "ttl": postgres_interval(self.ttl)}

    def start(self) -> Lease:
        self._thread.start()
        return self

    def _connection(self) -> psycopg.Connection[Any]:
        """The lease's own connection (opened, or opened again after it broke)."""
        if self._own is None or self._own.closed or self._own.broken:
            if self._own is not None:
                self._own.close()
            self._own = self._open()
        return self._own

    def renew(self) -> bool:
        """Push the expiry one ttl ahead; False when the lease is no longer ours."""
        with self._own_lock:
            row = self._connection().execute(query("locks", "renew_lease"), self.params).fetchone()
        if row is None:
            self.lost.set()
        return row is not None

    def fence(self, conn: psycopg.Connection[Any]) -> None:
        """Inside the caller's transaction, before its commit: raise unless the lease is ours.

        Renews the lease in that transaction, so its row lock keeps anybody from taking the
        lease over until the caller commits or rolls back.
        """
        row = conn.execute(query("locks", "renew_lease"), self.params).fetchone()
        if row is None:
            self.lost.set()
            raise LockBusyError(
                f"the {self.name} lock was taken over by another run while this one worked "
                f"(it stalled for longer than the {self.ttl.total_seconds():g}s lease): "
                "its work in progress was rolled back; run it again"
            )

    def _heartbeat(self) -> None:
        interval = max(self.ttl.total_seconds() / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    logger.warning(
                        "the %s lock was taken over by another run: this run stalled for "
                        "longer than its %gs lease",
                        self.name,
                        self.ttl.total_seconds(),
                    )
                    return
            except (psycopg.Error, KronosError) as exc:
                # a pooler restart, a network blip: the next beat connects again
                logger.debug("renewing the %s lease failed: %s", self.name, exc)

    def release(self) -> None:
        """Stop the heartbeat and free the lease at once (the row stays, as a record)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            with self._own_lock:
                borrowed = isinstance(self._source, psycopg.Connection) and _idle(self._source)
                conn = self._source if self._own is None and borrowed else self._connection()
                assert isinstance(conn, psycopg.Connection)
                conn.execute(query("locks", "release_lease"), self.params)
        except (psycopg.Error, KronosError) as exc:
            logger.warning(
                "could not release the %s lock (%s): it frees itself within %gs",
                self.name,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                self.ttl.total_seconds(),
            )
        finally:
            if self._own is not None:
                self._own.close()


def holder(conn: psycopg.Connection[Any], name: str) -> LockHolder | None:
    """The lease ``name`` as its row stands (None when it was never taken)."""
    try:
        with (
            db.transaction_settings(conn, {"lock_timeout": ROW_LOCK_TIMEOUT}),
            conn.cursor(row_factory=class_row(LockHolder)) as cur,
        ):
            return cur.execute(query("locks", "select_lease"), {"name": name}).fetchone()
    except pg_errors.UndefinedTable:
        return None
    except pg_errors.InsufficientPrivilege as exc:
        raise _privilege_error(conn) from exc


def _try_take(
    conn: psycopg.Connection[Any], name: str, owner: str, ttl: timedelta
) -> tuple[int | None, LockHolder | None]:
    """One attempt: the fencing token when taken, else None and the current holder.

    The lease is usually free (cron runs do not overlap), so the taking comes first and the
    holder is read only when it fails: one short transaction per job, not two. A holder that
    is a dead process of this machine is taken over by a second taking naming it.
    """
    token = _take(conn, name, owner, ttl, dead_owner=None)
    if token is not None:
        return token, None
    current = holder(conn, name)
    if current is None or current.free or not is_dead_here(current.process_key):
        return None, current  # a live run holds it (or it was freed a moment ago: next poll)
    token = _take(conn, name, owner, ttl, dead_owner=current.owner)
    if token is None:
        return None, holder(conn, name)
    logger.warning(
        "took over the %s lock from %s: that process no longer exists", name, current.describe()
    )
    return token, None


def _take(
    conn: psycopg.Connection[Any], name: str, owner: str, ttl: timedelta, *, dead_owner: str | None
) -> int | None:
    """The taking statement: the new fencing token, or None when the lease is not free."""
    params = {
        "name": name,
        "owner": owner,
        "ttl": postgres_interval(ttl),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_key": process_key(),
        "application_name": conn.info.parameter_status("application_name") or "",
        # a dead holder of this machine is taken over even before its lease expires
        "dead_owner": dead_owner,
    }
    try:
        with db.transaction_settings(conn, {"lock_timeout": ROW_LOCK_TIMEOUT}):
            row = conn.execute(query("locks", "take_lease"), params).fetchone()
    except pg_errors.UndefinedTable:
        ensure_lease_table(conn)
        return _take(conn, name, owner, ttl, dead_owner=dead_owner)
    except pg_errors.LockNotAvailable:
        return None  # a fencing transaction has the row right now
    except pg_errors.InsufficientPrivilege as exc:
        raise _privilege_error(conn) from exc
    return int(row[0]) if row is not None else None


def _acquire(
    source: Source,
    name: str,
    *,
    wait: timedelta,
    ttl: timedelta,
    on_wait: Callable[[LockHolder | None], None] | None,
    report_every: float = 10.0,
) -> tuple[Lease | None, LockHolder | None]:
    if ttl <= timedelta(0):
        raise ValueError("a lease needs a ttl longer than 0")
    borrowed = isinstance(source, psycopg.Connection) and _idle(source)
    try:
        lease_conn = source if borrowed else _opener(source)()
    except psycopg.Error as exc:
        raise _database_error(source, exc) from exc
    assert isinstance(lease_conn, psycopg.Connection)
    own = None if borrowed else lease_conn

    def close_own() -> None:
        if own is not None:
            own.close()

    try:
        # a lease is the first write of every job: on a standby, say so in one line instead of
        # PostgreSQL's "cannot execute INSERT in a read-only transaction"
        replication.require_primary(
            lease_conn,
            f"the {name} lock",
            source=db.url_setting(source) if isinstance(source, db.Target) else "--database-url",
        )
        owner = str(uuid.uuid4())
        deadline = time.monotonic() + wait.total_seconds()
        next_report = time.monotonic()
        while True:
            token, current = _try_take(lease_conn, name, owner, ttl)
            if token is not None:
                return Lease(name, owner, token, ttl, source, own).start(), None
            now = time.monotonic()
            if now >= deadline:
                close_own()
                return None, current
            if on_wait is not None and now >= next_report:
                on_wait(current)
                next_report = now + report_every
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - now)))
    except psycopg.Error as exc:
        close_own()
        raise _database_error(source, exc) from exc
    except BaseException:
        close_own()
        raise


def _database_error(source: Source, exc: psycopg.Error) -> KronosError:
    if isinstance(source, db.Target):
        return db.database_error(exc, source)
    return translate_database_error(exc)


def acquire(
    source: Source,
    name: str,
    *,
    wait: timedelta = timedelta(0),
    ttl: timedelta = DEFAULT_TTL,
    on_wait: Callable[[LockHolder | None], None] | None = None,
) -> Lease | None:
    """Take the lease ``name``, polling for at most ``wait``; None when another run keeps it.

    ``source`` is a connection or a target: the lease is taken on the connection when it is
    idle in autocommit, else on one of its own (the caller's transaction is never involved).
    ``on_wait`` is told who holds the lease when the wait starts and then every ten seconds.
    """
    return _acquire(source, name, wait=wait, ttl=ttl, on_wait=on_wait)[0]


@contextmanager
def advisory_lock(
    source: Source,
    name: str,
    *,
    wait: timedelta = timedelta(0),
    ttl: timedelta = DEFAULT_TTL,
    on_wait: Callable[[LockHolder | None], None] | None = None,
) -> Iterator[Lease]:
    """Hold the lease ``name`` for the block.

    With ``wait=0`` it is a single try: ``LockBusyError`` at once when another run holds it;
    otherwise ``LockBusyError`` naming the holder when the wait runs out.
    """
    lease, current = _acquire(source, name, wait=wait, ttl=ttl, on_wait=on_wait)
    if lease is None:
        who = current.describe() if current is not None else "a run that just released it"
        raise LockBusyError(
            f"the {name} lock is held by {who}; gave up after {wait.total_seconds():g}s"
        )
    try:
        yield lease
    finally:
        lease.release()


@contextmanager
def try_advisory_lock(source: Source, name: str, *, ttl: timedelta = DEFAULT_TTL) -> Iterator[bool]:
    """For cron jobs: yields False (and holds nothing) when another run has the lease."""
    lease = acquire(source, name, ttl=ttl)
    try:
        yield lease is not None
    finally:
        if lease is not None:
            lease.release()


__all__ = [
    "DEFAULT_TTL",
    "LEASE_TABLE",
    "BlockingSession",
    "Lease",
    "LockHolder",
    "acquire",
    "advisory_lock",
    "blocking_sessions",
    "ensure_lease_table",
    "holder",
    "try_advisory_lock",
]
