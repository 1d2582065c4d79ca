"""``kronos-db report <name>`` and ``kronos-db health``: parse, call the reports library, render.

Reports are Rich tables on a terminal and JSON with ``--json``. ``health`` speaks the
monitoring plugin convention: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also when it cannot
run at all: no connection, a bad configuration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.table import Table
from rich.text import Text

from kronos_db import db
from kronos_db.checks import Limits
from kronos_db.cli.common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    NowOption,
    duration_option,
    emit_json,
    human_size,
    is_terminal,
    notify,
    parse_now,
    settings_for,
    stdout,
    target_for,
)
from kronos_db.cli.security import security_report
from kronos_db.config import Settings
from kronos_db.durations import human_duration
from kronos_db.reports import (
    activity,
    cache,
    connections,
    indexes,
    kronos,
    maintenance,
    queries,
    sequences,
    snapshots,
    space,
)
from kronos_db.reports import (
    settings as settings_report,
)

app = typer.Typer(
    help="DBA reports: slow queries, indexes, bloat, vacuum, locks, space, replication, Kronos.",
    no_args_is_help=True,
)

AllDatabasesOption = Annotated[
    bool,
    typer.Option("--all-databases", help="Every database of the server, not only this one."),
]
LimitOption = Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")]


@contextmanager
def _connect(
    database_url: str | None, config: Path | None
) -> Iterator[tuple[psycopg.Connection[Any], Settings, Limits]]:
    settings = settings_for(config)
    target = target_for(database_url, settings)
    with db.connection(target) as conn:
        yield conn, settings, Limits.from_settings(settings)


# ----------------------------------------------------------------------------- rendering


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}%"


def seconds(value: float | None) -> str:
    return "" if value is None else human_duration(timedelta(seconds=value))


def when(value: datetime | None) -> str:
    return "never" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


Column = tuple[str, Callable[[Any], str]]


def render_table(
    title: str, rows: Sequence[Any], columns: Sequence[Column], empty: str = "none"
) -> None:
    if not rows:
        stdout.print(f"[bold]{title}[/bold]: {empty}")
        return
    table = Table(*[header for header, _ in columns], title=title, title_justify="left")
    for row in rows:
        # Text: query texts and names come from the database; "[" must not read as markup
        table.add_row(*[Text(getter(row)) for _, getter in columns])
    stdout.print(table)


def _field(name: str, formatter: Callable[[Any], str] = str) -> Callable[[Any], str]:
    return lambda row: formatter(getattr(row, name))


# ----------------------------------------------------------------------------- reports


@app.command("slow-queries")
def slow_queries_command(
    order: Annotated[str, typer.Option("--order", help="total, mean, calls or io.")] = "total",
    limit: LimitOption = 20,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only what happened over this window, e.g. 1h (needs snapshots).",
            show_default=False,
        ),
    ] = None,
    minimum_calls: Annotated[
        int, typer.Option("--min-calls", min=1, help="Leave out statements called less.")
    ] = 1,
    width: Annotated[
        int, typer.Option("--width", min=0, help="Cut query texts at this length (0: never).")
    ] = 300,
    all_databases: AllDatabasesOption = False,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset", help="Reset pg_stat_statements for this database instead of reporting."
        ),
    ] = False,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """The statements that cost the most (pg_stat_statements), every role's, this database's.

    Example: kronos-db report slow-queries --order mean --since 1h
    """
    if order not in queries.ORDERS:
        raise typer.BadParameter(
            f"expected one of {', '.join(queries.ORDERS)}", param_hint="--order"
        )
    window = duration_option(since)
    moment = parse_now(now)
    with _connect(database_url, config) as (conn, _settings, limits):
        if reset:
            queries.reset_statements(conn, limits)
            notify("pg_stat_statements reset for this database")
            return
        report = queries.slow_queries(
            conn,
            now=moment,
            limits=limits,
            order=order,
            limit=limit,
            minimum_calls=minimum_calls,
            since=window,
            all_databases=all_databases,
            query_width=width,
        )
    if json:
        emit_json(report)
        return
    for note in report.notes:
        notify(note)
    start = (
        f"since {when(report.window_start)}"
        if report.window_start
        else f"since the last reset ({when(report.statistics_reset)})"
    )
    render_table(
        f"Slow queries by {order} time, {start} (pg_stat_statements {report.extension_version})"
        if order in ("total", "mean")
        else f"Slow queries by {order}, {start}",
        report.queries,
        [
            ("role", _field("role_name")),
            ("calls", _field("calls", number)),
            ("rows", _field("rows", number)),
            ("total ms", _field("total_ms", number)),
            ("mean ms", _field("mean_ms", number)),
            ("stddev ms", _field("stddev_ms", number)),
            ("hit", _field("hit_percent", percent)),
            ("read blks", _field("shared_blks_read", number)),
            ("% total", _field("percent_of_total", percent)),
            ("query", _field("query")),
        ],
        empty="no statement recorded",
    )


@app.command("indexes")
def indexes_command(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Unused, duplicate, invalid indexes; foreign keys without one; sequential-scan tables.

    Example: kronos-db report indexes --json
    """
    with _connect(database_url, config) as (conn, _settings, limits):
        report = indexes.index_report(conn, limits)
        rates = cache.hit_rates(conn, limits)
    if json:
        emit_json({**dataclasses.asdict(report), "hit_rates": rates})
        return
    stdout.print(f"statistics since: {when(report.statistics_reset)}")
    render_table(
        "Invalid indexes (failed CONCURRENTLY builds)",
        report.invalid,
        [
            ("table", _field("table_name")),
            ("index", _field("index_name")),
            ("size", _field("bytes", human_size)),
            ("definition", _field("definition")),
        ],
    )
    render_table(
        "Duplicate and redundant indexes",
        report.duplicates,
        [
            ("table", _field("table_name")),
            ("index", _field("index_name")),
            ("covered by", _field("covered_by")),
            ("kind", _field("kind")),
            ("size", _field("bytes", human_size)),
        ],
    )
    render_table(
        "Unused indexes",
        report.unused,
        [
            ("table", _field("table_name")),
            ("index", _field("index_name")),
            ("size", _field("bytes", human_size)),
            ("scans", _field("scans", number)),
        ],
    )
    render_table(
        "Foreign keys without an index",
        report.unindexed_foreign_keys,
        [
            ("table", _field("table_name")),
            ("constraint", _field("constraint_name")),
            ("columns", _field("columns")),
            ("references", _field("referenced_table")),
            ("table size", _field("table_bytes", human_size)),
        ],
    )
    render_table(
        "Tables read mostly by sequential scans",
        report.sequential_scan_tables,
        [
            ("table", _field("table_name")),
            ("seq scans", _field("sequential_scans", number)),
            ("rows read", _field("rows_read_sequentially", number)),
            ("index scans", _field("index_scans", number)),
            ("index %", _field("index_scan_percent", percent)),
            ("live rows", _field("live_tuples", number)),
        ],
    )
    render_table(
        "Index hit rate",
        [rate for rate in rates if rate.kind == "indexes"],
        [
            ("hits", _field("hits", number)),
            ("reads", _field("reads", number)),
            ("hit rate", _field("hit_percent", percent)),
        ],
    )


@app.command("bloat")
def bloat_command(
    minimum_bytes: Annotated[
        int | None,
        typer.Option(
            "--min-bytes",
            min=0,
            help="Skip relations smaller than this (default: health.bloat_minimum_bytes).",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Estimated table and btree index bloat (statistics only, no scan; fillfactor-aware).

    Example: kronos-db report bloat --min-bytes 0
    """
    with _connect(database_url, config) as (conn, settings, limits):
        rows = maintenance.bloat(
            conn,
            limits,
            minimum_bytes=settings.health.bloat_minimum_bytes
            if minimum_bytes is None
            else minimum_bytes,
        )
    if json:
        emit_json(rows)
        return
    render_table(
        "Estimated bloat",
        rows,
        [
            ("relation", lambda r: f"{r.schema_name}.{r.table_name}"),
            ("kind", _field("kind")),
            ("size", _field("bytes", human_size)),
            ("bloat", _field("bloat_bytes", human_size)),
            ("bloat %", _field("bloat_percent", percent)),
            ("fillfactor", _field("fillfactor")),
            ("unreliable because", _field("unreliable_reason")),
        ],
        empty="no table or index large enough to judge",
    )


@app.command("vacuum")
def vacuum_command(
    limit: LimitOption = 50,
    now: NowOption = None,
    all_databases: AllDatabasesOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Dead tuples and (auto)vacuum per table; wraparound headroom; what holds the xmin horizon.

    Example: kronos-db report vacuum --limit 20
    """
    moment = parse_now(now)
    with _connect(database_url, config) as (conn, _settings, limits):
        report = maintenance.VacuumReport(
            tables=tuple(maintenance.vacuum_stats(conn, limits, limit=limit)),
            databases=tuple(maintenance.database_wraparound(conn, limits)),
            oldest_tables=tuple(maintenance.table_wraparound(conn, limits)),
            xmin_holders=tuple(
                maintenance.xmin_holders(conn, limits, now=moment, all_databases=all_databases)
            ),
        )
    if json:
        emit_json(report)
        return
    render_table(
        "Dead tuples and vacuum",
        report.tables,
        [
            ("table", lambda r: f"{r.schema_name}.{r.table_name}"),
            ("live", _field("live_tuples", number)),
            ("dead", _field("dead_tuples", number)),
            ("dead %", _field("dead_percent", percent)),
            ("autovacuum", lambda r: "on" if r.autovacuum_enabled else "OFF"),
            ("overdue", lambda r: "yes" if r.vacuum_overdue else ""),
            (
                "last vacuum",
                lambda r: when(max(filter(None, (r.last_vacuum, r.last_autovacuum)), default=None)),
            ),
            (
                "last analyze",
                lambda r: when(
                    max(filter(None, (r.last_analyze, r.last_autoanalyze)), default=None)
                ),
            ),
        ],
    )
    render_table(
        "Wraparound headroom per database",
        report.databases,
        [
            ("database", _field("database_name")),
            ("xid age", _field("xid_age", number)),
            ("xid used", _field("xid_percent", percent)),
            ("multixact age", _field("multixact_age", number)),
            ("multixact used", _field("multixact_percent", percent)),
        ],
    )
    render_table(
        "Oldest tables (wraparound)",
        report.oldest_tables,
        [
            ("table", lambda r: f"{r.schema_name}.{r.table_name}"),
            ("xid age", _field("xid_age", number)),
            ("multixact age", _field("multixact_age", number)),
            ("size", _field("bytes", human_size)),
        ],
    )
    render_table(
        "Holding back the xmin horizon",
        report.xmin_holders,
        [
            ("kind", _field("kind")),
            ("name/pid", _field("name")),
            ("role", _field("role_name")),
            ("state", _field("state")),
            ("xid age", _field("xid_age", number)),
            ("for", _field("seconds", seconds)),
            ("detail", _field("detail")),
        ],
        empty="nothing",
    )


def _blocked_table(rows: Sequence[activity.BlockedSession]) -> None:
    render_table(
        "Blocked sessions (who blocks whom)",
        rows,
        [
            ("blocked pid", _field("blocked_pid")),
            ("waiting", _field("waiting_seconds", seconds)),
            ("wants", _field("wanted_lock")),
            ("blocked query", _field("blocked_query")),
            (
                "blocking pid",
                lambda r: f"{r.blocking_pid}{' (root)' if r.blocking_is_root else ''}",
            ),
            ("blocker state", _field("blocking_state")),
            ("blocker xact", _field("blocking_transaction_seconds", seconds)),
            ("blocking query", _field("blocking_query")),
        ],
        empty="no session is waiting for a lock",
    )


@app.command("locks")
def locks_command(
    now: NowOption = None,
    all_databases: AllDatabasesOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Blocking chains: each session waiting for a lock, who blocks it, for how long.

    Example: kronos-db report locks
    """
    with _connect(database_url, config) as (conn, _settings, limits):
        rows = activity.blocking_chains(
            conn, limits, now=parse_now(now), all_databases=all_databases
        )
    if json:
        emit_json(rows)
        return
    _blocked_table(rows)


@app.command("activity")
def activity_command(
    longer_than: Annotated[
        str | None,
        typer.Option(
            "--longer-than",
            help="Queries running / sessions idle in transaction longer than "
            "this (default: the health warning thresholds).",
            show_default=False,
        ),
    ] = None,
    now: NowOption = None,
    all_databases: AllDatabasesOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Blocking chains, long-running queries and sessions idle in transaction.

    Example: kronos-db report activity --longer-than 30s
    """
    threshold = duration_option(longer_than)
    with _connect(database_url, config) as (conn, settings, limits):
        report = activity.activity_report(
            conn,
            limits,
            now=parse_now(now),
            long_query_threshold=threshold
            if threshold is not None
            else settings.health.long_query_warning,
            idle_threshold=threshold
            if threshold is not None
            else settings.health.idle_in_transaction_warning,
            all_databases=all_databases,
        )
    if json:
        emit_json(report)
        return
    _blocked_table(report.blocked)
    render_table(
        "Long-running queries",
        report.long_queries,
        [
            ("pid", _field("pid")),
            ("role", _field("role_name")),
            ("database", _field("database_name")),
            ("application", _field("application_name")),
            ("running", _field("seconds", seconds)),
            ("waiting on", _field("waiting_on")),
            ("query", _field("query")),
        ],
    )
    render_table(
        "Idle in transaction",
        report.idle_in_transaction,
        [
            ("pid", _field("pid")),
            ("role", _field("role_name")),
            ("database", _field("database_name")),
            ("application", _field("application_name")),
            ("idle", _field("idle_seconds", seconds)),
            ("transaction", _field("transaction_seconds", seconds)),
            ("last query", _field("last_query")),
        ],
    )


@app.command("connections")
def connections_command(
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Client connections against max_connections, by database, role, application and state.

    Example: kronos-db report connections
    """
    with _connect(database_url, config) as (conn, _settings, limits):
        report = connections.connections_report(conn, limits, now=parse_now(now))
    if json:
        emit_json(report)
        return
    usage = report.usage
    stdout.print(
        f"{usage.used} client connections of {usage.max_connections} "
        f"({usage.reserved} reserved): {usage.used_percent:.0f}% used"
    )
    render_table(
        "Connections",
        report.groups,
        [
            ("database", _field("database_name")),
            ("role", _field("role_name")),
            ("application", _field("application_name")),
            ("state", _field("state")),
            ("count", _field("connections")),
            ("oldest", _field("oldest_seconds", seconds)),
        ],
    )


@app.command("cache")
def cache_command(
    limit: LimitOption = 20,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Buffer cache hit rate for tables and indexes, and the tables read most from disk.

    Example: kronos-db report cache
    """
    with _connect(database_url, config) as (conn, _settings, limits):
        report = cache.cache_report(conn, limits, limit=limit)
    if json:
        emit_json(report)
        return
    render_table(
        "Buffer cache hit rate",
        report.rates,
        [
            ("for", _field("kind")),
            ("hits", _field("hits", number)),
            ("reads", _field("reads", number)),
            ("hit rate", _field("hit_percent", percent)),
        ],
    )
    render_table(
        "Tables by blocks read from disk",
        report.tables,
        [
            ("table", lambda r: f"{r.schema_name}.{r.table_name}"),
            ("hits", _field("hits", number)),
            ("reads", _field("reads", number)),
            ("hit rate", _field("hit_percent", percent)),
        ],
    )


@app.command("sequences")
def sequences_command(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Headroom of every sequence, against its maximum and its column's type.

    Example: kronos-db report sequences
    """
    with _connect(database_url, config) as (conn, _settings, limits):
        rows = sequences.sequence_headroom(conn, limits)
    if json:
        emit_json(rows)
        return
    if any(not row.readable for row in rows):
        notify(sequences.READ_HINT)
    render_table(
        "Sequences",
        rows,
        [
            ("sequence", lambda r: f"{r.schema_name}.{r.sequence_name}"),
            (
                "column",
                lambda r: f"{r.table_name}.{r.column_name} {r.column_type}" if r.table_name else "",
            ),
            ("last value", _field("last_value", number)),
            ("limit", _field("effective_limit")),
            ("limited by", _field("limited_by")),
            ("used", lambda r: percent(r.used_percent) if r.readable else "unreadable"),
            ("values left", lambda r: r.values_left or ""),
        ],
    )


@app.command("settings")
def settings_command(
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """A few sanity checks of the server's configuration.

    Example: kronos-db report settings
    """
    with _connect(database_url, config) as (conn, _settings, limits):
        rows = settings_report.setting_findings(conn, limits)
    if json:
        emit_json(rows)
        return
    render_table(
        "Server settings",
        rows,
        [
            ("setting", _field("name")),
            ("value", _field("value")),
            ("verdict", _field("severity")),
            ("advice", _field("advice")),
        ],
    )


@app.command("space")
def space_command(
    limit: LimitOption = 20,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Growth over this window, e.g. 7d (needs snapshots).",
            show_default=False,
        ),
    ] = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """The largest tables and indexes; with --since, how much each table grew.

    Example: kronos-db report space --since 7d
    """
    window = duration_option(since)
    with _connect(database_url, config) as (conn, _settings, limits):
        if window is not None:
            snapshot, growth = snapshots.table_growth(
                conn, now=parse_now(now), since=window, limits=limits, limit=limit
            )
            if json:
                emit_json({"since": snapshot.taken_at, "tables": growth})
                return
            render_table(
                f"Table growth since {when(snapshot.taken_at)}",
                growth,
                [
                    ("table", lambda r: f"{r.schema_name}.{r.table_name}"),
                    ("size", _field("total_bytes", human_size)),
                    (
                        "growth",
                        lambda r: "new" if r.new_since_snapshot else human_size(r.growth_bytes),
                    ),
                    ("rows", _field("live_tuples", number)),
                    ("row growth", _field("growth_tuples", number)),
                ],
            )
            return
        report = space.space_report(conn, limits, limit=limit)
    if json:
        emit_json(report)
        return
    stdout.print(f"database {report.database.database_name}: {human_size(report.database.bytes)}")
    render_table(
        "Largest tables",
        report.tables,
        [
            ("table", lambda r: f"{r.schema_name}.{r.table_name}"),
            ("kind", _field("kind")),
            ("total", _field("total_bytes", human_size)),
            ("table", _field("table_bytes", human_size)),
            ("indexes", _field("index_bytes", human_size)),
            ("toast", _field("toast_bytes", human_size)),
            ("rows (est.)", _field("estimated_rows", number)),
        ],
    )
    render_table(
        "Largest indexes",
        report.indexes,
        [
            ("table", lambda r: f"{r.schema_name}.{r.table_name}"),
            ("index", _field("index_name")),
            ("size", _field("bytes", human_size)),
        ],
    )


@app.command("kronos")
def kronos_command(
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Kronos checks: log partitions ahead, logs_default rows, expired rows, queue, backups.

    The same answers as health's log_partitions, expired_rows, message_queue and last_backup
    (each computed once, by the module that owns it).

    Example: kronos-db report kronos
    """
    from kronos_db.partitions.status import PartitionStatus
    from kronos_db.reports import formats

    moment = parse_now(now)
    with _connect(database_url, config) as (conn, settings, _limits):
        results = kronos.kronos_report(conn, settings, now=moment)
        database = str(conn.info.dbname)
    if json:
        emit_json(formats.health_document("report kronos", database, moment, results))
        return
    for result in results:
        stdout.print(f"{result.status.name} {result.name}: {result.summary}", markup=False)
        if result.hint and result.status.name != "OK":
            stdout.print(f"  hint: {result.hint}", markup=False)
        for row in result.data:
            if isinstance(row, PartitionStatus):
                ranged = sum(1 for p in row.partitions if not p.is_default)
                stdout.print(
                    f"logs: {ranged} partitions, covered until {when(row.covered_until)} "
                    f"({row.partitions_ahead} ahead); {row.default_rows:,} row(s) in "
                    f"{row.default_partition or '-'}"
                    f"{'' if row.default_rows_exact else ' (estimate)'}",
                    markup=False,
                )
    by_name = {result.name: result for result in results}
    render_table(
        "Expired rows waiting to be deleted",
        by_name["expired_rows"].data,
        [
            ("table", _field("table_name")),
            ("expired", _field("expired_rows", number)),
            ("oldest expiry", _field("oldest_expiry", when)),
        ],
    )
    render_table(
        "Pending messages",
        by_name["message_queue"].data,
        [
            ("topic", _field("topic")),
            ("pending", _field("pending", number)),
            (
                "oldest",
                lambda r: (
                    seconds((moment - r.oldest_created_at).total_seconds())
                    if r.oldest_created_at
                    else ""
                ),
            ),
        ],
        empty="no pending message",
    )


def _lag(size_bytes: int | None, lag_seconds: float | None) -> str:
    if size_bytes is None:
        return "?"
    shown = human_size(size_bytes)
    return f"{shown}, {seconds(lag_seconds)}" if lag_seconds else shown


@app.command("replication")
def replication_command(
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Primary or standby; standbys' lag, every slot's retained WAL, archiving, replay.

    Runs on a primary (its standbys, slots and archiver) and on a standby (its replay delay,
    paused replay and WAL receiver, and its own cascaded standbys and slots).

    Example: kronos-db report replication --database-url postgresql://standby1/kronos
    """
    from kronos_db import replication

    with _connect(database_url, config) as (conn, _settings, limits):
        report = replication.replication_report(conn, parse_now(now), limits)
    if json:
        emit_json(report)
        return
    role = report.role
    if role.is_standby:
        upstream = f", streaming from {role.upstream}" if role.upstream else ""
        stdout.print(f"this server is a standby (in recovery){upstream}", markup=False)
    else:
        stdout.print("this server is a primary", markup=False)
    replay = report.replay
    if replay is not None:
        receiver = (
            (replay.receiver_status or "running") if replay.receiver_running else "not running"
        )
        if not replay.receiver_visible:
            receiver = "not visible to this role (GRANT pg_monitor)"
        stdout.print(
            f"replay: {human_size(replay.replay_lag_bytes or 0)} received but not replayed, "
            f"{seconds(replay.replay_delay_seconds) or '0'} behind; {replay.pause_state}; "
            f"last transaction replayed {when(replay.last_replayed_at)}; WAL receiver "
            f"{receiver}",
            markup=False,
        )
    render_table(
        "Standbys streaming from this server",
        report.standbys,
        [
            ("standby", _field("name")),
            ("address", _field("client_address")),
            ("state", lambda r: r.state if r.visible else "(not visible: GRANT pg_monitor)"),
            ("sync", _field("sync_state")),
            ("slot", _field("slot_name")),
            ("write lag", lambda r: _lag(r.write_lag_bytes, r.write_lag_seconds)),
            ("flush lag", lambda r: _lag(r.flush_lag_bytes, r.flush_lag_seconds)),
            ("replay lag", lambda r: _lag(r.replay_lag_bytes, r.replay_lag_seconds)),
        ],
        empty="none",
    )
    render_table(
        "Replication slots",
        report.slots,
        [
            ("slot", _field("slot_name")),
            ("type", lambda r: f"{r.slot_type} {r.plugin}".strip()),
            ("database", _field("database_name")),
            ("active", lambda r: "yes" if r.active else "NO"),
            ("WAL retained", _field("retained_bytes", human_size)),
            ("consumer behind", _field("lag_bytes", human_size)),
            ("wal_status", _field("wal_status")),
            ("safe_wal_size", _field("safe_wal_size", human_size)),
            ("xmin age", lambda r: number(r.xmin_age or r.catalog_xmin_age)),
        ],
        empty="none",
    )
    archiver = report.archiver
    if not archiver.enabled:
        stdout.print(f"WAL archiving: off (archive_mode = {archiver.archive_mode})", markup=False)
        return
    ready = "?" if archiver.ready is None else f"{archiver.ready:,}"
    failing = (
        f"FAILING since {when(archiver.last_failed_time)} ({archiver.last_failed_wal}); "
        if archiver.failing
        else ""
    )
    stdout.print(
        f"WAL archiving: {failing}{archiver.archived_count:,} archived, last "
        f"{archiver.last_archived_wal or '-'} at {when(archiver.last_archived_time)}; "
        f"{archiver.failed_count:,} failure(s); {ready} segment(s) waiting",
        markup=False,
    )


@app.command("snapshot")
def snapshot_command(
    keep: Annotated[
        str | None,
        typer.Option(
            "--keep", help="Also delete snapshots older than this, e.g. 30d.", show_default=False
        ),
    ] = None,
    now: NowOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Store pg_stat_statements and table statistics, for windows (--since). Run it from cron.

    Example: kronos-db report snapshot --keep 30d
    """
    retention = duration_option(keep)
    with _connect(database_url, config) as (conn, _settings, limits):
        result = snapshots.take_snapshot(conn, now=parse_now(now), limits=limits, keep=retention)
    if json:
        emit_json(result)
        return
    for note in result.notes:
        notify(note)
    # cron mails whatever a job prints: a routine snapshot says nothing off a terminal
    if result.taken and is_terminal():
        stdout.print(
            f"snapshot {result.snapshot_id}: {result.statements} statements, "
            f"{result.tables} tables; {result.deleted} old snapshot(s) deleted"
        )


def register(root: typer.Typer) -> None:
    app.command("security")(security_report)
    root.add_typer(app, name="report")
