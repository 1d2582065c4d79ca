"""Benchmark: revision 0011 (rate_limits.id to bigint, online) rehearsed under load, beside the
plain ``ALTER COLUMN … TYPE bigint`` it replaces, rehearsed the same way in the same run.

    .venv/bin/python bench/rehearse_0011.py [--server postgresql://postgres@127.0.0.1:5432]
                                            [--users 1000] [--routes 1000] [--rate 50]

A database at revision 0010 gets ``users x routes`` rate-limit counters (1,000,000 by default),
100,000 sessions and 200,000 log lines. ``kronos-db migrate --rehearse`` (the library call)
then copies it whole (``sample_rows = 0``) into a scratch database and applies the pending
revision under the synthetic workload (``--rate`` statements per second of each kind: log
insert, session lookup, session update, queue insert, rate-limit upsert). Twice:

1. 0011 as shipped: a new column kept in sync, batched backfill, CHECK NOT VALID + VALIDATE,
   unique index CONCURRENTLY, a short swap;
2. the baseline, in a copy of the tree whose 0011 is the one-statement version
   (``ALTER TABLE rate_limits ALTER COLUMN id TYPE bigint``), which rewrites the table and its
   indexes under ACCESS EXCLUSIVE.

Printed per run: how long it took, the worst wait of each kind of service statement, the
ACCESS EXCLUSIVE lock on rate_limits and how long it was held, the tables rewritten.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from kronos_db import db, migrations, rehearse
from kronos_db.config import MigrationSettings, RehearseSettings, Settings
from kronos_db.migration_sql import sql_path
from kronos_db.resources import resource_root

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
NAIVE = """\
-- the plain way: rewrites rate_limits and its indexes under ACCESS EXCLUSIVE
ALTER TABLE rate_limits ALTER COLUMN id TYPE bigint;
ALTER SEQUENCE rate_limits_id_seq AS bigint;
"""


def load(url: str, users: int, routes: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (username, email, password_hash)"
            " SELECT 'u' || i, 'u' || i || '@x', %s FROM generate_series(1, %s) AS i",
            (HASH, users),
        )
        conn.execute(
            "INSERT INTO routes (path, service, method)"
            " SELECT '/r' || i, 'svc', 'GET' FROM generate_series(1, %s) AS i",
            (routes,),
        )
        conn.execute(
            "INSERT INTO rate_limits (user_id, route_id, request_count)"
            " SELECT u, r, 1 FROM generate_series(1, %s) AS u, generate_series(1, %s) AS r",
            (users, routes),
        )
        conn.execute(
            "INSERT INTO sessions (user_id, token)"
            " SELECT 1 + i %% %s, md5(i::text) FROM generate_series(1, 100000) AS i",
            (users,),
        )
        conn.execute(
            "INSERT INTO logs (service_name, level, message)"
            " SELECT 'svc', 'INFO', 'line ' || i FROM generate_series(1, 200000) AS i"
        )
        conn.execute("VACUUM ANALYZE")


def naive_tree(directory: Path) -> Path:
    root = directory / "tree"
    shutil.copytree(resource_root() / "migrations", root / "migrations")
    shutil.copytree(resource_root() / "sql", root / "sql")
    (revision_file,) = (root / "migrations" / "versions").glob("0011_*.py")
    sql_path(revision_file, "upgrade").write_text(NAIVE, encoding="utf-8")
    return root


def show(label: str, report: rehearse.RehearsalReport) -> None:
    (step,) = report.revisions
    stalls = {s.kind: s for s in step.stalls}
    exclusive = [
        lock
        for lock in step.locks
        if lock.relation == "rate_limits" and lock.mode == "AccessExclusiveLock"
    ]
    held = (
        f"{exclusive[0].held_ms:,.0f} ms"
        if exclusive
        else f"never seen by the sampler (under {rehearse.SAMPLE_EVERY * 1000:.0f} ms)"
    )
    print(f"\n{label}: {step.seconds:.1f} s, {'FAILED' if step.failed else 'ok'}")
    for kind, stall in stalls.items():
        print(
            f"  {kind:<18} worst {stall.worst_ms:>8,.0f} ms  p99 {stall.p99_ms:>7,.0f} ms"
            f"  ({stall.statements} statements, {stall.errors} failed)"
        )
    print(f"  rate_limits ACCESS EXCLUSIVE held: {held}")
    print(f"  tables rewritten: {', '.join(step.rewritten) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    name = f"kronos_bench_0011_{secrets.token_hex(4)}"
    admin = psycopg.connect(f"{args.server}/postgres", autocommit=True)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{args.server}/{name}"
    try:
        target = db.resolve_target(url, Settings())
        migrations.upgrade(Settings(), target, "0010")
        load(url, args.users, args.routes)
        print(
            f"rate_limits: {args.users * args.routes:,} rows; workload {args.rate:g}"
            " statements/s of each kind; whole copy"
        )
        options = RehearseSettings(sample_rows=0, rate=args.rate)
        shipped = rehearse.rehearse(Settings(rehearse=options), target, "0011")
        with tempfile.TemporaryDirectory() as directory:
            tree = naive_tree(Path(directory))
            naive = rehearse.rehearse(
                Settings(migrations=MigrationSettings(directory=str(tree)), rehearse=options),
                target,
                "0011",
            )
        show("0011 as shipped (online)", shipped)
        show("baseline: ALTER COLUMN id TYPE bigint", naive)
        worst = {r: max(s.worst_ms for s in r.revisions[0].stalls) for r in (shipped, naive)}
        print(
            f"\nworst service wait, baseline / 0011: "
            f"{worst[naive]:,.0f} ms / {worst[shipped]:,.0f} ms = "
            f"{worst[naive] / max(worst[shipped], 1):.1f}x"
        )
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


if __name__ == "__main__":
    main()
