"""The steps that take a database from the original design's schema to revision 0010's.

:func:`build` turns a :class:`~kronos_db.adopt.catalog.LiveState` into the ordered list of every
step, each marked done or not from the catalog alone. The order is table by table, in foreign
key order, and within a table:

1. the rows that break a rule head adds are fixed or quarantined (only when asked to);
2. naive timestamps become ``timestamptz``: in place when they were written in UTC (PostgreSQL
   12+ rewrites nothing when the session's zone is UTC), else through a shadow column;
3. defaults and the columns later revisions added;
4. ``CHECK`` and foreign keys ``NOT VALID`` (a brief lock), then ``VALIDATE`` (reads and writes
   go on), then ``SET NOT NULL`` proved by a validated check (no scan);
5. unique and exclusion constraints; ``integer`` ids to ``bigint`` through a shadow column
   filled in batches and swapped in one short transaction;
6. indexes ``CONCURRENTLY``; functions, triggers, comments;

then ``logs`` becomes a partitioned table whose default partition is the old table, and
revision 0010's own objects. Each step says the strongest lock it takes, whether that lock
stops the services' writes, and how long it should take from the table sizes (rates measured by
``bench/adopt.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql

from kronos_db.adopt import catalog
from kronos_db.adopt.catalog import LiveState
from kronos_db.adopt.rules import RULES, primary_key
from kronos_db.migration_sql import MigrationScript
from kronos_db.migrations import KRONOS_TABLES
from kronos_db.resources import query, resource_root, trusted_sql

# the revision whose schema the adoption reaches; later revisions are then applied by migrate
ADOPTION_REVISION = "0010"

# Rates measured by bench/adopt.py on the 2-core machine of docs/benchmarks.md, rounded down:
# estimates, not promises (a busy server is slower).
SCAN_ROWS_PER_SECOND = 3_000_000  # VALIDATE of a CHECK: one sequential pass
JOIN_ROWS_PER_SECOND = 1_000_000  # VALIDATE of a foreign key: a pass and an index probe per row
INDEX_ROWS_PER_SECOND = 700_000  # CREATE INDEX CONCURRENTLY: two passes and a sort
HASH_ROWS_PER_SECOND = 800_000  # the hash index of an exclusion constraint
BACKFILL_ROWS_PER_SECOND = 250_000  # batched UPDATE of a shadow column
MOVE_ROWS_PER_SECOND = 150_000  # rotation: rows moved out of the default partition
CATALOG_SECONDS = 0.01  # a change to the catalog only: the lock is held this long

NAIVE = "timestamp without time zone"
AWARE = "timestamp with time zone"
# zones whose offset is always zero: the in-place conversion reads naive values as UTC
UTC_ZONES = frozenset(
    z.lower()
    for z in (
        "UTC",
        "Etc/UTC",
        "UCT",
        "Etc/UCT",
        "GMT",
        "Etc/GMT",
        "GMT0",
        "Etc/GMT0",
        "GMT+0",
        "Etc/GMT+0",
        "GMT-0",
        "Etc/GMT-0",
        "Greenwich",
        "Etc/Greenwich",
        "Universal",
        "Etc/Universal",
        "Zulu",
        "Etc/Zulu",
    )
)
CONVERTED_MARK = "kronos-db adopt: naive timestamps converted as "
SHADOW_SUFFIX = "_kronos_new"
SYNC_TRIGGER = "kronos_adopt_sync"

# the naive timestamp columns of the original design, and which get a now() default
TIMESTAMP_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("created_at",),
    "sessions": ("created_at", "expires_at"),
    "logs": ("timestamp",),
    "cache": ("expires_at",),
    "rate_limits": ("last_request",),
    "message_queue": ("created_at",),
    "backups": ("created_at",),
}
NOW_DEFAULTS: dict[str, tuple[str, ...]] = {
    "users": ("created_at",),
    "sessions": ("created_at",),
    "logs": ("timestamp",),
    "rate_limits": ("last_request",),
    "message_queue": ("created_at",),
    "backups": ("created_at",),
}
NEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "sessions": ("last_active_at",),
    "message_queue": ("attempts", "status_changed_at"),
    "backups": (
        "kind",
        "status",
        "database_name",
        "size_bytes",
        "sha256",
        "compression",
        "row_counts",
        "server_version",
        "tool_version",
        "started_at",
        "finished_at",
        "verified_at",
        "verify_result",
        "verify_message",
        "pruned_at",
    ),
}
# (table, statement name in adopt_target.sql, the constraints it adds)
CHECKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("roles", "add_roles_permissions_no_null", ("roles_permissions_no_null",)),
    ("users", "add_users_password_hash_argon2", ("users_password_hash_argon2",)),
    ("routes", "add_routes_method_check", ("routes_method_check",)),
    ("rate_limits", "add_rate_limits_request_count_check", ("rate_limits_request_count_check",)),
    ("message_queue", "add_message_queue_status_check", ("message_queue_status_check",)),
    (
        "backups",
        "add_backups_constraints",
        (
            "backups_kind_check",
            "backups_status_check",
            "backups_pruned_at_check",
            "backups_size_bytes_check",
            "backups_sha256_check",
            "backups_row_counts_check",
            "backups_verify_result_check",
            "backups_verified_check",
            "backups_pg_dump_complete_check",
        ),
    ),
)
NOT_NULL: dict[str, tuple[str, ...]] = {"logs": ("timestamp",), "message_queue": ("status",)}
# (table, constraint, referenced table): head's foreign keys that cascade on delete
CASCADING_KEYS: tuple[tuple[str, str, str], ...] = (
    ("sessions", "sessions_user_id_fkey", "users"),
    ("rate_limits", "rate_limits_user_id_fkey", "users"),
    ("rate_limits", "rate_limits_route_id_fkey", "routes"),
)
INDEXES: dict[str, tuple[str, ...]] = {
    "users": ("users_role_id_idx",),
    "sessions": ("sessions_user_id_idx", "sessions_expires_at_idx", "sessions_last_active_at_idx"),
    "cache": ("cache_expires_at_idx",),
    "rate_limits": ("rate_limits_route_id_idx", "rate_limits_last_request_idx"),
    "message_queue": (
        "message_queue_pending_topic_created_at_idx",
        "message_queue_processing_status_changed_at_idx",
        "message_queue_processed_status_changed_at_idx",
    ),
    "backups": ("backups_created_at_idx",),
}
# the ids head makes bigint, and the columns of their new primary key
BIGINT_IDS: dict[str, tuple[str, ...]] = {"logs": ("id", "timestamp"), "message_queue": ("id",)}
# (table, trigger, revision file that defines it and its function)
TRIGGERS: tuple[tuple[str, str, str], ...] = (
    ("sessions", "sessions_default_expiry", "0002"),
    ("message_queue", "message_queue_notify", "0006"),
    ("message_queue", "message_queue_status_changed", "0008"),
)
TOOLKIT_TABLES = ("kronos_stat_snapshots", "kronos_statement_snapshots", "kronos_table_snapshots")

Mode = Literal["transaction", "concurrently", "backfill", "resolve", "rotate"]
Statement = sql.SQL | sql.Composed


@dataclasses.dataclass(frozen=True)
class Options:
    """What the user decided: the zone of naive timestamps, and each rule's fate."""

    timestamps_in: str | None = None  # canonical zone name, None: not given
    fix: frozenset[str] = frozenset()
    quarantine: frozenset[str] = frozenset()
    batch_size: int = 5000

    @property
    def in_place(self) -> bool:
        return self.timestamps_in is not None and self.timestamps_in.lower() in UTC_ZONES


@dataclasses.dataclass
class Work:
    """One step: what the plan shows, and what the engine needs to run it."""

    key: str
    table: str
    description: str
    lock: str
    blocks_writes: bool
    seconds: float
    lock_seconds: float
    done: bool
    mode: Mode = "transaction"
    statements: Callable[[psycopg.Connection[Any]], list[Statement]] = lambda _conn: []
    time_zone: str | None = None
    # backfill: the table, its key, and the SET list; resolve: the rule
    target: str = ""
    key_column: str = "id"
    assignments: Statement | None = None
    rule: str = ""


def target_statement(name: str) -> Statement:
    return sql.SQL(query("adopt_target", name))


def _fixed(*statements: Statement) -> Callable[[psycopg.Connection[Any]], list[Statement]]:
    return lambda _conn: list(statements)


def _seconds(rows: int, rate: int) -> float:
    return max(rows / rate, CATALOG_SECONDS)


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _shadow(column: str) -> str:
    return f"{column}{SHADOW_SUFFIX}"


# --------------------------------------------------------------------------- released SQL


@functools.cache
def _released_statements(revision: str) -> tuple[str, ...]:
    directory = resource_root() / "sql" / "migrations"
    path = next(directory.glob(f"{revision}_*.upgrade.sql"))
    return tuple(s.text for s in MigrationScript.load(path).statements)


def released(revision: str, pattern: str) -> list[str]:
    """The statements of a released revision's upgrade SQL that match ``pattern``.

    Released files never change (their checksums are pinned), so what the adoption takes from
    them is exactly what the migration ran.
    """
    compiled = re.compile(pattern, re.IGNORECASE | re.DOTALL)
    return [s for s in _released_statements(revision) if compiled.match(_strip_comments(s))]


def _strip_comments(statement: str) -> str:
    """The statement without the comment lines that lead it (a function body is kept as is)."""
    lines = statement.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines).strip()


def _replaceable(statement: str) -> Statement:
    """``CREATE FUNCTION|TRIGGER`` as ``CREATE OR REPLACE …``, so that a rerun can run it again."""
    text = re.sub(
        r"^(\s*CREATE)\s+(FUNCTION|TRIGGER)\b",
        r"\1 OR REPLACE \2",
        _strip_comments(statement),
        flags=re.IGNORECASE,
    )
    return sql.SQL(trusted_sql(text))


def _comments() -> list[Statement]:
    statements: list[Statement] = []
    for revision in ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009"):
        for text in released(revision, r"COMMENT\s+ON\s+(TABLE|COLUMN)\s"):
            if re.match(r"COMMENT\s+ON\s+COLUMN\s+sessions\.token\s+IS\s+NULL", text, re.I):
                continue
            statements.append(sql.SQL(trusted_sql(_strip_comments(text))))
    return statements


# --------------------------------------------------------------------------- locks, in words


def _catalog_step(
    key: str,
    table: str,
    description: str,
    *statements: Statement,
    done: bool,
    lock: str = "ACCESS EXCLUSIVE",
    on: str = "",
) -> Work:
    """A step that only changes the catalog: its lock stops writes for milliseconds."""
    return Work(
        key=key,
        table=table,
        description=description,
        lock=f"{lock} on {on or table}, catalog only",
        blocks_writes=True,
        seconds=CATALOG_SECONDS,
        lock_seconds=CATALOG_SECONDS,
        done=done,
        statements=_fixed(*statements),
    )


def _validate_step(
    key: str,
    table: str,
    names: Sequence[str],
    *,
    seconds: float,
    done: bool,
    lock: str = "",
) -> Work:
    """VALIDATE CONSTRAINT: reads every row under a lock that lets reads and writes go on."""
    return Work(
        key=key,
        table=table,
        description=f"validate {', '.join(names)} (reads every row; writes go on)",
        lock=lock or f"SHARE UPDATE EXCLUSIVE on {table}",
        blocks_writes=False,
        seconds=seconds,
        lock_seconds=0.0,
        done=done,
        statements=_fixed(
            *(
                sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(_ident(table), _ident(n))
                for n in names
            )
        ),
    )


SHARE_UPDATE = "SHARE UPDATE EXCLUSIVE"  # reads and writes go on


# --------------------------------------------------------------------------- the builders


def _resolve_steps(
    state: LiveState, table: str, options: Options, pending: dict[str, int]
) -> list[Work]:
    steps = []
    for rule in RULES:
        if rule.table != table:
            continue
        chosen = rule.name in options.fix or rule.name in options.quarantine
        count = pending.get(rule.name, 0)
        # a chosen rule keeps its step until its constraint holds, rows or not, so that step
        # numbers do not move between a run and its rerun
        if not chosen:
            continue
        what = " and ".join(
            word
            for word, picked in (
                ("fix", rule.name in options.fix),
                ("quarantine", rule.name in options.quarantine),
            )
            if picked
        )
        steps.append(
            Work(
                key=f"{table}.resolve.{rule.name}",
                table=table,
                description=f"{what} the rows breaking {rule.name} ({count} found)",
                lock="row locks on those rows only",
                blocks_writes=False,
                seconds=_seconds(state.rows(table), SCAN_ROWS_PER_SECOND) + count / 5000,
                lock_seconds=0.0,
                done=rule.satisfied(state),
                mode="resolve",
                rule=rule.name,
            )
        )
    return steps


def _converted_comment(column: str, table: str, zone: str) -> Statement:
    return sql.SQL("COMMENT ON COLUMN {} IS {}").format(
        _ident(table, column), sql.Literal(f"{CONVERTED_MARK}{zone}")
    )


def _timestamp_steps(state: LiveState, table: str, options: Options) -> list[Work]:
    if not TIMESTAMP_COLUMNS.get(table):
        return []
    columns = [
        name
        for name in TIMESTAMP_COLUMNS.get(table, ())
        if (found := state.column(table, name)) is not None and found.type == NAIVE
    ]
    shadows = [c for c in TIMESTAMP_COLUMNS.get(table, ()) if state.column(table, _shadow(c))]
    zone = options.timestamps_in or "<--timestamps-in>"
    if not columns and not shadows and (options.in_place or options.timestamps_in is None):
        return [
            Work(
                key=f"{table}.timestamps",
                table=table,
                description="timestamps are timestamptz",
                lock="none",
                blocks_writes=False,
                seconds=0.0,
                lock_seconds=0.0,
                done=True,
            )
        ]
    if not columns and not shadows:
        columns = [c for c in TIMESTAMP_COLUMNS.get(table, ()) if state.column(table, c)]
    if shadows or (not options.in_place and options.timestamps_in is not None):
        return _shadow_steps(state, table, columns or shadows, "timestamps", options)
    # in place: PostgreSQL rewrites nothing when the session's zone is UTC, but rebuilds the
    # indexes on those columns under the lock
    indexed_rows = state.rows(table) if _indexed(state, table, columns) else 0
    statements: list[Statement] = [
        sql.SQL("ALTER TABLE {} {}").format(
            _ident(table),
            sql.SQL(", ").join(
                sql.SQL("ALTER COLUMN {} TYPE timestamptz").format(_ident(c)) for c in columns
            ),
        ),
        *(_converted_comment(c, table, zone) for c in columns),
    ]
    lock_seconds = _seconds(indexed_rows, INDEX_ROWS_PER_SECOND)
    return [
        Work(
            key=f"{table}.timestamps",
            table=table,
            description=f"{', '.join(columns)}: timestamp → timestamptz in place, read as {zone} "
            "(no rewrite" + (", its indexes rebuilt)" if indexed_rows else ")"),
            lock=f"ACCESS EXCLUSIVE on {table}"
            + (", while its indexes are rebuilt" if indexed_rows else ", catalog only"),
            blocks_writes=True,
            seconds=lock_seconds,
            lock_seconds=lock_seconds,
            done=False,
            statements=_fixed(*statements),
            time_zone="UTC",
        )
    ]


def _indexed(state: LiveState, table: str, columns: Sequence[str]) -> bool:
    for index in state.indexes.values():
        if index.table_name != table:
            continue
        body = index.definition.split(" USING ", 1)[-1]
        if any(re.search(rf"\b{re.escape(c)}\b", body) for c in columns):
            return True
    return False


def _default_steps(state: LiveState, table: str) -> list[Work]:
    wanted = NOW_DEFAULTS.get(table, ())
    if not wanted:
        return []
    statement = sql.SQL("ALTER TABLE {} {}").format(
        _ident(table),
        sql.SQL(", ").join(
            sql.SQL("ALTER COLUMN {} SET DEFAULT now()").format(_ident(c)) for c in wanted
        ),
    )
    done = all(
        (found := state.column(table, c)) is not None and found.default_expression == "now()"
        for c in wanted
    )
    return [
        _catalog_step(
            f"{table}.defaults", table, f"{', '.join(wanted)}: DEFAULT now()", statement, done=done
        )
    ]


def _new_column_steps(state: LiveState, table: str) -> list[Work]:
    wanted = NEW_COLUMNS.get(table, ())
    if not wanted:
        return []
    return [
        _catalog_step(
            f"{table}.columns",
            table,
            f"add {', '.join(wanted)} (no rewrite: defaults are constants or now())",
            target_statement(f"add_columns_{table}"),
            done=all(state.column(table, c) is not None for c in wanted),
        )
    ]


def _check_steps(state: LiveState, table: str) -> list[Work]:
    steps: list[Work] = []
    for owner, statement, names in CHECKS:
        if owner != table:
            continue
        found = [state.constraint(table, n) for n in names]
        steps += [
            _catalog_step(
                f"{table}.check.{names[0]}",
                table,
                f"add {', '.join(names)} NOT VALID (new rows are checked from now)",
                target_statement(statement),
                done=all(c is not None for c in found),
            ),
            _validate_step(
                f"{table}.validate.{names[0]}",
                table,
                names,
                seconds=_seconds(state.rows(table), SCAN_ROWS_PER_SECOND) * len(names),
                done=all(c is not None and c.validated for c in found),
            ),
        ]
    return steps


def not_null_check_name(table: str, column: str) -> str:
    return f"{table}_{column}_kronos_not_null"


def _not_null_steps(state: LiveState, table: str) -> list[Work]:
    steps: list[Work] = []
    for column in NOT_NULL.get(table, ()):
        found = state.column(table, column)
        done = found is not None and found.not_null
        check = not_null_check_name(table, column)
        constraint = state.constraint(table, check)
        steps += [
            _catalog_step(
                f"{table}.not_null_check.{column}",
                table,
                f"{column} IS NOT NULL as a CHECK NOT VALID",
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
                    _ident(table), _ident(check), _ident(column)
                ),
                done=done or constraint is not None,
            ),
            _validate_step(
                f"{table}.not_null_validate.{column}",
                table,
                [check],
                seconds=_seconds(state.rows(table), SCAN_ROWS_PER_SECOND),
                done=done or (constraint is not None and constraint.validated),
            ),
            _catalog_step(
                f"{table}.not_null.{column}",
                table,
                f"{column} SET NOT NULL (proved by the validated check: no scan)",
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                    _ident(table), _ident(column)
                ),
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    _ident(table), _ident(check)
                ),
                done=done and constraint is None,
            ),
        ]
    return steps


def _foreign_key_steps(state: LiveState, table: str) -> list[Work]:
    steps: list[Work] = []
    for owner, name, referenced in CASCADING_KEYS:
        if owner != table:
            continue
        current = state.constraint(table, name)
        new_name = f"{name}{SHADOW_SUFFIX}"
        new = state.constraint(table, new_name)
        done = current is not None and current.on_delete == "c" and current.validated and not new
        both = f"{table} and {referenced}"
        steps += [
            _catalog_step(
                f"{table}.fk_add.{name}",
                table,
                f"{name} ON DELETE CASCADE: add it NOT VALID beside the old one",
                target_statement(f"add_{name}"),
                done=done or new is not None,
                lock="SHARE ROW EXCLUSIVE",
                on=both,
            ),
            _validate_step(
                f"{table}.fk_validate.{name}",
                table,
                [new_name],
                seconds=_seconds(state.rows(table), JOIN_ROWS_PER_SECOND),
                done=done or (new is not None and new.validated),
                lock=f"{SHARE_UPDATE} on {table}, ROW SHARE on {referenced}",
            ),
            _catalog_step(
                f"{table}.fk_swap.{name}",
                table,
                f"drop the old {name}, rename {new_name} to it",
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                    _ident(table), _ident(name)
                ),
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    _ident(table), _ident(new_name), _ident(name)
                ),
                done=done,
                on=both,
            ),
        ]
    return steps


def _concurrent_index(state: LiveState, name: str, statement: Statement) -> list[Statement]:
    """Build an index concurrently; an invalid leftover of a killed build is dropped first."""
    existing = state.index(name)
    statements: list[Statement] = []
    if existing is not None and not existing.valid:
        statements.append(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(_ident(name)))
    statements.append(statement)
    return statements


def _index_work(
    state: LiveState, table: str, name: str, statement: Statement, *, done: bool
) -> Work:
    existing = state.index(name)
    return Work(
        key=f"{table}.index.{name}",
        table=table,
        description=f"build {name} concurrently",
        lock=f"{SHARE_UPDATE} on {table} (waits for older transactions)",
        blocks_writes=False,
        seconds=_seconds(state.rows(table), INDEX_ROWS_PER_SECOND),
        lock_seconds=0.0,
        done=done or (existing is not None and existing.valid),
        mode="concurrently",
        statements=lambda _conn: _concurrent_index(state, name, statement),
    )


def _unique_steps(state: LiveState, table: str) -> list[Work]:
    steps: list[Work] = []
    if table == "rate_limits":
        name = "rate_limits_user_id_route_id_key"
        done = state.constraint(table, name) is not None
        steps.append(
            _index_work(state, table, name, target_statement(f"create_index_{name}"), done=done)
        )
        steps.append(
            _catalog_step(
                f"{table}.unique.{name}",
                table,
                f"make {name} a UNIQUE constraint using the index",
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE USING INDEX {}").format(
                    _ident(table), _ident(name), _ident(name)
                ),
                done=done,
            )
        )
    if table == "sessions":
        name = "sessions_token_excl"
        held = _seconds(state.rows(table), HASH_ROWS_PER_SECOND)
        steps.append(
            Work(
                key=f"{table}.exclusion.{name}",
                table=table,
                description=f"add {name} (an exclusion constraint is built under its lock: "
                "PostgreSQL cannot build it concurrently)",
                lock=f"ACCESS EXCLUSIVE on {table} for the hash index build",
                blocks_writes=True,
                seconds=held,
                lock_seconds=held,
                done=state.constraint(table, name) is not None,
                statements=_fixed(target_statement(f"add_{name}")),
            )
        )
    return steps


def sync_function(table: str) -> str:
    return f"kronos_adopt_sync_{table}"


def sync_check(table: str, group: str) -> str:
    return f"{table}_{group}_kronos_sync"


def _shadow_expression(column: str, group: str, zone: str) -> sql.Composable:
    if group == "ids":
        return sql.SQL("{}").format(_ident(column))
    return sql.SQL("{} AT TIME ZONE {}").format(_ident(column), sql.Literal(zone))


def _shadow_steps(
    state: LiveState, table: str, columns: Sequence[str], group: str, options: Options
) -> list[Work]:
    """Convert ``columns`` through shadow columns: add, fill in batches, prove, swap."""
    zone = options.timestamps_in or "<--timestamps-in>"
    new_type = sql.SQL("bigint" if group == "ids" else "timestamptz")
    shadows = {c: _shadow(c) for c in columns}
    exists = [state.column(table, s) is not None for s in shadows.values()]
    check = sync_check(table, group)
    constraint = state.constraint(table, check)
    if group == "ids":
        converted = all(
            (found := state.column(table, c)) is not None and found.type == "bigint"
            for c in columns
        )
    else:
        converted = all(
            (found := state.column(table, c)) is not None and found.type == AWARE for c in columns
        ) and not any(exists)
    rows = state.rows(table)
    function = sync_function(table)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(_ident(s), _shadow_expression(c, group, zone))
        for c, s in shadows.items()
    )
    trigger_body = sql.SQL(" ").join(
        sql.SQL("NEW.{} := NEW.{};").format(_ident(s), _shadow_expression(c, group, zone))
        if group == "ids"
        else sql.SQL("NEW.{} := NEW.{} AT TIME ZONE {};").format(
            _ident(s), _ident(c), sql.Literal(zone)
        )
        for c, s in shadows.items()
    )
    add: list[Statement] = [
        sql.SQL("ALTER TABLE {} {}").format(
            _ident(table),
            sql.SQL(", ").join(
                sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(_ident(s), new_type)
                for s in shadows.values()
            ),
        ),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $kronos$ "
            "BEGIN {} RETURN NEW; END $kronos$"
        ).format(_ident(function), trigger_body),
        sql.SQL(
            "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(_ident(SYNC_TRIGGER), _ident(table), _ident(function)),
    ]
    if group == "timestamps":
        add += [_converted_comment(s, table, zone) for s in shadows.values()]
    conditions = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT NULL AND {} = {}").format(
            _ident(s), _ident(s), _shadow_expression(c, group, zone)
        )
        if group == "ids"
        else sql.SQL("{} IS NOT DISTINCT FROM ({})").format(
            _ident(s), _shadow_expression(c, group, zone)
        )
        for c, s in shadows.items()
    )
    what = "ids" if group == "ids" else ", ".join(columns)
    target_type = "bigint" if group == "ids" else f"timestamptz read as {zone}"
    steps = [
        _catalog_step(
            f"{table}.{group}.shadow",
            table,
            f"{what} → {target_type}: add shadow column(s) kept in step by a trigger",
            *add,
            done=converted or all(exists),
        ),
        Work(
            key=f"{table}.{group}.backfill",
            table=table,
            description=f"fill the shadow column(s) of {table} in batches of "
            f"{options.batch_size} rows (each its own short transaction)",
            lock="row locks on one batch at a time",
            blocks_writes=False,
            seconds=_seconds(rows, BACKFILL_ROWS_PER_SECOND),
            lock_seconds=0.0,
            done=converted or (constraint is not None and constraint.validated),
            mode="backfill",
            target=table,
            key_column=primary_key(table),
            assignments=assignments,
        ),
        _catalog_step(
            f"{table}.{group}.sync_check",
            table,
            f"prove every row filled: {check} NOT VALID",
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID").format(
                _ident(table), _ident(check), conditions
            ),
            done=converted or constraint is not None,
        ),
        _validate_step(
            f"{table}.{group}.sync_validate",
            table,
            [check],
            seconds=_seconds(rows, SCAN_ROWS_PER_SECOND),
            done=converted or (constraint is not None and constraint.validated),
        ),
    ]
    if group == "ids":
        key_columns = BIGINT_IDS[table]
        index = pkey_shadow_index(table)
        index_columns = sql.SQL(", ").join(
            _ident(_shadow(c) if c in columns else c) for c in key_columns
        )
        steps.append(
            _index_work(
                state,
                table,
                index,
                sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
                    _ident(index), _ident(table), index_columns
                ),
                done=converted,
            )
        )
    swap = _catalog_step(
        f"{table}.{group}.swap",
        table,
        f"swap the shadow column(s) of {table} in (one short transaction)",
        done=converted,
    )
    swap.statements = lambda conn: swap_statements(conn, state, table, columns, group)
    steps.append(swap)
    return steps


def pkey_shadow_index(table: str) -> str:
    return f"{table}_pkey{SHADOW_SUFFIX}"


def _grants(
    conn: psycopg.Connection[Any], kind: str, source: str, target: sql.Composable
) -> list[Statement]:
    statements: list[Statement] = []
    for grant in catalog.relation_grants(conn, source):
        statements.append(_grant(kind, grant, target, None))
    return statements


_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "USAGE"}
)


def _grant(
    kind: str, grant: catalog.Grant, target: sql.Composable, column: str | None
) -> Statement:
    if grant.privilege_type not in _PRIVILEGES:
        raise ValueError(f"unexpected privilege {grant.privilege_type!r}")
    grantee = sql.SQL("PUBLIC") if not grant.grantee else _ident(grant.grantee)
    privilege = sql.SQL(trusted_sql(grant.privilege_type))
    columns = sql.SQL(" ({})").format(_ident(column)) if column else sql.SQL("")
    option = sql.SQL(" WITH GRANT OPTION") if grant.is_grantable else sql.SQL("")
    return sql.SQL("GRANT {}{} ON {} {} TO {}{}").format(
        privilege, columns, sql.SQL(trusted_sql(kind)), target, grantee, option
    )


def _column_grants(
    conn: psycopg.Connection[Any], table: str, source: str, target: str
) -> list[Statement]:
    return [
        _grant("TABLE", grant, _ident(table), target)
        for grant in catalog.column_grants(conn, table, source)
    ]


def _sequence_takeover(table: str, old: str, new: sql.Composable) -> Statement:
    """The new sequence continues where the old one stood, and past every id in the table."""
    return sql.SQL(
        "SELECT setval({new}, greatest(old.last_value, coalesce(used.max_id, 0), 1), "
        "old.is_called OR used.max_id IS NOT NULL) "
        "FROM {old} AS old, (SELECT max(id) AS max_id FROM {table}) AS used"
    ).format(new=new, old=_ident(old), table=_ident(table))


def swap_statements(
    conn: psycopg.Connection[Any],
    state: LiveState,
    table: str,
    columns: Sequence[str],
    group: str,
) -> list[Statement]:
    """One transaction: the shadow columns take the place of the old ones."""
    t = _ident(table)
    check = sync_check(table, group)
    statements: list[Statement] = [
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(_ident(SYNC_TRIGGER), t),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_ident(sync_function(table))),
    ]
    if group == "ids":
        statements.append(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(t, _ident(_shadow("id")))
        )
    statements.append(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(t, _ident(check))
    )
    old_sequence = f"{table}_id_seq_kronos_old"
    for column in columns:
        shadow = _shadow(column)
        old = state.column(table, column)
        if group == "ids":
            statements += [
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(t, _ident(column)),
                sql.SQL("ALTER SEQUENCE IF EXISTS {} OWNED BY NONE").format(
                    _ident(f"{table}_id_seq")
                ),
            ]
        statements += _column_grants(conn, table, column, shadow)
        statements += [
            sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(t, _ident(column)),
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                t, _ident(shadow), _ident(column)
            ),
        ]
        if group == "timestamps" and old is not None and old.default_expression:
            statements.append(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT now()").format(
                    t, _ident(column)
                )
            )
    if group == "ids":
        statements.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
                t, _ident(f"{table}_pkey"), _ident(pkey_shadow_index(table))
            )
        )
        if table == "logs":
            # logs keeps its serial sequence until it becomes the default partition
            statements += [
                sql.SQL("ALTER TABLE {} ALTER COLUMN id SET DEFAULT nextval({})").format(
                    t, sql.Literal(f"{table}_id_seq")
                ),
                sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                    _ident(f"{table}_id_seq"), _ident(table, "id")
                ),
            ]
        else:
            statements += [
                sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                    _ident(f"{table}_id_seq"), _ident(old_sequence)
                ),
                sql.SQL(
                    "ALTER TABLE {} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY"
                ).format(t),
                _sequence_takeover(table, old_sequence, sql.Literal(f"{table}_id_seq")),
                *_grants(conn, "SEQUENCE", f"{table}_id_seq", _ident(f"{table}_id_seq")),
                sql.SQL("DROP SEQUENCE {}").format(_ident(old_sequence)),
            ]
    return statements


def _shadow_id_steps(state: LiveState, table: str, options: Options) -> list[Work]:
    if table not in BIGINT_IDS or state.column(table, "id") is None:
        return []
    # done or not, the same steps: a plan's numbers do not move as the apply goes on
    return _shadow_steps(state, table, ["id"], "ids", options)


def _index_steps(state: LiveState, table: str) -> list[Work]:
    return [
        _index_work(state, table, name, target_statement(f"create_index_{name}"), done=False)
        for name in INDEXES.get(table, ())
    ]


def _trigger_steps(state: LiveState, table: str) -> list[Work]:
    steps: list[Work] = []
    for owner, name, revision in TRIGGERS:
        if owner != table:
            continue
        statements = [
            _replaceable(s)
            for s in released(revision, rf"CREATE\s+(OR\s+REPLACE\s+)?FUNCTION\s+{name}\(")
        ] + [
            _replaceable(s)
            for s in released(revision, rf"CREATE\s+(OR\s+REPLACE\s+)?TRIGGER\s+{name}\s")
        ]
        steps.append(
            _catalog_step(
                f"{table}.trigger.{name}",
                table,
                f"function and trigger {name} (as revision {revision} creates them)",
                *statements,
                done=name in state.functions and state.has_trigger(table, name),
                lock="SHARE ROW EXCLUSIVE",
            )
        )
    return steps


def _logs_partition_steps(state: LiveState) -> list[Work]:
    done = state.logs_partitioned
    steps = [
        _index_work(
            state,
            "logs",
            name,
            target_statement(f"create_index_{name}"),
            done=done,
        )
        for name in ("logs_default_service_name_timestamp_idx", "logs_default_timestamp_idx")
    ]
    held = 0.05
    steps.append(
        Work(
            key="logs.partition",
            table="logs",
            description="rename logs to logs_default and attach it, whole, as the DEFAULT "
            "partition of a new partitioned logs (one short transaction: no row is copied)",
            lock="ACCESS EXCLUSIVE on logs, catalog only",
            blocks_writes=True,
            seconds=held,
            lock_seconds=held,
            done=done,
            statements=lambda conn: partition_statements(conn, state),
        )
    )
    return steps


def partition_statements(conn: psycopg.Connection[Any], state: LiveState) -> list[Statement]:
    logs = state.table("logs")
    owner = logs.owner if logs else ""
    old_sequence = "logs_id_seq_kronos_old"
    statements: list[Statement] = [
        sql.SQL("LOCK TABLE logs IN ACCESS EXCLUSIVE MODE"),
        sql.SQL("ALTER TABLE logs ALTER COLUMN id DROP DEFAULT"),
        sql.SQL("ALTER SEQUENCE IF EXISTS logs_id_seq OWNED BY NONE"),
        sql.SQL("ALTER SEQUENCE IF EXISTS logs_id_seq RENAME TO {}").format(_ident(old_sequence)),
        sql.SQL("ALTER TABLE logs RENAME CONSTRAINT logs_pkey TO logs_default_pkey"),
        sql.SQL("ALTER TABLE logs RENAME TO logs_default"),
        # head's logs and its indexes, as revision 0003 creates them (still empty: instant)
        *(
            sql.SQL(trusted_sql(_strip_comments(s)))
            for s in released("0003", r"(CREATE\s+TABLE\s+logs\s|CREATE\s+INDEX\s|COMMENT\s+ON)")
        ),
    ]
    if owner:
        statements.append(sql.SQL("ALTER TABLE logs OWNER TO {}").format(_ident(owner)))
    statements += _grants(conn, "TABLE", "logs", _ident("logs"))
    statements += [
        target_statement("attach_logs_default"),
        _sequence_takeover("logs", old_sequence, sql.Literal("logs_id_seq")),
        *_grants(conn, "SEQUENCE", "logs_id_seq", _ident("logs_id_seq")),
        sql.SQL("DROP SEQUENCE IF EXISTS {}").format(_ident(old_sequence)),
    ]
    return statements


def _revision_extras(state: LiveState) -> list[Work]:
    revoke = released("0009", r"REVOKE\s+CREATE\s+ON\s+SCHEMA\s+public")
    toolkit = released("0010", r".")
    missing = [t for t in TOOLKIT_TABLES if state.table(t) is None]
    statements = [sql.SQL(trusted_sql(_strip_comments(s))) for s in toolkit]
    return [
        Work(
            key="schema.revoke_create",
            table="public",
            description="REVOKE CREATE ON SCHEMA public FROM PUBLIC (revision 0009)",
            lock="none",
            blocks_writes=False,
            seconds=CATALOG_SECONDS,
            lock_seconds=0.0,
            done=not state.database.public_can_create,
            statements=_fixed(*(sql.SQL(trusted_sql(_strip_comments(s))) for s in revoke)),
        ),
        Work(
            key="toolkit.reports",
            table="kronos_stat_snapshots",
            description="revision 0010: pg_stat_statements where available, the snapshot tables",
            lock="none (new tables)",
            blocks_writes=False,
            seconds=CATALOG_SECONDS,
            lock_seconds=0.0,
            done=not missing,
            statements=_fixed(*statements),
        ),
    ]


def _comment_step(state: LiveState) -> Work:
    return Work(
        key="schema.comments",
        table="public",
        description="the comments revisions 0001-0009 put on tables and columns",
        lock="SHARE UPDATE EXCLUSIVE on each table, catalog only",
        blocks_writes=False,
        seconds=CATALOG_SECONDS,
        lock_seconds=0.0,
        done=state.commented,
        statements=_fixed(*_comments()),
    )


def build(state: LiveState, options: Options, pending: dict[str, int]) -> list[Work]:
    """Every step, in order, each marked done from the catalog.

    ``pending`` counts, per rule, the rows that break it (only rules the user chose a fate for
    get a step).
    """
    steps: list[Work] = []
    for table in KRONOS_TABLES:  # in foreign key order
        if state.table(table) is None:
            continue
        steps += _resolve_steps(state, table, options, pending)
        steps += _timestamp_steps(state, table, options)
        steps += _default_steps(state, table)
        steps += _new_column_steps(state, table)
        steps += _check_steps(state, table)
        steps += _not_null_steps(state, table)
        steps += _foreign_key_steps(state, table)
        steps += _unique_steps(state, table)
        steps += _shadow_id_steps(state, table, options)
        steps += _index_steps(state, table)
        steps += _trigger_steps(state, table)
        if table == "logs":
            steps += _logs_partition_steps(state)
    steps += _revision_extras(state)
    steps.append(_comment_step(state))
    return steps
