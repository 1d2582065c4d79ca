"""Replication: the one place that answers every question about primaries, standbys and slots.

* **Where am I?** :func:`server_role`: a primary or a standby (``pg_is_in_recovery()``), and on
  a standby the upstream it streams from.
* **How far behind are the standbys?** :func:`standbys`: per standby, the bytes not yet
  written, flushed and replayed, and the times the primary measured.
* **What WAL do the slots keep?** :func:`slots`: every slot, active or not: the WAL it retains
  (an inactive slot keeps WAL until the disk is full), what PostgreSQL says of it
  (``wal_status``, ``safe_wal_size``) and the xmin it holds.
* **Is WAL archiving working?** :func:`archiver`.
* **On a standby, how far behind is replay?** :func:`standby_replay`: WAL received and not
  replayed, the time since the last replayed transaction, paused replay, the WAL receiver.

* **May this session write?** The guard (:func:`writable`, :func:`require_primary`,
  :func:`standby_skip`), asked by every writer before it writes anything.
* **Should a bulk job wait?** The :class:`Pacer`, before each batch.

``health`` grades these (:func:`check_replication_lag`, :func:`check_replication_slots`,
:func:`check_wal_archiving`, registered in :mod:`kronos_db.reports.health`) and ``report
replication`` shows them: their queries run through the guarded runner of
:mod:`kronos_db.checks` (a short transaction of their own, ``statement_timeout`` and
``lock_timeout`` set LOCAL). The guard and the pacer ask one cheap question in one round trip
on the job's own connection, before every job and every batch. What a role may not see is
said, with the GRANT that fixes it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from kronos_db import db
from kronos_db.checks import (
    DEFAULT_LIMITS,
    Context,
    Finding,
    Limits,
    Metric,
    Outcome,
    Status,
    Threshold,
    fetch,
    fetch_one,
    health_threshold,
    quote_literal,
    worst,
)
from kronos_db.config import ReplicationSettings, Settings
from kronos_db.errors import (
    InsufficientPrivilegeError,
    ReplicationLagError,
    ReportUnavailableError,
    StandbyError,
)
from kronos_db.resources import query

logger = logging.getLogger(__name__)

MONITOR_HINT = (
    "the role may not see the replication details: GRANT pg_monitor TO <role> "
    "(or pg_read_all_stats)"
)


def size(value: float | None) -> str:
    """Bytes as PostgreSQL's pg_size_pretty writes them (1024-based)."""
    if value is None:
        return "?"
    number = float(value)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(number) < 1024 or unit == "TB":
            return f"{number:.0f} {unit}" if unit == "bytes" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TB"  # pragma: no cover - the loop returns


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {seconds}s"


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class ServerRole:
    """Whether the server is a primary or a standby, and where a standby streams from."""

    in_recovery: bool
    read_only: bool  # default_transaction_read_only: no session here may write
    cluster_name: str
    server_port: int
    sender_host: str | None
    sender_port: int | None

    @property
    def is_standby(self) -> bool:
        return self.in_recovery

    @property
    def upstream(self) -> str | None:
        """``host:port`` of the server this standby streams from, when known."""
        if self.sender_host is None:
            return None
        return f"{self.sender_host}:{self.sender_port}" if self.sender_port else self.sender_host


@dataclasses.dataclass(frozen=True)
class Standby:
    """One standby streaming from this server (``pg_stat_replication``)."""

    pid: int
    application_name: str
    client_address: str
    visible: bool  # False: the role may not see its details (no pg_monitor)
    state: str  # startup, catchup, streaming, backup, stopping
    sync_state: str
    slot_name: str
    send_lag_bytes: int | None
    write_lag_bytes: int | None
    flush_lag_bytes: int | None
    replay_lag_bytes: int | None
    write_lag_seconds: float | None
    flush_lag_seconds: float | None
    replay_lag_seconds: float | None  # None: caught up and idle (or not measured yet)
    reply_time: datetime | None

    @property
    def name(self) -> str:
        return self.application_name or self.client_address


@dataclasses.dataclass(frozen=True)
class Slot:
    """One replication slot (``pg_replication_slots``)."""

    slot_name: str
    slot_type: str  # physical or logical
    plugin: str
    database_name: str
    temporary: bool
    active: bool
    active_pid: int | None
    wal_status: str  # reserved, extended, unreserved, lost ('' before it reserved any WAL)
    safe_wal_size: int | None  # bytes left before max_slot_wal_keep_size invalidates it
    retained_bytes: int | None  # WAL kept from removal for this slot
    lag_bytes: int | None  # how far its consumer is behind (confirmed_flush_lsn if logical)
    xmin_age: int | None  # the xmin it holds back vacuum with (hot_standby_feedback)
    catalog_xmin_age: int | None


@dataclasses.dataclass(frozen=True)
class Archiver:
    """WAL archiving (``pg_stat_archiver``) and the segments still waiting for it."""

    archive_mode: str
    archived_count: int
    last_archived_wal: str
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str
    last_failed_time: datetime | None
    stats_reset: datetime | None
    ready: int | None = None  # segments waiting (.ready); None: not readable by the role

    @property
    def enabled(self) -> bool:
        return self.archive_mode in ("on", "always")

    @property
    def failing(self) -> bool:
        """The last attempt failed: no success since the last failure."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time


@dataclasses.dataclass(frozen=True)
class StandbyReplay:
    """On a standby: replay behind what was received, paused replay, the WAL receiver."""

    pause_state: str  # not paused, pause requested, paused
    replay_lag_bytes: int | None  # received but not replayed (None: not streaming)
    last_replayed_at: datetime | None  # commit time of the last replayed transaction
    since_last_replay_seconds: float | None
    receiver_running: bool
    receiver_visible: bool
    receiver_status: str  # streaming, starting, waiting, stopping…
    sender_host: str | None
    sender_port: int | None
    slot_name: str
    since_last_message_seconds: float | None

    @property
    def paused(self) -> bool:
        return self.pause_state != "not paused"

    @property
    def replay_delay_seconds(self) -> float:
        """How long replay is behind: 0 when it replayed all it received, else the time since
        the last transaction it replayed was committed on the primary."""
        if not self.replay_lag_bytes:
            return 0.0
        return max(self.since_last_replay_seconds or 0.0, 0.0)

    @property
    def streaming(self) -> bool:
        return self.receiver_running and self.receiver_status == "streaming"


@dataclasses.dataclass(frozen=True)
class ReplicationReport:
    """Everything ``report replication`` shows, for this server's role."""

    role: ServerRole
    standbys: tuple[Standby, ...]
    slots: tuple[Slot, ...]
    archiver: Archiver
    replay: StandbyReplay | None  # on a standby only


# ----------------------------------------------------------------------------- questions


def server_role(conn: psycopg.Connection[Any], limits: Limits = DEFAULT_LIMITS) -> ServerRole:
    return fetch_one(conn, query("replication", "select_server_role"), {}, ServerRole, limits)


def standbys(conn: psycopg.Connection[Any], limits: Limits = DEFAULT_LIMITS) -> list[Standby]:
    return fetch(conn, query("replication", "select_standbys"), {}, Standby, limits)


def slots(conn: psycopg.Connection[Any], limits: Limits = DEFAULT_LIMITS) -> list[Slot]:
    return fetch(conn, query("replication", "select_slots"), {}, Slot, limits)


@dataclasses.dataclass(frozen=True)
class _Ready:
    ready: int


def archiver(conn: psycopg.Connection[Any], limits: Limits = DEFAULT_LIMITS) -> Archiver:
    """The archiver's statistics, with the count of segments waiting when the role may see it."""
    stats = fetch_one(conn, query("replication", "select_archiver"), {}, Archiver, limits)
    if not stats.enabled:
        return stats
    try:
        ready = fetch_one(conn, query("replication", "count_archive_ready"), {}, _Ready, limits)
    except ReportUnavailableError:
        return stats  # pg_ls_archive_statusdir needs pg_monitor: the failures still tell
    return dataclasses.replace(stats, ready=ready.ready)


def standby_replay(
    conn: psycopg.Connection[Any], now: datetime, limits: Limits = DEFAULT_LIMITS
) -> StandbyReplay:
    """On a standby only (the recovery functions fail on a primary)."""
    return fetch_one(
        conn, query("replication", "select_standby_replay"), {"now": now}, StandbyReplay, limits
    )


def replication_report(
    conn: psycopg.Connection[Any], now: datetime, limits: Limits = DEFAULT_LIMITS
) -> ReplicationReport:
    role = server_role(conn, limits)
    return ReplicationReport(
        role=role,
        standbys=tuple(standbys(conn, limits)),
        slots=tuple(slots(conn, limits)),
        archiver=archiver(conn, limits),
        replay=standby_replay(conn, now, limits) if role.is_standby else None,
    )


# ----------------------------------------------------------------------------- the guard
# Every command that writes asks, before it writes anything, whether it is on a primary. On a
# standby the cron jobs skip quietly (the same crontab runs on every node; only the primary
# acts) or fail when configured to; every other writer fails with one line that names the
# standby and how to reach the primary.

READ_WRITE_EXAMPLE = "postgresql://node1,node2/kronos?target_session_attrs=read-write"


def where(conn: psycopg.Connection[Any]) -> str:
    """The server a connection reached, as ``host:port`` (with a multi-host URL, the one
    libpq picked)."""
    host = conn.info.host
    if host.startswith("/"):
        return f"the server on socket {host} port {conn.info.port}"
    return f"{host}:{conn.info.port}"


def _standing(role: ServerRole, conn: psycopg.Connection[Any]) -> str:
    if role.in_recovery:
        upstream = f", streaming from {role.upstream}" if role.upstream else ""
        return f"{where(conn)} is a standby (in recovery{upstream})"
    return f"{where(conn)} is read-only (default_transaction_read_only = on)"


def refusal(
    conn: psycopg.Connection[Any],
    role: ServerRole,
    purpose: str,
    source: str,
    *,
    alternative: str = "",
) -> StandbyError:
    """The one-line error of a writer pointed at a standby (``alternative``: one more way)."""
    return StandbyError(
        f"{purpose} needs the primary, but {_standing(role, conn)}: point {source} at the "
        f"primary, or name every node with target_session_attrs=read-write "
        f"({READ_WRITE_EXAMPLE}){', ' + alternative if alternative else ''}"
    )


def writable(conn: psycopg.Connection[Any]) -> bool:
    """One round trip: may this session write (a primary, not read-only)?"""
    row = conn.execute(query("replication", "select_writable")).fetchone()
    return bool(row and row[0])


def require_primary(
    conn: psycopg.Connection[Any], purpose: str, *, source: str = "--database-url"
) -> None:
    """Raise :class:`StandbyError` unless ``conn`` may write (a primary, not read-only).

    ``purpose`` names what needs it (``migrate``); ``source`` where the user sets the URL.
    """
    if not writable(conn):
        raise refusal(conn, server_role(conn), purpose, source)


def require_primary_at(target: db.Target, purpose: str) -> None:
    """:func:`require_primary` on a connection of its own to ``target`` (a writer's first
    step, before it connects to do its work)."""
    with db.connection(target) as conn:
        require_primary(conn, purpose, source=db.url_setting(target))


def standby_skip(
    conn: psycopg.Connection[Any],
    job: str,
    *,
    on_standby: str = "skip",
    source: str = "--database-url",
) -> str | None:
    """For cron jobs: None on a primary; on a standby, why the job is skipped.

    ``on_standby = "fail"`` raises :class:`StandbyError` instead, for a crontab that must only
    ever point at the primary.
    """
    if writable(conn):
        return None
    role = server_role(conn)
    if on_standby == "fail":
        raise refusal(conn, role, job, source)
    reason = f"standby: skipped: {_standing(role, conn)}; {job} runs on the primary"
    logger.info("%s: %s", job, reason)
    return reason


# ----------------------------------------------------------------------------- pacing
# A bulk job writes WAL much faster than a busy or throttled standby replays it: expiring 1M
# sessions wrote 152 MB in 19 s while the standby fell 146 MB behind, and Patroni fails over
# only to a standby within maximum_lag_on_failover (1 MiB by default). Before each batch the
# job asks how far behind the standbys and slots are, and waits while they are too far.

POLL_SECONDS = 0.1


@dataclasses.dataclass(frozen=True)
class PacingLag:
    """The worst lags, in bytes, that pacing compares with its limits."""

    position: int  # this server's WAL position, in bytes from 0/0
    standby_name: str | None
    standby_lag_bytes: int | None
    hidden_standbys: int
    slot_name: str | None
    slot_lag_bytes: int | None

    def over(self, settings: ReplicationSettings) -> str | None:
        """What is too far behind, or None."""
        if (self.standby_lag_bytes or 0) > settings.max_replay_lag:
            return (
                f"standby {self.standby_name} is {size(self.standby_lag_bytes)} behind in replay "
                f"(limit {size(settings.max_replay_lag)}, [replication] max_replay_lag)"
            )
        if (self.slot_lag_bytes or 0) > settings.max_slot_lag:
            return (
                f"the consumer of slot {self.slot_name} is {size(self.slot_lag_bytes)} behind "
                f"(limit {size(settings.max_slot_lag)}, [replication] max_slot_lag)"
            )
        return None


def pacing_lag(conn: psycopg.Connection[Any]) -> PacingLag:
    """One round trip, on the job's own connection between two batches."""
    with conn.cursor(row_factory=class_row(PacingLag)) as cursor:
        row = cursor.execute(query("replication", "select_pacing_lag")).fetchone()
    assert row is not None
    return row


class Pacer:
    """``before_batch`` of a bulk job: waits while a standby or a slot is too far behind.

    Each wait lasts at most ``max_wait``; then :class:`ReplicationLagError` stops the job (the
    batches done stay done). A batch that wrote more than a quarter of the smallest limit makes
    the job's batches smaller (the share returned to the batch loop), so that the lag a job
    causes stays under its limit plus one batch, at most 1.25 times the limit. ``waited`` is
    the total time spent waiting, for the metrics. A role that may not see the standbys'
    positions cannot pace: it is told the GRANT, before the first batch, rather than left to
    outrun them unseen.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], settings: ReplicationSettings, job: str
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.job = job
        self.waited = 0.0
        self.waits = 0
        self.worst = 0  # the largest lag seen, in bytes
        self.batch_wal = max(1, min(settings.max_replay_lag, settings.max_slot_lag) // 4)
        self._position: int | None = None  # where the WAL ended when the last batch started

    def measure(self) -> PacingLag:
        lag = pacing_lag(self.conn)
        if lag.hidden_standbys and lag.standby_lag_bytes is None:
            raise InsufficientPrivilegeError(
                f"{self.job}: cannot pace on replication: {lag.hidden_standbys} standby(s) "
                f"stream from this server but {self.conn.info.user} may not see their "
                "positions: GRANT pg_monitor TO "
                f"{self.conn.info.user} (or set [replication] pacing = false)"
            )
        self.worst = max(self.worst, lag.standby_lag_bytes or 0, lag.slot_lag_bytes or 0)
        return lag

    def __call__(self) -> float | None:
        lag = self.measure()
        share = self._share(lag.position)
        behind = lag.over(self.settings)
        if behind is None:
            self._position = lag.position
            return share
        started = time.monotonic()
        budget = self.settings.max_wait.total_seconds()
        logger.info("%s: waiting: %s", self.job, behind)
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            # a move waits inside the transaction that will attach its partition: a server's
            # idle_in_transaction_session_timeout must not end it while it waits on purpose
            db.set_local(self.conn, {"idle_in_transaction_session_timeout": "0"})
        try:
            while behind is not None:
                if time.monotonic() - started >= budget:
                    raise ReplicationLagError(
                        f"{self.job} stopped: {behind} after waiting "
                        f"{_seconds(time.monotonic() - started)} ([replication] max_wait)",
                        waited_seconds=self.waited + time.monotonic() - started,
                    )
                time.sleep(POLL_SECONDS)
                lag = self.measure()
                behind = lag.over(self.settings)
        finally:
            self.waited += time.monotonic() - started
            self.waits += 1
        logger.debug("%s: the standbys caught up after %.1fs", self.job, time.monotonic() - started)
        self._position = lag.position
        return share

    def _share(self, position: int) -> float | None:
        """What share of the last batch the next ones may be: below 1 when it wrote more WAL
        than ``batch_wal`` (other sessions' WAL counts too: it errs on the small side)."""
        if self._position is None:
            return None
        written = position - self._position
        if written <= self.batch_wal:
            return None
        logger.debug(
            "%s: the last batch wrote %s of WAL: smaller batches (at most %s each)",
            self.job,
            size(written),
            size(self.batch_wal),
        )
        return self.batch_wal / written


def pacer(conn: psycopg.Connection[Any], settings: ReplicationSettings, job: str) -> Pacer | None:
    """The pacer of a bulk job on ``conn``, or None when pacing is off."""
    return Pacer(conn, settings, job) if settings.pacing else None


# ----------------------------------------------------------------------------- health checks
# Registered in kronos_db.reports.health's CHECKS; thresholds in [health].


def lag_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    """Replay lag in bytes, and in time."""
    return (
        health_threshold(settings, "replication_lag_bytes"),
        health_threshold(settings, "replication_lag"),
    )


def check_replication_lag(ctx: Context) -> Outcome:
    """On a primary, the standbys' lag; on a standby, its own replay delay and receiver."""
    role = server_role(ctx.conn, ctx.limits)
    if role.is_standby:
        return _standby_lag(ctx, standby_replay(ctx.conn, ctx.now, ctx.limits), role)
    return _primary_lag(ctx, standbys(ctx.conn, ctx.limits))


def _lag_metrics(
    settings: Settings, lag_bytes: float | None, lag_seconds: float | None
) -> tuple[Metric, ...]:
    bytes_threshold, time_threshold = lag_thresholds(settings)
    return (
        Metric("replication_lag_bytes", lag_bytes, "bytes", bytes_threshold),
        Metric("replication_lag_seconds", lag_seconds, "seconds", time_threshold),
    )


def _primary_lag(ctx: Context, rows: list[Standby]) -> Outcome:
    if not rows:
        return Outcome(
            Status.OK, "no standby streams from this server", _lag_metrics(ctx.settings, 0, 0)
        )
    hidden = [row for row in rows if not row.visible]
    if hidden and len(hidden) == len(rows):
        return Outcome(
            Status.UNKNOWN,
            f"{len(rows)} standby(s) connected, their lag is not visible to this role",
            _lag_metrics(ctx.settings, None, None),
            hint=MONITOR_HINT,
            data=tuple(rows),
        )
    graded = []
    for row in rows:
        if not row.visible or row.state == "backup":
            continue  # a pg_basebackup is not a standby
        metrics = _lag_metrics(ctx.settings, row.replay_lag_bytes, row.replay_lag_seconds)
        status = worst([metric.grade() for metric in metrics])
        if row.state not in ("streaming", "catchup"):
            status = worst([status, Status.WARNING])
        graded.append((status, row))
    if not graded:
        return Outcome(
            Status.OK,
            "no standby streams from this server",
            _lag_metrics(ctx.settings, 0, 0),
            data=tuple(rows),
        )
    top = max((row for _, row in graded), key=lambda row: row.replay_lag_bytes or 0)
    slowest = max(row.replay_lag_seconds or 0.0 for _, row in graded)
    overall = worst([status for status, _ in graded])
    ordered = sorted(graded, key=lambda item: -(item[1].replay_lag_bytes or 0))
    parts = [
        f"{row.name} ({row.state}{', ' + row.sync_state if row.sync_state else ''}): "
        f"replay {size(row.replay_lag_bytes)} behind"
        + (f", {_seconds(row.replay_lag_seconds)}" if row.replay_lag_seconds else "")
        for _, row in ordered[:3]
    ]
    note = f"; {len(hidden)} more not visible to this role" if hidden else ""
    return Outcome(
        overall,
        f"{len(graded)} standby(s): " + "; ".join(parts) + note,
        _lag_metrics(ctx.settings, float(top.replay_lag_bytes or 0), slowest),
        tuple(
            Finding(
                f"standby {row.name} ({row.client_address})",
                f"{row.state}: replay {size(row.replay_lag_bytes)} behind"
                + (f", {_seconds(row.replay_lag_seconds)}" if row.replay_lag_seconds else ""),
            )
            for status, row in ordered
            if status is not Status.OK
        ),
        (MONITOR_HINT if hidden else "")
        if overall is Status.OK
        else "see `kronos-db report replication`; on the standby: is replay paused "
        "(pg_get_wal_replay_pause_state()), is its disk or CPU saturated, does a query "
        "conflict with replay (max_standby_streaming_delay)?",
        tuple(rows),
    )


def _standby_lag(ctx: Context, replay: StandbyReplay, role: ServerRole) -> Outcome:
    if not replay.receiver_visible:
        return Outcome(
            Status.UNKNOWN,
            "this server is a standby; its WAL receiver is not visible to this role",
            _lag_metrics(ctx.settings, None, None),
            hint=MONITOR_HINT,
            data=(replay,),
        )
    delay = replay.replay_delay_seconds
    metrics = _lag_metrics(ctx.settings, float(replay.replay_lag_bytes or 0), delay)
    statuses = [metric.grade() for metric in metrics]
    where = f" from {role.upstream}" if role.upstream else ""
    parts = [
        f"standby{where}: replay {size(replay.replay_lag_bytes or 0)} behind what it received"
        + (f", {_seconds(delay)} behind the primary" if delay else "")
    ]
    hints = []
    findings = []
    if replay.paused:
        statuses.append(Status.WARNING)
        parts.append(f"replay is {replay.pause_state}")
        hints.append("SELECT pg_wal_replay_resume() on the standby when the pause is over")
        findings.append(
            Finding(
                "this standby", f"replay is {replay.pause_state}", "SELECT pg_wal_replay_resume();"
            )
        )
    if not replay.streaming:
        statuses.append(Status.CRITICAL)
        state = replay.receiver_status or "not running"
        parts.append(f"the WAL receiver is {state}: changes on the primary do not reach it")
        hints.append(
            "check primary_conninfo, the primary's pg_hba.conf and the standby's log; "
            "a standby restoring from an archive only has no receiver"
        )
    overall = worst(statuses)
    return Outcome(
        overall,
        "; ".join(parts),
        metrics,
        tuple(findings),
        "; ".join(hints)
        if hints
        else ""
        if overall is Status.OK
        else "is the standby's disk or CPU saturated, or a query conflicting with replay?",
        (replay,),
    )


def slot_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "slot_retained"),)


def check_replication_slots(ctx: Context) -> Outcome:
    """Every slot's retained WAL (active or not), its wal_status and what is left of it.

    An inactive slot that holds no xmin (a dead standby without hot_standby_feedback) is
    invisible to the xmin horizon but keeps WAL until the disk is full: judged here."""
    (threshold,) = slot_thresholds(ctx.settings)
    rows = slots(ctx.conn, ctx.limits)
    if not rows:
        return Outcome(
            Status.OK, "no replication slot", (Metric("replication_slots", 0, "bytes", threshold),)
        )
    flagged: list[tuple[Status, Slot, str]] = []
    for row in rows:
        status = threshold.grade(row.retained_bytes)
        why = f"retains {size(row.retained_bytes)} of WAL"
        if row.wal_status in ("unreserved", "lost"):
            status = Status.CRITICAL
            why += (
                " and its WAL is gone: its standby can no longer catch up"
                if row.wal_status == "lost"
                else ", beyond max_slot_wal_keep_size: the next checkpoint removes it"
            )
        elif (
            row.safe_wal_size is not None
            and threshold.warning is not None
            and row.safe_wal_size < threshold.warning
        ):
            status = worst([status, Status.WARNING])
            why += f", {size(row.safe_wal_size)} left before max_slot_wal_keep_size drops it"
        if status is not Status.OK:
            flagged.append((status, row, why))
    largest = max(rows, key=lambda row: row.retained_bytes or 0)
    metric = Metric("replication_slots", float(largest.retained_bytes or 0), "bytes", threshold)
    inactive = [row for row in rows if not row.active]
    if not flagged:
        return Outcome(
            Status.OK,
            f"{len(rows)} slot(s), {len(inactive)} inactive; the most WAL retained: "
            f"{size(largest.retained_bytes or 0)} ({largest.slot_name})",
            (metric,),
            data=tuple(rows),
        )
    flagged.sort(key=lambda item: -(item[1].retained_bytes or 0))

    def described(row: Slot, why: str) -> str:
        return (
            f"{'inactive ' if not row.active else ''}{row.slot_type} slot {row.slot_name} {why}"
            + (f" (holds xmin age {row.xmin_age:,})" if row.xmin_age else "")
        )

    unused = [row.slot_name for _, row, _ in flagged if not row.active]
    return Outcome(
        worst([status for status, _, _ in flagged]),
        "; ".join(described(row, why) for _, row, why in flagged[:3]),
        (metric,),
        tuple(
            Finding(
                f"{row.slot_type} slot {row.slot_name}",
                described(row, why) + (f"; wal_status {row.wal_status}" if row.wal_status else ""),
                ""
                if row.active
                else f"SELECT pg_drop_replication_slot({quote_literal(row.slot_name)});",
            )
            for _, row, why in flagged
        ),
        (
            f"an inactive slot keeps WAL until the disk is full: bring its consumer back or "
            f"SELECT pg_drop_replication_slot('{unused[0]}'); set max_slot_wal_keep_size "
            "to bound it"
        )
        if unused
        else "the slot's consumer is behind: see `kronos-db report replication`",
        tuple(row for _, row, _ in flagged),
    )


def archive_thresholds(settings: Settings) -> tuple[Threshold, ...]:
    return (health_threshold(settings, "archive_ready"),)


def check_wal_archiving(ctx: Context) -> Outcome:
    """WAL archiving failures (``pg_stat_archiver``) and segments waiting to be archived."""
    (threshold,) = archive_thresholds(ctx.settings)
    stats = archiver(ctx.conn, ctx.limits)
    if not stats.enabled:
        return Outcome(
            Status.OK,
            f"WAL archiving is off (archive_mode = {stats.archive_mode})",
            (Metric("wal_archiving", 0, "count", threshold),),
        )
    ready = stats.ready
    metric = Metric("wal_archiving", None if ready is None else float(ready), "count", threshold)
    statuses = [metric.grade()]
    parts = []
    findings = []
    if stats.failing:
        statuses.append(Status.CRITICAL)
        since = (
            f" since {stats.last_archived_time:%Y-%m-%d %H:%M:%S %Z}"
            if stats.last_archived_time
            else ""
        )
        failure = (
            f"archiving fails: {stats.failed_count:,} failure(s), the last on "
            f"{stats.last_failed_wal} at {stats.last_failed_time:%Y-%m-%d %H:%M:%S %Z}; "
            f"nothing archived{since}"
        )
        parts.append(failure)
        findings.append(Finding("archive_command", failure))
    else:
        last = (
            f"last {stats.last_archived_wal} at {stats.last_archived_time:%Y-%m-%d %H:%M:%S %Z}"
            if stats.last_archived_time
            else "nothing archived yet"
        )
        parts.append(f"archiving works ({stats.archived_count:,} archived, {last})")
    if ready is None:
        parts.append("segments waiting: not visible to this role")
    else:
        parts.append(f"{ready:,} segment(s) waiting")
    status = worst(statuses)
    hint = ""
    if stats.failing:
        hint = (
            "the archive_command fails (see the server log): WAL piles up in pg_wal until the "
            "disk is full, and point-in-time recovery stops at the last archived segment"
        )
    elif status is not Status.OK:
        hint = "the archive_command is slower than the WAL written: see the server log"
    elif ready is None:
        hint = "GRANT pg_monitor TO <role> to see the segments waiting"
    return Outcome(status, "; ".join(parts), (metric,), tuple(findings), hint, (stats,))
