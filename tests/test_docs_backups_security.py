"""Every backup, roles, users and security command has help text and is documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from kronos_db.cli import backups as backup_commands
from kronos_db.cli import security as security_commands

DOCS = Path(__file__).resolve().parent.parent / "docs"

COMMANDS = [
    ("backup", backup_commands.app, "backups.md"),
    ("roles", security_commands.roles_app, "security.md"),
    ("users", security_commands.users_app, "security.md"),
]


def _commands(app: typer.Typer) -> list[tuple[str, str]]:
    return [
        (info.name or "", (info.callback.__doc__ or "") if info.callback else "")
        for info in app.registered_commands
    ]


@pytest.mark.parametrize(("group", "app", "page"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_has_help_and_is_documented(group: str, app: typer.Typer, page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    commands = _commands(app)
    assert commands
    for name, doc in commands:
        assert doc.strip(), f"{group} {name} has no help text"
        assert "Example: kronos-db" in doc, f"{group} {name} has no example"
        assert f"{group} {name}" in text, f"`{group} {name}` is not in docs/{page}"


def test_security_report_is_documented() -> None:
    assert security_commands.security_report.__doc__
    assert "kronos-db report security" in (DOCS / "security.md").read_text(encoding="utf-8")
