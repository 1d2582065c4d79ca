"""Running a revision's SQL file: what each Alembic revision file calls.

A revision is a pair of files, ``sql/migrations/<revision>_<slug>.upgrade.sql`` and
``….downgrade.sql``. A file runs whole, inside the revision's transaction, unless it states
otherwise with a directive comment on a line of its own::

    -- kronos: no-transaction

Such a file runs outside any transaction, one statement at a time (``CREATE INDEX
CONCURRENTLY`` needs that). Before each ``CREATE INDEX CONCURRENTLY``, an INVALID index of the
same name (left by an interrupted build) is dropped, so that the retry builds it again instead
of ``IF NOT EXISTS`` silently keeping a broken index. Write such files so that they can run
again (``IF NOT EXISTS``): a run killed between two statements leaves the earlier ones done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import psycopg
import sqlparse
from alembic import op
from psycopg import sql

from kronos_db.resources import trusted_sql

logger = logging.getLogger(__name__)

Direction = Literal["upgrade", "downgrade"]
NO_TRANSACTION = re.compile(r"^--\s*kronos:\s*no-transaction\s*$", re.MULTILINE)
_CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?P<name>(?:\"[^\"]+\"|[\w$]+)(?:\.(?:\"[^\"]+\"|[\w$]+))?)\s+ON\b",
    re.IGNORECASE,
)


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
    def statements(self) -> list[str]:
        statements = []
        for raw in sqlparse.split(self.text):
            stripped = sqlparse.format(raw, strip_comments=True).strip().rstrip(";").strip()
            if stripped:
                statements.append(raw.strip().rstrip(";").strip())
        return statements


def concurrent_index_name(statement: str) -> str | None:
    body = sqlparse.format(statement, strip_comments=True)
    match = _CONCURRENT_INDEX.match(body)
    return match.group("name") if match else None


def run_sql(revision_file: str, direction: Direction) -> None:
    """Run the revision's SQL file for ``direction`` (called from the Alembic revision file)."""
    script = MigrationScript.load(sql_path(revision_file, direction))
    context = op.get_context()
    if context.as_sql:
        if script.transactional:
            context.impl.static_output(script.text.strip())
        else:
            with context.autocommit_block():
                for statement in script.statements:
                    context.impl.static_output(statement + ";")
        return
    if script.transactional:
        # psycopg directly, with no parameters: the file's text reaches the server untouched
        # (a `%I` in a format() call stays itself), in the revision's transaction
        _driver_connection().execute(trusted_sql(script.text))
        return
    with context.autocommit_block():
        for statement in script.statements:
            index = concurrent_index_name(statement)
            if index is not None:
                _drop_invalid_index(index)
            _driver_connection().execute(trusted_sql(statement))


def _driver_connection() -> psycopg.Connection[Any]:
    connection = op.get_bind().connection.driver_connection
    assert isinstance(connection, psycopg.Connection)
    return connection


def _drop_invalid_index(name: str) -> None:
    driver_connection = _driver_connection()
    row = driver_connection.execute(
        "SELECT n.nspname, c.relname, NOT i.indisvalid"
        "  FROM pg_index AS i"
        "  JOIN pg_class AS c ON c.oid = i.indexrelid"
        "  JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE i.indexrelid = to_regclass(%(name)s::text)",
        {"name": name},
    ).fetchone()
    if row is None or not row[2]:
        return
    schema, relname, _invalid = row
    logger.warning(
        "index %s is INVALID (an interrupted CREATE INDEX CONCURRENTLY): dropping it "
        "before building it again",
        name,
    )
    driver_connection.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, relname))
    )
