"""The configuration: a TOML file and the environment, every setting with a documented default.

The file is ``--config``, else ``$KRONOS_CONFIG``, else ``./kronos.toml`` when present. Every
setting can also come from the environment as ``KRONOS_<SECTION>_<KEY>`` (``[backups]
directory`` is ``KRONOS_BACKUPS_DIRECTORY``), so a container needs no file. Precedence: a
command-line option, then the environment, then the file, then the default; ``sources`` says
where each value came from. A ``KRONOS_*`` variable that names no setting is reported (a
warning naming the closest setting), never silently ignored.

Each section is a frozen dataclass; each field carries its documentation in
``metadata["doc"]``, which ``kronos-db config show`` and ``docs/configuration.md`` print. Values
are validated on load and an error names the key and where the value came from. Later
capabilities add their own sections here.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from kronos_db.durations import format_duration, parse_duration
from kronos_db.errors import ConfigError

DEFAULT_CONFIG_FILE = "kronos.toml"
CONFIG_ENV = "KRONOS_CONFIG"
ENVIRONMENT_PREFIX = "KRONOS_"
# KRONOS_* variables that are not settings (docs/configuration.md lists them)
PROCESS_VARIABLES = {
    CONFIG_ENV: "the configuration file",
    "KRONOS_DEBUG": "any value: an unexpected error shows its traceback",
    "KRONOS_LOG_FORMAT": "text or json: the log format when --log-format is not given",
}
# the test suite's and the benchmarks' own variables
RESERVED_PREFIXES = ("KRONOS_TEST_", "KRONOS_BENCH_")

logger = logging.getLogger(__name__)


def setting(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    secret: bool = False,
    lock_timeout: bool = False,
) -> Any:
    """Declare a setting: its default, one line of documentation, and its validation.

    ``lock_timeout=True``: a PostgreSQL lock or statement timeout, checked by
    :func:`require_lock_timeout` (0 would mean "wait forever").
    """
    return dataclasses.field(
        default=default,
        metadata={"doc": doc, "minimum": minimum, "secret": secret, "lock_timeout": lock_timeout},
    )


def require_lock_timeout(value: timedelta, key: str, origin: str = "") -> timedelta:
    """The one check of every lock timeout kronos-db takes (settings, options, library calls).

    PostgreSQL reads ``lock_timeout = 0`` as "no timeout": DDL would queue behind a long
    reader for ever, and every insert would queue behind the DDL. Below 1ms, the value is sent
    as 0ms. Either is refused (``ConfigError``: exit 2).
    """
    if value < timedelta(milliseconds=1):
        where = f"{origin}: " if origin else ""
        raise ConfigError(
            f"{where}{key}: must be at least 1ms, got {format_duration(value)} (PostgreSQL reads "
            "0 as wait for ever, and everything that needs the table queues behind the wait)"
        )
    return value


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    url: str = setting(
        "",
        "Connection URL or libpq string, used when neither --database-url, KRONOS_DATABASE_URL "
        "nor DATABASE_URL is set. Empty: the libpq defaults and PG* variables.",
        secret=True,
    )
    dbname: str = setting("kronos", "Database name used when the connection names none.")
    connect_timeout: timedelta = setting(
        timedelta(seconds=10), "How long to wait for the server to accept a connection."
    )
    application_name: str = setting("kronos-db", "application_name reported in pg_stat_activity.")
    pooler: Literal["auto", "none", "session", "transaction"] = setting(
        "auto",
        "What sits between kronos-db and the server: auto detects it when a command needs one "
        "server session (docs/pooling.md); none, session or transaction (PgBouncer's "
        "pool_mode) says so instead of detecting.",
    )


@dataclasses.dataclass(frozen=True)
class MigrationSettings:
    lock_timeout: timedelta = setting(
        timedelta(milliseconds=500),
        "lock_timeout for migration DDL: while DDL waits for its lock every query on the table "
        "queues behind it, so it gives up after this and retries later (docs/migrations.md).",
        lock_timeout=True,
    )
    concurrent_lock_timeout: timedelta = setting(
        timedelta(minutes=10),
        "lock_timeout for statements that block no reads or writes (CREATE/DROP INDEX "
        "CONCURRENTLY, VALIDATE CONSTRAINT in a no-transaction revision): they wait for older "
        "transactions without stalling the services.",
        lock_timeout=True,
    )
    statement_timeout: timedelta = setting(
        timedelta(0), "statement_timeout for migration statements (0: none)."
    )
    lock_wait: timedelta = setting(
        timedelta(minutes=5),
        "How long a run waits for another run's migration lock before giving up.",
    )
    retries: int = setting(
        30,
        "How many times a revision that hit lock_timeout is retried (within retry_budget).",
        minimum=0,
    )
    retry_delay: timedelta = setting(
        timedelta(seconds=1),
        "First back-off before a retry; doubles each time (±20% jitter), at most 30s.",
    )
    retry_budget: timedelta = setting(
        timedelta(minutes=5),
        "Total time a run may spend retrying lock timeouts; then it gives up (exit 4) naming "
        "the blocker.",
    )
    directory: str = setting(
        "",
        "Migration tree (holding migrations/ and sql/) that `kronos-db revision` writes to "
        "and every command reads. Empty: the tree shipped with kronos-db.",
    )


@dataclasses.dataclass(frozen=True)
class LintSettings:
    """`kronos-db lint`, and the lint `migrate` and `revision` run (docs/lint.md)."""

    squawk: str = setting(
        "",
        "The squawk program (squawk-cli). Empty: the one installed beside kronos-db, else PATH.",
    )
    on_migrate: bool = setting(
        True,
        "`migrate` lints the revisions it is about to apply and refuses (exit 8) an unreleased "
        "one with an error-level finding that carries no reasoned waiver.",
    )
    small_table_rows: int = setting(
        10_000,
        "Connected: a table with fewer rows (and fewer writes/s than busy_writes_per_second) "
        "turns a blocking finding into a warning instead of an error.",
        minimum=0,
    )
    busy_writes_per_second: float = setting(
        5.0,
        "Connected: a table written more often than this is busy, whatever its size.",
        minimum=0,
    )
    sample_interval: timedelta = setting(
        timedelta(seconds=2),
        "Connected: write rates are measured over this interval (pg_stat_user_tables); 0: "
        "averaged since the statistics were last reset.",
    )


@dataclasses.dataclass(frozen=True)
class RehearseSettings:
    """`kronos-db migrate --rehearse` (docs/migrations.md)."""

    max_stall: timedelta = setting(
        timedelta(seconds=1),
        "A revision during which a service statement of the workload waited longer than this "
        "fails the rehearsal (exit 8).",
    )
    rate: float = setting(
        20.0,
        "Statements per second of each kind in the synthetic workload (log insert, session "
        "lookup and update, queue insert, rate-limit upsert).",
        minimum=0.1,
    )
    sample_rows: int = setting(
        100_000,
        "Rows copied per table: all of them up to this, a block sample of about this many "
        "beyond (0: every row).",
        minimum=0,
    )
    scratch_url: str = setting(
        "",
        "Server (and credentials) where the scratch copy is created. Empty: the target's "
        "server (the connecting role needs CREATEDB).",
        secret=True,
    )


@dataclasses.dataclass(frozen=True)
class AdoptSettings:
    lock_timeout: timedelta = setting(
        timedelta(seconds=2),
        "`adopt --apply`: lock_timeout of each step's DDL; a service waits at most this long "
        "behind a step that queues for a lock.",
        lock_timeout=True,
    )
    retries: int = setting(
        10, "`adopt --apply`: how many times a step that hit lock_timeout is retried.", minimum=0
    )
    retry_delay: timedelta = setting(
        timedelta(seconds=1),
        "`adopt --apply`: first back-off after a lock timeout; doubles (with jitter) up to 30s.",
    )
    batch_size: int = setting(
        5000,
        "`adopt --apply`: rows per transaction when filling a shadow column, fixing or "
        "quarantining rows.",
        minimum=1,
    )
    batch_pause: timedelta = setting(
        timedelta(0),
        "`adopt --apply`: pause between two batches, to leave room for replicas (0: none).",
    )
    statement_timeout: timedelta = setting(
        timedelta(0),
        "`adopt --apply`: statement_timeout of each step (0: none; validations read whole tables).",
    )


@dataclasses.dataclass(frozen=True)
class HousekeepingSettings:
    batch_time: timedelta = setting(
        timedelta(milliseconds=25),
        "Target duration of one batch (one short transaction): batches are sized from the "
        "previous ones' durations, so a service needing a row a batch holds waits about this "
        "long at most.",
    )
    batch_size: int = setting(
        0,
        "Rows per batch, fixed, instead of sizing batches by batch_time (0: by time).",
        minimum=0,
    )
    batch_pause: timedelta = setting(
        timedelta(0), "Pause between two batches, to leave room for replicas and vacuum (0: none)."
    )
    lock_timeout: timedelta = setting(
        timedelta(seconds=2),
        "lock_timeout of a job's statements: give up instead of queueing behind DDL (rows in "
        "use are skipped, never waited on).",
        lock_timeout=True,
    )
    statement_timeout: timedelta = setting(
        timedelta(seconds=60), "statement_timeout of one batch or count (0: none)."
    )
    session_idle_timeout: timedelta = setting(
        timedelta(hours=1),
        "`expire sessions` also deletes sessions whose last_active_at is older than this "
        "(0: only expires_at counts).",
    )
    stuck_after: timedelta = setting(
        timedelta(minutes=15),
        "`queue requeue-stuck`: a message in processing for longer is stuck.",
    )
    max_attempts: int = setting(
        5,
        "`queue requeue-stuck`: the attempt that reaches this count sends a message to failed.",
        minimum=1,
    )
    purge_after: timedelta = setting(
        timedelta(days=7), "`queue purge`: processed messages older than this are deleted."
    )
    ratelimit_window: timedelta = setting(
        timedelta(hours=1),
        "`ratelimits reset`: counters whose last request is older than this go back to 0.",
    )


@dataclasses.dataclass(frozen=True)
class BackupSettings:
    directory: str = setting(
        "",
        "Directory `kronos-db backup create` writes dumps to (created if missing). Empty: "
        "--directory is required.",
    )
    primary_url: str = setting(
        "",
        "On a standby, where backup create, verify and prune record their rows and take their "
        "lock (the dump itself is taken on the standby, to offload the primary). Empty: they "
        "refuse a standby before writing anything. A multi-host URL with "
        "target_session_attrs=read-write follows a switchover.",
        secret=True,
    )
    pg_dump: str = setting("pg_dump", "The pg_dump program (a name on PATH or a path).")
    pg_restore: str = setting("pg_restore", "The pg_restore program (a name on PATH or a path).")
    compression: int = setting(
        6, "pg_dump custom-format compression level, 0 (none) to 9.", minimum=0
    )
    keep: int = setting(7, "`backup prune` with no option keeps this many newest dumps.", minimum=1)
    lock_wait_timeout: timedelta = setting(
        timedelta(seconds=30),
        "pg_dump --lock-wait-timeout: fail instead of queueing behind a DDL lock.",
        lock_timeout=True,
    )
    restore_jobs: int = setting(
        1, "pg_restore --jobs for `backup restore` and `backup verify`.", minimum=1
    )
    warning_age: timedelta = setting(
        timedelta(hours=26),
        "`backup status` and health's last_backup are WARNING when the newest usable verified "
        "dump is older than this.",
    )
    critical_age: timedelta = setting(
        timedelta(hours=50),
        "`backup status` and health's last_backup are CRITICAL when the newest usable verified "
        "dump is older than this.",
    )


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    table: str = setting(
        "public.logs", "The range-partitioned table whose partitions kronos-db manages."
    )
    backend: Literal["auto", "native", "partman"] = setting(
        "auto",
        "auto: pg_partman when the extension is installed and the table is registered in "
        "partman.part_config, else native; native or partman to force one.",
    )
    interval: Literal["hourly", "daily", "weekly", "monthly"] = setting(
        "daily", "Partition width (UTC bounds; weekly partitions start on ISO Monday)."
    )
    premake: int = setting(
        7, "How many partitions to keep ready after the one holding now.", minimum=1
    )
    retention: timedelta = setting(
        timedelta(days=30),
        "Retire a partition once its whole range is older than this (0: keep forever).",
    )
    retention_action: Literal["drop", "detach", "archive"] = setting(
        "drop",
        "What retention does: drop the partition, detach it (keep it as a plain table), or "
        "archive it (gzip'd COPY file, row count verified, recorded in backups) then drop it.",
    )
    archive_directory: str = setting(
        "", "Where `archive` writes its files (required when retention_action = archive)."
    )
    lock_timeout: timedelta = setting(
        timedelta(milliseconds=200),
        "The longest a service's insert may queue behind a rotation: every lock rotate asks "
        "for is given up after this (rolled back, retried later) instead of queueing in front "
        "of the services' writes.",
        lock_timeout=True,
    )
    hold_timeout: timedelta = setting(
        timedelta(milliseconds=50),
        "The longest rotate may hold a lock inserts wait on (an attach's check of the default "
        "partition, a detach): past it the step rolls back and retries. Worst insert wait: "
        "lock_timeout + hold_timeout.",
        lock_timeout=True,
    )
    retry_delay: timedelta = setting(
        timedelta(milliseconds=500),
        "First back-off after a lock given up; doubles (with jitter) up to 30s.",
    )
    budget: timedelta = setting(
        timedelta(minutes=2),
        "Total time one run may spend retrying locks; then the steps still blocked fail "
        "(exit 4) and the next run tries again.",
    )
    move_batch_time: timedelta = setting(
        timedelta(milliseconds=25),
        "Target duration of one statement when rows move out of the default partition: each "
        "is sized from the previous ones' (all the rows of a range move in the transaction "
        "that attaches their partition).",
    )
    move_batch_size: int = setting(
        0,
        "Rows per statement of a move, fixed, instead of sizing by move_batch_time (0: by time).",
        minimum=0,
    )
    coverage_warning: int = setting(
        3, "status: WARNING when fewer partitions than this are ready ahead of now.", minimum=0
    )
    coverage_critical: int = setting(
        1, "status: CRITICAL when fewer partitions than this are ready ahead of now.", minimum=0
    )
    statement_timeout: timedelta = setting(
        timedelta(seconds=30), "statement_timeout for catalog queries and row counts."
    )


@dataclasses.dataclass(frozen=True)
class SecuritySettings:
    argon2_time_cost: int = setting(
        3, "Argon2id iterations (t) for new password hashes.", minimum=1
    )
    argon2_memory_cost: int = setting(
        65536, "Argon2id memory in KiB (m) for new password hashes.", minimum=8
    )
    argon2_parallelism: int = setting(4, "Argon2id lanes (p) for new password hashes.", minimum=1)
    argon2_hash_len: int = setting(32, "Argon2id digest length in bytes.", minimum=16)
    argon2_salt_len: int = setting(16, "Argon2id salt length in bytes.", minimum=8)
    min_password_length: int = setting(
        12, "`users create`/`set-password` refuse shorter passwords.", minimum=1
    )
    role_prefix: str = setting(
        "kronos_", "Prefix of the per-service PostgreSQL roles (kronos_auth, kronos_log...)."
    )
    role_login: bool = setting(
        True,
        "Create the service roles with LOGIN (services connect as them; set their passwords "
        "yourself). false: NOLOGIN group roles to grant to per-instance login roles.",
    )
    roles_file: str = setting(
        "", "The service-to-privileges mapping (TOML). Empty: the one shipped with kronos-db."
    )


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    """Thresholds of `kronos-db health` (each check: a warning and a critical level)."""

    statement_timeout: timedelta = setting(
        timedelta(seconds=5),
        "statement_timeout of each check's query: a slow catalog never hangs the whole report.",
    )
    lock_timeout: timedelta = setting(
        timedelta(milliseconds=500),
        "lock_timeout of each check: a catalog query never queues behind a DDL lock.",
        lock_timeout=True,
    )
    parallel_connections: int = setting(
        2,
        "How many connections health answers its checks on at once (1: one check after "
        "another on one connection); the extra ones go to the same server, and health falls "
        "back to fewer when the server or the role refuses them.",
        minimum=1,
    )
    connections_warning: float = setting(
        70.0, "Connections in use, % of max_connections (minus reserved), for WARNING.", minimum=0
    )
    connections_critical: float = setting(
        90.0, "Connections in use, % of max_connections (minus reserved), for CRITICAL.", minimum=0
    )
    long_query_warning: timedelta = setting(
        timedelta(minutes=5), "A query running longer than this is a WARNING."
    )
    long_query_critical: timedelta = setting(
        timedelta(minutes=30), "A query running longer than this is CRITICAL."
    )
    idle_in_transaction_warning: timedelta = setting(
        timedelta(minutes=1), "A session idle in transaction longer than this is a WARNING."
    )
    idle_in_transaction_critical: timedelta = setting(
        timedelta(minutes=10), "A session idle in transaction longer than this is CRITICAL."
    )
    blocked_warning: timedelta = setting(
        timedelta(seconds=10), "A session waiting on another's lock longer than this: WARNING."
    )
    blocked_critical: timedelta = setting(
        timedelta(minutes=1), "A session waiting on another's lock longer than this: CRITICAL."
    )
    xmin_horizon_warning: timedelta = setting(
        timedelta(minutes=30),
        "A session/slot/prepared transaction holding back the xmin horizon this long: WARNING.",
    )
    xmin_horizon_critical: timedelta = setting(
        timedelta(hours=2), "Something holding back the xmin horizon this long: CRITICAL."
    )
    wraparound_warning: float = setting(
        50.0, "Transaction/multixact IDs used, % of the 2^31 limit, for WARNING.", minimum=0
    )
    wraparound_critical: float = setting(
        75.0, "Transaction/multixact IDs used, % of the 2^31 limit, for CRITICAL.", minimum=0
    )
    sequence_warning: float = setting(
        75.0,
        "A sequence's values used, % of its max (or its column type's), for WARNING.",
        minimum=0,
    )
    sequence_critical: float = setting(
        90.0, "A sequence's values used, % of its effective limit, for CRITICAL.", minimum=0
    )
    dead_tuples_warning: float = setting(
        20.0, "Dead tuples, % of a table's rows, for WARNING.", minimum=0
    )
    dead_tuples_critical: float = setting(
        50.0, "Dead tuples, % of a table's rows, for CRITICAL.", minimum=0
    )
    dead_tuples_minimum: int = setting(
        10_000, "Tables with fewer dead tuples than this are never flagged.", minimum=0
    )
    bloat_warning: float = setting(
        50.0, "Estimated bloat, % of a table or index, for WARNING.", minimum=0
    )
    bloat_critical: float = setting(
        80.0, "Estimated bloat, % of a table or index, for CRITICAL.", minimum=0
    )
    bloat_minimum_bytes: int = setting(
        10 * 1024 * 1024,
        "Tables and indexes smaller than this are not judged for bloat.",
        minimum=0,
    )
    cache_hit_warning: float = setting(
        95.0, "Buffer cache hit rate (%) below this is a WARNING.", minimum=0
    )
    cache_hit_critical: float = setting(
        80.0, "Buffer cache hit rate (%) below this is CRITICAL.", minimum=0
    )
    cache_minimum_reads: int = setting(
        10_000, "The cache hit rate is judged only after this many block accesses.", minimum=0
    )
    slow_query_warning: timedelta = setting(
        timedelta(milliseconds=500), "A statement whose mean time exceeds this is a WARNING."
    )
    slow_query_critical: timedelta = setting(
        timedelta(seconds=5), "A statement whose mean time exceeds this is CRITICAL."
    )
    slow_query_minimum_calls: int = setting(
        10,
        "Statements called fewer times than this (since the newest snapshot, when there is "
        "one) are not judged slow: a one-off bulk statement is no alarm.",
        minimum=1,
    )
    slow_query_include_utility: bool = setting(
        False,
        "Judge utility statements too (VACUUM, CREATE INDEX, COPY, DO blocks…): they are "
        "slow by nature.",
    )
    unused_index_minimum_bytes: int = setting(
        1024 * 1024, "Unused indexes smaller than this are listed but not a WARNING.", minimum=0
    )
    expired_rows_warning: int = setting(
        10_000, "Expired sessions or cache rows still waiting to be deleted: WARNING.", minimum=0
    )
    expired_rows_critical: int = setting(
        1_000_000,
        "Expired sessions or cache rows still waiting to be deleted: CRITICAL.",
        minimum=0,
    )
    queue_age_warning: timedelta = setting(
        timedelta(minutes=5), "Oldest pending message older than this: WARNING."
    )
    queue_age_critical: timedelta = setting(
        timedelta(hours=1), "Oldest pending message older than this: CRITICAL."
    )
    queue_pending_warning: int = setting(
        10_000, "Pending messages in one topic for WARNING.", minimum=0
    )
    queue_pending_critical: int = setting(
        100_000, "Pending messages in one topic for CRITICAL.", minimum=0
    )
    prepared_transaction_warning: timedelta = setting(
        timedelta(seconds=30),
        "A prepared transaction (two-phase commit) older than this: WARNING. It holds its "
        "locks and the xmin horizon, with no session to end, until committed or rolled back.",
    )
    prepared_transaction_critical: timedelta = setting(
        timedelta(minutes=5), "A prepared transaction older than this: CRITICAL."
    )
    unmaintained_table_warning: int = setting(
        100 * 1024 * 1024,
        "A table at least this large (bytes) never vacuumed or never analyzed: WARNING.",
        minimum=0,
    )
    unmaintained_table_critical: int = setting(
        10 * 1024 * 1024 * 1024,
        "A table at least this large never vacuumed or never analyzed: CRITICAL.",
        minimum=0,
    )
    replication_lag_warning: timedelta = setting(
        timedelta(minutes=1),
        "A standby's replay this far behind (time; on a standby, since the last transaction "
        "it replayed while WAL waits): WARNING.",
    )
    replication_lag_critical: timedelta = setting(
        timedelta(minutes=10), "A standby's replay this far behind (time): CRITICAL."
    )
    replication_lag_bytes_warning: int = setting(
        64 * 1024 * 1024,
        "A standby's replay this many bytes of WAL behind: WARNING (Patroni fails over only "
        "to a standby that received all but maximum_lag_on_failover, 1 MiB by default).",
        minimum=0,
    )
    replication_lag_bytes_critical: int = setting(
        1024 * 1024 * 1024, "A standby's replay this many bytes of WAL behind: CRITICAL.", minimum=0
    )
    slot_retained_warning: int = setting(
        128 * 1024 * 1024,
        "A replication slot (active or not) retaining this many bytes of WAL: WARNING. An "
        "inactive slot keeps WAL until the disk is full.",
        minimum=0,
    )
    slot_retained_critical: int = setting(
        1024 * 1024 * 1024,
        "A replication slot retaining this many bytes of WAL: CRITICAL.",
        minimum=0,
    )
    archive_ready_warning: int = setting(
        16, "WAL segments waiting to be archived (.ready files) for WARNING.", minimum=0
    )
    archive_ready_critical: int = setting(
        128,
        "WAL segments waiting to be archived for CRITICAL (a failing archiver always is).",
        minimum=0,
    )


@dataclasses.dataclass(frozen=True)
class ReplicationSettings:
    """A primary with standbys (docs/replication.md)."""

    on_standby: Literal["skip", "fail"] = setting(
        "skip",
        "What the cron jobs (maintain, expire, queue, ratelimits, partitions rotate) do on a "
        "standby: skip (exit 0, 'standby: skipped' with -v and --json; the same crontab on "
        "every node, only the primary acts) or fail (exit 3, for a crontab that must only ever "
        "reach the primary).",
    )
    pacing: bool = setting(
        True,
        "Bulk jobs (expiry, queue purge, requeue, rate-limit reset, partition moves) wait "
        "before a batch while a standby or a slot's consumer is too far behind (below).",
    )
    max_replay_lag: int = setting(
        768 * 1024,
        "Pacing: wait while a streaming standby's replay is more than this many bytes of WAL "
        "behind. A batch writes at most a quarter of it, so the lag stays under 1.25 times "
        "this: 768 kB keeps it under Patroni's default maximum_lag_on_failover, 1 MiB.",
        minimum=1,
    )
    max_slot_lag: int = setting(
        16 * 1024 * 1024,
        "Pacing: wait while an active replication slot's consumer (a logical decoding client, "
        "a standby) is more than this many bytes of WAL behind.",
        minimum=1,
    )
    max_wait: timedelta = setting(
        timedelta(minutes=5),
        "Pacing: the longest one wait may last; then the job stops (exit 1), its finished "
        "batches kept, and says which standby or slot is behind.",
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    migrations: MigrationSettings = dataclasses.field(default_factory=MigrationSettings)
    lint: LintSettings = dataclasses.field(default_factory=LintSettings)
    rehearse: RehearseSettings = dataclasses.field(default_factory=RehearseSettings)
    adopt: AdoptSettings = dataclasses.field(default_factory=AdoptSettings)
    housekeeping: HousekeepingSettings = dataclasses.field(default_factory=HousekeepingSettings)
    partitions: PartitionSettings = dataclasses.field(default_factory=PartitionSettings)
    backups: BackupSettings = dataclasses.field(default_factory=BackupSettings)
    security: SecuritySettings = dataclasses.field(default_factory=SecuritySettings)
    health: HealthSettings = dataclasses.field(default_factory=HealthSettings)
    replication: ReplicationSettings = dataclasses.field(default_factory=ReplicationSettings)
    # "section.key" -> where the value came from: "default", a file path, an option, a variable.
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)
    path: Path | None = None


SectionT = TypeVar("SectionT")


# settings that were removed, and what replaced them: a file still setting one is told where its
# value belongs instead of being graded with a default it did not ask for
RETIRED_KEYS: dict[str, str] = {
    "health.backup_age_warning": "backup freshness has one answer, the backups module's: set "
    "backups.warning_age",
    "health.backup_age_critical": "backup freshness has one answer, the backups module's: set "
    "backups.critical_age",
    "health.partition_ahead_warning": "partition coverage has one answer, the partitions "
    "module's: set partitions.coverage_warning (partitions ready ahead)",
    "health.partition_ahead_critical": "partition coverage has one answer, the partitions "
    "module's: set partitions.coverage_critical (partitions ready ahead)",
    "health.logs_default_warning": "rows in the default partition are judged by the partitions "
    "module (any row: WARNING)",
    "health.logs_default_critical": "rows in the default partition are judged by the partitions "
    "module (any row: WARNING)",
}


def section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Settings)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Settings)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _convert(value: Any, kind: Any, key: str, origin: str) -> Any:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{origin}: {key}: {reason}")

    if kind is timedelta:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise fail(f'expected a duration such as "5s", got {value!r}')
        if isinstance(value, int):
            if value != 0:
                raise fail(f'a duration needs a unit, e.g. "{value}s"')
            return timedelta(0)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise fail(str(exc)) from None
    if kind is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    origin_type = typing.get_origin(kind)
    if origin_type is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise fail(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin_type is tuple:
        (item_kind, _ellipsis) = typing.get_args(kind)
        if not isinstance(value, list):
            raise fail(f"expected a list, got {value!r}")
        return tuple(_convert(item, item_kind, key, origin) for item in value)
    if origin_type in (typing.Union, types.UnionType):
        # Optional settings: ``None`` is spelled by leaving the key out.
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _convert(value, inner, key, origin)
    raise TypeError(f"unsupported setting type {kind!r} for {key}")


def environment_variable(dotted: str) -> str:
    """``backups.directory`` -> ``KRONOS_BACKUPS_DIRECTORY``."""
    return ENVIRONMENT_PREFIX + dotted.replace(".", "_").upper()


def setting_variables() -> dict[str, str]:
    """Every setting's environment variable -> its ``section.key``."""
    return {
        environment_variable(f"{name}.{field.name}"): f"{name}.{field.name}"
        for name, cls in section_types().items()
        for field in dataclasses.fields(cls)
    }


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _from_text(text: str, kind: Any) -> Any:
    """A variable's text as the TOML value it stands for, for :func:`_convert` to check."""
    if kind is bool:
        word = text.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else text
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            return text
    if kind is float:
        try:
            return float(text.strip())
        except ValueError:
            return text
    origin_type = typing.get_origin(kind)
    if origin_type is tuple:
        (item_kind, _ellipsis) = typing.get_args(kind)
        return [_from_text(item.strip(), item_kind) for item in text.split(",") if item.strip()]
    if origin_type in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _from_text(text, inner)
    return text  # strings, durations (parsed as in the file), choices


_warned: set[str] = set()


def _environment_values(
    environ: Mapping[str, str],
) -> dict[str, dict[str, tuple[Any, str]]]:
    """The settings the environment sets, per section; unknown KRONOS_* variables warned of."""
    variables = setting_variables()
    sections = section_types()
    found: dict[str, dict[str, tuple[Any, str]]] = {}
    for name, text in environ.items():
        if not name.startswith(ENVIRONMENT_PREFIX):
            continue
        dotted = variables.get(name)
        if dotted is None:
            if name not in PROCESS_VARIABLES and not name.startswith(RESERVED_PREFIXES):
                _warn_unknown(name, variables)
            continue
        section, _, key = dotted.partition(".")
        kind = typing.get_type_hints(sections[section])[key]
        found.setdefault(section, {})[key] = (_from_text(text, kind), f"${name}")
    return found


def _warn_unknown(name: str, variables: Mapping[str, str]) -> None:
    if name in _warned:
        return
    _warned.add(name)
    candidates = [*variables, *PROCESS_VARIABLES]
    closest = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if closest and closest[0] in variables:
        hint = f"did you mean {closest[0]} ({variables[closest[0]]})?"
    elif closest:
        hint = f"did you mean {closest[0]}?"
    else:
        hint = "no setting is named like it (see kronos-db config show)"
    logger.warning("unknown environment variable %s, ignored: %s", name, hint)


def _build_section(
    cls: type[SectionT],
    name: str,
    values: Mapping[str, tuple[Any, str]],
    sources: dict[str, str],
) -> SectionT:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{name}.{field.name}"
        if field.name not in values:
            sources[key] = "default"
            continue
        raw, origin = values[field.name]
        try:
            value = _convert(raw, hints[field.name], key, origin)
        except ConfigError as exc:
            if field.metadata.get("secret"):  # never echo a secret's value
                raise ConfigError(f"{origin}: {key}: invalid value (not shown: a secret)") from None
            raise exc from None
        minimum = field.metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{origin}: {key}: must be at least {minimum}, got {raw!r}")
        if field.metadata.get("lock_timeout"):
            require_lock_timeout(value, key, origin)
        kwargs[field.name] = value
        sources[key] = origin
    return cls(**kwargs)


def find_config_file(
    explicit: str | Path | None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """``--config``, else ``$KRONOS_CONFIG``, else ``./kronos.toml`` when present."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        return path
    from_env = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found (from ${CONFIG_ENV})")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, tuple[Any, str]] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the configuration.

    ``overrides`` maps ``"section.key"`` to ``(value, origin)``, for command-line options; they
    win over the environment (``environ``, by default this process's), which wins over the
    file, which wins over the defaults.
    """
    environ = os.environ if environ is None else environ
    path = find_config_file(config_file, environ)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                f"{exc.start}): save it as UTF-8, as TOML requires"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    sections = section_types()
    per_section: dict[str, dict[str, tuple[Any, str]]] = {name: {} for name in sections}
    for section_name, table in data.items():
        if section_name not in sections:
            raise ConfigError(
                f"{path}: unknown section [{section_name}] (known: {', '.join(sorted(sections))})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section_name}: expected a table [{section_name}]")
        known = {f.name for f in dataclasses.fields(sections[section_name])}
        for key, value in table.items():
            retired = RETIRED_KEYS.get(f"{section_name}.{key}")
            if retired is not None:
                raise ConfigError(f"{path}: {section_name}.{key} is no longer a setting: {retired}")
            if key not in known:
                raise ConfigError(
                    f"{path}: unknown key {section_name}.{key} (known: {', '.join(sorted(known))})"
                )
            per_section[section_name][key] = (value, str(path))
    for section_name, values in _environment_values(environ).items():
        per_section[section_name].update(values)
    for dotted, (value, origin) in (overrides or {}).items():
        if value is None:
            continue
        section_name, _, key = dotted.partition(".")
        per_section[section_name][key] = (value, origin)
    sources: dict[str, str] = {}
    built = {
        name: _build_section(cls, name, per_section[name], sources)
        for name, cls in sections.items()
    }
    return Settings(**built, sources=sources, path=path)


@dataclasses.dataclass(frozen=True)
class EffectiveSetting:
    key: str
    value: str
    source: str  # "default", the file's path, "$KRONOS_…" or "option --…"
    doc: str
    variable: str  # the environment variable that sets it


def describe(value: Any) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def effective_settings(settings: Settings) -> list[EffectiveSetting]:
    """Every setting with its value (secrets masked), where it came from, and its meaning."""
    rows: list[EffectiveSetting] = []
    for name in section_types():
        section = getattr(settings, name)
        for field in dataclasses.fields(section):
            key = f"{name}.{field.name}"
            value = getattr(section, field.name)
            shown = describe(value)
            if field.metadata.get("secret") and shown:
                from kronos_db.redaction import mask

                shown = mask(shown)
            rows.append(
                EffectiveSetting(
                    key,
                    shown,
                    settings.sources.get(key, "default"),
                    field.metadata.get("doc", ""),
                    environment_variable(key),
                )
            )
    return rows
