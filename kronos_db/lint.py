"""Lint: what a revision will do to a production database, before it runs (``kronos-db lint``).

The rule engine is squawk (squawk-cli), run as a subprocess with its JSON report: its rules
know which statements take which locks and which break running clients, and we do not write
them again. kronos-db adds what no general linter knows:

* **Kronos's own rules** (``kronos-*``): an index on a partitioned table (a plain one blocks
  every insert for the whole build, a concurrent one fails), a DETACH from a table that has a
  DEFAULT partition, a directive in the wrong place, a waiver without a reason;
* **a level from the table it touches**: a finding on a table created in the same revision (or,
  connected, by a revision not yet applied) is moot; connected, a small quiet table makes a
  blocking finding a warning and a large or busy one an error (sizes from ``pg_class``, write
  rates sampled from ``pg_stat_user_tables``); without a database the size is unknown and a
  blocking finding is an error;
* **kronos-db's own guarantees**: ``lock_timeout`` and ``statement_timeout`` are set by every run
  (squawk's rules asking for them are off), and a no-transaction revision records each
  statement it finished, so ``prefer-robust-stmts`` is information only.

An error-level finding in a revision that is not released yet (not in
``migrations/released.sha256``) blocks ``migrate`` and CI, unless the statement carries a
reasoned waiver on a comment line of its own just before it::

    -- kronos: waive require-concurrent-index-creation: routes has 40 rows and is written once a day

Released revisions cannot be edited (their checksums are guarded): their findings are shown,
marked released, and never block; a new revision fixes them forward.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row

from kronos_db import db
from kronos_db.config import LintSettings, Settings
from kronos_db.errors import KronosError, UsageError
from kronos_db.migration_sql import (
    QUALIFIED_NAME,
    MigrationScript,
    Statement,
    checksum,
    unquote,
)
from kronos_db.resources import query

Level = Literal["error", "warning", "info", "waived"]
LEVELS: tuple[Level, ...] = ("error", "warning", "info", "waived")

# squawk rules for what kronos-db already guarantees: every run sets lock_timeout and
# statement_timeout on its session (docs/migrations.md)
EXCLUDED_RULES = ("require-lock-timeout", "require-statement-timeout", "require-timeout-settings")

# held for a time that grows with the table, blocking its reads or writes
BLOCKING_RULES = frozenset(
    {
        "require-concurrent-index-creation",
        "require-concurrent-index-deletion",
        "require-concurrent-reindex",
        "require-concurrent-partition-detach",
        "constraint-missing-not-valid",
        "adding-foreign-key-constraint",
        "changing-column-type",
        "adding-field-with-default",
        "adding-not-nullable-field",
        "adding-required-field",
        "adding-serial-primary-key-field",
        "adding-primary-key-constraint",
        "disallowed-unique-constraint",
        "ban-alter-domain-with-add-constraint",
        "prefer-repack",
    }
)
# break the services that still use the old shape (expand/contract): reviewed, not refused
BREAKING_RULES = frozenset(
    {"ban-drop-column", "ban-drop-table", "renaming-column", "renaming-table", "ban-drop-not-null"}
)
# fail at run time, or lose data
FAILING_RULES = frozenset(
    {
        "syntax-error",
        "ban-concurrent-index-creation-in-transaction",
        "transaction-nesting",
        "ban-uncommitted-transaction",
        "ban-drop-database",
        "ban-truncate-cascade",
    }
)
STYLE_RULES = frozenset(
    {
        "prefer-bigint-over-int",
        "prefer-bigint-over-smallint",
        "prefer-identity",
        "prefer-text-field",
        "ban-char-field",
        "identifier-too-long",
        "require-enum-value-ordering",
        "unused-ignore",
        "ban-create-domain-with-constraint",
    }
)

KRONOS_RULES = {
    "kronos-index-on-partitioned-table": (
        "CREATE INDEX on a partitioned table locks every partition (SHARE) for the whole "
        "build: every insert waits (4.1 s for 1M log rows)",
        "put `-- kronos: concurrently-per-partition` on the line before it, in a "
        "no-transaction revision (docs/migrations.md)",
    ),
    "kronos-concurrent-index-on-partitioned-table": (
        "CREATE INDEX CONCURRENTLY is refused on a partitioned table (0A000): the revision "
        "fails half-way",
        "write a plain CREATE INDEX preceded by `-- kronos: concurrently-per-partition`",
    ),
    "kronos-detach-partition": (
        "DETACH PARTITION from a table with a DEFAULT partition: CONCURRENTLY is refused "
        "there, so the plain DETACH holds ACCESS EXCLUSIVE on the whole table while it waits "
        "and runs (every insert stops), and new rows of the detached range land in the "
        "default partition afterwards",
        "leave retention to `kronos-db partitions rotate` (bounded locks, rows moved), or "
        "say in a waiver how the default partition is handled",
    ),
    "kronos-detach-default-partition": (
        "detaching the DEFAULT partition: from then on a row outside every range is refused "
        "(23514) instead of kept",
        "keep the default partition; `kronos-db partitions rotate` empties it safely",
    ),
    "kronos-needs-no-transaction": (
        "this statement cannot run inside a transaction block, and this revision runs in one: "
        "it fails (25001) when it is applied",
        "put `-- kronos: no-transaction` on a line of its own in the file (each statement then "
        "runs on its own, resumably)",
    ),
    "kronos-directive-misplaced": (
        "`-- kronos: concurrently-per-partition` only applies to a CREATE INDEX that names "
        "its index, in a revision marked `-- kronos: no-transaction`",
        "move the directive, or mark the file `-- kronos: no-transaction`",
    ),
    "kronos-unreasoned-waiver": (
        "a waiver must name its rules and say why: `-- kronos: waive RULE: reason`",
        "write the reason a reviewer needs (table size, traffic, a maintenance window)",
    ),
}

_WAIVER = re.compile(
    r"^\s*--\s*kronos:\s*waive\b\s*(?P<rules>[a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*)?\s*"
    r"(?::\s*(?P<reason>.*?))?\s*$",
    re.IGNORECASE,
)
_SQUAWK_IGNORE = re.compile(r"--\s*squawk-ignore", re.IGNORECASE)
MINIMUM_REASON = 12  # characters: "small table" is not a reason, "routes has 40 rows" is
_TABLE_PATTERNS = [
    re.compile(
        rf"^\s*CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:TEMP(?:ORARY)?\s+|UNLOGGED\s+)?TABLE\s+"
        rf"(?:IF\s+NOT\s+EXISTS\s+)?(?P<table>{QUALIFIED_NAME})",
        re.IGNORECASE,
    ),
    re.compile(
        rf"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{QUALIFIED_NAME})",
        re.IGNORECASE,
    ),
    re.compile(
        rf"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\b.*?\bON\s+(?:ONLY\s+)?(?P<table>{QUALIFIED_NAME})",
        re.IGNORECASE | re.DOTALL,
    ),
    re.compile(
        rf"^\s*DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<table>{QUALIFIED_NAME})", re.IGNORECASE
    ),
    re.compile(
        rf"^\s*(?:LOCK\s+(?:TABLE\s+)?|TRUNCATE\s+(?:TABLE\s+)?|VACUUM\s+(?:\(.*?\)\s*)?(?:FULL\s+)?"
        rf"|CLUSTER\s+|REINDEX\s+(?:\(.*?\)\s*)?TABLE\s+(?:CONCURRENTLY\s+)?|INSERT\s+INTO\s+"
        rf"|UPDATE\s+|DELETE\s+FROM\s+)(?:ONLY\s+)?(?P<table>{QUALIFIED_NAME})",
        re.IGNORECASE,
    ),
]
_PARTITIONED_TABLE = re.compile(
    rf"^\s*CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<table>{QUALIFIED_NAME})"
    r"\s*\(.*\)\s*PARTITION\s+BY\b",
    re.IGNORECASE | re.DOTALL,
)
_DEFAULT_PARTITION = re.compile(
    rf"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<partition>{QUALIFIED_NAME})\s+"
    rf"PARTITION\s+OF\s+(?P<table>{QUALIFIED_NAME})\s+DEFAULT\b",
    re.IGNORECASE,
)
_DETACH = re.compile(
    rf"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{QUALIFIED_NAME})\s+"
    rf"DETACH\s+PARTITION\s+(?P<partition>{QUALIFIED_NAME})",
    re.IGNORECASE,
)
_OUTSIDE_TRANSACTION = re.compile(
    r"^\s*(?:(?:CREATE|DROP)\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\b"
    r"|REINDEX\b.*\bCONCURRENTLY\b|ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY\b"
    r"|VACUUM\b|CREATE\s+DATABASE\b|DROP\s+DATABASE\b|ALTER\s+SYSTEM\b)",
    re.IGNORECASE | re.DOTALL,
)
_SERIAL = re.compile(r"\b(?:small)?serial\b|\bGENERATED\b.*\bAS\s+IDENTITY\b", re.IGNORECASE)


def bare_name(name: str) -> str:
    """``public."Logs"`` → ``Logs``; ``logs`` → ``logs``: tables are compared by name."""
    parts = re.split(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", name.strip())
    return unquote(parts[-1])


def statement_table(statement: Statement) -> str | None:
    """The table a statement acts on, by name, when it is one of the table statements."""
    for pattern in _TABLE_PATTERNS:
        match = pattern.match(statement.body)
        if match:
            return bare_name(match.group("table"))
    return None


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class TableActivity:
    """A live table, as lint sees it."""

    name: str
    present: bool
    rows: int
    bytes: int
    writes: int  # cumulative inserts + updates + deletes
    partitioned: bool
    default_partition: str | None
    writes_per_second: float = 0.0

    def describe(self) -> str:
        size = _human_bytes(self.bytes)
        return f"{self.name}: ~{self.rows:,} rows, {size}, {self.writes_per_second:,.1f} writes/s"


@dataclasses.dataclass(frozen=True)
class Finding:
    file: str
    line: int
    column: int
    rule: str
    source: Literal["squawk", "kronos"]
    level: Level
    message: str
    help: str
    table: str | None
    revision: str | None
    released: bool
    context: str  # why this level: the table's size and traffic, new table, unknown size…
    waiver: str | None = None  # the reason, when level is "waived"

    @property
    def blocking(self) -> bool:
        return self.level == "error" and not self.released


@dataclasses.dataclass(frozen=True)
class LintReport:
    files: tuple[str, ...]
    findings: tuple[Finding, ...]
    database: str | None  # the live database consulted, None without one

    @property
    def blocking(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.blocking)

    def counts(self) -> dict[str, int]:
        return {level: sum(1 for f in self.findings if f.level == level) for level in LEVELS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "database": self.database,
            "counts": self.counts(),
            "blocking": len(self.blocking),
            "findings": [{**dataclasses.asdict(f), "blocking": f.blocking} for f in self.findings],
        }


@dataclasses.dataclass(frozen=True)
class LintFile:
    path: Path
    shown: str  # relative to the tree when it is in one
    revision: str | None
    released: bool


class LintError(KronosError):
    """Lint could not run."""


# --------------------------------------------------------------------------- squawk


def squawk_program(settings: LintSettings) -> str:
    """The squawk binary: configured, else beside this Python (the venv), else on PATH."""
    if settings.squawk:
        found = shutil.which(settings.squawk)
        if found is None:
            raise LintError(f"[lint] squawk = {settings.squawk!r}: no such program")
        return found
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return str(beside)
    found = shutil.which("squawk")
    if found is None:
        raise LintError(
            "squawk (the squawk-cli package, a kronos-db dependency) is not installed: "
            "`pip install squawk-cli`, or set [lint] squawk"
        )
    return found


def run_squawk(
    program: str, paths: Sequence[Path], *, in_transaction: bool, pg_version: str = "15"
) -> list[dict[str, Any]]:
    """squawk's findings for ``paths``, as its JSON reporter gives them."""
    if not paths:
        return []
    argv = [
        program,
        "--reporter",
        "json",
        "--pg-version",
        pg_version,
        "--exclude",
        ",".join(EXCLUDED_RULES),
    ]
    if in_transaction:
        argv.append("--assume-in-transaction")
    argv += [str(path) for path in paths]
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LintError(f"squawk did not run: {exc}") from None
    try:
        found = json.loads(completed.stdout or "[]")
    except json.JSONDecodeError:
        found = None
    if completed.returncode not in (0, 1) or not isinstance(found, list):
        reason = (completed.stderr or completed.stdout).strip().splitlines()
        raise LintError(
            f"squawk failed (exit {completed.returncode}): {reason[0] if reason else 'no output'}"
        )
    return found


# --------------------------------------------------------------------------- what to lint


@dataclasses.dataclass(frozen=True)
class TreeFacts:
    """What the migration tree says about partitioning, known without a database."""

    partitioned: frozenset[str]
    default_partitions: Mapping[str, str]  # table -> its default partition

    @classmethod
    def of(cls, scripts: Iterable[MigrationScript], settings: Settings) -> TreeFacts:
        partitioned = {bare_name(settings.partitions.table)}
        defaults: dict[str, str] = {}
        for script in scripts:
            for statement in script.statements:
                match = _PARTITIONED_TABLE.match(statement.body)
                if match:
                    partitioned.add(bare_name(match.group("table")))
                match = _DEFAULT_PARTITION.match(statement.body)
                if match:
                    defaults[bare_name(match.group("table"))] = bare_name(match.group("partition"))
        return cls(frozenset(partitioned), defaults)


def released_checksums(tree_root: Path) -> dict[str, str]:
    """``migrations/released.sha256`` of a tree: relative path → checksum."""
    path = tree_root / "migrations" / "released.sha256"
    if not path.is_file():
        return {}
    released: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, _, relative = line.partition("  ")
            released[relative.strip()] = digest.strip()
    return released


def lint_revisions(
    settings: Settings,
    *,
    target: db.Target | None = None,
    revisions: Collection[str] | None = None,
) -> LintReport:
    """Lint the upgrade SQL of the tree's revisions (all, or those named), oldest first. With
    ``target``, live table sizes and write rates set the levels."""
    from kronos_db.migration_tree import MigrationTree  # Alembic: only when it lints a tree

    tree = MigrationTree.from_settings(settings)
    every = tree.revisions()
    released = released_checksums(tree.root)
    files = []
    for script in every:
        if revisions is not None and script.revision not in revisions:
            continue
        path = tree.upgrade_sql(script)
        shown = _relative(path, tree.root)
        files.append(
            LintFile(
                path=path,
                shown=shown,
                revision=script.revision,
                released=path.is_file() and released.get(shown) == checksum(path),
            )
        )
    scripts = [MigrationScript.load(tree.upgrade_sql(s)) for s in every]
    return _lint(settings, files, TreeFacts.of(scripts, settings), target)


def unreleased(settings: Settings, revisions: Iterable[str]) -> list[str]:
    """The revisions among ``revisions`` whose upgrade SQL is not released (as listed in
    ``migrations/released.sha256``, checksum included)."""
    from kronos_db.migration_tree import MigrationTree  # Alembic: only when it lints a tree

    tree = MigrationTree.from_settings(settings)
    released = released_checksums(tree.root)
    wanted = set(revisions)
    found = []
    for script in tree.revisions():
        if script.revision in wanted:
            path = tree.upgrade_sql(script)
            if released.get(_relative(path, tree.root)) != checksum(path):
                found.append(script.revision)
    return found


def describe(finding: Finding) -> str:
    """One line: where, level, rule, what, and why at that level."""
    context = f" [{finding.context}]" if finding.context else ""
    return (
        f"{finding.file}:{finding.line}: {finding.level} {finding.rule}: {finding.message}{context}"
    )


def lint_files(
    settings: Settings, paths: Sequence[Path], *, target: db.Target | None = None
) -> LintReport:
    """Lint SQL files given by path (a revision's, or any migration script)."""
    from kronos_db.migration_tree import MigrationTree  # Alembic: only when it lints a tree

    tree = MigrationTree.from_settings(settings)
    released = released_checksums(tree.root)
    by_stem = {Path(s.path).stem: s.revision for s in tree.revisions()}
    files = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        resolved = path.resolve()
        shown = _relative(resolved, tree.root)
        stem = resolved.name.removesuffix(".sql").rsplit(".", 1)[0]
        files.append(
            LintFile(
                path=resolved,
                shown=shown if shown != str(resolved) else str(path),
                revision=by_stem.get(stem),
                released=released.get(shown) == checksum(resolved),
            )
        )
    every = [MigrationScript.load(tree.upgrade_sql(s)) for s in tree.revisions()]
    every += [MigrationScript.load(f.path) for f in files]
    return _lint(settings, files, TreeFacts.of(every, settings), target)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- the engine


@dataclasses.dataclass(frozen=True)
class _Raw:
    """A finding before its level is judged."""

    file: LintFile
    line: int
    column: int
    rule: str
    source: Literal["squawk", "kronos"]
    message: str
    help: str
    statement: Statement | None


def _lint(
    settings: Settings, files: Sequence[LintFile], facts: TreeFacts, target: db.Target | None
) -> LintReport:
    program = squawk_program(settings.lint)
    scripts = {f.path: MigrationScript.load(f.path) for f in files}
    conn = db.connect(target) if target is not None else None
    try:
        pg_version = "15"
        if conn is not None:
            pg_version = f"{conn.info.server_version // 10000}.0"
        raw: list[_Raw] = []
        for in_transaction in (True, False):
            group = [f for f in files if scripts[f.path].transactional == in_transaction]
            by_path = {str(f.path): f for f in group}
            for item in run_squawk(
                program,
                [f.path for f in group],
                in_transaction=in_transaction,
                pg_version=pg_version,
            ):
                lint_file = by_path.get(str(Path(item["file"]).resolve())) or by_path.get(
                    item["file"]
                )
                if lint_file is None:
                    continue
                line = int(item.get("line", 0)) + 1  # squawk counts lines from 0
                raw.append(
                    _Raw(
                        file=lint_file,
                        line=line,
                        column=int(item.get("column", 0)) + 1,
                        rule=str(item["rule_name"]),
                        source="squawk",
                        message=str(item.get("message") or ""),
                        help=str(item.get("help") or ""),
                        statement=_statement_at(scripts[lint_file.path], line),
                    )
                )
        for lint_file in files:
            raw += _kronos_findings(lint_file, scripts[lint_file.path])
        judge = _Judge(settings.lint, facts, conn, scripts, files)
        findings = judge.findings(raw)
    finally:
        if conn is not None:
            conn.close()
    findings.sort(key=lambda f: (f.file, f.line, LEVELS.index(f.level), f.rule))
    return LintReport(
        files=tuple(f.shown for f in files),
        findings=tuple(findings),
        database=target.describe() if target is not None else None,
    )


def _statement_at(script: MigrationScript, line: int) -> Statement | None:
    for statement in script.statements:
        if statement.first_line <= line <= statement.end_line:
            return statement
    return None


def _kronos_findings(lint_file: LintFile, script: MigrationScript) -> list[_Raw]:
    """The findings of Kronos's own rules that need no table facts (waivers, directives)."""
    found: list[_Raw] = []

    def add(rule: str, line: int, statement: Statement | None, detail: str = "") -> None:
        message, help_text = KRONOS_RULES[rule]
        found.append(
            _Raw(
                lint_file,
                line,
                1,
                rule,
                "kronos",
                f"{message}{detail}",
                help_text,
                statement,
            )
        )

    lines = script.text.splitlines()
    for number, text in enumerate(lines, start=1):
        if _SQUAWK_IGNORE.search(text):
            add(
                "kronos-unreasoned-waiver",
                number,
                _statement_at(script, number),
                " (a squawk-ignore comment silences a rule without saying why)",
            )
            continue
        match = _WAIVER.match(text)
        if match and (
            not match.group("rules") or len((match.group("reason") or "").strip()) < MINIMUM_REASON
        ):
            add("kronos-unreasoned-waiver", number, _statement_at(script, number))
    for statement in script.statements:
        if statement.per_partition and (
            script.transactional or statement.index is None or statement.index.name is None
        ):
            add("kronos-directive-misplaced", statement.line, statement)
        elif script.transactional and _OUTSIDE_TRANSACTION.match(statement.body):
            add("kronos-needs-no-transaction", statement.line, statement)
    return found


def waivers(statement: Statement | None) -> dict[str, str]:
    """The reasoned waivers on the comment lines leading ``statement``: rule → reason."""
    if statement is None:
        return {}
    found: dict[str, str] = {}
    for text in statement.text.splitlines():
        if not text.strip().startswith("--"):
            break
        match = _WAIVER.match(text)
        if not match or not match.group("rules"):
            continue
        reason = (match.group("reason") or "").strip()
        if len(reason) < MINIMUM_REASON:
            continue
        for rule in re.split(r"\s*,\s*", match.group("rules").strip().lower()):
            found[rule] = reason
    return found


class _Judge:
    """Turns raw findings into judged ones: Kronos's table rules, levels, waivers."""

    def __init__(
        self,
        settings: LintSettings,
        facts: TreeFacts,
        conn: psycopg.Connection[Any] | None,
        scripts: Mapping[Path, MigrationScript],
        files: Sequence[LintFile],
    ) -> None:
        self.settings = settings
        self.facts = facts
        self.conn = conn
        self.scripts = scripts
        self.files = files
        self._activity: dict[str, TableActivity] = {}

    # -- live facts

    def _load_activity(self, tables: set[str], *, rates: bool) -> None:
        if self.conn is None or not tables:
            return
        first = self._read(tables)
        if not rates:
            self._activity.update(first)
            return
        interval = self.settings.sample_interval.total_seconds()
        if interval > 0:
            time.sleep(interval)
            second = self._read(tables)
            elapsed = interval
        else:
            second = first
            row = self.conn.execute(query("lint", "select_stats_age")).fetchone()
            elapsed = max(float(row[0]) if row else 1.0, 1.0)
            first = {name: dataclasses.replace(a, writes=0) for name, a in first.items()}
        for name, later in second.items():
            delta = later.writes - first[name].writes
            self._activity[name] = dataclasses.replace(
                later, writes_per_second=max(delta, 0) / elapsed
            )

    def _read(self, tables: set[str]) -> dict[str, TableActivity]:
        assert self.conn is not None
        with self.conn.cursor(row_factory=class_row(TableActivity)) as cur:
            rows = cur.execute(
                query("lint", "select_table_activity"), {"tables": sorted(tables)}
            ).fetchall()
        return {row.name: row for row in rows}

    def _partitioned(self, table: str) -> bool:
        live = self._activity.get(table)
        if live is not None and live.present:
            return live.partitioned
        return table in self.facts.partitioned

    def _default_partition(self, table: str) -> str | None:
        live = self._activity.get(table)
        if live is not None and live.present:
            return live.default_partition
        return self.facts.default_partitions.get(table)

    # -- judging

    def findings(self, raw: list[_Raw]) -> list[Finding]:
        tables = {t for r in raw if r.statement and (t := statement_table(r.statement))}
        for script in self.scripts.values():
            tables.update(t for s in script.statements if (t := statement_table(s)))
        # first the facts (partitioning, presence), then rates only if a finding needs them
        self._load_activity(tables, rates=False)
        raw = raw + self._table_rules()
        raw = self._superseded(raw)
        needs_rate = {
            t
            for r in raw
            if (r.rule in BLOCKING_RULES or r.rule.startswith("kronos-"))
            and r.statement
            and (t := statement_table(r.statement))
            and self._activity.get(t, _ABSENT).present
        }
        if needs_rate:
            self._load_activity(needs_rate, rates=True)
        judged = []
        for item in raw:
            if item.rule == "prefer-robust-stmts" and self.scripts[item.file.path].transactional:
                continue  # a failed transactional revision rolls back whole
            judged.append(self._judge(item))
        return judged

    def _table_rules(self) -> list[_Raw]:
        found: list[_Raw] = []
        for lint_file in self.files:
            script = self.scripts[lint_file.path]
            created = _created_tables(script)
            for statement in script.statements:
                found += self._statement_rules(lint_file, statement, created)
        return found

    def _statement_rules(
        self, lint_file: LintFile, statement: Statement, created: set[str]
    ) -> list[_Raw]:
        found: list[_Raw] = []

        def add(rule: str, detail: str = "") -> None:
            message, help_text = KRONOS_RULES[rule]
            found.append(
                _Raw(
                    lint_file,
                    statement.line,
                    1,
                    rule,
                    "kronos",
                    f"{message}{detail}",
                    help_text,
                    statement,
                )
            )

        index = statement.index
        if index is not None and not statement.per_partition:
            table = bare_name(index.table)
            if table not in created and not index.only and self._partitioned(table):
                if index.concurrently:
                    add("kronos-concurrent-index-on-partitioned-table", f" ({table})")
                else:
                    add("kronos-index-on-partitioned-table", f" ({table})")
        detach = _DETACH.match(statement.body)
        if detach is not None:
            table = bare_name(detach.group("table"))
            partition = bare_name(detach.group("partition"))
            default = self._default_partition(table)
            if default is not None and partition == default:
                add("kronos-detach-default-partition", f" ({table}: {default})")
            elif default is not None:
                add("kronos-detach-partition", f" ({table} has {default})")
        return found

    def _superseded(self, raw: list[_Raw]) -> list[_Raw]:
        """squawk's finding where a Kronos rule says more about the same statement, or where
        the directive already does the right thing."""
        kronos_on = {
            (r.file.path, r.statement.number) for r in raw if r.source == "kronos" and r.statement
        }
        kept = []
        for item in raw:
            statement = item.statement
            if item.source == "squawk" and statement is not None:
                if statement.per_partition and item.rule in {
                    "require-concurrent-index-creation",
                    "prefer-robust-stmts",
                }:
                    continue
                if (item.file.path, statement.number) in kronos_on and item.rule in {
                    "require-concurrent-index-creation",
                    "require-concurrent-partition-detach",
                    "ban-concurrent-index-creation-in-transaction",
                }:
                    continue
            kept.append(item)
        return kept

    def _judge(self, item: _Raw) -> Finding:
        table = statement_table(item.statement) if item.statement else None
        script = self.scripts[item.file.path]
        level, context = self._level(item, table, script)
        reason = waivers(item.statement).get(item.rule)
        if reason is not None and item.rule != "kronos-unreasoned-waiver":
            level = "waived"
        return Finding(
            file=item.file.shown,
            line=item.line,
            column=item.column,
            rule=item.rule,
            source=item.source,
            level=level,
            message=item.message,
            help=item.help,
            table=table,
            revision=item.file.revision,
            released=item.file.released,
            context=context,
            waiver=reason,
        )

    def _level(self, item: _Raw, table: str | None, script: MigrationScript) -> tuple[Level, str]:
        rule = item.rule
        if rule in {
            "kronos-unreasoned-waiver",
            "kronos-directive-misplaced",
            "kronos-needs-no-transaction",
        }:
            return "error", "fails at run time" if rule != "kronos-unreasoned-waiver" else ""
        if rule in FAILING_RULES:
            return "error", "fails at run time, or loses data"
        if rule == "prefer-robust-stmts":
            return "info", (
                "kronos-db records each statement of a no-transaction revision once done; only "
                "the statement running when a run dies runs again"
            )
        if rule in STYLE_RULES:
            if rule == "prefer-bigint-over-int" and _SERIAL.search(_line(script, item.line)):
                return "warning", (
                    "a sequence-fed int4 id stops at 2,147,483,647: at 1,000 rows (or upserts) "
                    "a second it runs out in about 25 days"
                )
            return "info", ""
        if table is not None and table in _created_tables(script):
            return "info", f"{table} is created by this revision: empty while it runs"
        live = self._activity.get(table) if table else None
        if live is not None and not live.present:
            return "info", f"{table} does not exist yet: a pending revision creates it"
        if rule in BREAKING_RULES:
            return "warning", "the services still using the old shape break (expand/contract)"
        if rule not in BLOCKING_RULES and not rule.startswith("kronos-"):
            return "warning", ""
        if live is None:
            if self.conn is not None or table is None:
                return "error", ""
            return "error", (
                "table size unknown (no database): lint with --database-url to judge it on the "
                "live table, or waive it with a reason"
            )
        small = (
            live.rows < self.settings.small_table_rows
            and live.writes_per_second < self.settings.busy_writes_per_second
        )
        if small and not rule.startswith("kronos-"):
            return "warning", f"{live.describe()}: small and quiet, the lock is short"
        return "error", live.describe()


_ABSENT = TableActivity("", False, 0, 0, 0, False, None)


def _line(script: MigrationScript, number: int) -> str:
    lines = script.text.splitlines()
    return lines[number - 1] if 0 < number <= len(lines) else ""


def _created_tables(script: MigrationScript) -> set[str]:
    created = set()
    for statement in script.statements:
        match = _TABLE_PATTERNS[0].match(statement.body)
        if match:
            created.add(bare_name(match.group("table")))
    return created


def _human_bytes(value: int) -> str:
    number = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if number < 1024:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TB"
