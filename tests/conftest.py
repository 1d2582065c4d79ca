"""Fixtures: a real PostgreSQL server, a migrated template database, one clone per test.

The server is the one already running (pytest-postgresql's no-process mode): host, port and
superuser come from KRONOS_TEST_HOST, KRONOS_TEST_PORT and KRONOS_TEST_USER (127.0.0.1, 5432,
postgres). The template is migrated once per session; each test gets a clone
(``CREATE DATABASE … TEMPLATE``) and drops it afterwards. Names carry the process id and a
random part, so concurrent runs on one server never collide.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from kronos_db import db, migrations
from kronos_db.config import Settings

HOST = os.environ.get("KRONOS_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("KRONOS_TEST_PORT", "5432"))
USER = os.environ.get("KRONOS_TEST_USER", "postgres")
REPO = Path(__file__).resolve().parent.parent


def url_for(dbname: str, user: str = USER) -> str:
    return f"postgresql://{user}@{HOST}:{PORT}/{dbname}"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


@dataclasses.dataclass(frozen=True)
class Database:
    name: str
    url: str

    @property
    def target(self) -> db.Target:
        return db.resolve_target(self.url, Settings())

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url, **kwargs)


def _janitor(name: str, template: str | None = None) -> DatabaseJanitor:
    return DatabaseJanitor(user=USER, host=HOST, port=PORT, dbname=name, template_dbname=template)


@pytest.fixture(scope="session")
def template_database() -> Iterator[Database]:
    """An empty database migrated to head once per session: every test's starting point."""
    name = unique_name("kronos_tpl")
    with _janitor(name):
        database = Database(name, url_for(name))
        migrations.upgrade(Settings(), database.target, "head")
        yield database


@pytest.fixture
def database(template_database: Database) -> Iterator[Database]:
    """A fresh database at head, cloned from the template."""
    name = unique_name("kronos_test")
    with _janitor(name, template=template_database.name):
        yield Database(name, url_for(name))


@pytest.fixture
def empty_database() -> Iterator[Database]:
    """A fresh database with nothing in it."""
    name = unique_name("kronos_empty")
    with _janitor(name):
        yield Database(name, url_for(name))


@pytest.fixture
def conn(database: Database) -> Iterator[psycopg.Connection[Any]]:
    with database.connect() as connection:
        yield connection


@pytest.fixture
def settings() -> Settings:
    return Settings()


@dataclasses.dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> CliResult:
    """Run ``kronos-db`` in a subprocess, as cron or CI would (no terminal)."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KRONOS_", "PG")) and k != "DATABASE_URL"
    }
    environment.update(env or {})
    completed = subprocess.run(
        [sys.executable, "-m", "kronos_db", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd or REPO,
        timeout=timeout,
        input=input,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture
def cli() -> Any:
    return run_cli
