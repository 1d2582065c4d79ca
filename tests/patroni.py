"""A real Patroni cluster for the tests: one etcd and two PostgreSQL 15 nodes.

:func:`patroni_cluster` starts Debian's ``etcd`` (v3 API) and two ``patroni`` processes, each
with its own configuration, data directory, PostgreSQL port and REST API port (all free
ports), in a temporary directory; it waits until the first node leads and the second streams
from it, and always stops and removes everything, even when the test fails. As root, etcd,
Patroni and PostgreSQL run as the ``postgres`` user. The shared server is never touched.

Timings are short so that a switchover takes seconds: ``loop_wait`` 1 s, ``ttl`` 20 s (the
least Patroni accepts), standbys report their position every second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from standby import BIN, free_port, wait_for

PATRONI = Path("/usr/bin/patroni")
ETCD = Path("/usr/bin/etcd")
SCOPE = "kronos-test"


def _as_postgres() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclasses.dataclass
class Node:
    """One Patroni member: its PostgreSQL port, its REST API port, its directory."""

    name: str
    pg_port: int
    api_port: int
    directory: Path

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{dbname}"

    def api(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> int:
        """The HTTP status of a request to this member's REST API (0: unreachable)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            # always http://127.0.0.1:<port>/…: no file: or custom scheme reaches here
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def is_leader(self) -> bool:
        return self.api("/leader", timeout=2) == 200

    def is_streaming_replica(self) -> bool:
        if self.api("/replica", timeout=2) != 200:
            return False
        try:
            with psycopg.connect(self.url(), autocommit=True, connect_timeout=2) as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
        except psycopg.Error:
            return False
        return row is not None and row[0] == "streaming"


@dataclasses.dataclass(frozen=True)
class Cluster:
    directory: Path
    nodes: tuple[Node, ...]

    def leader(self) -> Node:
        leaders = [node for node in self.nodes if node.is_leader()]
        assert len(leaders) == 1, f"leaders: {[node.name for node in leaders]}"
        return leaders[0]

    def multi_host_url(self, dbname: str, target_session_attrs: str = "read-write") -> str:
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs={target_session_attrs}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )


def _config(node: Node, etcd_port: int, socket_dir: Path) -> str:
    return f"""
scope: {SCOPE}
namespace: /kronos-test/
name: {node.name}
log:
  level: WARNING
restapi:
  listen: 127.0.0.1:{node.api_port}
  connect_address: 127.0.0.1:{node.api_port}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 8
        max_replication_slots: 8
        wal_log_hints: "on"
        max_connections: 60
        shared_buffers: 32MB
        fsync: "off"
        wal_receiver_status_interval: 1s
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
  pg_hba:
    - local all all trust
    - host replication all 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{node.pg_port}
  connect_address: 127.0.0.1:{node.pg_port}
  data_dir: {node.directory / "data"}
  bin_dir: {BIN}
  pgpass: {node.directory / "pgpass"}
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: {socket_dir}
"""


def _start(argv: list[str], log: Path, directory: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            argv,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(directory),
            **_as_postgres(),
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # Patroni stops its PostgreSQL on the way out
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def patroni_cluster() -> Iterator[Cluster]:
    """One etcd and two Patroni nodes; node1 leads, node2 streams from it."""
    for program in (PATRONI, ETCD, BIN / "initdb"):
        if not program.exists():
            pytest.skip(f"{program} is not installed: run .ci/run (patroni, etcd-server)")
    directory = Path(tempfile.mkdtemp(prefix="kronos-patroni-"))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    processes: list[subprocess.Popen[bytes]] = []
    nodes = tuple(
        Node(f"node{index}", free_port(), free_port(), directory / f"node{index}")
        for index in (1, 2)
    )
    try:
        etcd_port, peer_port = free_port(), free_port()
        processes.append(
            _start(
                [
                    str(ETCD),
                    "--name=kronos-test",
                    f"--data-dir={directory / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=kronos-test=http://127.0.0.1:{peer_port}",
                    "--log-level=error",
                ],
                directory / "etcd.log",
                directory,
            )
        )
        for node in nodes:
            node.directory.mkdir()
            config = node.directory / "patroni.yml"
            config.write_text(_config(node, etcd_port, directory), encoding="utf-8")
            if os.geteuid() == 0:
                for path in (node.directory, config):
                    os.chown(path, postgres.pw_uid, postgres.pw_gid)
        cluster = Cluster(directory, nodes)
        for node in nodes:
            processes.append(
                _start(
                    [str(PATRONI), str(node.directory / "patroni.yml")],
                    directory / f"{node.name}.log",
                    directory,
                )
            )
            if node is nodes[0]:
                wait_for(node.is_leader, f"{node.name} to bootstrap and lead", timeout=120)
        wait_for(nodes[1].is_streaming_replica, f"{nodes[1].name} to stream", timeout=120)
        yield cluster
    finally:
        for process in reversed(processes):
            _stop(process)
        for data in directory.glob("node*/data"):  # a postmaster that outlived its Patroni
            if (data / "postmaster.pid").exists():
                subprocess.run(
                    [str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                    capture_output=True,
                    check=False,
                    **_as_postgres(),
                )
        shutil.rmtree(directory, ignore_errors=True)
