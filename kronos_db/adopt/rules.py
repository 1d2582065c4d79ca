"""Rows that break what head adds, found all at once, and fixed or quarantined as the user chose.

A :class:`Rule` is one constraint head adds to a table the services already fill: its violation
is a boolean expression in ``sql/queries/adopt.sql``, and so is its fix when one exists (a fix
that can only repair some rows says which). :func:`find` reports every rule's violations in one
pass: count, a sample (secrets shortened), how many rows a fix repairs, the rows that reference
them (a quarantine moves those too), and the SQL of the fix and of the quarantine.

Nothing is deleted silently: a fix keeps the old version of every row it changes in
``kronos_quarantine`` (action ``fixed``), merged duplicates are kept there (``merged``), and a
quarantine moves rows there whole (``quarantined``), restorable with ``kronos-db quarantine
restore``. Each batch is one short transaction.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from kronos_db.adopt import catalog, quarantine
from kronos_db.adopt.catalog import LiveState
from kronos_db.resources import query, trusted_sql

SAMPLE_SIZE = 5


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str  # the constraint head adds: what --fix and --quarantine name
    table: str
    description: str  # what a row breaking it is
    fix: str  # what the fix does ('' when there is none)
    satisfied: Callable[[LiveState], bool]
    shown: tuple[str, ...]  # the columns a sample shows
    secrets: frozenset[str] = frozenset()  # shown shortened
    merge: bool = False  # the fix merges duplicates into the newest row

    @property
    def key(self) -> str:
        return primary_key(self.table)

    @property
    def has_fix(self) -> bool:
        return bool(self.fix)

    def violation(self) -> sql.SQL:
        return fragment(f"violation_{self.name}")

    def fixable(self) -> sql.SQL:
        name = f"fixable_{self.name}"
        return fragment(name) if _has_query(name) else sql.SQL("true")

    def assignments(self) -> sql.SQL:
        return fragment(f"fix_{self.name}")


def primary_key(table: str) -> str:
    return "key" if table == "cache" else "id"


def _has_query(name: str) -> bool:
    try:
        query("adopt", name)
    except KeyError:
        return False
    return True


def fragment(name: str) -> sql.SQL:
    """An expression from adopt.sql, without its description comment."""
    text = "\n".join(
        line for line in query("adopt", name).splitlines() if not line.lstrip().startswith("--")
    )
    return sql.SQL(trusted_sql(text.strip()))


def _validated(table: str, name: str) -> Callable[[LiveState], bool]:
    def satisfied(state: LiveState) -> bool:
        found = state.constraint(table, name)
        return found is not None and found.validated

    return satisfied


def _not_null(table: str, column: str) -> Callable[[LiveState], bool]:
    def satisfied(state: LiveState) -> bool:
        found = state.column(table, column)
        return found is not None and found.not_null

    return satisfied


def _exists(table: str, name: str) -> Callable[[LiveState], bool]:
    def satisfied(state: LiveState) -> bool:
        return state.constraint(table, name) is not None

    return satisfied


# In the order they are resolved: within rate_limits, negative counts are fixed before
# duplicates are merged (a merged count adds them up).
RULES: tuple[Rule, ...] = (
    Rule(
        "roles_permissions_no_null",
        "roles",
        "NULL elements in permissions",
        "remove the NULL elements (a NULL was never a permission)",
        _validated("roles", "roles_permissions_no_null"),
        ("id", "name", "permissions"),
    ),
    Rule(
        "users_password_hash_argon2",
        "users",
        "password hashes that are not Argon2 (bcrypt, plain text…)",
        "",
        _validated("users", "users_password_hash_argon2"),
        ("id", "username", "password_hash"),
        secrets=frozenset({"password_hash"}),
    ),
    Rule(
        "sessions_token_excl",
        "sessions",
        "sessions whose token a newer session also has (the newest is kept)",
        "",
        _exists("sessions", "sessions_token_excl"),
        ("id", "user_id", "token", "created_at"),
        secrets=frozenset({"token"}),
    ),
    Rule(
        "logs_timestamp_not_null",
        "logs",
        "log lines without a time",
        "take the time of the nearest earlier line (ids follow insertion order)",
        _not_null("logs", "timestamp"),
        ("id", "service_name", "level", "message"),
    ),
    Rule(
        "routes_method_check",
        "routes",
        "methods that are not an upper-case HTTP token nor *",
        "upper-case them, blanks trimmed (only where that gives a method token)",
        _validated("routes", "routes_method_check"),
        ("id", "path", "method"),
    ),
    Rule(
        "rate_limits_request_count_check",
        "rate_limits",
        "negative request counts",
        "set them to 0",
        _validated("rate_limits", "rate_limits_request_count_check"),
        ("id", "user_id", "route_id", "request_count"),
    ),
    Rule(
        "rate_limits_user_id_route_id_key",
        "rate_limits",
        "counters of a (user, route) pair that has a newer counter",
        "add their counts into the newest counter of the pair, then keep them aside as merged",
        _exists("rate_limits", "rate_limits_user_id_route_id_key"),
        ("id", "user_id", "route_id", "request_count", "last_request"),
        merge=True,
    ),
    Rule(
        "message_queue_status_check",
        "message_queue",
        "statuses no consumer knows",
        "a known status in another case is lower-cased; anything else becomes failed",
        _validated("message_queue", "message_queue_status_check"),
        ("id", "topic", "status", "created_at"),
    ),
    Rule(
        "message_queue_status_not_null",
        "message_queue",
        "messages without a status",
        "set them to failed (never delivered; requeue them on purpose)",
        _not_null("message_queue", "status"),
        ("id", "topic", "status", "created_at"),
    ),
)
RULE_NAMES = tuple(r.name for r in RULES)


def rule(name: str) -> Rule:
    for candidate in RULES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


# --------------------------------------------------------------------------- finding them


@dataclasses.dataclass(frozen=True)
class Dependent:
    table: str
    rows: int


@dataclasses.dataclass(frozen=True)
class Violation:
    """The rows that break one rule, as the plan shows them."""

    rule: str
    table: str
    description: str
    count: int
    fixable: int
    fix: str
    sample: tuple[dict[str, Any], ...]
    dependents: tuple[Dependent, ...]
    fix_sql: str
    quarantine_sql: str
    select_sql: str


def _composed(template: str, rule_: Rule, **extra: sql.Composable) -> sql.Composed:
    return sql.SQL(query("adopt", template)).format(
        table=sql.Identifier(rule_.table),
        key=sql.Identifier(rule_.key),
        violation=rule_.violation(),
        fixable=rule_.fixable(),
        **extra,
    )


def violating_keys(conn: psycopg.Connection[Any], rule_: Rule) -> list[Any]:
    return [row[0] for row in conn.execute(_composed("select_violating_keys", rule_))]


def _shorten(value: Any) -> Any:
    text = str(value)
    return text if len(text) <= 10 else f"{text[:8]}…"


def _sample(
    conn: psycopg.Connection[Any], rule_: Rule, keys: Sequence[Any]
) -> list[dict[str, Any]]:
    rows = conn.execute(
        _composed("select_violation_sample", rule_), {"keys": list(keys[:SAMPLE_SIZE])}
    ).fetchall()
    sample = []
    for row_data, _fixable in rows:
        shown = {c: row_data.get(c) for c in rule_.shown if c in row_data}
        for column in rule_.secrets & shown.keys():
            shown[column] = _shorten(shown[column])
        sample.append(shown)
    return sample


def _fixable_count(conn: psycopg.Connection[Any], rule_: Rule, keys: Sequence[Any]) -> int:
    if not rule_.has_fix:
        return 0
    if rule_.merge:
        return len(keys)
    row = conn.execute(_composed("count_fixable", rule_), {"keys": list(keys)}).fetchone()
    return int(row[0]) if row else 0


def dependents(
    conn: psycopg.Connection[Any], table: str, batches: Mapping[Any, str], depth: int = 1
) -> Iterator[tuple[str, dict[Any, str], int]]:
    """Rows of other tables that reference the rows of ``batches`` (key → batch), deepest
    first: each with the batch of the row it (indirectly) references, and its depth."""
    for fk in catalog.referencing_keys(conn, table):
        statement = sql.SQL(query("adopt", "select_referencing_rows")).format(
            key=sql.Identifier(primary_key(fk.table_name)),
            table=sql.Identifier(fk.table_name),
            column=sql.Identifier(fk.column_name),
        )
        children = {
            row[0]: batches[row[1]] for row in conn.execute(statement, {"keys": list(batches)})
        }
        if children:
            yield from dependents(conn, fk.table_name, children, depth + 1)
            yield fk.table_name, children, depth


def _display(conn: psycopg.Connection[Any], statement: sql.Composable) -> str:
    return " ".join(statement.as_string(conn).split())


def _fix_sql(conn: psycopg.Connection[Any], rule_: Rule) -> str:
    if not rule_.has_fix:
        return ""
    if rule_.merge:
        return _display(conn, fragment("merge_rate_limit_counters"))
    return _display(
        conn,
        sql.SQL("UPDATE {table} AS t SET {assignments} WHERE {violation} AND ({fixable})").format(
            table=sql.Identifier(rule_.table),
            assignments=rule_.assignments(),
            violation=rule_.violation(),
            fixable=rule_.fixable(),
        ),
    )


def _quarantine_sql(conn: psycopg.Connection[Any], rule_: Rule) -> str:
    return _display(
        conn,
        sql.SQL(
            "WITH moved AS (DELETE FROM {table} AS t WHERE {violation} RETURNING t.*) "
            "INSERT INTO kronos_quarantine (batch, table_name, rule, action, row_data, "
            "timestamps_in) SELECT gen_random_uuid(), {name}, {rule}, 'quarantined', "
            "to_jsonb(moved), current_setting('TimeZone') FROM moved"
        ).format(
            table=sql.Identifier(rule_.table),
            violation=rule_.violation(),
            name=sql.Literal(rule_.table),
            rule=sql.Literal(rule_.name),
        ),
    )


def find(conn: psycopg.Connection[Any], state: LiveState) -> list[Violation]:
    """Every rule head adds that rows break today, with what a fix or a quarantine would do."""
    found = []
    for rule_ in RULES:
        if state.table(rule_.table) is None or rule_.satisfied(state):
            continue
        keys = violating_keys(conn, rule_)
        if not keys:
            continue
        deps = tuple(
            Dependent(table, len(children))
            for table, children, _depth in dependents(conn, rule_.table, dict.fromkeys(keys, ""))
        )
        found.append(
            Violation(
                rule=rule_.name,
                table=rule_.table,
                description=rule_.description,
                count=len(keys),
                fixable=_fixable_count(conn, rule_, keys),
                fix=rule_.fix,
                sample=tuple(_sample(conn, rule_, keys)),
                dependents=deps,
                fix_sql=_fix_sql(conn, rule_),
                quarantine_sql=_quarantine_sql(conn, rule_),
                select_sql=_display(
                    conn,
                    sql.SQL("SELECT * FROM {table} AS t WHERE {violation}").format(
                        table=sql.Identifier(rule_.table), violation=rule_.violation()
                    ),
                ),
            )
        )
    return found


# --------------------------------------------------------------------------- resolving them


@dataclasses.dataclass(frozen=True)
class Resolution:
    rule: str
    fixed: int
    merged: int
    quarantined: int  # rows that broke the rule
    dependents_quarantined: int  # rows that referenced them, moved with them
    remaining: int


def _chunks(keys: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(keys), size):
        yield list(keys[start : start + size])


def resolve(
    conn: psycopg.Connection[Any],
    rule_: Rule,
    *,
    fix: bool,
    move: bool,
    timestamps_in: str,
    batch_size: int,
    in_transaction: Callable[[Callable[[], None]], None],
) -> Resolution:
    """Fix and/or quarantine every row breaking ``rule_``, one batch per transaction.

    ``in_transaction`` runs a unit of work in a transaction with the step's timeouts, retrying
    lock timeouts (the engine's). Rows are re-checked inside each batch, so a row fixed
    meanwhile by a service is left alone.
    """
    quarantine.ensure_table(conn)
    fixed = merged = moved = moved_dependents = 0
    keys = violating_keys(conn, rule_)
    for chunk in _chunks(keys, batch_size):
        batch = str(uuid.uuid4())
        counts = {"fixed": 0, "merged": 0, "moved": 0, "dependents": 0}

        def work(
            chunk: list[Any] = chunk, batch: str = batch, counts: dict[str, int] = counts
        ) -> None:
            counts.update(fixed=0, merged=0, moved=0, dependents=0)
            if fix and rule_.merge:
                conn.execute(
                    sql.SQL(query("adopt", "merge_rate_limit_counters")),
                    {
                        "keys": chunk,
                        "batch": batch,
                        "rule": rule_.name,
                        "timestamps_in": timestamps_in,
                    },
                )
                counts["merged"] = _move(
                    conn, rule_, chunk, batch, "merged", timestamps_in, with_dependents=False
                )[0]
            elif fix:
                counts["fixed"] = max(
                    conn.execute(
                        _composed("fix_rows", rule_, assignments=rule_.assignments()),
                        {
                            "keys": chunk,
                            "batch": batch,
                            "table_name": rule_.table,
                            "rule": rule_.name,
                            "timestamps_in": timestamps_in,
                        },
                    ).rowcount,
                    0,
                )
            if move:
                own, others = _move(
                    conn, rule_, chunk, batch, "quarantined", timestamps_in, with_dependents=True
                )
                counts["moved"], counts["dependents"] = own, others

        in_transaction(work)
        fixed += counts["fixed"]
        merged += counts["merged"]
        moved += counts["moved"]
        moved_dependents += counts["dependents"]
    remaining = len(violating_keys(conn, rule_))
    return Resolution(rule_.name, fixed, merged, moved, moved_dependents, remaining)


def _move(
    conn: psycopg.Connection[Any],
    rule_: Rule,
    keys: list[Any],
    batch: str,
    action: str,
    timestamps_in: str,
    *,
    with_dependents: bool,
) -> tuple[int, int]:
    """Move the rows of ``keys`` that still break the rule; their dependents first."""
    locked = [
        row[0]
        for row in conn.execute(
            sql.SQL(query("adopt", "select_rows_to_move")).format(
                key=sql.Identifier(rule_.key),
                table=sql.Identifier(rule_.table),
                column=sql.Identifier(rule_.key),
                condition=rule_.violation(),
            ),
            {"keys": keys},
        )
    ]
    if not locked:
        return 0, 0
    # one batch per row that broke the rule, shared by the rows that reference it: restoring
    # the row restores them, and nothing else
    batches = (
        {key: str(uuid.uuid4()) for key in locked}
        if with_dependents
        else dict.fromkeys(locked, batch)
    )
    others = 0
    if with_dependents:
        # parents are locked FOR UPDATE: no new row can reference them until this commits
        for table, children, depth in dependents(conn, rule_.table, batches):
            others += quarantine.move(
                conn,
                table,
                primary_key(table),
                children,
                depth=depth,
                rule=rule_.name,
                action=action,
                timestamps_in=timestamps_in,
            )
    own = quarantine.move(
        conn,
        rule_.table,
        rule_.key,
        batches,
        depth=0,
        rule=rule_.name,
        action=action,
        timestamps_in=timestamps_in,
    )
    return own, others


def describe_sample(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in row.items())
