"""Running a revision's SQL file: what each Alembic revision file calls.

A revision is a pair of files, ``sql/migrations/<revision>_<slug>.upgrade.sql`` and
``….downgrade.sql``. A file runs whole, inside the revision's transaction, unless it states
otherwise with a directive comment on a line of its own::

    -- kronos: no-transaction

Such a file runs outside any transaction, one statement at a time (``CREATE INDEX
CONCURRENTLY`` needs that), and is **resumable**: each statement done is recorded in
``kronos_migrations_progress`` (with its checksum), a run killed or failed half-way says how far
it got, and the next run starts after the last statement done. The rows go when the revision
is recorded applied, in that same transaction. Before each ``CREATE INDEX CONCURRENTLY``, an
INVALID index of the same name (left by an interrupted build) is dropped, so that the retry
builds it again instead of ``IF NOT EXISTS`` silently keeping a broken index. Statements that
block no reads or writes (``CREATE/DROP INDEX CONCURRENTLY``, ``VALIDATE CONSTRAINT``) wait
for their lock up to ``[migrations] concurrent_lock_timeout``; every other statement up to
``lock_timeout``.

An index on a partitioned table cannot be built ``CONCURRENTLY`` (PostgreSQL refuses, 0A000),
and a plain ``CREATE INDEX`` on it blocks every insert for the whole build. A statement preceded
by the directive::

    -- kronos: concurrently-per-partition
    CREATE INDEX IF NOT EXISTS logs_level_idx ON logs (level);

is run as: the parent index ``ON ONLY`` the table (invalid, instant), then for each partition
found at run time ``CREATE INDEX CONCURRENTLY`` and ``ALTER INDEX … ATTACH PARTITION``, until
every partition is attached and PostgreSQL marks the parent index valid. Each step checks what
is already there, so a rerun after a failure finishes the job (an INVALID leftover is dropped
and built again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import psycopg
import sqlparse
from alembic import op
from alembic.runtime.migration import MigrationContext
from psycopg import sql

from kronos_db import db
from kronos_db.durations import postgres_interval
from kronos_db.errors import KronosError, MigrationTreeError, translate_database_error
from kronos_db.resources import query, trusted_sql

logger = logging.getLogger(__name__)

Direction = Literal["upgrade", "downgrade"]
NO_TRANSACTION = re.compile(r"^--\s*kronos:\s*no-transaction\s*$", re.MULTILINE)
PER_PARTITION = re.compile(r"^--\s*kronos:\s*concurrently-per-partition\s*$", re.MULTILINE)
_IDENTIFIER = r"(?:\"[^\"]+\"|[\w$]+)"
QUALIFIED_NAME = rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})?"
_CREATE_INDEX = re.compile(
    r"^\s*CREATE\s+(?P<unique>UNIQUE\s+)?INDEX\s+(?P<concurrently>CONCURRENTLY\s+)?"
    rf"(?P<if_not_exists>IF\s+NOT\s+EXISTS\s+)?(?P<name>{_IDENTIFIER}\s+)?"
    rf"ON\s+(?P<only>ONLY\s+)?(?P<table>{QUALIFIED_NAME})\s*(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
# statements whose only lock is SHARE UPDATE EXCLUSIVE (or none): they never block the
# services' reads and writes while they wait, so they may wait longer for older transactions
_NON_BLOCKING = re.compile(
    r"^\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\b"
    r"|DROP\s+INDEX\s+CONCURRENTLY\b"
    r"|REINDEX\s+(?:\(.*?\)\s*)?\w+\s+CONCURRENTLY\b"
    rf"|ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{QUALIFIED_NAME}\s+"
    rf"VALIDATE\s+CONSTRAINT\s+{_IDENTIFIER}\s*$)",
    re.IGNORECASE | re.DOTALL,
)
MAX_IDENTIFIER = 63


def sql_path(revision_file: str | Path, direction: Direction) -> Path:
    """``migrations/versions/0001_x.py`` → ``sql/migrations/0001_x.<direction>.sql``."""
    revision_file = Path(revision_file)
    tree = revision_file.resolve().parent.parent.parent
    return tree / "sql" / "migrations" / f"{revision_file.stem}.{direction}.sql"


def normalised_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def checksum(path: Path) -> str:
    """SHA-256 of the file with line endings normalised (a checkout on Windows is not an edit)."""
    return hashlib.sha256(normalised_text(path).encode("utf-8")).hexdigest()


def unquote(identifier: str) -> str:
    """An identifier as PostgreSQL stores it: quoted kept as is, unquoted folded to lower case."""
    identifier = identifier.strip()
    if identifier.startswith('"') and identifier.endswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


@dataclasses.dataclass(frozen=True)
class IndexDefinition:
    """A ``CREATE INDEX`` statement, taken apart."""

    unique: bool
    concurrently: bool
    if_not_exists: bool
    name: str | None  # as written (quoted or not); None when PostgreSQL picks it
    only: bool
    table: str  # as written, possibly schema-qualified
    rest: str  # USING … (columns) INCLUDE … WITH … WHERE …, as written

    @classmethod
    def parse(cls, body: str) -> IndexDefinition | None:
        match = _CREATE_INDEX.match(body)
        if match is None:
            return None
        name = match.group("name")
        return cls(
            unique=bool(match.group("unique")),
            concurrently=bool(match.group("concurrently")),
            if_not_exists=bool(match.group("if_not_exists")),
            name=name.strip() if name else None,
            only=bool(match.group("only")),
            table=match.group("table"),
            rest=match.group("rest").strip(),
        )

    @property
    def table_name(self) -> str:
        """The table's name without its schema, as PostgreSQL stores it."""
        return unquote(re.split(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", self.table)[-1])


@dataclasses.dataclass(frozen=True)
class Statement:
    """One statement of a no-transaction file: as written (with the comments that lead it),
    without comments, and where it starts in the file."""

    number: int  # 1-based, in file order
    text: str
    body: str
    line: int  # the line of the file where the statement itself (not its comments) starts
    end_line: int
    first_line: int  # where its leading comments start (== line without comments)

    @property
    def per_partition(self) -> bool:
        return PER_PARTITION.search(self.text) is not None

    @property
    def non_blocking(self) -> bool:
        return _NON_BLOCKING.match(self.body) is not None

    @property
    def index(self) -> IndexDefinition | None:
        return IndexDefinition.parse(self.body)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class MigrationScript:
    path: Path
    text: str

    @classmethod
    def load(cls, path: Path) -> MigrationScript:
        return cls(path=path, text=normalised_text(path))

    @property
    def transactional(self) -> bool:
        return NO_TRANSACTION.search(self.text) is None

    @cached_property
    def statements(self) -> list[Statement]:
        statements: list[Statement] = []
        position = 0
        for raw in sqlparse.split(self.text):
            text = raw.strip().rstrip(";").strip()
            body = sqlparse.format(raw, strip_comments=True).strip().rstrip(";").strip()
            start = self.text.find(raw.strip(), position)
            start = max(start, position)
            position = start + len(raw.strip())
            if not body:
                continue
            first_body_line = next(
                (line for line in text.splitlines() if line.strip() and not _comment(line)), ""
            )
            offset = text.find(first_body_line) if first_body_line else 0
            line = self.text.count("\n", 0, start + offset) + 1
            statements.append(
                Statement(
                    number=len(statements) + 1,
                    text=text,
                    body=body,
                    line=line,
                    end_line=self.text.count("\n", 0, position) + 1,
                    first_line=self.text.count("\n", 0, start) + 1,
                )
            )
        return statements


def _comment(line: str) -> bool:
    return line.strip().startswith("--")


def concurrent_index_name(statement: str) -> str | None:
    body = sqlparse.format(statement, strip_comments=True)
    index = IndexDefinition.parse(body)
    return index.name if index and index.concurrently else None


# --------------------------------------------------------------------------- running


class RevisionHooks(Protocol):
    """What the running kronos-db migration asks of each revision (``MigrationRun``)."""

    def revision_settings(self) -> dict[str, str]: ...

    def begin_revision(self, conn: psycopg.Connection[Any]) -> None: ...

    def watch_backend(self, conn: psycopg.Connection[Any]) -> None: ...


def _hooks(context: MigrationContext) -> RevisionHooks | None:
    config = context.config
    run = config.attributes.get("kronos_run") if config is not None else None
    return cast("RevisionHooks | None", run)


def run_sql(revision_file: str, direction: Direction) -> None:
    """Run the revision's SQL file for ``direction`` (called from the Alembic revision file).

    A transactional file runs after ``begin_revision`` set the run's timeouts LOCAL in the
    revision's transaction. A no-transaction file runs statement by statement with the timeouts
    set on the session for its duration: such a revision needs one server session, which
    ``kronos-db migrate`` makes sure of before it starts (it refuses behind a transaction pooler).
    """
    script = MigrationScript.load(sql_path(revision_file, direction))
    context = op.get_context()
    hooks = _hooks(context)
    settings = hooks.revision_settings() if hooks is not None else {}
    if context.as_sql:
        if script.transactional:
            if settings:
                context.impl.static_output(db.set_local_script(settings))
            context.impl.static_output(script.text.strip())
        else:
            with context.autocommit_block():
                if settings:
                    context.impl.static_output(db.set_session_script(settings))
                for statement in script.statements:
                    context.impl.static_output(_offline(statement))
                for name in settings:
                    context.impl.static_output(f"RESET {name};")
        return
    if script.transactional:
        driver_connection = _driver_connection()
        if hooks is not None:
            hooks.begin_revision(driver_connection)
        # psycopg directly, with no parameters: the file's text reaches the server untouched
        # (a `%I` in a format() call stays itself), in the revision's transaction
        driver_connection.execute(trusted_sql(script.text))
        return
    run = context.config.attributes.get("kronos_run") if context.config else None
    timeouts = _Timeouts.from_run(run)
    with context.autocommit_block(), _session_settings(_driver_connection(), settings):
        if hooks is not None:
            hooks.watch_backend(_driver_connection())
        _Resumable(
            _driver_connection(), script, Path(revision_file).stem, direction, timeouts
        ).run()


def _offline(statement: Statement) -> str:
    index = statement.index
    if not statement.per_partition or index is None or index.name is None:
        return statement.text + ";"
    unique = "UNIQUE " if index.unique else ""
    return (
        f"-- kronos: concurrently-per-partition, computed at run time from the live partitions "
        f"of {index.table}:\n"
        f"CREATE {unique}INDEX IF NOT EXISTS {index.name} ON ONLY {index.table} {index.rest};\n"
        f"-- then for each partition P not yet attached:\n"
        f"--   CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS <P>_<name> ON P {index.rest};\n"
        f"--   ALTER INDEX {index.name} ATTACH PARTITION <P>_<name>;"
    )


@contextmanager
def _session_settings(conn: psycopg.Connection[Any], settings: Mapping[str, str]) -> Iterator[None]:
    """Session-level settings for statements that cannot run in a transaction, then restored.

    With the per-statement ``lock_timeout`` below, the only session settings kronos-db makes:
    there is no transaction to scope them to, and they are only reached on a session of its own
    (direct or session-pooled), never on a connection a transaction pooler shares (``migrate``
    refuses such a revision there, up front).
    """
    previous = {}
    for name in settings:
        row = conn.execute(query("migrations", "select_setting"), {"name": name}).fetchone()
        previous[name] = str(row[0]) if row else ""
    for name, value in settings.items():
        conn.execute(query("migrations", "set_session_setting"), {"name": name, "value": value})
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            for name, value in previous.items():
                conn.execute(
                    query("migrations", "set_session_setting"), {"name": name, "value": value}
                )


def _driver_connection() -> psycopg.Connection[Any]:
    connection = op.get_bind().connection.driver_connection
    assert isinstance(connection, psycopg.Connection)
    return connection


@dataclasses.dataclass(frozen=True)
class _Timeouts:
    lock_timeout: timedelta
    concurrent_lock_timeout: timedelta

    @classmethod
    def from_run(cls, run: Any) -> _Timeouts:
        if run is None:
            from kronos_db.config import MigrationSettings

            section = MigrationSettings()
        else:
            section = run.settings.migrations
        return cls(section.lock_timeout, section.concurrent_lock_timeout)


class _Resumable:
    """A no-transaction script run statement by statement, each recorded once done."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        script: MigrationScript,
        key: str,
        direction: Direction,
        timeouts: _Timeouts,
    ) -> None:
        self.conn = conn
        self.script = script
        self.key = key
        self.direction = direction
        self.timeouts = timeouts

    def run(self) -> None:
        done = dict(
            self.conn.execute(
                query("migrations", "select_migration_progress"),
                {"script": self.key, "direction": self.direction},
            ).fetchall()
        )
        statements = self.script.statements
        resuming = True
        for statement in statements:
            if resuming and done.get(statement.number, "").strip() == statement.sha256:
                logger.info(
                    "%s: statement %d of %d already done by an earlier run",
                    self.key,
                    statement.number,
                    len(statements),
                )
                continue
            resuming = False
            try:
                self._execute(statement)
            except (KronosError, psycopg.Error) as exc:
                error = exc if isinstance(exc, KronosError) else translate_database_error(exc)
                note = self._partial(statement)
                partial = type(error)(f"{error.message}; {note}")
                partial.add_note(note)  # for a caller that words its own message (retries)
                raise partial from exc
            self.conn.execute(
                query("migrations", "insert_migration_progress"),
                {
                    "script": self.key,
                    "direction": self.direction,
                    "statement": statement.number,
                    "sha256": statement.sha256,
                },
            )

    def _partial(self, failed: Statement) -> str:
        total = len(self.script.statements)
        return (
            f"{self.key} ({self.direction}) is partly applied: statement {failed.number} of "
            f"{total} (line {failed.line}) failed, the ones before it are done and recorded; "
            "the next run resumes there"
        )

    def _execute(self, statement: Statement) -> None:
        index = statement.index
        if statement.per_partition:
            if index is None or index.name is None:
                raise MigrationTreeError(
                    f"{self.script.path.name} line {statement.line}: "
                    "`-- kronos: concurrently-per-partition` must precede a CREATE INDEX that "
                    "names its index"
                )
            PartitionedIndexBuild(self.conn, index, self.timeouts).run()
            return
        if index is not None and index.concurrently and index.name is not None:
            drop_invalid_index(self.conn, index.name)
        with self._lock_timeout(statement.non_blocking):
            self.conn.execute(trusted_sql(statement.text))

    def _lock_timeout(self, non_blocking: bool) -> _SessionLockTimeout:
        return _SessionLockTimeout(
            self.conn,
            self.timeouts.concurrent_lock_timeout if non_blocking else self.timeouts.lock_timeout,
            self.timeouts.lock_timeout,
        )


class _SessionLockTimeout:
    """``lock_timeout`` for one statement of a no-transaction script (each statement is its own
    transaction there, so the setting has to be the session's), then back to the usual one."""

    def __init__(self, conn: psycopg.Connection[Any], value: timedelta, usual: timedelta) -> None:
        self.conn, self.value, self.usual = conn, value, usual

    def __enter__(self) -> None:
        if self.value != self.usual:
            self._set(self.value)

    def __exit__(self, *exc_info: object) -> None:
        if self.value != self.usual and not self.conn.closed:
            self._set(self.usual)

    def _set(self, value: timedelta) -> None:
        self.conn.execute(
            query("migrations", "set_lock_timeout"), {"lock_timeout": postgres_interval(value)}
        )


def drop_invalid_index(conn: psycopg.Connection[Any], name: str) -> bool:
    """Drop ``name`` if it is an INVALID index (an interrupted concurrent build); True if so."""
    row = conn.execute(query("migrations", "select_invalid_index"), {"name": name}).fetchone()
    if row is None or not row[2]:
        return False
    schema, relname, _invalid, _table = row
    logger.warning(
        "index %s is INVALID (an interrupted CREATE INDEX CONCURRENTLY): dropping it "
        "before building it again",
        name,
    )
    conn.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, relname))
    )
    return True


def partition_index_name(
    partition: str, parent_table: str, parent_index: str, *, hashed: bool = False
) -> str:
    """The name of a partition's index: PostgreSQL's own pattern (``<partition>_<what>``, where
    ``<what>`` is the parent index's name without the table's), shortened with a hash of the
    full name when it would pass 63 bytes (or when ``hashed``: the short name is taken)."""
    what = parent_index.removeprefix(f"{parent_table}_")
    name = f"{partition}_{what}"
    if len(name.encode()) <= MAX_IDENTIFIER and not hashed:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[: MAX_IDENTIFIER - 9].decode(errors='ignore')}_{digest}"


@dataclasses.dataclass(frozen=True)
class _Relation:
    oid: int
    schema: str
    name: str
    kind: str

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


class PartitionedIndexBuild:
    """An index on a partitioned table, built without blocking its writers (see module doc)."""

    def __init__(
        self, conn: psycopg.Connection[Any], index: IndexDefinition, timeouts: _Timeouts
    ) -> None:
        assert index.name is not None
        self.conn = conn
        self.index = index
        self.name = unquote(index.name)
        self.timeouts = timeouts

    def run(self) -> None:
        table = self._relation(self.index.table)
        if table is None:
            raise MigrationTreeError(f"{self.index.table}: no such table")
        if table.kind != "p":
            # not (or no longer) partitioned: a plain concurrent build does the job
            drop_invalid_index(self.conn, sql.Identifier(table.schema, self.name).as_string())
            self._execute(
                "CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} ",
                table,
                non_blocking=True,
            )
            return
        parent_index = self._index(table.schema, self.name)
        if parent_index is not None and parent_index[2]:
            logger.info("%s is already built and valid", self.name)
            return
        if parent_index is None:
            # instant (no rows at the parent), but SHARE on the parent: the usual lock_timeout
            self._execute("CREATE {unique}INDEX IF NOT EXISTS {index} ON ONLY {table} ", table)
            parent_index = self._index(table.schema, self.name)
            assert parent_index is not None
        index_oid = parent_index[0]
        while pending := self._partitions_without_index(table, index_oid):
            for partition in pending:
                self._build_on(partition, table)
        row = self._index(table.schema, self.name)
        if row is None or not row[2]:
            raise KronosError(
                f"{self.name}: every partition of {table.name} has its index attached, yet "
                "PostgreSQL has not marked it valid"
            )

    def _build_on(self, partition: _Relation, table: _Relation) -> None:
        if partition.kind == "p":
            raise MigrationTreeError(
                f"{partition.name} is itself partitioned: concurrently-per-partition handles "
                "one level of partitions"
            )
        child = partition_index_name(partition.name, table.name, self.name)
        existing = self._index(partition.schema, child)
        if existing is not None and existing[1] != partition.oid:
            # the name is taken by an index of another table: use the hashed form
            child = partition_index_name(partition.name, table.name, self.name, hashed=True)
            existing = self._index(partition.schema, child)
        if existing is not None and not existing[2]:
            drop_invalid_index(self.conn, sql.Identifier(partition.schema, child).as_string())
        logger.info("building %s on %s concurrently", child, partition.name)
        self._execute(
            "CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS {child} ON {partition} ",
            table,
            partition=partition,
            child=child,
            non_blocking=True,
        )
        self._execute_sql(
            sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                sql.Identifier(table.schema, self.name), sql.Identifier(partition.schema, child)
            ),
            non_blocking=False,
        )

    def _execute(
        self,
        template: str,
        table: _Relation,
        *,
        partition: _Relation | None = None,
        child: str | None = None,
        non_blocking: bool = False,
    ) -> None:
        # the index's definition (columns, USING, WHERE…) is the migration file's own text
        statement = sql.SQL(trusted_sql(template)).format(
            unique=sql.SQL("UNIQUE " if self.index.unique else ""),
            index=sql.Identifier(self.name),
            table=table.identifier,
            partition=partition.identifier if partition else sql.SQL(""),
            child=sql.Identifier(child) if child else sql.SQL(""),
        ) + sql.SQL(trusted_sql(self.index.rest))
        self._execute_sql(statement, non_blocking=non_blocking)

    def _execute_sql(self, statement: sql.Composed, *, non_blocking: bool) -> None:
        value = (
            self.timeouts.concurrent_lock_timeout if non_blocking else self.timeouts.lock_timeout
        )
        with _SessionLockTimeout(self.conn, value, self.timeouts.lock_timeout):
            self.conn.execute(statement)

    def _relation(self, name: str) -> _Relation | None:
        row = self.conn.execute(query("migrations", "select_relation"), {"name": name}).fetchone()
        return _Relation(*row) if row else None

    def _index(self, schema: str, name: str) -> tuple[int, int, bool] | None:
        row = self.conn.execute(
            query("migrations", "select_index_in_schema"), {"schema": schema, "name": name}
        ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def _partitions_without_index(self, table: _Relation, index_oid: int) -> list[_Relation]:
        rows = self.conn.execute(
            query("migrations", "select_partitions_without_index"),
            {"table": table.oid, "index": index_oid},
        ).fetchall()
        return [_Relation(*row) for row in rows]
