"""``report kronos``: the checks only a tool that knows the Kronos schema can make, collected.

Each is answered by the module that owns its question, exactly as ``health`` reports it: the
log partitions by :mod:`kronos_db.partitions.status` (coverage ahead, rows waiting in the default
partition, strays, unfinished retirements), expired rows by :mod:`kronos_db.housekeeping`, the
message queue's backlog by :mod:`kronos_db.queue`, the last usable backup by
:mod:`kronos_db.backups`. Nothing is computed here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from kronos_db.checks import CheckResult, Context, Limits, run_check
from kronos_db.config import Settings
from kronos_db.reports.health import CHECKS

KRONOS_CHECKS = ("log_partitions", "expired_rows", "message_queue", "last_backup")


def kronos_report(
    conn: psycopg.Connection[Any], settings: Settings, *, now: datetime
) -> tuple[CheckResult, ...]:
    """The Kronos checks' answers, with the rows behind each (``data``)."""
    ctx = Context(conn, settings, now, Limits.from_settings(settings))
    return tuple(run_check(check, ctx) for check in CHECKS if check.name in KRONOS_CHECKS)
