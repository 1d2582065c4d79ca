"""The command line: errors are one line with a documented exit code, secrets never show, and
every command has help with an example and is documented."""

from __future__ import annotations

import importlib
import re
from typing import Any

import psycopg
import pytest
import typer
from conftest import (
    HOST,
    PORT,
    PROBE_PASSWORD,
    PROBE_ROLE,
    REPO,
    USER,
    Database,
    run_cli,
    unique_name,
    url_for,
)

from kronos_db.cli import COMMANDS, app


def _one_error_line(result: Any, code: int) -> str:
    assert result.code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kronos-db: error: ")
    return lines[0]


# ---------------------------------------------------------------- connection errors


def test_unreachable_server() -> None:
    result = run_cli("status", "--database-url", "postgresql://postgres@127.0.0.1:1/kronos")
    line = _one_error_line(result, 3)
    assert "cannot connect" in line
    assert "port=1" in line


def test_missing_database_suggests_create_db() -> None:
    result = run_cli("migrate", "--database-url", url_for(unique_name("kronos_missing")))
    line = _one_error_line(result, 3)
    assert "does not exist" in line
    assert "--create-db" in line


def test_wrong_password_is_refused_without_showing_it(password_role: str) -> None:
    secret = "Wr0ng-Secret-4711"
    url = f"postgresql://{PROBE_ROLE}:{secret}@{HOST}:{PORT}/postgres"
    for args in (("status", "--database-url", url), ("migrate", "--database-url", url)):
        result = run_cli(*args)
        line = _one_error_line(result, 3)
        assert "password authentication failed" in line
        assert secret not in result.output
    # the same through the environment, and in `config show`
    result = run_cli("config", "show", env={"KRONOS_DATABASE_URL": url})
    assert result.code == 0
    assert secret not in result.output


def test_right_password_connects(password_role: str, empty_database: Database) -> None:
    url = f"postgresql://{PROBE_ROLE}:{PROBE_PASSWORD}@{HOST}:{PORT}/{empty_database.name}"
    result = run_cli("status", "--database-url", url)
    assert result.code == 5, result.output  # connected; nothing applied yet
    assert PROBE_PASSWORD not in result.output


def test_malformed_url_hides_the_password() -> None:
    result = run_cli(
        "status", "--database-url", "postgresql://me:hunter2@localhost/x?no_such_parameter=1"
    )
    _one_error_line(result, 2)
    assert "hunter2" not in result.output


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("migrate", "no_such_revision"), "no_such_revision"),
        (("downgrade", "abc123"), "abc123"),
        (("migrate", "--lock-timeout", "soon"), "invalid duration"),
        (("migrate", "--lock-timeout", "0"), "migrations.lock_timeout: must be at least 1ms"),
        (("downgrade", "-1", "--lock-timeout", "0s"), "option --lock-timeout"),
        (("migrate", "--lock-wait", "5x"), "invalid duration"),
        (("migrate", "--retries", "-1"), "--retries"),
        (("migrate", "--no-such-option"), "no-such-option"),
        (("status", "--bogus"), "--bogus"),
        (("no-such-command",), "no-such-command"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: tuple[str, ...], needle: str, database: Database
) -> None:
    result = run_cli(*args, "--database-url", database.url)
    line = _one_error_line(result, 2)
    assert needle in line


def test_status_exit_codes(empty_database: Database) -> None:
    pending = run_cli("status", "--database-url", empty_database.url)
    assert pending.code == 5
    assert "pending" in pending.stdout
    assert run_cli("migrate", "--database-url", empty_database.url).code == 0
    done = run_cli("status", "--json", "--database-url", empty_database.url)
    assert done.code == 0
    assert '"up_to_date": true' in done.stdout


def test_create_db_creates_then_migrates(tmp_path: Any) -> None:
    name = unique_name("kronos_created")
    try:
        result = run_cli("migrate", "--create-db", "--database-url", url_for(name))
        assert result.code == 0, result.output
        assert f"created database {name}" in result.stdout
        again = run_cli("migrate", "--create-db", "--database-url", url_for(name))
        assert again.code == 0
        assert "nothing to do" in again.stdout
    finally:
        with psycopg.connect(url_for("postgres"), autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(name)
                )
            )


def test_default_database_comes_from_libpq_environment(database: Database) -> None:
    env = {"PGHOST": HOST, "PGPORT": str(PORT), "PGUSER": USER, "PGDATABASE": database.name}
    result = run_cli("status", env=env)
    assert result.code == 0, result.output
    assert f"dbname={database.name}" in result.stdout


def test_kronos_is_the_default_database_name() -> None:
    result = run_cli("config", "show", "--json", env={"PGHOST": HOST, "PGPORT": "1"})
    assert result.code == 0
    assert "dbname=kronos" in result.stdout


def test_history_marks_applied_revisions(empty_database: Database) -> None:
    assert run_cli("migrate", "0002", "--database-url", empty_database.url).code == 0
    result = run_cli("history", "--json", "--database-url", empty_database.url)
    assert result.code == 0
    applied = re.findall(
        r'"revision": "(\d+)",\s+"down_revision": [^,]+,\s+"description": "[^"]*",'
        r'\s+"applied": (true|false)',
        result.stdout,
    )
    assert applied[:3] == [("0001", "true"), ("0002", "true"), ("0003", "false")]


def test_version() -> None:
    result = run_cli("--version")
    assert result.code == 0
    assert re.fullmatch(r"kronos-db \S+\n", result.stdout)


def test_cli_py_at_the_root_is_the_same_app() -> None:
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0
    assert completed.stdout.startswith("kronos-db ")


# ---------------------------------------------------------------- help and docs


def _commands() -> list[tuple[str, Any]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, Any]] = []

    def walk(prefix: str, command: Any) -> None:
        if hasattr(command, "list_commands"):  # a group, lazy or not
            context = command.make_context(prefix or "kronos-db", [], resilient_parsing=True)
            for name in command.list_commands(context):
                walk(f"{prefix} {name}".strip(), command.get_command(context, name))
        else:
            found.append((prefix, command))

    walk("", root)
    return found


def test_every_command_a_module_registers_is_in_the_registry() -> None:
    """A command added to a module's register() but not to COMMANDS would be unreachable."""
    for module in {entry.module for entry in COMMANDS.values()}:
        holder = typer.Typer()
        importlib.import_module(module).register(holder)
        defined = {
            info.name or info.callback.__name__.replace("_", "-")  # type: ignore[union-attr]
            for info in holder.registered_commands
        } | {info.name for info in holder.registered_groups}
        listed = {name for name, entry in COMMANDS.items() if entry.module == module}
        assert defined == listed, module


def test_the_registry_describes_each_command_as_its_help_does() -> None:
    root = typer.main.get_command(app)
    context = root.make_context("kronos-db", [], resilient_parsing=True)
    for name, entry in COMMANDS.items():
        command = root.get_command(context, name)
        assert command is not None, name
        assert (command.help or "").strip().splitlines()[0] == entry.help, name


@pytest.mark.parametrize(("name", "command"), _commands(), ids=[n for n, _ in _commands()])
def test_every_command_has_help_with_an_example(name: str, command: Any) -> None:
    assert command.help, f"{name} has no help"
    assert "Example: kronos-db " in command.help, f"{name}'s help shows no example"


@pytest.mark.parametrize("name", [n for n, _ in _commands()])
def test_every_command_is_documented(name: str) -> None:
    documentation = (REPO / "README.md").read_text(encoding="utf-8") + "".join(
        path.read_text(encoding="utf-8") for path in (REPO / "docs").glob("*.md")
    )
    assert f"kronos-db {name}" in documentation, f"`kronos-db {name}` is not in README.md or docs/"


def test_exit_codes_are_documented() -> None:
    from kronos_db.errors import ExitCode

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for code in ExitCode:
        assert re.search(rf"^\| {code.value} \|", readme, re.MULTILINE), f"exit code {code.value}"


def test_help_texts_survive_rich_markup() -> None:
    """Help is rendered as Rich markup: "[backups] directory" would print as " directory"."""
    from rich.text import Text

    root = typer.main.get_command(app)
    lost = []
    for name, command in [("", root), *_commands()]:
        texts = [command.help or ""] + [
            getattr(param, "help", "") or "" for param in command.params
        ]
        for text in texts:
            if Text.from_markup(text).plain != text:
                lost.append(f"kronos-db {name}: {text!r}")
    assert not lost, "\n".join(lost)
