"""A test-owned primary and streaming standby: replication topologies the tests build themselves.

:func:`streaming_pair` makes a primary with ``initdb`` in a temporary directory, a standby of it
with ``pg_basebackup -R`` (streaming through a physical slot of its own), starts both on free
ports, and always stops and removes both, even when the test fails. As root, every server
program runs as the ``postgres`` user (PostgreSQL refuses to run as root). The shared server on
5432 is never touched. Both servers trust local connections, like the shared one.

The servers are tuned for tests: no fsync, small buffers, a status report from the standby
every second (so that the primary sees its replay position move quickly), WAL archiving on with
an ``archive_command`` that a test may swap for a failing one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
STANDBY_SLOT = "kronos_test_standby"
STANDBY_NAME = "replica1"

SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
port = {port}
fsync = off
synchronous_commit = on
full_page_writes = on
shared_buffers = 32MB
max_connections = 40
wal_level = replica
max_wal_senders = 8
max_replication_slots = 8
wal_keep_size = 0
max_wal_size = 1GB
hot_standby = on
wal_receiver_status_interval = 1s
archive_mode = on
archive_command = '/bin/true'
log_min_messages = warning
logging_collector = off
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``condition`` every 100 ms; an AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _as_postgres() -> dict[str, Any]:
    """subprocess arguments that run a program as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _run(argv: list[str], *, timeout: float = 120) -> None:
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        **_as_postgres(),
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({completed.returncode}): "
            f"{(completed.stderr or completed.stdout).strip()[-2000:]}"
        )


@dataclasses.dataclass(frozen=True)
class Server:
    """One PostgreSQL server of the topology: its data directory and port."""

    name: str
    data: Path
    port: int

    def url(self, dbname: str = "postgres", **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}" + (
            f"?{query}" if query else ""
        )

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url(dbname), **kwargs)

    def execute(self, statement: Any, params: Any = None, dbname: str = "postgres") -> Any:
        """Run one statement on its own connection; its first row (or None)."""
        with self.connect(dbname) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchone() if cursor.description else None

    def log(self) -> str:
        path = self.data.parent / f"{self.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self) -> None:
        _run(
            [
                str(BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.data.parent / f"{self.name}.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])


@dataclasses.dataclass(frozen=True)
class StreamingPair:
    """A primary and a standby streaming from it through the slot ``STANDBY_SLOT``."""

    primary: Server
    standby: Server
    directory: Path

    def multi_host_url(self, dbname: str, target_session_attrs: str) -> str:
        """A libpq multi-host URL naming the standby first, then the primary."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.standby.port},127.0.0.1:{self.primary.port}"
            f"/{dbname}?target_session_attrs={target_session_attrs}"
        )

    def wait_for_replay(self, timeout: float = 60) -> None:
        """Until the standby replayed everything the primary has written so far."""
        (target,) = self.primary.execute("SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        with self.standby.connect() as conn:
            while True:
                (done,) = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()  # type: ignore[misc]
                if done:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"the standby did not replay up to {target}")
                time.sleep(0.05)

    def wait_for_database(self, dbname: str, timeout: float = 60) -> None:
        """Until ``dbname``, created on the primary, can be connected to on the standby."""
        self.wait_for_replay(timeout)
        self.standby.execute("SELECT 1", dbname=dbname)

    @contextlib.contextmanager
    def replay_paused(self) -> Iterator[None]:
        """Replay paused on the standby for the block (WAL is still received), then resumed."""
        self.standby.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            self.standby.execute("SELECT pg_wal_replay_resume()")


def _configure(data: Path, port: int, socket_dir: Path) -> None:
    with (data / "postgresql.conf").open("a", encoding="utf-8") as handle:
        handle.write(SETTINGS.format(port=port, socket_dir=socket_dir))


def _initdb(server: Server, socket_dir: Path) -> Server:
    """A new data directory for ``server``, trusting local connections, with ``SETTINGS``."""
    _run(
        [
            str(BIN / "initdb"),
            "-D",
            str(server.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
    )
    _configure(server.data, server.port, socket_dir)
    return server


def _wait_streaming(primary: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = primary.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        if row and row[0]:
            return
        time.sleep(0.1)
    raise RuntimeError("the standby never started streaming")


def _directory(prefix: str) -> Path:
    """A temporary directory the ``postgres`` user owns (skip when PostgreSQL is missing)."""
    if not (BIN / "pg_basebackup").exists():
        pytest.skip("PostgreSQL 15's server programs are not installed: run .ci/run")
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    return directory


@contextlib.contextmanager
def streaming_pair() -> Iterator[StreamingPair]:
    """Build, start and always tear down a primary and its streaming standby."""
    directory = _directory("kronos-standby-")
    started: list[Server] = []
    try:
        primary = _initdb(Server("primary", directory / "primary", free_port()), directory)
        primary.start()
        started.append(primary)
        standby = Server("standby", directory / "standby", free_port())
        _run(
            [
                str(BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(standby.data),
                "--write-recovery-conf",
                "--wal-method=stream",
                "--create-slot",
                f"--slot={STANDBY_SLOT}",
                "--checkpoint=fast",
                "--no-sync",
            ]
        )
        with (standby.data / "postgresql.conf").open("a", encoding="utf-8") as handle:
            # cluster_name is the walreceiver's application_name: the name the primary sees
            handle.write(f"port = {standby.port}\ncluster_name = '{STANDBY_NAME}'\n")
        standby.start()
        started.append(standby)
        _wait_streaming(primary)
        yield StreamingPair(primary, standby, directory)
    finally:
        for server in reversed(started):
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def standalone_server(extra_settings: str = "") -> Iterator[Server]:
    """Build, start and always tear down one server of its own (initdb in a temporary
    directory, a free port) with ``SETTINGS`` plus ``extra_settings``: for a situation that
    needs a setting the shared server must not be restarted for (prepared transactions need
    max_prepared_transactions > 0; a slot needs wal_level = replica; archiving, archive_mode)."""
    directory = _directory("kronos-server-")
    server = Server("server", directory / "server", free_port())
    try:
        _initdb(server, directory)
        with (server.data / "postgresql.conf").open("a", encoding="utf-8") as handle:
            handle.write(extra_settings + "\n")
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
