"""A real Patroni cluster with the same crontab on every node (tests/patroni.py builds it).

One scenario, as a Kronos cluster lives it: ``kronos-db maintain`` runs against each node's
own PostgreSQL (as a crontab on that node would), the services write through a multi-host
URL, and a switchover moves the leader while the leader's maintain is deleting. Only the
leader acts, before and after; no acknowledged row is lost, nothing expired is left, and no
job runs on two nodes at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from conftest import REPO, clean_environment
from patroni import Cluster, Node, patroni_cluster, wait_for

from kronos_db import db, migrations
from kronos_db.config import Settings

EXPIRED = 40_000
LIVE = 500


def seed(url: str, *, expired: int, live: int, label: str) -> None:
    """Expired and live sessions, expired cache rows, old processed messages."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (token, created_at, expires_at, last_active_at)"
            " SELECT 'expired-' || %(label)s || n, now() - interval '2 days',"
            "        now() - interval '1 day', now() - interval '1 day'"
            "   FROM generate_series(1, %(expired)s::integer) AS n",
            {"expired": expired, "label": label},
        )
        conn.execute(
            "INSERT INTO sessions (token, expires_at)"
            " SELECT 'live-' || %(label)s || n, now() + interval '1 day'"
            "   FROM generate_series(1, %(live)s::integer) AS n",
            {"live": live, "label": label},
        )
        conn.execute(
            "INSERT INTO cache (key, value, expires_at)"
            " SELECT 'expired-' || %(label)s || n, 'v', now() - interval '1 hour'"
            "   FROM generate_series(1, %(rows)s::integer) AS n",
            {"rows": expired // 10, "label": label},
        )
        conn.execute(
            "INSERT INTO message_queue (topic, payload, status, created_at, status_changed_at)"
            " SELECT 'old', 'x', 'processed', now() - interval '30 days',"
            "        now() - interval '30 days'"
            "   FROM generate_series(1, %(rows)s::integer) AS n",
            {"rows": expired // 10},
        )


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``kronos-db maintain --json`` on one node."""

    node: str
    started: float
    ended: float
    code: int
    report: dict[str, Any] | None
    stderr: str

    def job_window(self, job: str) -> tuple[float, float] | None:
        """When this run did ``job`` on a primary (its jobs run one after the other): it ran
        it, or failed while doing it; None when it skipped it or could not connect."""
        offset = self.started
        for outcome in (self.report or {}).get("jobs", []):
            if outcome["job"] == job:
                error = str(outcome.get("error") or "")
                acted = outcome["status"] == "ok" or (
                    outcome["status"] == "failed" and not error.startswith("cannot connect")
                )
                return (offset, offset + float(outcome["seconds"])) if acted else None
            offset += float(outcome["seconds"])
        return None

    def rows(self, job: str) -> int:
        for outcome in (self.report or {}).get("jobs", []):
            if outcome["job"] == job and outcome.get("result"):
                return int(outcome["result"]["rows"])
        return 0


def maintain(node: Node, config: Path) -> Run:
    """The crontab line of one node: maintain against that node's own PostgreSQL."""
    import subprocess

    started = time.monotonic()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "kronos_db",
            "maintain",
            "--json",
            "--config",
            str(config),
            "--database-url",
            node.url("kronos"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
        env=clean_environment(),
    )
    try:
        report = json.loads(completed.stdout) if completed.stdout.strip() else None
    except json.JSONDecodeError:
        report = None
    return Run(node.name, started, time.monotonic(), completed.returncode, report, completed.stderr)


class Cron(threading.Thread):
    """The crontab of one node, every ``every`` seconds."""

    def __init__(self, node: Node, config: Path, every: float, runs: list[Run]) -> None:
        super().__init__(daemon=True)
        self.node, self.config, self.every, self.runs = node, config, every, runs
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self.runs.append(maintain(self.node, self.config))
            self.stop.wait(max(0.0, self.every - (time.monotonic() - started)))


class Services(threading.Thread):
    """A session, a log row and a message every 10 ms through the multi-host URL; remembers
    every write the server acknowledged (committed)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.acknowledged: list[int] = []
        self.refused = 0

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        number = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                number += 1
                with conn.transaction():
                    token = f"service-{number}"
                    conn.execute(
                        "INSERT INTO sessions (token, expires_at)"
                        " VALUES (%s, now() + interval '1 day')",
                        (token,),
                    )
                    conn.execute(
                        "INSERT INTO logs (service_name, level, message)"
                        " VALUES ('test', 'info', %s)",
                        (token,),
                    )
                    conn.execute(
                        "INSERT INTO message_queue (topic, payload) VALUES ('service', %s)",
                        (token,),
                    )
                self.acknowledged.append(number)
            except psycopg.Error:
                self.refused += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.1)
                continue
            time.sleep(0.01)
        if conn is not None:
            conn.close()


def count(conn: psycopg.Connection[Any], statement: Any) -> int:
    row = conn.execute(statement).fetchone()
    assert row is not None
    return int(row[0])


def test_only_the_leader_acts_and_a_switchover_during_maintain_loses_nothing(
    tmp_path: Path,
) -> None:
    # small batches with a pause: the leader's maintain is still deleting when we switch
    config = tmp_path / "kronos.toml"
    config.write_text('[housekeeping]\nbatch_size = 500\nbatch_pause = "20ms"\n', encoding="utf-8")
    with patroni_cluster() as cluster:
        try:
            scenario(cluster, config)
        except BaseException:
            print(cluster.logs())  # pytest shows it with the failure
            raise


def scenario(cluster: Cluster, config: Path) -> None:
    leader = cluster.leader()
    (replica,) = (node for node in cluster.nodes if node is not leader)
    with psycopg.connect(leader.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE kronos")
    migrations.upgrade(
        Settings(), db.resolve_target(cluster.multi_host_url("kronos"), Settings()), "head"
    )

    # 1. the same crontab on both nodes: only the leader acts
    seed(leader.url("kronos"), expired=1000, live=10, label="first-")
    wait_for(replica.is_streaming_replica, "the replica to stream", timeout=120)
    on_replica = maintain(replica, config)
    assert on_replica.code == 0, on_replica.stderr
    assert on_replica.report is not None
    assert on_replica.report["skipped"].startswith("standby: skipped"), on_replica.report
    assert {job["status"] for job in on_replica.report["jobs"]} == {"skipped"}
    on_leader = maintain(leader, config)
    assert on_leader.code == 0, on_leader.stderr
    assert on_leader.report is not None and on_leader.report["skipped"] is None
    assert on_leader.rows("expire-sessions") == 1000

    # 2. a switchover while the leader's maintain deletes
    seed(leader.url("kronos"), expired=EXPIRED, live=LIVE, label="")
    services = Services(cluster.multi_host_url("kronos"))
    services.start()
    runs: list[Run] = []
    crons = [Cron(node, config, 1.0, runs) for node in cluster.nodes]
    for cron in crons:
        cron.start()
    try:

        def deleting() -> bool:
            with psycopg.connect(leader.url("kronos"), autocommit=True) as conn:
                left = count(conn, "SELECT count(*) FROM sessions WHERE token LIKE 'expired-%%'")
            return 0 < left < EXPIRED

        wait_for(deleting, "the leader's maintain to start deleting", timeout=120)
        switched_at = time.monotonic()
        status = leader.api("/switchover", {"leader": leader.name, "candidate": replica.name})
        assert status == 200, f"POST /switchover: {status}"
        wait_for(replica.is_leader, f"{replica.name} to lead", timeout=120)
        wait_for(
            leader.is_streaming_replica, f"{leader.name} to stream from {replica.name}", timeout=120
        )

        def done() -> bool:
            with psycopg.connect(replica.url("kronos"), autocommit=True) as conn:
                return (
                    count(conn, "SELECT count(*) FROM sessions WHERE expires_at < now()")
                    + count(conn, "SELECT count(*) FROM cache WHERE expires_at < now()")
                    == 0
                )

        wait_for(done, "the new leader's maintain to finish the work", timeout=180)
        time.sleep(2.5)  # a cron round on each node with the new roles
    finally:
        services.stop.set()
        for cron in crons:
            cron.stop.set()
        services.join()
        for cron in crons:
            cron.join()

    # 3. every row accounted for, on the new leader
    with psycopg.connect(replica.url("kronos"), autocommit=True) as conn:
        present = {
            row[0]
            for row in conn.execute(
                "SELECT token FROM sessions WHERE token LIKE 'service-%%'"
            ).fetchall()
        }
        lost = [n for n in services.acknowledged if f"service-{n}" not in present]
        assert not lost, f"{len(lost)} acknowledged sessions lost: {lost[:10]}"
        logs = count(conn, "SELECT count(*) FROM logs WHERE service_name = 'test'")
        distinct = count(
            conn, "SELECT count(DISTINCT message) FROM logs WHERE service_name = 'test'"
        )
        assert logs == distinct >= len(services.acknowledged)
        assert count(conn, "SELECT count(*) FROM message_queue WHERE topic = 'service'") >= len(
            services.acknowledged
        )
        assert count(conn, "SELECT count(*) FROM sessions WHERE token LIKE 'live-%%'") == LIVE + 10
        assert count(conn, "SELECT count(*) FROM sessions WHERE expires_at < now()") == 0
        assert count(conn, "SELECT count(*) FROM cache WHERE expires_at < now()") == 0
        assert count(conn, "SELECT count(*) FROM message_queue WHERE topic = 'old'") == 0, (
            "old processed messages left"
        )
    assert services.acknowledged and services.refused, "the services never saw the switchover"
    timeline = "\n".join(
        f"{run.started - switched_at:+6.1f}s {run.node}: exit {run.code} "
        f"{(run.report or {}).get('skipped') or ''} {run.stderr.strip()[-200:]}"
        for run in sorted(runs, key=lambda run: run.started)
    )
    # the old leader's run died with its connection mid-job: every other run exits 0
    failed = [run for run in runs if run.code != 0]
    assert all(run.node == leader.name and run.started < switched_at + 10 for run in failed), (
        timeline
    )
    # before the switchover the replica skipped, after it the old leader skips
    for run in runs:
        if run.node == replica.name and run.ended < switched_at:
            assert run.report and run.report["skipped"], timeline
        if run.node == leader.name and run.started > switched_at + 10:
            assert run.report and run.report["skipped"], timeline
    # no job ran on two nodes at once
    for job in ("rotate-partitions", "expire-sessions", "expire-cache", "purge-processed"):
        windows = [(run.node, run.job_window(job)) for run in runs]
        acting = [(node, window) for node, window in windows if window is not None]
        for node, (start, end) in acting:
            for other, (other_start, other_end) in acting:
                assert node == other or not (start < other_end and other_start < end), (
                    f"{job} ran on {node} and {other} at once\n{timeline}"
                )
