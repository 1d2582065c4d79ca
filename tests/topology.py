"""Topologies the tests build for themselves: a real PgBouncer in front of the test server.

Each process is started by a fixture on a free port, with its own configuration in a temporary
directory, and always stopped, even when the test fails. The shared server is never
reconfigured. Later topologies (standbys, Patroni) go beside this one.

PgBouncer (Debian's ``pgbouncer``) refuses to run as root; as root it is started with
``--user postgres`` and its directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from conftest import HOST, PORT, USER

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
PoolMode = Literal["session", "transaction"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: every database of the test server, under one pool mode."""

    port: int
    pool_mode: PoolMode
    pool_size: int
    directory: Path

    def url(self, dbname: str, user: str = USER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        # psycopg's own prepared statements would collide on shared server connections
        kwargs.setdefault("prepare_threshold", None)
        return psycopg.connect(self.url(dbname), **kwargs)

    def server_settings(self, dbname: str, names: Sequence[str]) -> dict[int, dict[str, str]]:
        """``{server pid: {setting: value}}`` for every server connection of the pool.

        One client per pool slot, each inside a transaction, so that each holds a server
        connection of its own while it reads: together they see the whole pool.
        """
        clients = [self.connect(dbname, autocommit=False) for _ in range(self.pool_size)]
        try:
            seen: dict[int, dict[str, str]] = {}
            for client in clients:
                pid = client.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
                seen[int(pid)] = {
                    name: str(
                        client.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]  # type: ignore[index]
                    )
                    for name in names
                }
            return seen
        finally:
            for client in clients:
                client.close()


def _write_config(
    directory: Path, port: int, pool_mode: PoolMode, pool_size: int, users: Sequence[str]
) -> Path:
    auth_file = directory / "users.txt"
    # trust, like the test server behind it: the names must still be listed, any password goes
    auth_file.write_text("".join(f'"{name}" ""\n' for name in (USER, *users)), encoding="utf-8")
    config = directory / "pgbouncer.ini"
    config.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={HOST} port={PORT}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                f"unix_socket_dir = {directory}",
                f"pidfile = {directory / 'pgbouncer.pid'}",
                f"logfile = {directory / 'pgbouncer.log'}",
                "auth_type = trust",
                f"auth_file = {auth_file}",
                f"pool_mode = {pool_mode}",
                f"default_pool_size = {pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                "max_client_conn = 500",
                # the clients' own: psycopg sends them at login
                "ignore_startup_parameters = extra_float_digits,options",
                # what PgBouncer does by default: the server connection released last is
                # handed out first (what detection relies on, see kronos_db.db)
                "server_round_robin = 0",
                "server_check_delay = 0",
                "query_wait_timeout = 60",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def pgbouncer(
    pool_mode: PoolMode, *, pool_size: int = 6, users: Sequence[str] = ()
) -> Iterator[PgBouncer]:
    """Start a PgBouncer in front of the test server; stop it on exit, whatever happened.

    ``users`` are the roles besides the test superuser that may log in through it.
    """
    if not Path(PGBOUNCER).exists():
        pytest.skip("pgbouncer is not installed: run .ci/run")
    directory = Path(tempfile.mkdtemp(prefix=f"kronos-pgbouncer-{pool_mode}-"))
    as_root = os.geteuid() == 0
    process: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(5):
            port = free_port()
            config = _write_config(directory, port, pool_mode, pool_size, users)
            argv = [PGBOUNCER, str(config)]
            if as_root:
                postgres = pwd.getpwnam("postgres")
                os.chown(directory, postgres.pw_uid, postgres.pw_gid)
                for path in directory.iterdir():
                    os.chown(path, postgres.pw_uid, postgres.pw_gid)
                argv[1:1] = ["--user", "postgres"]
            process = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            bouncer = PgBouncer(port, pool_mode, pool_size, directory)
            if _wait_until_ready(bouncer, process):
                yield bouncer
                return
            _stop(process)
            process = None
        log = directory / "pgbouncer.log"
        reason = log.read_text(errors="replace")[-2000:] if log.exists() else "no log"
        raise RuntimeError(f"pgbouncer did not start: {reason}")
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_until_ready(bouncer: PgBouncer, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # the port was taken meanwhile, most likely
        try:
            with bouncer.connect("postgres", connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # immediate shutdown: close every connection
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
