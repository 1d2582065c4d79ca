"""Settings: a few sanity checks on the server's configuration, each with a verdict."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import psycopg

from kronos_db.checks import ANY, Context, Finding, Limits, Metric, Outcome, Status, fetch, worst
from kronos_db.resources import query

Severity = Literal["ok", "info", "warning", "critical"]


@dataclasses.dataclass(frozen=True)
class ServerSetting:
    name: str
    setting: str
    unit: str
    source: str
    description: str


@dataclasses.dataclass(frozen=True)
class SettingFinding:
    name: str
    value: str
    severity: Severity
    advice: str


def _on(value: str) -> bool:
    return value in ("on", "true", "1")


def _bytes(setting: ServerSetting) -> int:
    units = {"B": 1, "kB": 1024, "8kB": 8192, "MB": 1024**2, "GB": 1024**3, "16MB": 16 * 1024**2}
    return int(setting.setting) * units.get(setting.unit, 1)


Rule = Callable[[ServerSetting], tuple[Severity, str]]

RULES: dict[str, Rule] = {
    "fsync": lambda s: (
        ("ok", "")
        if _on(s.setting)
        else ("critical", "fsync is off: a crash can corrupt the database")
    ),
    "full_page_writes": lambda s: (
        ("ok", "")
        if _on(s.setting)
        else ("critical", "full_page_writes is off: a crash can leave torn pages")
    ),
    "autovacuum": lambda s: (
        ("ok", "")
        if _on(s.setting)
        else (
            "critical",
            "autovacuum is off: dead rows pile up and wraparound protection relies on "
            "emergency vacuums",
        )
    ),
    "track_counts": lambda s: (
        ("ok", "")
        if _on(s.setting)
        else ("critical", "track_counts is off: autovacuum cannot know what to vacuum")
    ),
    "shared_preload_libraries": lambda s: (
        ("ok", "")
        if "pg_stat_statements" in s.setting
        else ("warning", "pg_stat_statements is not preloaded: slow queries are not recorded")
    ),
    "track_io_timing": lambda s: (
        ("ok", "")
        if _on(s.setting)
        else ("info", "track_io_timing is off: the I/O time of statements is not measured")
    ),
    "idle_in_transaction_session_timeout": lambda s: (
        ("ok", "")
        if s.setting != "0"
        else (
            "info",
            "no idle_in_transaction_session_timeout: a forgotten transaction holds its locks "
            "and the xmin horizon forever (consider setting it per role for the services)",
        )
    ),
    "log_lock_waits": lambda s: (
        ("ok", "")
        if _on(s.setting)
        else (
            "info",
            "log_lock_waits is off: lock waits longer than deadlock_timeout are not logged",
        )
    ),
    "log_min_duration_statement": lambda s: (
        ("ok", "")
        if s.setting != "-1"
        else (
            "info",
            "log_min_duration_statement is off: slow statements are not logged with their "
            "parameters",
        )
    ),
    "max_connections": lambda s: (
        ("ok", "")
        if int(s.setting) <= 500
        else (
            "warning",
            f"max_connections is {s.setting}: put a connection pooler in front instead",
        )
    ),
    "shared_buffers": lambda s: (
        ("ok", "")
        if _bytes(s) >= 128 * 1024**2
        else ("warning", "shared_buffers is below 128MB: the usual start is 25% of the memory")
    ),
}


def server_settings(conn: psycopg.Connection[Any], limits: Limits) -> list[ServerSetting]:
    return fetch(
        conn,
        query("reports_settings", "select_settings"),
        {"names": list(RULES)},
        ServerSetting,
        limits,
    )


def setting_findings(conn: psycopg.Connection[Any], limits: Limits) -> list[SettingFinding]:
    """Every checked parameter with a verdict (``ok`` ones included, for the report)."""
    findings = []
    for current in server_settings(conn, limits):
        severity, advice = RULES[current.name](current)
        shown = f"{current.setting}{current.unit and ' ' + current.unit}"
        findings.append(SettingFinding(current.name, shown, severity, advice))
    return findings


# ----------------------------------------------------------------------------- check

_STATUS = {"critical": Status.CRITICAL, "warning": Status.WARNING}


def check_settings(ctx: Context) -> Outcome:
    """Dangerous server settings (fixed rules); suggestions stay OK."""
    findings = setting_findings(ctx.conn, ctx.limits)
    flagged = [f for f in findings if f.severity in _STATUS]
    metric = Metric("settings", float(len(flagged)), "count", ANY)
    if not flagged:
        info = sum(1 for f in findings if f.severity == "info")
        return Outcome(
            Status.OK,
            f"no dangerous setting ({info} suggestion(s) in `kronos-db report settings`)",
            (metric,),
            data=tuple(findings),
        )
    return Outcome(
        worst([_STATUS[f.severity] for f in flagged]),
        "; ".join(f.advice for f in flagged),
        (metric,),
        tuple(Finding(f"setting {f.name} = {f.value}", f.advice) for f in flagged),
        data=tuple(flagged),
    )
