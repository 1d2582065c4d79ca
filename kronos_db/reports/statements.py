"""pg_stat_statements itself: where it is installed, its version's columns, whether it records.

Found in whatever schema it lives, its columns picked by its version (pg-extras broke when 1.8
renamed ``total_time`` and when 1.11 renamed ``blk_read_time``). Both the slow-queries report
(:mod:`kronos_db.reports.queries`) and the snapshots (:mod:`kronos_db.reports.snapshots`) read
the extension through this module.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from kronos_db.checks import Limits, fetch_one
from kronos_db.errors import ReportUnavailableError
from kronos_db.resources import query

ENABLE_HINT = (
    "add pg_stat_statements to shared_preload_libraries (restart the server), then run "
    "CREATE EXTENSION pg_stat_statements in this database (kronos-db migrate does it when "
    "the server offers the extension)"
)


@dataclasses.dataclass(frozen=True)
class StatementsExtension:
    schema_name: str | None
    version: str | None
    preloaded: bool
    available: bool

    @property
    def installed(self) -> bool:
        return self.schema_name is not None

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", self.version or "0"))

    def relation(self, name: str) -> sql.Identifier:
        assert self.schema_name is not None
        return sql.Identifier(self.schema_name, name)

    def placeholders(self) -> dict[str, sql.Composable]:
        """The identifiers and columns of this version, for the {placeholders} of the SQL."""
        version = self.version_tuple
        renamed_times = version >= (1, 8)
        renamed_io = version >= (1, 11)
        return {
            "statements": self.relation("pg_stat_statements"),
            "info": self.relation("pg_stat_statements_info"),
            "reset": self.relation("pg_stat_statements_reset"),
            "toplevel": sql.SQL("statement.toplevel") if version >= (1, 9) else sql.SQL("true"),
            "total_time": sql.Identifier("total_exec_time" if renamed_times else "total_time"),
            "mean_time": sql.Identifier("mean_exec_time" if renamed_times else "mean_time"),
            "stddev_time": sql.Identifier("stddev_exec_time" if renamed_times else "stddev_time"),
            "read_time": sql.Identifier("shared_blk_read_time" if renamed_io else "blk_read_time"),
            "write_time": sql.Identifier(
                "shared_blk_write_time" if renamed_io else "blk_write_time"
            ),
        }


@dataclasses.dataclass(frozen=True)
class StatementsInfo:
    stats_reset: datetime | None
    dealloc: int | None


def statements_extension(conn: psycopg.Connection[Any], limits: Limits) -> StatementsExtension:
    return fetch_one(
        conn,
        query("reports_queries", "select_statements_extension"),
        {},
        StatementsExtension,
        limits,
    )


def require_statements(conn: psycopg.Connection[Any], limits: Limits) -> StatementsExtension:
    """The extension, or ReportUnavailableError saying plainly how to enable it."""
    extension = statements_extension(conn, limits)
    if not extension.available:
        raise ReportUnavailableError(
            "pg_stat_statements is not available on this server", hint=ENABLE_HINT
        )
    if not extension.installed:
        raise ReportUnavailableError(
            "pg_stat_statements is not installed in this database", hint=ENABLE_HINT
        )
    if not extension.preloaded:
        raise ReportUnavailableError(
            "pg_stat_statements is installed but not in shared_preload_libraries: "
            "it records nothing",
            hint=ENABLE_HINT,
        )
    return extension


def compose(extension: StatementsExtension, name: str) -> sql.Composed:
    """The query ``name`` of reports_queries.sql with this version's columns."""
    return sql.SQL(query("reports_queries", name)).format(**extension.placeholders())


def statements_info(
    conn: psycopg.Connection[Any], extension: StatementsExtension, limits: Limits
) -> StatementsInfo:
    if extension.version_tuple < (1, 9):
        return StatementsInfo(None, None)
    return fetch_one(conn, compose(extension, "select_statements_info"), {}, StatementsInfo, limits)
